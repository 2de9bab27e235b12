"""The optimiser and its learning-rate schedule, shared by the trainer and ``hf.finetune``.

AdamW with weight decay on matrices only (nanoGPT's grouping), and a linear warm-up followed by a
cosine decay to ``min_lr``.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..config import TrainConfig


def optimizer_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, params, grad_clip: float) -> None:
    """One update: clear the gradients, backpropagate ``loss``, clip the global gradient norm of
    ``params`` at ``grad_clip`` (0: no clipping), step."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to ``lr`` over ``warmup_steps``, then cosine decay to ``min_lr`` at ``max_steps``.

    Warm-up: ``lr * (step + 1) / (warmup_steps + 1)`` for ``step < warmup_steps``; ``min_lr`` from
    ``max_steps`` on.
    """
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / (cfg.warmup_steps + 1)
    if step >= cfg.max_steps:
        return cfg.min_lr
    ratio = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (cfg.lr - cfg.min_lr)


# what torch.optim.AdamW's groups also hold, so that it loads this class's state_dict unchanged
_TORCH_GROUP_FLAGS = {"amsgrad": False, "foreach": None, "maximize": False, "capturable": False,
                      "differentiable": False, "fused": True, "decoupled_weight_decay": True}


class FusedAdamW:
    """AdamW (Loshchilov & Hutter, 2019) in PyTorch's fused kernel, one call per parameter group.

    The update of ``torch.optim.AdamW(fused=True)``, bit for bit, and the same ``state_dict`` (a
    checkpoint's optimiser state loads into either), without what a training loop here never uses:
    ``torch.optim``'s hooks, ``amsgrad``, closures, sparse or complex parameters, tensor learning
    rates and ``torch.compile`` support. That support is why constructing ``torch.optim.AdamW``
    imports ``torch._dynamo`` (~1 s a process on the CPUs of ``BENCHMARKS.md``), and its per-step
    Python costs ~0.6 ms of a ~35 ms ``cpu-small`` step.

    Args:
        param_groups: dicts with ``params`` and ``weight_decay``.
        lr, betas, eps: defaults for every group (a group may set its own ``lr``, as the trainer does
            every step).
    """

    def __init__(self, param_groups: list[dict[str, Any]], *, lr: float, betas: tuple[float, float],
                 eps: float = 1e-8):
        self.param_groups = [{"lr": lr, "betas": tuple(betas), "eps": eps, **g, "params": list(g["params"])}
                             for g in param_groups]
        self.state: dict[torch.Tensor, dict[str, torch.Tensor]] = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if set_to_none:
                    p.grad = None
                elif p.grad is not None:
                    p.grad.zero_()

    def _state(self, p: torch.Tensor) -> dict[str, torch.Tensor]:
        st = self.state.get(p)
        if st is None:  # the step count lives with the parameter, in float32, as the fused kernel wants
            st = self.state[p] = {"step": torch.zeros((), dtype=torch.float32, device=p.device),
                                  "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
        return st

    @torch.no_grad()
    def step(self) -> None:
        """One update of every parameter that has a gradient."""
        for group in self.param_groups:
            by_kind: dict[tuple, list[torch.Tensor]] = {}
            for p in group["params"]:
                if p.grad is not None:
                    by_kind.setdefault((p.device, p.dtype), []).append(p)
            beta1, beta2 = group["betas"]
            for params in by_kind.values():
                states = [self._state(p) for p in params]
                steps = [st["step"] for st in states]
                torch._foreach_add_(steps, 1)
                torch._fused_adamw_(params, [p.grad for p in params], [st["exp_avg"] for st in states],
                                    [st["exp_avg_sq"] for st in states], [], steps, amsgrad=False,
                                    lr=group["lr"], beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"],
                                    eps=group["eps"], maximize=False)

    def state_dict(self) -> dict[str, Any]:
        """``torch.optim.AdamW``'s format: parameters by position across the groups."""
        index: dict[torch.Tensor, int] = {}
        groups = []
        for group in self.param_groups:
            ids = [index.setdefault(p, len(index)) for p in group["params"]]
            groups.append({**{k: v for k, v in group.items() if k != "params"}, **_TORCH_GROUP_FLAGS, "params": ids})
        return {"state": {index[p]: dict(st) for p, st in self.state.items()}, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state saved by this class or by ``torch.optim.AdamW`` (groups must match in size)."""
        saved = state_dict["param_groups"]
        if len(saved) != len(self.param_groups) or any(
                len(s["params"]) != len(g["params"]) for s, g in zip(saved, self.param_groups, strict=True)):
            raise ValueError("the saved optimiser state has different parameter groups than this model's optimiser")
        by_index = {}
        for s, g in zip(saved, self.param_groups, strict=True):
            by_index.update(zip(s["params"], g["params"], strict=True))
            g.update({k: s[k] for k in ("lr", "betas", "eps", "weight_decay") if k in s})
            g["betas"] = tuple(g["betas"])
        self.state = {}
        for i, st in state_dict["state"].items():
            p = by_index[int(i)]
            self.state[p] = {"step": st["step"].to(device=p.device, dtype=torch.float32, copy=True).reshape(()),
                             "exp_avg": st["exp_avg"].to(device=p.device, dtype=p.dtype, copy=True),
                             "exp_avg_sq": st["exp_avg_sq"].to(device=p.device, dtype=p.dtype, copy=True)}


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device):
    """AdamW over the trainable parameters: ``weight_decay`` on matrices (dim >= 2), none on biases and norms.

    The fused implementation (one kernel over all parameters) on CPUs and CUDA GPUs, as
    :class:`FusedAdamW`: on a CPU it is ~2 ms of a ~35 ms ``cpu-small`` step faster than the
    per-parameter loop PyTorch uses by default there, and ~0.6 ms faster than
    ``torch.optim.AdamW(fused=True)``. Other devices get ``torch.optim.AdamW``.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if device.type in ("cpu", "cuda"):
        return FusedAdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
