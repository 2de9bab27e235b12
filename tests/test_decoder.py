"""The branch decoder on scripted step functions: stopping, lengths, log-likelihoods, routing."""

from __future__ import annotations

import math

import pytest
import torch

from mixture_of_thoughts.errors import ConfigError
from mixture_of_thoughts.generation.decoder import Sampling, Step, branch_plan, collect_branches, decode
from mixture_of_thoughts.rng import RowNoise

V = 10


def scripted(script: list[list[int]], load: torch.Tensor | None = None):
    """A greedy-friendly step function: row b emits script[b][i] at its i-th generated position.

    The logits put 5 nats on the scripted token (log-softmax known in closed form); ``load`` (B, E) is
    reported as every call's routing. Records the lengths it was called with.
    """
    calls = []
    B = len(script)
    T0 = None

    def step(tokens, length):
        nonlocal T0
        T0 = length if T0 is None else T0
        calls.append(length)
        i = length - T0
        logits = torch.zeros(B, V)
        for b in range(B):
            logits[b, script[b][min(i, len(script[b]) - 1)]] = 5.0
        return Step(logits, {0: load} if load is not None else {})

    return step, calls


LOGP_TOP = 5.0 - math.log(math.exp(5.0) + V - 1)  # log-softmax of the scripted token


def test_rows_stop_on_any_of_several_stop_ids_and_keep_their_own_lengths():
    script = [[1, 2, 9, 3], [4, 8, 5, 6], [1, 1, 1, 1]]
    step, calls = scripted(script)
    prompt = torch.zeros(3, 2, dtype=torch.long)
    gen = decode(step, prompt, 4, RowNoise([0, 1, 2]), Sampling(temperature=0.0), stop_ids=[8, 9])
    # row 0 stops on 9 at step 2, row 1 on 8 at step 1; the stop id is not part of the text
    assert gen.lengths.tolist() == [2, 1, 4]
    assert gen.tokens[:, 2:].tolist() == [[1, 2, 9, 3], [4, 8, 5, 6], [1, 1, 1, 1]]
    assert calls == [2, 3, 4, 5]  # prompt read once, then one call per new token, none after the last
    assert torch.allclose(gen.logprobs, torch.full((3, 4), LOGP_TOP))


def test_stop_sequences_are_kept_in_the_text_and_the_loop_ends_when_every_row_is_done():
    script = [[1, 2, 3, 4, 5], [2, 3, 7, 7, 7]]
    step, calls = scripted(script)
    gen = decode(step, torch.zeros(2, 1, dtype=torch.long), 5, RowNoise([0, 1]), Sampling(temperature=0.0),
                 stop_sequences=[[2, 3]])
    assert gen.lengths.tolist() == [3, 2]  # "1 2 3" and "2 3", each ending with the stop sequence
    assert gen.tokens.shape == (2, 1 + 3)  # trimmed at the step where the last row finished
    assert gen.logprobs.shape == (2, 3)
    assert calls == [1, 2, 3]


def test_a_stop_sequence_must_lie_in_the_generated_text_not_the_prompt():
    step, _ = scripted([[3, 5, 5]])
    prompt = torch.tensor([[2]])  # prompt "2" + first token "3" spells the stop sequence across the boundary
    gen = decode(step, prompt, 3, RowNoise([0]), Sampling(temperature=0.0), stop_sequences=[[2, 3]])
    assert gen.lengths.tolist() == [3]


def test_routing_counts_only_the_tokens_a_row_kept():
    load = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    step, _ = scripted([[1, 9, 1, 1], [1, 1, 1, 1]], load)
    gen = decode(step, torch.zeros(2, 1, dtype=torch.long), 4, RowNoise([0, 1]), Sampling(temperature=0.0),
                 stop_ids=[9])
    assert torch.equal(gen.routing[0], load)  # normalised per row


def test_on_token_sees_every_step_and_the_done_mask():
    seen = []
    step, _ = scripted([[1, 9, 1], [1, 1, 1]])
    decode(step, torch.zeros(2, 1, dtype=torch.long), 3, RowNoise([0, 1]), Sampling(temperature=0.0),
           stop_ids=[9], on_token=lambda i, nxt, done: seen.append((i, nxt.tolist(), done.tolist())))
    assert seen == [(0, [1, 1], [False, False]), (1, [9, 1], [True, False]), (2, [1, 1], [True, False])]


def test_sampled_rows_do_not_depend_on_the_rest_of_the_batch():
    torch.manual_seed(0)
    table = torch.randn(3, 6, V)  # row-specific logits per step: a sampled row must equal itself alone

    def stepper(rows):
        def step(tokens, length):
            return Step(table[rows, length - 1], {})
        return step

    batch = decode(stepper([0, 1, 2]), torch.zeros(3, 1, dtype=torch.long), 5, RowNoise([7, 8, 9]), Sampling())
    alone = decode(stepper([1]), torch.zeros(1, 1, dtype=torch.long), 5, RowNoise([8]), Sampling())
    assert torch.equal(batch.tokens[1], alone.tokens[0])


def test_collect_branches_decodes_each_row_up_to_its_length():
    step, _ = scripted([[1, 2, 9], [3, 3, 3]])
    gen = decode(step, torch.zeros(2, 1, dtype=torch.long), 3, RowNoise([0, 1]), Sampling(temperature=0.0),
                 stop_ids=[9])
    res = collect_branches(gen, 1, lambda ids: "".join("abcdefghij"[i] for i in ids), [10, 11], [0.5, 1.0], "a")
    assert [b.text for b in res.branches] == ["bc", "ddd"]
    assert [b.seed for b in res.branches] == [10, 11]
    assert res.branches[0].mean_loglik == pytest.approx(LOGP_TOP)


def test_branch_plan_and_bad_input():
    assert branch_plan(3, 5, None, (0.0, 1.0)) == ([5, 6, 7], [0.0, 0.5, 1.0])
    assert branch_plan(3, 5, [42], None) == ([42], None)
    with pytest.raises(ConfigError, match="branches"):
        branch_plan(0, 0, None, None)
    with pytest.raises(ConfigError, match="max_new_tokens"):
        decode(lambda t, n: None, torch.zeros(1, 1, dtype=torch.long), 0, RowNoise([0]), Sampling())
    with pytest.raises(ConfigError, match="temperature"):
        decode(lambda t, n: None, torch.zeros(1, 1, dtype=torch.long), 2, RowNoise([0]), Sampling(temperature=-1))


def test_stop_strings_match_the_text_whatever_tokens_spelled_it():
    letters = "abcdefghij"
    step, _ = scripted([[1, 2, 3, 4], [2, 3, 2, 3], [5, 5, 5, 5]])  # "bcde", "cdcd", "ffff"
    gen = decode(step, torch.zeros(3, 1, dtype=torch.long), 4, RowNoise([0, 1, 2]), Sampling(temperature=0.0),
                 stop_strings=["cd"], detokenize=lambda ids: "".join(letters[i] for i in ids))
    assert gen.lengths.tolist() == [3, 2, 4]
    with pytest.raises(ValueError, match="detokenize"):
        decode(step, torch.zeros(3, 1, dtype=torch.long), 4, RowNoise([0, 1, 2]), Sampling(), stop_strings=["x"])


def test_two_phase_sampling_is_the_hot_run_then_the_cold_run():
    """``Sampling(first=(hot, m))``: the first m tokens at the hot temperature, the rest at the cold one.
    With logits that depend only on the step, each phase equals the one-temperature run there."""
    table = torch.randn(6, V, generator=torch.Generator().manual_seed(1)) * 3

    def step(tokens, length):
        return Step(table[length - 1].expand(tokens.shape[0], V), {})

    def run(s):
        return decode(step, torch.zeros(4, 1, dtype=torch.long), 6, RowNoise([3, 4, 5, 6]), s).tokens[:, 1:]

    hot, cold = run(Sampling(2.0)), run(Sampling(0.3))
    two = run(Sampling(0.3, first=(2.0, 2)))
    assert torch.equal(two[:, :2], hot[:, :2]) and torch.equal(two[:, 2:], cold[:, 2:])
    assert not torch.equal(hot, cold)
    assert torch.equal(run(Sampling(0.3, first=(0.3, 4))), cold)
    with pytest.raises(ConfigError):
        Sampling(0.3, first=(-1.0, 2)).validate()
