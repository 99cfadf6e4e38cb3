"""Base linear layers: NF4 (bitsandbytes format) and full precision."""

from engine.quant.linear import BaseLinear, DenseLinear, NF4Linear, make_linear

__all__ = ["BaseLinear", "DenseLinear", "NF4Linear", "make_linear"]
