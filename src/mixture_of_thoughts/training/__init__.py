"""Training loop, checkpoints and distributed set-up."""
