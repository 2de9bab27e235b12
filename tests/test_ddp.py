"""Two CPU processes (gloo) train the tiny config with DDP and end with identical parameters.

Each rank draws different batches (its generator is seeded with its rank), so the ranks can only
agree if their gradients were averaged; the test also checks that the result differs from a
single-process run, which saw half the data.
"""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import tiny_model_config, tiny_train_config

WORLD = 2
STEPS = 3

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, data: str, out: str, dump: str) -> None:
    """One rank: join through the environment as torchrun would, train, dump this rank's weights."""
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank))
    from mixture_of_thoughts.training import trainer

    captured = {}
    real = trainer.make_optimizer

    def capture(model, cfg, device):  # the trainer builds its optimizer from the local (unwrapped) model
        captured["model"] = model
        return real(model, cfg, device)

    trainer.make_optimizer = capture
    res = trainer.train(data, out, tiny_model_config(), tiny_train_config(max_steps=STEPS, eval_interval=STEPS),
                        device="cpu")
    assert res.step == STEPS
    state = {k: v.detach().clone() for k, v in captured["model"].state_dict().items()}
    torch.save(state, os.path.join(dump, f"rank{rank}.pt"))


def test_ranks_agree_after_ddp_steps(corpus_file, tmp_path):
    out = tmp_path / "run"
    mp.spawn(_worker, args=(_free_port(), str(corpus_file), str(out), str(tmp_path)), nprocs=WORLD, join=True)
    states = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    for k in states[0]:
        assert torch.equal(states[0][k], states[1][k]), k

    # rank 0 alone wrote the run, and its checkpoint holds the shared weights
    from mixture_of_thoughts.training.checkpoint import load_checkpoint
    from mixture_of_thoughts.training.trainer import train

    ck = load_checkpoint(out, which="latest")
    saved = ck.model.state_dict()
    assert all(torch.equal(saved[k], states[0][k]) for k in saved)
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1

    # a single process with the same seed sees only rank 0's batches, so it must end elsewhere
    single = tmp_path / "single"
    train(str(corpus_file), single, tiny_model_config(), tiny_train_config(max_steps=STEPS, eval_interval=STEPS),
          device="cpu")
    alone = load_checkpoint(single, which="latest").model.state_dict()
    assert not torch.equal(alone["blocks.0.attn.qkv.weight"], states[0]["blocks.0.attn.qkv.weight"])
