"""The optional ``transformers`` dependency: one place that checks for it and says what to install."""

from __future__ import annotations

from ..errors import MissingDependency

INSTALL_HINT = "pip install 'mixture-of-thoughts[hf]'"


def require_transformers():
    """Import and return ``transformers``, or raise :class:`MissingDependency` saying what to install."""
    try:
        import transformers
    except ImportError:
        raise MissingDependency(f"this needs Hugging Face transformers: {INSTALL_HINT}") from None
    return transformers
