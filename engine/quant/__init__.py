"""Base linear layers: NF4 (bitsandbytes format) and full precision."""

from engine.quant.linear import TRITON_ROWS, BaseLinear, DenseLinear, NF4Linear, make_linear

__all__ = ["TRITON_ROWS", "BaseLinear", "DenseLinear", "NF4Linear", "make_linear"]
