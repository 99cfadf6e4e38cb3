"""Plain-torch NF4 dequantize and matmul over bitsandbytes' packed layout (the CPU path and the oracle).

Layout (bitsandbytes `quantize_4bit(W [N, K], quant_type="nf4", blocksize=64)`): W is flattened row-major,
two 4-bit codes per byte with the HIGH nibble holding the even (first) element; `absmax` holds one fp32
scale per `blocksize` consecutive flat elements; `code` is the 16-entry NF4 table.
"""

from __future__ import annotations

import torch


def check_nf4_args(
    qweight: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, n: int, k: int, blocksize: int
) -> None:
    """Raise ValueError naming the argument whose shape or dtype does not fit an [n, k] NF4 weight."""
    numel = n * k
    if qweight.dtype != torch.uint8 or qweight.numel() != (numel + 1) // 2:
        raise ValueError(
            f"qweight: expected {(numel + 1) // 2} uint8 bytes for a [{n}, {k}] weight, "
            f"got {qweight.numel()} {qweight.dtype}"
        )
    num_blocks = (numel + blocksize - 1) // blocksize
    if absmax.dtype != torch.float32 or absmax.numel() != num_blocks:
        raise ValueError(f"absmax: expected {num_blocks} float32 scales, got {absmax.numel()} {absmax.dtype}")
    if code.dtype != torch.float32 or code.numel() != 16:
        raise ValueError(f"code: expected the 16-entry float32 NF4 table, got {code.numel()} {code.dtype}")


def nf4_dequantize_reference(
    qweight: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, n: int, k: int, blocksize: int = 64
) -> torch.Tensor:
    """Unpack to an fp16 [n, k] weight: code[nibble] * absmax[block], computed in fp32 like bitsandbytes."""
    check_nf4_args(qweight, absmax, code, n, k, blocksize)
    packed = qweight.reshape(-1)  # [ceil(N*K/2)]
    codes = torch.stack((packed >> 4, packed & 0xF), dim=-1).reshape(-1)[: n * k].long()  # [N*K]
    scales = absmax.reshape(-1).repeat_interleave(blocksize)[: n * k]  # [N*K]
    return (code[codes] * scales).reshape(n, k).to(torch.float16)


def nf4_matmul_reference(
    x: torch.Tensor,
    qweight: torch.Tensor,
    absmax: torch.Tensor,
    code: torch.Tensor,
    n: int,
    k: int,
    blocksize: int = 64,
) -> torch.Tensor:
    """y = x @ dequantize(W)^T. x: [M, K]; the product runs in x's dtype (fp32 on the CPU for accuracy)."""
    weight = nf4_dequantize_reference(qweight, absmax, code, n, k, blocksize)  # [N, K]
    return x @ weight.to(x.dtype).t()  # [M, N]
