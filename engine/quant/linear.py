"""Frozen base projections. NF4 weights are quantized on the target device while loading."""

from __future__ import annotations

import bitsandbytes as bnb
import bitsandbytes.functional as bnbf
import torch
from torch import nn

from engine.kernels import LoraExpand, lora_expand

NF4_BLOCKSIZE = 64
TRITON_ROWS = {  # rows of x for which the Triton NF4 matmul runs, per EngineConfig.kernels (docs/KERNELS.md)
    "bitsandbytes": range(0),
    "triton": range(1, 17),
    "auto": range(1, 17),  # the register-table kernel beat bitsandbytes at 1 row and 8 (docs/KERNELS.md, run 4)
}


class BaseLinear(nn.Module):
    """y = x · Wᵀ for a frozen weight W: [out_features, in_features], plus a LoRA expand when given one."""

    in_features: int
    out_features: int

    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self.buffers())


class DenseLinear(BaseLinear):
    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.register_buffer("weight", weight, persistent=False)

    def forward(self, x: torch.Tensor, lora: LoraExpand | None = None) -> torch.Tensor:
        # x: [T, K] -> [T, N]
        return _expanded(x @ self.weight.t(), lora)


class NF4Linear(BaseLinear):
    """bitsandbytes NF4 layout: packed uint8 codes (2 per byte), fp32 absmax per 64 weights, no nesting."""

    def __init__(self, weight: torch.Tensor, compute_dtype: torch.dtype, triton_rows: range) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        packed, state = bnbf.quantize_4bit(
            weight.contiguous(), blocksize=NF4_BLOCKSIZE, quant_type="nf4", compress_statistics=False
        )
        state.dtype = compute_dtype
        self.register_buffer("qweight", packed, persistent=False)  # [N*K/2, 1] uint8
        self.register_buffer("absmax", state.absmax, persistent=False)  # [N*K/64] fp32
        self.register_buffer("code", state.code, persistent=False)  # [16] fp32
        self.quant_state = state
        self.compute_dtype = compute_dtype
        self.triton_rows = triton_rows

    def _apply(self, fn, recurse=True):  # keeps the bitsandbytes state on the buffers' device
        super()._apply(fn, recurse)
        self.quant_state.absmax = self.absmax
        self.quant_state.code = self.code
        return self

    def dequantize(self) -> torch.Tensor:
        # -> [N, K] in compute dtype
        return bnbf.dequantize_4bit(self.qweight, self.quant_state).to(self.compute_dtype)

    def forward(self, x: torch.Tensor, lora: LoraExpand | None = None) -> torch.Tensor:
        # x: [T, K] -> [T, N]; the LoRA expand in the Triton kernel's epilogue
        if x.shape[0] in self.triton_rows:
            from engine.kernels import nf4_matmul

            return nf4_matmul(
                x, self.qweight, self.absmax, self.code, self.out_features, self.in_features, NF4_BLOCKSIZE, lora
            )
        return _expanded(bnb.matmul_4bit(x, self.qweight.t(), quant_state=self.quant_state), lora)


def _expanded(y: torch.Tensor, lora: LoraExpand | None) -> torch.Tensor:
    # y: [T, N] += the LoRA expand of lora.t, in place
    return y if lora is None else lora_expand(*lora[:5], y, lora.segments, lora.rank_bound)


def make_linear(
    weight: torch.Tensor, quantization: str, device: torch.device, dtype: torch.dtype, triton_rows: range
) -> BaseLinear:
    """Moves one fp weight to the device and quantizes it there; the fp copy is dropped at once."""
    w = weight.to(device=device, dtype=dtype)
    if quantization == "nf4":
        return NF4Linear(w, compute_dtype=dtype, triton_rows=triton_rows)
    return DenseLinear(w)
