"""Units of a language model's loss: nats and bits.

Every loss in the package is computed in nats (natural log). Bits per character (bpc) or per token
divide by ``ln 2``; this is the one place that constant and the conversion live.
"""

from __future__ import annotations

import math

LN2 = math.log(2.0)


def to_bits(nats):
    """Nats to bits (a float, a NumPy array or a tensor): ``nats / ln 2``."""
    return nats / LN2


def to_nats(bits):
    """Bits to nats: ``bits * ln 2``."""
    return bits * LN2
