"""Fixtures shared by the ``mot serve`` tests: tiny untrained checkpoints and a real server on loopback.

The checkpoints are untrained tiny models saved once per session (no training: the tests compare the
server with the library on the same weights, whatever they say). :func:`live_server` runs uvicorn
in a thread on 127.0.0.1 with a port the OS picks, and always stops it.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time

import pytest
import torch

from conftest import tiny_model_config

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

START_TIMEOUT = 20.0  # seconds for uvicorn to start listening (a loaded 2-core machine)


@pytest.fixture(scope="session")
def serve_models_dir(tmp_path_factory, corpus_text):
    """``{"mot": dir, "diffusion": dir}``: an untrained tiny MoT AR checkpoint and a tiny diffusion one."""
    from mixture_of_thoughts.data.tokenizer import CharTokenizer
    from mixture_of_thoughts.models.transformer import Transformer
    from mixture_of_thoughts.training.checkpoint import save_checkpoint

    tok = CharTokenizer.from_text(corpus_text)
    root = tmp_path_factory.mktemp("serve_models")
    mot = Transformer(tiny_model_config(vocab_size=tok.vocab_size, thought_layers="all",
                                        thoughts={"n_branches": 4, "k": 2, "noise_init": 0.5}))
    mot.init_weights(torch.Generator().manual_seed(0))
    save_checkpoint(root / "tiny-mot", mot, tok, objective="ar")
    diff = Transformer(tiny_model_config(vocab_size=tok.vocab_size + 1, causal=False, time_conditioning=True,
                                         block_size=32))
    diff.init_weights(torch.Generator().manual_seed(1))
    save_checkpoint(root / "tiny-diff", diff, tok, objective="diffusion")
    return {"mot": root / "tiny-mot", "diffusion": root / "tiny-diff"}


@pytest.fixture(scope="session")
def served(serve_models_dir):
    """The shipped model, the tiny MoT model and the tiny diffusion model, loaded once on the CPU."""
    from mixture_of_thoughts.serve.models import load_models

    return load_models([str(serve_models_dir["mot"]), str(serve_models_dir["diffusion"])], device="cpu")


def sse_events(text: str) -> list[tuple[str, dict]]:
    """``[(event, data)]`` of a complete ``text/event-stream`` body."""
    out = []
    for chunk in text.split("\n\n"):
        if not chunk.strip():
            continue
        lines = dict(line.split(": ", 1) for line in chunk.splitlines())
        out.append((lines["event"], json.loads(lines["data"])))
    return out


@contextlib.contextmanager
def live_server(app):
    """Run ``app`` with uvicorn on 127.0.0.1 (a free port) in a thread; yields the base URL; stops it."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not (server.started and server.servers):
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
