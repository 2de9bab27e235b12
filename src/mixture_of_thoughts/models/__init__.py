"""The transformer (AR baseline, MoT language model, diffusion denoiser) and the diffusion wrapper."""

from .transformer import ModelOutput, Transformer, count_parameters

__all__ = ["ModelOutput", "Transformer", "count_parameters"]
