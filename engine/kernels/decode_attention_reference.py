"""Plain-torch decode attention over the slot KV cache (the CPU path and the oracle for
decode_attention_triton.py): exactly engine/model.py's decode branch, scaled_dot_product_attention with a bool
length mask and GQA."""

from __future__ import annotations

import torch
import torch.nn.functional as F

_INDEX_DTYPES = (torch.int32, torch.int64)


def check_decode_attention_args(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, lengths: torch.Tensor, kv_len: int
) -> None:
    """Raise ValueError naming the argument whose shape or dtype does not fit the others (no host sync, so
    the values of `lengths` are not checked: each must lie in [1, kv_len])."""
    if q.dim() != 3:
        raise ValueError(f"q: expected [n, H, Dh], got {list(q.shape)}")
    n, num_heads, head_dim = q.shape
    for name, cache in (("k_cache", k_cache), ("v_cache", v_cache)):
        s, hkv, _, d = cache.shape if cache.dim() == 4 else (0, 0, 0, 0)
        if s < n or hkv == 0 or num_heads % hkv or d != head_dim or cache.dtype != q.dtype:
            raise ValueError(
                f"{name}: expected [S >= {n}, Hkv dividing {num_heads}, P, {head_dim}] {q.dtype}, "
                f"got {list(cache.shape)} {cache.dtype}"
            )
    if v_cache.shape != k_cache.shape:
        raise ValueError(f"v_cache: expected {list(k_cache.shape)} like k_cache, got {list(v_cache.shape)}")
    if tuple(lengths.shape) != (n,) or lengths.dtype not in _INDEX_DTYPES:
        raise ValueError(f"lengths: expected [{n}] int32 or int64, got {list(lengths.shape)} {lengths.dtype}")
    num_positions = k_cache.shape[2]
    if not 1 <= kv_len <= num_positions:
        raise ValueError(f"kv_len: expected 1 <= kv_len <= {num_positions} (the cache's positions), got {kv_len}")


def decode_attention_reference(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    lengths: torch.Tensor,
    kv_len: int,
    scale: float | None = None,
) -> torch.Tensor:
    # q: [n, H, Dh]; k_cache, v_cache: [S, Hkv, P, Dh]; lengths: [n] -> out [n, H, Dh]
    n = q.shape[0]
    mask = torch.arange(kv_len, device=q.device)[None] < lengths[:, None]  # [n, L]
    return F.scaled_dot_product_attention(
        q.unsqueeze(2),  # [n, H, 1, Dh]
        k_cache[:n, :, :kv_len],  # [n, Hkv, L, Dh]
        v_cache[:n, :, :kv_len],
        attn_mask=mask[:, None, None, :],  # [n, 1, 1, L]
        scale=scale,
        enable_gqa=True,
    ).squeeze(2)  # [n, H, Dh]
