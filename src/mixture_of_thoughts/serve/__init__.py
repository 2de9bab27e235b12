"""``mot serve``: a local web page to watch parallel thoughts grow.

The page streams ``mot think``'s branches token by token (server-sent events), colours each token by
the thought branches it went through, plays a diffusion model's denoising as an animation, shows
``mot renoise``'s variants of a pasted text, and prints the diversity of the set under the columns.

Modules: :mod:`.params` (requests and limits), :mod:`.worker` (bounded queue, generation threads,
cancellation), :mod:`.models` (the models served, loaded once), :mod:`.generate` (the commands'
library calls, streamed as events), :mod:`.app` (the Starlette app); ``static/`` holds the page.
Starlette and uvicorn are imported only by :mod:`.app` and the command.
"""

from __future__ import annotations

__all__ = ["create_app", "load_models", "Limits", "Worker"]


def __getattr__(name):  # the app pulls in Starlette: import it only when asked for
    if name == "create_app":
        from .app import create_app

        return create_app
    if name == "load_models":
        from .models import load_models

        return load_models
    if name == "Limits":
        from .params import Limits

        return Limits
    if name == "Worker":
        from .worker import Worker

        return Worker
    raise AttributeError(name)
