"""Compact Llama model: RMSNorm, RoPE, GQA attention over a slot KV cache, SwiGLU MLP."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from engine.kv_cache import KVCache
from engine.lora.projection import Projection
from engine.model_config import LlamaArgs
from engine.rope import RotaryEmbedding


@dataclass
class ForwardMeta:
    """What one forward pass needs besides the tokens. Prefill: one request; decode: rows 0..n-1 = slots."""

    positions: torch.Tensor  # [T] int64
    prefill_slot: int | None = None
    decode_mask: torch.Tensor | None = None  # [n, 1, 1, kv_len] bool, True = attend
    rope: tuple[torch.Tensor, torch.Tensor] | None = None  # cos, sin: [T, 1, Dh], set by LlamaModel.forward

    @property
    def is_prefill(self) -> bool:
        return self.prefill_slot is not None


class RMSNorm(nn.Module):
    def __init__(self, weight: torch.Tensor, eps: float) -> None:
        super().__init__()
        self.register_buffer("weight", weight, persistent=False)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [T, D]; statistics in fp32 like the reference
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


class Attention(nn.Module):
    def __init__(self, args: LlamaArgs, qkv: Projection, o: Projection) -> None:
        super().__init__()
        self.qkv, self.o = qkv, o
        self.num_heads, self.num_kv_heads, self.head_dim = args.num_heads, args.num_kv_heads, args.head_dim
        self.q_size, self.kv_size = args.q_size, args.kv_size

    def forward(self, x: torch.Tensor, meta: ForwardMeta, k_cache: torch.Tensor, v_cache: torch.Tensor):
        # x: [T, D]; k_cache/v_cache: [S, Hkv, P, Dh]
        t = x.shape[0]
        q, k, v = self.qkv(x).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        cos, sin = meta.rope
        q = RotaryEmbedding.apply(q.view(t, self.num_heads, self.head_dim), cos, sin)  # [T, H, Dh]
        k = RotaryEmbedding.apply(k.view(t, self.num_kv_heads, self.head_dim), cos, sin)  # [T, Hkv, Dh]
        v = v.view(t, self.num_kv_heads, self.head_dim)
        if meta.is_prefill:
            s = meta.prefill_slot
            k_cache[s, :, :t] = k.transpose(0, 1)
            v_cache[s, :, :t] = v.transpose(0, 1)
            out = F.scaled_dot_product_attention(
                q.transpose(0, 1).unsqueeze(0),  # [1, H, T, Dh]
                k.transpose(0, 1).unsqueeze(0),  # [1, Hkv, T, Dh]
                v.transpose(0, 1).unsqueeze(0),
                is_causal=True,
                enable_gqa=True,
            )[0].transpose(0, 1)  # [T, H, Dh]
        else:
            mask = meta.decode_mask  # [n, 1, 1, L]
            rows = torch.arange(t, device=x.device)
            k_cache[rows, :, meta.positions] = k
            v_cache[rows, :, meta.positions] = v
            kv_len = mask.shape[-1]
            out = F.scaled_dot_product_attention(
                q.unsqueeze(2),  # [n, H, 1, Dh]
                k_cache[:t, :, :kv_len],  # [n, Hkv, L, Dh]
                v_cache[:t, :, :kv_len],
                attn_mask=mask,
                enable_gqa=True,
            ).squeeze(2)  # [n, H, Dh]
        return self.o(out.reshape(t, self.q_size))


class MLP(nn.Module):
    def __init__(self, gate_up: Projection, down: Projection, intermediate_size: int) -> None:
        super().__init__()
        self.gate_up, self.down = gate_up, down
        self.intermediate_size = intermediate_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).split(self.intermediate_size, dim=-1)  # [T, I] each
        return self.down(F.silu(gate) * up)


class DecoderLayer(nn.Module):
    def __init__(self, attn_norm: RMSNorm, attn: Attention, mlp_norm: RMSNorm, mlp: MLP) -> None:
        super().__init__()
        self.attn_norm, self.attn, self.mlp_norm, self.mlp = attn_norm, attn, mlp_norm, mlp

    def forward(self, h: torch.Tensor, meta: ForwardMeta, k_cache: torch.Tensor, v_cache: torch.Tensor):
        h = h + self.attn(self.attn_norm(h), meta, k_cache, v_cache)
        return h + self.mlp(self.mlp_norm(h))


class LlamaModel(nn.Module):
    def __init__(
        self,
        args: LlamaArgs,
        embed: torch.Tensor,
        layers: list[DecoderLayer],
        norm: RMSNorm,
        lm_head: torch.Tensor,
        rope: RotaryEmbedding,
    ) -> None:
        super().__init__()
        self.args = args
        self.rope = rope
        self.register_buffer("embed", embed, persistent=False)  # [V, D]
        self.layers = nn.ModuleList(layers)
        self.norm = norm
        self.register_buffer("lm_head", lm_head, persistent=False)  # [V, D], may alias embed

    def projections(self) -> dict[tuple[int, str], Projection]:
        """(layer, module name) -> the projection that holds that module, e.g. (3, 'k_proj') -> layer 3's qkv."""
        found: dict[tuple[int, str], Projection] = {}
        for i, layer in enumerate(self.layers):
            for proj in (layer.attn.qkv, layer.attn.o, layer.mlp.gate_up, layer.mlp.down):
                for name in proj.parts:
                    found[(i, name)] = proj
        return found

    def forward(self, tokens: torch.Tensor, meta: ForwardMeta, cache: KVCache, last_only: bool) -> torch.Tensor:
        # tokens: [T] -> logits [T or 1, V] in fp32
        h = self.embed[tokens]  # [T, D]
        meta.rope = self.rope.lookup(meta.positions)
        for layer, k_cache, v_cache in zip(self.layers, cache.k, cache.v, strict=True):
            h = layer(h, meta, k_cache, v_cache)
        if last_only:
            h = h[-1:]
        return (self.norm(h) @ self.lm_head.t()).float()
