"""User-facing errors.

Every mistake a user can make (a bad path, a bad config value, a prompt the vocabulary cannot
encode, ...) raises a :class:`MotError` whose message says what was wrong and how to fix it. The
command line prints that message and exits with status 2 instead of showing a traceback; anything
else that escapes is a bug.
"""

from __future__ import annotations


class MotError(Exception):
    """An error caused by the user's input, with a message meant for that user."""


class ConfigError(MotError, ValueError):
    """An invalid configuration value. The message names the field and the allowed range."""


class DataError(MotError):
    """A corpus or prompt that cannot be used."""


class CheckpointError(MotError):
    """A run or checkpoint directory that is missing, incomplete, corrupt or of the wrong kind."""


class TrainingDiverged(MotError):
    """The training loss became NaN or infinite; the last good checkpoint is kept."""


class MissingDependency(MotError):
    """An optional dependency (transformers, a model package, the sentence embedder) is not installed;
    the message says what to install."""


class GraftError(MotError):
    """A model that cannot be grafted, or a grafted directory that cannot be loaded."""


class NoExpertsError(MotError):
    """The model has no mixture-of-experts layer this package knows how to control."""
