"""Plain-torch fused decode ops (the CPU path and the oracle for fused_ops_triton.py).

The numerics follow engine/model.py: RMSNorm statistics in fp32 with the normalized row rounded to the
activation dtype before the weight multiply; RoPE by RotaryEmbedding.apply on the gathered table rows.
A fused LoRA expand adds to the op's input (rounded to its dtype) first; a fused shrink reads the op's output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from engine.kernels.lora_reference import lora_expand_reference, lora_shrink_reference
from engine.kernels.lora_types import LoraExpand, LoraShrink
from engine.rope import RotaryEmbedding


def check_norm_args(x: torch.Tensor, weight: torch.Tensor, name: str = "x") -> None:
    """Raise ValueError naming the argument that does not fit a row-wise RMSNorm over x [T, D]."""
    if x.dim() != 2:
        raise ValueError(f"{name}: expected [T, D], got {list(x.shape)}")
    if tuple(weight.shape) != (x.shape[1],) or weight.dtype != x.dtype:
        raise ValueError(
            f"weight: expected [{x.shape[1]}] {x.dtype} to match {name}, got {list(weight.shape)} {weight.dtype}"
        )


def check_add_args(h: torch.Tensor, delta: torch.Tensor) -> None:
    if delta.shape != h.shape or delta.dtype != h.dtype:
        raise ValueError(f"delta: expected {list(h.shape)} {h.dtype} like h, got {list(delta.shape)} {delta.dtype}")


def check_silu_mul_args(gate_up: torch.Tensor, intermediate: int) -> None:
    if gate_up.dim() != 2 or intermediate <= 0 or gate_up.shape[1] != 2 * intermediate:
        raise ValueError(f"gate_up: expected [T, {2 * intermediate}] (gate then up), got {list(gate_up.shape)}")


def check_rope_kv_args(
    qkv: torch.Tensor,
    positions: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
) -> None:
    """Raise ValueError naming the argument whose shape does not fit the others (shapes only: no host sync)."""
    if head_dim <= 0 or head_dim % 2:
        raise ValueError(f"head_dim: expected a positive even number, got {head_dim}")
    width = (num_heads + 2 * num_kv_heads) * head_dim
    if qkv.dim() != 2 or qkv.shape[1] != width:
        raise ValueError(f"qkv: expected [n, {width}] (q, k, v heads), got {list(qkv.shape)}")
    n = qkv.shape[0]
    if tuple(positions.shape) != (n,) or positions.dtype != torch.int64:
        raise ValueError(f"positions: expected [{n}] int64, got {list(positions.shape)} {positions.dtype}")
    if cos.dim() != 2 or cos.shape[1] != head_dim or sin.shape != cos.shape:
        raise ValueError(f"cos, sin: expected [P, {head_dim}] each, got {list(cos.shape)} and {list(sin.shape)}")
    num_positions = cos.shape[0]
    for name, cache in (("k_cache", k_cache), ("v_cache", v_cache)):
        s, hkv, p, d = cache.shape if cache.dim() == 4 else (0, 0, 0, 0)
        if s < n or (hkv, p, d) != (num_kv_heads, num_positions, head_dim) or cache.dtype != qkv.dtype:
            raise ValueError(
                f"{name}: expected [S >= {n}, {num_kv_heads}, {num_positions}, {head_dim}] {qkv.dtype}, "
                f"got {list(cache.shape)} {cache.dtype}"
            )


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # x: [T, D] -> [T, D]
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def add_rms_norm_reference(
    h: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor, eps: float, shrink: LoraShrink | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    # h, delta: [T, D] -> h_new = h (+ delta), y = rms_norm(h_new), t = the shrink of y [T, 1, G*R]
    h_new = h if delta is None else h + delta
    y = rms_norm_reference(h_new, weight, eps)
    return h_new, y, _shrink(y, shrink)


def silu_mul_reference(
    gate_up: torch.Tensor, intermediate: int, lora: LoraExpand | None = None, shrink: LoraShrink | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    # gate_up: [T, 2I] -> act [T, I], t = the shrink of act [T, 1, G*R]
    gate, up = _expand(gate_up, lora).float().split(intermediate, dim=-1)
    act = (F.silu(gate) * up).to(gate_up.dtype)
    return act, _shrink(act, shrink)


def _expand(y: torch.Tensor, lora: LoraExpand | None) -> torch.Tensor:
    """y plus its LoRA delta, as a new tensor (y itself when there is none)."""
    return y if lora is None else lora_expand_reference(*lora[:5], y.clone(), lora.segments)


def _shrink(x: torch.Tensor, shrink: LoraShrink | None) -> torch.Tensor | None:
    return None if shrink is None else lora_shrink_reference(x, *shrink[:4])


def rope_kv_write_reference(
    qkv: torch.Tensor,
    positions: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    lora: LoraExpand | None = None,
) -> torch.Tensor:
    # qkv: [n, (H + 2*Hkv) * Dh]; positions: [n]; cos, sin: [P, Dh]; caches: [S, Hkv, P, Dh] -> q [n, H, Dh]
    qkv = _expand(qkv, lora)
    n = qkv.shape[0]
    q_size, kv_size = num_heads * head_dim, num_kv_heads * head_dim
    q, k, v = qkv.split([q_size, kv_size, kv_size], dim=-1)
    cos_n, sin_n = cos[positions].unsqueeze(1), sin[positions].unsqueeze(1)  # [n, 1, Dh]
    q = RotaryEmbedding.apply(q.reshape(n, num_heads, head_dim), cos_n, sin_n)  # [n, H, Dh]
    k = RotaryEmbedding.apply(k.reshape(n, num_kv_heads, head_dim), cos_n, sin_n)  # [n, Hkv, Dh]
    rows = torch.arange(n, device=qkv.device)
    k_cache[rows, :, positions] = k.to(qkv.dtype)
    v_cache[rows, :, positions] = v.reshape(n, num_kv_heads, head_dim)
    return q.to(qkv.dtype)
