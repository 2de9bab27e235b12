"""The written report of ``mot compare``: ``report.md``, ``metrics.json`` and PNG plots.

Every number and every verdict sentence in the report comes from the results dict; nothing is
written by hand.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np


def agg_pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def errorbar_series(ax, rows: list[dict], x: str, y: str, **kw) -> None:
    """One series of report rows (``{"mean", "ci"}`` per metric) as points with 95% intervals on both
    axes, in order of ``x``: what every frontier plot draws (``kw`` goes to ``ax.errorbar``)."""
    rows = sorted(rows, key=lambda r: r[x]["mean"])
    xs = np.array([r[x]["mean"] for r in rows])
    ys = np.array([r[y]["mean"] for r in rows])
    xe = np.abs(np.array([r[x]["ci"] for r in rows], float).reshape(-1, 2).T - xs)
    ye = np.abs(np.array([r[y]["ci"] for r in rows], float).reshape(-1, 2).T - ys)
    ax.errorbar(xs, ys, xerr=xe, yerr=ye, **kw)


def plot_frontier(res: dict, path: Path, metric: str = "self_bleu", ylabel: str = "self-BLEU-4 (lower = more diverse)"):
    """The character comparison's frontier: each family's settings against reference bpc."""
    plt = agg_pyplot()
    fig, ax = plt.subplots(figsize=(7, 5))

    def draw(rows, label, fmt):
        errorbar_series(ax, rows, "ref_bpc", metric, fmt=fmt, label=label, capsize=2, alpha=0.85)

    temp = [r for r in res["baseline"] if r["top_p"] is None]
    draw(temp, "baseline: temperature sweep", "o-")
    top_p = [r for r in res["baseline"] if r["top_p"] is not None]
    if top_p:
        draw(top_p, "baseline: top-p sweep (T=1)", "s--")
    for route in sorted({r["route"] for r in res["mot"]}):
        for t in sorted({r["temperature"] for r in res["mot"]}):
            rows = [r for r in res["mot"] if r["route"] == route and r["temperature"] == t]
            draw(rows, f"MoT: creativity sweep, T={t:g}, {route} routing", "^-")
    if res.get("diffusion"):
        draw(res["diffusion"], "masked diffusion: temperature sweep", "D-")
    ax.axvline(res["human_ref_bpc"], color="grey", ls=":", label="real text (reference bpc)")
    ax.set_xlabel("reference bits per character (lower = better quality)")
    ax.set_ylabel(ylabel)
    ax.set_title("Quality–diversity frontier (95% bootstrap intervals)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_mechanism(res: dict, path: Path):
    plt = agg_pyplot()
    layers = res["mechanism"]["layers"]
    names = sorted(layers, key=int)
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    axes[0].bar(names, [layers[n]["router_entropy"] for n in names])
    axes[0].set_title("router entropy per layer (nats)")
    axes[0].set_xlabel("layer")
    load = np.array([layers[n]["load"] for n in names])
    im = axes[1].imshow(load, aspect="auto", cmap="viridis")
    axes[1].set_title("branch load (fraction of assignments)")
    axes[1].set_xlabel("branch")
    axes[1].set_ylabel("layer")
    axes[1].set_yticks(range(len(names)), names)
    fig.colorbar(im, ax=axes[1])
    lift = np.array(layers[names[-1]]["class_branch_lift"])
    im = axes[2].imshow(lift, aspect="auto", cmap="coolwarm", vmin=0, vmax=max(2.0, float(lift.max())))
    axes[2].set_title(f"layer {names[-1]}: branch preference by character class (lift)")
    axes[2].set_yticks(range(len(res["mechanism"]["classes"])), res["mechanism"]["classes"])
    axes[2].set_xlabel("branch")
    fig.colorbar(im, ax=axes[2])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_training(res: dict, path: Path):
    plt = agg_pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, recs in res["training_curves"].items():
        if recs:
            ax.plot([r["step"] for r in recs], [r["val_bpc"] for r in recs], "o-", label=f"{name} (val)")
    ax.set_xlabel("step")
    ax.set_ylabel("validation bits per character")
    ax.set_title("Training curves")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def format_ci(d: dict, fmt: str = ".3f") -> str:
    """``mean [lo, hi]`` of a ``{"mean", "ci"}`` record; ``n/a`` when any of them is not finite."""
    if not all(math.isfinite(v) for v in (d["mean"], *d["ci"])):
        return "n/a"
    return f"{d['mean']:{fmt}} [{d['ci'][0]:{fmt}}, {d['ci'][1]:{fmt}}]"


def finite_json(obj):
    """JSON cannot hold NaN; write it as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    return obj


def write_json_atomic(path: Path, obj) -> None:
    """``obj`` as JSON (NaN as null) under a temporary name, then renamed: never half-written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(finite_json(obj), ensure_ascii=False), encoding="utf-8")
    tmp.replace(path)


# --------------------------------------------------------------------------- the result cache
#
# Every experiment keeps each unit of work (a setting of ``mot compare lm``, a method of ``mot game24
# eval``) in its own JSON file, reused only when everything that decides its numbers is the same. That
# "everything" is a JSON-able *key*. A record is either named by the key's digest (``digest_path``:
# the name is the check) or kept under a readable name with its key inside (``save_record`` with
# ``key=``: the stored key is the check). Both go through the same two functions below.

def digest(obj) -> str:
    """A short sha256 of ``obj`` as canonical JSON (sorted keys): the same key, the same digest."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def file_digest(path: Path) -> str:
    """A short sha256 of a file's bytes (a record made with one model file is not reused with another)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def digest_path(folder: Path, key) -> Path:
    """Where the record of ``key`` lives when it is named by its digest."""
    return Path(folder) / f"{digest(key)}.json"


def load_record(path: Path, key=None) -> dict | None:
    """The record saved at ``path``, or ``None`` when it is missing, cut short, or (with ``key``) was
    made for another key: the caller then runs the work again and overwrites it."""
    try:
        saved = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(saved, dict) or (key is not None and saved.get("key") != key):
        return None
    return saved


def save_record(path: Path, record: dict, key=None) -> None:
    """``record`` (with ``key`` inside it, when given) written atomically."""
    write_json_atomic(Path(path), record if key is None else {"key": key, **record})


def write_report(res: dict, out: Path) -> None:
    out = Path(out)
    plot_frontier(res, out / "frontier.png")
    plot_frontier(res, out / "frontier_distinct3.png", "distinct_3", "distinct-3 (higher = more diverse)")
    plot_mechanism(res, out / "mechanism.png")
    plot_training(res, out / "training.png")
    (out / "metrics.json").write_text(json.dumps(finite_json(res), indent=1, default=str), encoding="utf-8")
    c = res["config"]
    val_note = f", first {c['val_chars']:,} characters" if c.get("val_chars") else ""
    L = ["# Do thought branches beat temperature?", ""]
    if c.get("command"):
        L += ["Command:", "", f"    {c['command']}", ""]
    L += [f"Corpus `{c['data']}`, preset `{c['preset']}` ({c['steps']} steps each); {c['prompts']} validation prompts "
          f"of {c['prompt_len']} characters, {c['branches']} branches of {c['new_tokens']} characters per prompt, "
          f"{c['seeds']} seeds; 95% paired bootstrap intervals over prompts ({c['bootstrap']} resamples).", "",
          "## Verdict", ""]
    L += [f"- {v}" for v in res["verdicts"]]
    L += ["", "![quality-diversity frontier](frontier.png)", "",
          "## Models", "", f"| model | validation bpc (exact{val_note}) |", "|---|---|"]
    L += [f"| {k} | {v:.4f}{' (ELBO upper bound)' if k == 'diffusion' else ''} |" for k, v in res["val_bpc"].items()]
    L += ["", f"Real validation text scores {res['human_ref_bpc']:.3f} bpc under the reference model; the baseline "
          f"temperature closest to it (the *calibrated* temperature) is {res['calibrated_temperature']:g}.", "",
          "## Sweeps", "",
          "Quality is the reference model's bpc on the continuations (lower is better); best-of-N picks, per prompt, "
          "the branch the reference model likes best (the same evaluator for every contender).", "",
          "| setting | reference bpc | self-BLEU | distinct-2 | distinct-3 | Vendi (char 2-3-grams) | best-of-N bpc |",
          "|---|---|---|---|---|---|---|"]
    for r in res["baseline"] + res["mot"] + res.get("diffusion", []):
        L.append(f"| {r['label']} | {format_ci(r['ref_bpc'])} | {format_ci(r['self_bleu'], '.1f')} | "
                 f"{format_ci(r['distinct_2'])} | {format_ci(r['distinct_3'])} | "
                 f"{format_ci(r['vendi'], '.2f')} | {format_ci(r['best_of_n_bpc'])} |")
    L += ["", "## MoT (and diffusion) against the baseline at matched quality", "",
          "Difference contender − baseline, the baseline's value read off its temperature frontier at the setting's "
          "reference bpc (empty: outside the frontier's range).", "",
          "| setting | Δ self-BLEU | Δ distinct-3 | Δ Vendi |", "|---|---|---|---|"]
    for r in res["mot"] + res.get("diffusion", []):
        cells = []
        for m in ("self_bleu", "distinct_3", "vendi"):
            d = r["vs_baseline_at_matched_quality"][m]
            ok = math.isfinite(d["delta"])
            cells.append(f"{d['delta']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]" if ok else "")
        L.append(f"| {r['label']} | " + " | ".join(cells) + " |")
    L += ["", "## Mechanism", "", "![router entropy, branch load, specialisation](mechanism.png)", "",
          "| layer | router entropy (nats) | branch diversity | max class lift | load |", "|---|---|---|---|---|"]
    for n, d in sorted(res["mechanism"]["layers"].items(), key=lambda kv: int(kv[0])):
        L.append(f"| {n} | {d['router_entropy']:.3f} | {d['branch_diversity']:.3f} | {d['max_lift']:.2f} | "
                 + " ".join(f"{v:.2f}" for v in d["load"]) + " |")
    L += ["", "Class lift: P(branch | character class) / (k / E); 1 means no preference, E / k that a class "
          "always selects that branch.", "",
          "Creativity–diversity correlation (units: prompt × seed × creativity, temperature 1):", "",
          "| routing / metric | Pearson | Spearman |", "|---|---|---|"]
    for k, v in res["creativity_correlation"].items():
        L.append(f"| {k} | {v['pearson']:.3f} | {v['spearman']:.3f} |")
    L += ["", "## Training", "", "![training curves](training.png)", "", "## Examples", ""]
    for r in [next(x for x in res["baseline"] if x["top_p"] is None and x["temperature"] == 1.0)] + \
            ([res["primary"]] if res["primary"] else []):
        L += [f"{r['label']}, first prompt, three branches (separated by `---`):", "", "```"]
        for text in r["example"]:
            L += [*text.splitlines(), "---"]
        L += ["```", ""]
    (out / "report.md").write_text("\n".join(L) + "\n", encoding="utf-8")
