"""The Mixture-of-Thoughts layer: fast dispatch against a per-token reference, routing statistics,
reproducibility, per-row independence, banned branches, aux losses and config validation."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from mixture_of_thoughts import rng
from mixture_of_thoughts.config import ThoughtConfig
from mixture_of_thoughts.errors import ConfigError
from mixture_of_thoughts.layers.ffn import activation
from mixture_of_thoughts.layers.thoughts import (
    ThoughtsFFN,
    branch_cosine,
    load_balancing_loss,
    router_z_loss,
)
from mixture_of_thoughts.rng import GeneratorNoise, RowNoise

D = 16


def make_layer(dtype=torch.float64, seed=0, d=D, **cfg) -> ThoughtsFFN:
    kw = dict(n_branches=4, k=2, creativity=1.0, noise_init=0.3)
    kw.update(cfg)
    layer = ThoughtsFFN(d, ThoughtConfig(**kw), layer_idx=1)
    layer.reset_parameters(torch.Generator().manual_seed(seed))
    with torch.no_grad():  # make the noise scales and combiner matter at test sizes
        layer.router.weight.mul_(20)
        layer.s_in.copy_(torch.linspace(0.1, 0.4, kw["n_branches"]))
        layer.s_hid.copy_(torch.linspace(0.4, 0.1, kw["n_branches"]))
        if layer.cfg.combine == "attention":
            layer.comb_q.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(seed + 1))
            layer.comb_k.weight.mul_(20)
    return layer.to(dtype)


def reference(layer: ThoughtsFFN, x, noise, c: float):
    """Per-token, per-slot loop: the layer as DESIGN §1 writes it, with the same noise draws."""
    cfg, L = layer.cfg, layer.layer_idx
    B, T, d = x.shape
    E, k = cfg.n_branches, cfg.k
    pos = torch.arange(T)
    tau = F.softplus(layer.rho) + 1e-3
    logits = x @ layer.router.weight.T
    draws = noise is not None and c > 0
    if draws:
        g = noise.gumbel(rng.stream_id(rng.ROUTER, L), None if cfg.route == "sequence" else pos, (E,)).to(x.dtype)
        n1 = noise.normal(rng.stream_id(rng.INPUT_NOISE, L), pos, (k, d)).to(x.dtype)
        n2 = noise.normal(rng.stream_id(rng.HIDDEN_NOISE, L), pos, (k, layer.hidden)).to(x.dtype)
        if cfg.k_min is not None:
            u = noise.uniform(rng.stream_id(rng.K_DRAW, L), pos, (1,))
    rows = []
    for b in range(B):
        for t in range(T):
            z = logits[b, t] / tau
            s = z + c * g[b, t if cfg.route == "token" else 0] if draws else z
            S = s.detach().topk(k).indices
            kt = k
            if draws and cfg.k_min is not None:
                kt = min(k, cfg.k_min + int(math.floor(float(u[b, t, 0]) * (k - cfg.k_min + 1))))
            S = S[:kt]
            w = torch.softmax(z, -1)[S] if k == 1 else torch.softmax(z[S], -1)
            outs = []
            for j, e in enumerate(S.tolist()):
                xin = x[b, t] + (c * layer.s_in[e] * n1[b, t, j] if draws else 0)
                a = xin @ layer.w_in[e] + (c * layer.s_hid[e] * n2[b, t, j] if draws else 0)
                outs.append(activation(a) @ layer.w_out[e])
            o = torch.stack(outs)  # (kt, d)
            if cfg.combine == "weighted":
                rows.append((w.unsqueeze(1) * o).sum(0))
            else:
                q = x[b, t] @ layer.comb_q.weight.T
                att = (o @ layer.comb_k.weight.T) @ q / math.sqrt(q.shape[0]) + torch.log_softmax(z[S], -1)
                a = torch.softmax(att, -1) * (w if k == 1 else 1)
                rows.append((a.unsqueeze(1) * o).sum(0))
    return torch.stack(rows).view(B, T, d)


@pytest.mark.parametrize("combine", ["weighted", "attention"])
@pytest.mark.parametrize("k,k_min,c", [(2, None, 1.0), (2, None, 0.0), (1, None, 1.5), (3, 1, 1.0)])
def test_fast_dispatch_matches_per_token_reference(combine, k, k_min, c):
    layer = make_layer(combine=combine, k=k, k_min=k_min)
    x = torch.randn(2, 6, D, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    noise = RowNoise([5, 9])
    r = torch.randn(2, 6, D, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    params = [p for p in layer.parameters()]

    y = layer(x, noise=noise, creativity=c).y
    grads = torch.autograd.grad((y * r).sum(), params, allow_unused=True)
    y_ref = reference(layer, x, noise, c)
    grads_ref = torch.autograd.grad((y_ref * r).sum(), params, allow_unused=True)

    torch.testing.assert_close(y, y_ref, rtol=1e-9, atol=1e-11)
    for p, g, gr in zip(params, grads, grads_ref, strict=True):
        g = torch.zeros_like(p) if g is None else g
        gr = torch.zeros_like(p) if gr is None else gr
        torch.testing.assert_close(g, gr, rtol=1e-8, atol=1e-10)


def test_zero_creativity_is_deterministic_top_k_moe():
    layer = make_layer(k=2)
    x = torch.randn(3, 5, D, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    y0 = layer(x, noise=RowNoise([1, 2, 3]), creativity=0.0).y
    y1 = layer(x, noise=RowNoise([7, 8, 9]), creativity=0.0).y
    y2 = layer(x, noise=None, creativity=1.0).y  # noise=None turns every draw off
    assert torch.equal(y0, y1) and torch.equal(y0, y2)
    # an ordinary top-k MoE: every branch on every token, top-k of logits, renormalised softmax weights
    with torch.no_grad():
        z = layer.router(x) / layer.tau  # (B, T, E)
        all_out = torch.stack([activation(x @ layer.w_in[e]) @ layer.w_out[e] for e in range(4)], -2)
        top = z.topk(2, -1)
        w = torch.softmax(top.values, -1)  # (B, T, 2)
        sel = all_out.gather(-2, top.indices.unsqueeze(-1).expand(-1, -1, -1, D))  # (B, T, 2, d)
        y_moe = (w.unsqueeze(-1) * sel).sum(-2)
    torch.testing.assert_close(y0, y_moe, rtol=1e-10, atol=1e-12)


def test_same_seeds_reproduce_different_seeds_differ():
    layer = make_layer(dtype=torch.float32)
    x = torch.randn(2, 8, D, generator=torch.Generator().manual_seed(4))
    a = layer(x, noise=RowNoise([1, 2]), creativity=1.0)
    b = layer(x, noise=RowNoise([1, 2]), creativity=1.0)
    c = layer(x, noise=RowNoise([3, 4]), creativity=1.0)
    assert torch.equal(a.y, b.y) and torch.equal(a.aux_loss, b.aux_loss)
    assert not torch.allclose(a.y[0], c.y[0]) and not torch.allclose(a.y[1], c.y[1])
    g1 = layer(x, noise=GeneratorNoise(torch.Generator().manual_seed(5), 2)).y
    g2 = layer(x, noise=GeneratorNoise(torch.Generator().manual_seed(5), 2)).y
    g3 = layer(x, noise=GeneratorNoise(torch.Generator().manual_seed(6), 2)).y
    assert torch.equal(g1, g2) and not torch.allclose(g1, g3)


def _constant_logit_layer(logits: list[float], k: int) -> tuple[ThoughtsFFN, torch.Tensor]:
    """A layer whose router gives ``logits`` at every token: x = e_0, router column 0 = logits."""
    layer = make_layer(dtype=torch.float32, n_branches=len(logits), k=k, d=8, noise_init=0.0)
    with torch.no_grad():
        layer.router.weight.zero_()
        layer.router.weight[:, 0] = torch.tensor(logits)
    return layer, torch.eye(8)[0]


@pytest.mark.parametrize("noise_kind", ["row", "generator"])
def test_gumbel_top1_frequencies_match_softmax(noise_kind):
    logits = [1.0, 0.3, -0.4, 0.0]
    layer, e0 = _constant_logit_layer(logits, k=1)
    B, T = 4, 4000
    noise = RowNoise(range(B)) if noise_kind == "row" else GeneratorNoise(torch.Generator().manual_seed(0), B)
    with torch.no_grad():
        r = layer.route(e0.expand(B, T, 8), noise=noise, creativity=1.0)
        p = torch.softmax(torch.tensor(logits) / layer.tau, -1)
    n = B * T
    freq = torch.bincount(r.idx.reshape(-1), minlength=4).float() / n
    # each frequency is a binomial proportion over n independent tokens: 5 standard errors
    # sqrt(p (1 - p) / n) make a false failure about a 1-in-a-million event per branch.
    tol = 5 * torch.sqrt(p * (1 - p) / n)
    assert torch.all((freq - p).abs() <= tol), (freq, p, tol)


def test_gumbel_top2_inclusion_matches_sampling_without_replacement():
    logits = [1.2, 0.4, -0.3, -1.0]
    layer, e0 = _constant_logit_layer(logits, k=2)
    B, T = 4, 4000
    with torch.no_grad():
        r = layer.route(e0.expand(B, T, 8), noise=GeneratorNoise(torch.Generator().manual_seed(1), B))
        p = torch.softmax(torch.tensor(logits, dtype=torch.float64) / layer.tau.double(), -1).tolist()
    # exact inclusion probability: sum over ordered draws (i, j) of p_i * p_j / (1 - p_i)
    incl = [0.0] * 4
    for i, j in itertools.permutations(range(4), 2):
        pr = p[i] * p[j] / (1 - p[i])
        incl[i] += pr
        incl[j] += pr
    incl = torch.tensor(incl)
    assert abs(float(incl.sum()) - 2) < 1e-12
    n = B * T
    freq = torch.zeros(4, dtype=torch.float64)
    for e in range(4):
        freq[e] = (r.idx == e).any(-1).double().mean()  # per-token inclusion indicator
    tol = 5 * torch.sqrt(incl * (1 - incl) / n)  # 5 binomial standard errors, as above
    assert torch.all((freq - incl).abs() <= tol), (freq, incl, tol)


@pytest.mark.parametrize("k", [1, 2])
def test_gradients_reach_router_temperature_and_noise_scales(k):
    layer = make_layer(dtype=torch.float32, k=k)
    x = torch.randn(2, 8, D, generator=torch.Generator().manual_seed(6))
    out = layer(x, noise=RowNoise([1, 2]), creativity=1.0)
    (out.y.pow(2).sum() + out.aux_loss).backward()
    for name in ("router.weight", "rho", "s_in", "s_hid", "w_in", "w_out"):
        g = dict(layer.named_parameters())[name].grad
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0, name


def test_load_balancing_loss_hand_worked():
    # 2 tokens, E = 3. P = mean probs = [(0.7+0.1)/2, (0.2+0.6)/2, (0.1+0.3)/2] = [0.4, 0.4, 0.2];
    # f = [0.5, 0.5, 0.0]  ->  E * sum f P = 3 * (0.5*0.4 + 0.5*0.4 + 0) = 3 * 0.4 = 1.2
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3]])
    load = torch.tensor([0.5, 0.5, 0.0])
    assert load_balancing_loss(probs, load).item() == pytest.approx(1.2, abs=1e-6)
    # uniform router and uniform load -> 1
    assert load_balancing_loss(torch.full((5, 4), 0.25), torch.full((4,), 0.25)).item() == pytest.approx(1.0)
    # z-loss: logits [0, 0] -> logsumexp = ln 2 -> (ln 2)^2; a -inf entry contributes nothing
    assert router_z_loss(torch.tensor([[0.0, 0.0, float("-inf")]])).item() == pytest.approx(math.log(2) ** 2)
    # cosine of identical outputs is 1, of orthogonal outputs 0
    o = torch.tensor([[[1.0, 0.0], [2.0, 0.0]], [[1.0, 0.0], [0.0, 3.0]]])
    assert branch_cosine(o, torch.ones(2, 2, dtype=torch.bool)).item() == pytest.approx(0.5)


def test_layer_aux_loss_is_the_weighted_sum_of_its_parts():
    layer = make_layer(dtype=torch.float32, balance_coef=0.5, z_coef=0.25, diversity_coef=2.0)
    x = torch.randn(2, 8, D, generator=torch.Generator().manual_seed(7))
    out = layer(x, noise=RowNoise([1, 2]), costly_stats=True)
    s = out.stats
    with torch.no_grad():
        probs = torch.softmax(layer.router(x) / layer.tau, -1)
    torch.testing.assert_close(s["balance_loss"], load_balancing_loss(probs, s["load"]))
    expected = 0.5 * s["balance_loss"] + 0.25 * s["z_loss"] + 2.0 * (1 - s["branch_diversity"])
    torch.testing.assert_close(out.aux_loss.detach(), expected)
    torch.testing.assert_close(s["load"].sum(), torch.tensor(1.0))
    torch.testing.assert_close(s["row_load"].sum(-1), torch.ones(2))
    assert 0 <= s["router_entropy"] <= math.log(4) + 1e-6


def test_sequence_route_is_persistent_across_positions_and_cache_steps():
    layer = make_layer(dtype=torch.float32, route="sequence", n_branches=8, k=2)
    with torch.no_grad():
        layer.router.weight.zero_()
    B, T = 3, 10
    x = torch.randn(B, T, D, generator=torch.Generator().manual_seed(8))
    noise = RowNoise([11, 22, 33])
    full = layer.route(x, noise=noise, creativity=1.0)
    assert torch.equal(full.idx, full.idx[:, :1].expand_as(full.idx))  # same branches at every position
    assert len({tuple(row) for row in full.idx[:, 0].tolist()}) > 1  # but different per seed
    y_full = layer(x, noise=noise, creativity=1.0).y
    for p in (0, 4, 9):  # a KV-cache step: one token at absolute position p
        step = layer.route(x[:, p:p + 1], noise=noise, positions=torch.tensor([p]), creativity=1.0)
        assert torch.equal(step.idx[:, 0], full.idx[:, p])
        y_step = layer(x[:, p:p + 1], noise=noise, positions=torch.tensor([p]), creativity=1.0).y
        torch.testing.assert_close(y_step[:, 0], y_full[:, p], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("combine", ["weighted", "attention"])
def test_rows_are_independent_of_the_batch(combine):
    layer = make_layer(dtype=torch.float32, combine=combine, k=3, k_min=1)
    seeds = [101, 202, 303]
    x = torch.randn(3, 7, D, generator=torch.Generator().manual_seed(9))
    batch = RowNoise(seeds)
    y = layer(x, noise=batch).y
    r = layer.route(x, noise=batch)
    for i, s in enumerate(seeds):
        yi = layer(x[i:i + 1], noise=RowNoise([s])).y
        ri = layer.route(x[i:i + 1], noise=RowNoise([s]))
        torch.testing.assert_close(yi[0], y[i], rtol=1e-6, atol=1e-6)
        assert torch.equal(ri.idx[0], r.idx[i]) and torch.equal(ri.active[0], r.active[i])


def test_k_range_draws_active_branches_between_k_min_and_k():
    layer = make_layer(dtype=torch.float32, n_branches=6, k=4, k_min=2)
    x = torch.randn(4, 50, D, generator=torch.Generator().manual_seed(10))
    out = layer(x, noise=RowNoise(range(4)))
    r = layer.route(x, noise=RowNoise(range(4)))
    n_active = r.active.sum(-1)
    assert n_active.min() >= 2 and n_active.max() <= 4 and set(n_active.unique().tolist()) == {2, 3, 4}
    assert 2 < out.stats["active_k"] < 4
    torch.testing.assert_close(out.stats["active_k"], n_active.float().mean())
    # without noise: exactly k
    assert layer(x, noise=None).stats["active_k"] == 4


@pytest.mark.parametrize("banned,k", [([1], 2), ([0, 2, 3], 2)])
@pytest.mark.parametrize("combine", ["weighted", "attention"])
def test_banned_branches_get_no_load_and_no_nan(banned, k, combine):
    layer = make_layer(dtype=torch.float32, k=k, combine=combine, diversity_coef=0.1)

    def ban(module, inputs, out):
        out = out.clone()
        out[..., banned] = float("-inf")
        return out

    layer.router.register_forward_hook(ban)
    x = torch.randn(2, 9, D, generator=torch.Generator().manual_seed(11))
    out = layer(x, noise=RowNoise([1, 2]), costly_stats=True)
    assert torch.all(out.stats["load"][banned] == 0) and torch.all(out.stats["row_load"][:, banned] == 0)
    assert torch.isfinite(out.y).all() and torch.isfinite(out.aux_loss)
    assert all(torch.isfinite(v).all() for v in out.stats.values())
    (out.y.sum() + out.aux_loss).backward()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters() if p.grad is not None)


def test_per_row_creativity_tensor():
    layer = make_layer(dtype=torch.float32)
    x = torch.randn(2, 6, D, generator=torch.Generator().manual_seed(12))
    y = layer(x, noise=RowNoise([1, 2]), creativity=torch.tensor([0.0, 1.0])).y
    y0 = layer(x[:1], noise=None).y  # row 0 has c = 0: the deterministic MoE
    y1 = layer(x[1:], noise=RowNoise([2]), creativity=1.0).y
    torch.testing.assert_close(y[0], y0[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(y[1], y1[0], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("bad", [
    dict(creativity=-0.1), dict(k=0), dict(n_branches=4, k=5), dict(n_branches=0),
    dict(combine="mean"), dict(route="layer"),
])
def test_config_errors(bad):
    with pytest.raises(ConfigError):
        ThoughtConfig(**bad)


def test_attention_combiner_starts_as_weighted_combiner():
    # the combiner's query projection is zero at init: attention = softmax(log w) = w
    att = ThoughtsFFN(D, ThoughtConfig(n_branches=4, k=2, combine="attention")).double()
    wtd = ThoughtsFFN(D, ThoughtConfig(n_branches=4, k=2, combine="weighted")).double()
    wtd.load_state_dict({k: v for k, v in att.state_dict().items() if not k.startswith("comb_")})
    x = torch.randn(2, 5, D, dtype=torch.float64, generator=torch.Generator().manual_seed(13))
    torch.testing.assert_close(att(x, noise=RowNoise([1, 2])).y, wtd(x, noise=RowNoise([1, 2])).y)


def test_route_argument_equals_the_configured_route():
    x = torch.randn(3, 7, D, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    tok, seq = make_layer(route="token"), make_layer(route="sequence")
    kw = dict(noise=RowNoise([1, 2, 3]), creativity=1.0)
    y_arg = tok(x, route="sequence", **kw).y
    assert torch.equal(y_arg, seq(x, **kw).y)  # a per-call route is the configured one, nothing else
    assert not torch.equal(y_arg, tok(x, **kw).y)  # and it does switch the routing
    assert tok.cfg.route == "token"  # the layer's config is left alone


@pytest.mark.parametrize("chunk", [512, 3])  # 3: the 7 rows' dot products in chunks of 3, 3 and 1
def test_custom_autograd_pieces_pass_gradcheck(monkeypatch, chunk):
    from mixture_of_thoughts.layers import kernels
    from mixture_of_thoughts.layers.kernels import _AddScaledNoise, _ScaleRows, _SlicedMM

    monkeypatch.setattr(kernels, "ROW_DOTS_CHUNK", chunk)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(7, 5, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(4, 5, 3, dtype=torch.float64, generator=g, requires_grad=True)
    counts = [2, 0, 4, 1]  # an empty branch gets a zero gradient
    assert torch.autograd.gradcheck(lambda a, w: _SlicedMM.apply(a, w, counts), (a, w))
    ref = torch.cat([a[:2] @ w[0], a[2:6] @ w[2], a[6:] @ w[3]])
    assert torch.equal(_SlicedMM.apply(a, w, counts), ref)
    s = torch.randn(7, dtype=torch.float64, generator=g, requires_grad=True)
    n = torch.randn(7, 5, dtype=torch.float64, generator=g)
    # it adds in place, so it gets a fresh buffer, as in the layer
    assert torch.autograd.gradcheck(lambda a, s: _AddScaledNoise.apply(a.clone(), s, n), (a, s))
    assert torch.autograd.gradcheck(_ScaleRows.apply, (a, s))


@pytest.mark.parametrize("rows", [1, 3, 4, 11])
def test_row_dots_in_chunks_equals_the_row_sums_of_the_product(monkeypatch, rows):
    from mixture_of_thoughts.layers import kernels

    monkeypatch.setattr(kernels, "ROW_DOTS_CHUNK", 4)  # 11 rows: two full chunks and a remainder
    g = torch.Generator().manual_seed(3)
    a, b = (torch.randn(rows, 6, dtype=torch.float64, generator=g) for _ in range(2))
    got = kernels.row_dots(a, b)
    assert got.shape == (rows,) and got.dtype == torch.float64
    torch.testing.assert_close(got, (a * b).sum(-1), rtol=0, atol=1e-12)
    # a strided gradient (a transposed view) and a float32 pair
    at = torch.randn(6, rows, dtype=torch.float64, generator=g).t()
    torch.testing.assert_close(kernels.row_dots(at, b), (at * b).sum(-1), rtol=0, atol=1e-12)
    torch.testing.assert_close(kernels.row_dots(a.float(), b.float()), (a * b).sum(-1).float())


def test_aux_off_keeps_the_output_and_the_routing_statistics():
    layer = make_layer()
    x = torch.randn(2, 5, D, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    full = layer(x, noise=RowNoise([1, 2]), creativity=1.0)
    light = layer(x, noise=RowNoise([1, 2]), creativity=1.0, aux=False)
    assert torch.equal(full.y, light.y) and float(light.aux_loss) == 0.0
    for key in ("load", "row_load", "active_k"):
        assert torch.equal(full.stats[key], light.stats[key])


def test_a_batch_all_at_creativity_0_draws_no_noise():
    class Refuses:
        per_row = True

        def __getattr__(self, name):
            raise AssertionError(f"noise.{name} called at creativity 0")

    layer = make_layer()
    x = torch.randn(3, 4, D, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    out = layer(x, noise=Refuses(), creativity=torch.zeros(3))
    assert torch.equal(out.y, layer(x, noise=None).y)  # exactly the deterministic layer


@pytest.mark.parametrize("mode", ["token", "persistent"])
def test_persistent_noise_is_one_direction_per_row_and_slot(mode):
    # k = E: every branch is selected everywhere, so only the branch noise can tell positions apart
    layer = make_layer(n_branches=2, k=2, noise_mode=mode)
    x = torch.randn(1, 1, D, dtype=torch.float64, generator=torch.Generator().manual_seed(3)).expand(2, 6, D)
    y = layer(x, noise=RowNoise([5, 6]), creativity=1.0).y
    same = torch.allclose(y, y[:, :1].expand_as(y))
    assert same == (mode == "persistent")
    assert not torch.allclose(y[0], y[1])  # rows keep their own directions
    step = layer(x[:, 3:4], noise=RowNoise([5, 6]), positions=torch.tensor([3]), creativity=1.0).y
    assert torch.allclose(step, y[:, 3:4])  # the cached path draws the same numbers


def test_orthogonal_rows_are_orthogonal_keep_row_0_and_have_gaussian_length():
    from mixture_of_thoughts.layers.thoughts import orthogonal_rows

    n = torch.randn(5, 3, 64, generator=torch.Generator().manual_seed(0))
    o = orthogonal_rows(n)
    for e in range(3):
        gram = o[:, e] @ o[:, e].T
        assert torch.allclose(gram, 64.0 * torch.eye(5), atol=1e-3)
        assert torch.allclose(o[0, e] / 8.0, n[0, e] / n[0, e].norm(), atol=1e-5)
    layer = make_layer(n_branches=2, k=2, noise_mode="orthogonal")
    x = torch.randn(3, 4, D, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert torch.isfinite(layer(x, noise=RowNoise([1, 2, 3]), creativity=1.0).y).all()
