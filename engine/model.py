"""Compact Llama model: RMSNorm, RoPE, GQA attention over a slot KV cache, SwiGLU MLP.

Decode with a different adapter per row fuses LoRA into the ops around the projections: each RMSNorm makes the
shrink of the next qkv or gate_up, RoPE and SiLU-mul add their expands, decode attention makes o's shrink and
SiLU-mul down's, whose expands run in the NF4 kernel's epilogue."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from engine.kernels import LoraExpand
from engine.kernels.decode_attention import decode_attention
from engine.kernels.fused_ops import add_rms_norm, rope_kv_write, silu_mul
from engine.kv_cache import KVCache
from engine.lora.projection import Projection
from engine.lora.stack import TokenLora
from engine.model_config import LlamaArgs
from engine.rope import RotaryEmbedding


@dataclass
class ForwardMeta:
    """What one forward pass needs besides the tokens. Prefill: whole prompts one after another, prompt i
    (prefill_lengths[i] tokens) fills cache slot prefill_slots[i] from position 0; decode: rows 0..n-1 = slots,
    row i attends to its cache positions 0..positions[i], all below kv_len (the CUDA graph's KV bucket)."""

    positions: torch.Tensor  # [T] int64
    prefill_slots: tuple[int, ...] = ()
    prefill_lengths: tuple[int, ...] = ()
    kv_len: int = 0
    rope: tuple[torch.Tensor, torch.Tensor] | None = None  # prefill: cos, sin [T, 1, Dh]; decode: tables [P, Dh]
    lengths: torch.Tensor | None = None  # decode: [n] int32 = positions + 1, set by LlamaModel.forward

    def __post_init__(self) -> None:
        assert len(self.prefill_slots) == len(self.prefill_lengths), "one length per prefill slot"
        assert sum(self.prefill_lengths) in (0, self.positions.shape[0]), "prefill lengths must cover the tokens"

    @classmethod
    def prefill(cls, slots: list[int], lengths: list[int], device: torch.device | str) -> ForwardMeta:
        positions = torch.cat([torch.arange(n) for n in lengths]).to(device)  # each prompt from position 0
        return cls(positions, prefill_slots=tuple(slots), prefill_lengths=tuple(lengths))

    @property
    def is_prefill(self) -> bool:
        return bool(self.prefill_slots)

    def last_rows(self) -> list[int]:
        """Prefill: the row of each prompt's last token."""
        ends, total = [], 0
        for n in self.prefill_lengths:
            total += n
            ends.append(total - 1)
        return ends


class RMSNorm(nn.Module):
    def __init__(self, weight: torch.Tensor, eps: float) -> None:
        super().__init__()
        self.register_buffer("weight", weight, persistent=False)
        self.eps = eps

    def forward(
        self, h: torch.Tensor, delta: torch.Tensor | None, lora: TokenLora | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        # h, delta: [T, D] -> (h + delta, norm(h + delta), lora's shrink of the norm) in one pass; delta None: h.
        # Statistics in fp32 like the reference.
        return add_rms_norm(h, delta, self.weight, self.eps, lora.shrink() if lora else None)


class Attention(nn.Module):
    def __init__(self, args: LlamaArgs, qkv: Projection, o: Projection) -> None:
        super().__init__()
        self.qkv, self.o = qkv, o
        self.num_heads, self.num_kv_heads, self.head_dim = args.num_heads, args.num_kv_heads, args.head_dim
        self.q_size, self.kv_size = args.q_size, args.kv_size

    def forward(
        self, x: torch.Tensor, meta: ForwardMeta, k_cache: torch.Tensor, v_cache: torch.Tensor,
        lora: LoraExpand | None = None,
    ) -> torch.Tensor:  # fmt: skip
        # x: [T, D]; k_cache/v_cache: [S, Hkv, P, Dh]; lora: qkv's LoRA expand (decode), fused into RoPE
        t = x.shape[0]
        qkv = self.qkv(x) if lora is None else self.qkv.base(x)  # [T, (H + 2 Hkv) Dh]
        o_lora = None
        cos, sin = meta.rope
        if meta.is_prefill:
            assert lora is None, "per-row LoRA routing is for decode steps"
            q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
            q = RotaryEmbedding.apply(q.view(t, self.num_heads, self.head_dim), cos, sin)  # [T, H, Dh]
            k = RotaryEmbedding.apply(k.view(t, self.num_kv_heads, self.head_dim), cos, sin)  # [T, Hkv, Dh]
            v = v.view(t, self.num_kv_heads, self.head_dim)
            out = torch.cat([self._prefill_attention(q_, k_, v_, slot, k_cache, v_cache) for q_, k_, v_, slot in
                             zip(q.split(meta.prefill_lengths), k.split(meta.prefill_lengths),
                                 v.split(meta.prefill_lengths), meta.prefill_slots, strict=True)])  # fmt: skip
        else:
            q = rope_kv_write(qkv, meta.positions, cos, sin, k_cache, v_cache, self.num_heads, self.num_kv_heads,
                              self.head_dim, lora)  # fmt: skip
            o_lora = self.o.token_lora()
            out, o_t = decode_attention(q, k_cache, v_cache, meta.lengths, meta.kv_len,
                                        shrink=o_lora.shrink() if o_lora else None)  # [n, H, Dh]  # fmt: skip
        out = out.reshape(t, self.q_size)
        return self.o(out) if o_lora is None else self.o.base(out, o_lora.expand(o_t))

    @staticmethod
    def _prefill_attention(q, k, v, slot: int, k_cache: torch.Tensor, v_cache: torch.Tensor) -> torch.Tensor:
        # one prompt: q [n, H, Dh], k/v [n, Hkv, Dh] -> [n, H, Dh], its keys and values written to `slot`
        n = q.shape[0]
        k_cache[slot, :, :n] = k.transpose(0, 1)
        v_cache[slot, :, :n] = v.transpose(0, 1)
        return F.scaled_dot_product_attention(
            q.transpose(0, 1).unsqueeze(0),  # [1, H, n, Dh]
            k.transpose(0, 1).unsqueeze(0),  # [1, Hkv, n, Dh]
            v.transpose(0, 1).unsqueeze(0),
            is_causal=True,
            enable_gqa=True,
        )[0].transpose(0, 1)


class MLP(nn.Module):
    def __init__(self, gate_up: Projection, down: Projection, intermediate_size: int) -> None:
        super().__init__()
        self.gate_up, self.down = gate_up, down
        self.intermediate_size = intermediate_size

    def forward(self, x: torch.Tensor, lora: LoraExpand | None = None) -> torch.Tensor:
        # x: [T, D]; lora: gate_up's LoRA expand (decode), fused into SiLU-mul
        gate_up = self.gate_up(x) if lora is None else self.gate_up.base(x)  # [T, 2I]
        down = self.down.token_lora()
        act, down_t = silu_mul(gate_up, self.intermediate_size, lora, down.shrink() if down else None)
        return self.down(act) if down is None else self.down.base(act, down.expand(down_t))


class DecoderLayer(nn.Module):
    def __init__(self, attn_norm: RMSNorm, attn: Attention, mlp_norm: RMSNorm, mlp: MLP) -> None:
        super().__init__()
        self.attn_norm, self.attn, self.mlp_norm, self.mlp = attn_norm, attn, mlp_norm, mlp

    def forward(
        self, h: torch.Tensor, delta: torch.Tensor | None, meta: ForwardMeta, k_cache: torch.Tensor,
        v_cache: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        # h: residual stream [T, D] still missing `delta` (the previous layer's MLP output); -> (h, this MLP's output)
        # with per-row adapters each norm makes the next projection's shrink t, its consumer adds the expand
        qkv_lora, gate_up_lora = self.attn.qkv.token_lora(), self.mlp.gate_up.token_lora()
        h, x, qkv_t = self.attn_norm(h, delta, qkv_lora)
        attn_out = self.attn(x, meta, k_cache, v_cache, qkv_lora.expand(qkv_t) if qkv_lora else None)
        h, x, gate_up_t = self.mlp_norm(h, attn_out, gate_up_lora)
        return h, self.mlp(x, gate_up_lora.expand(gate_up_t) if gate_up_lora else None)


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

    def device_tensors(self) -> list[torch.Tensor]:
        """Every tensor the model keeps on its device: weights, norms, RoPE tables and adapter slots."""
        stacks = {id(p.lora): p.lora for p in self.projections().values() if p.lora is not None}
        held = [*self.buffers(), *self.parameters(), *self.rope.tensors()]
        return held + [t for stack in stacks.values() for t in stack.tensors()]

    def forward(self, tokens: torch.Tensor, meta: ForwardMeta, cache: KVCache, last_only: bool) -> torch.Tensor:
        # tokens: [T] -> logits in fp32: [T, V], or with last_only one row per prompt [P, V]
        h, delta = self.embed[tokens], None  # [T, D]
        if meta.is_prefill:
            meta.rope = self.rope.lookup(meta.positions)
        else:
            meta.rope = self.rope.cos, self.rope.sin
            meta.lengths = (meta.positions + 1).to(torch.int32)
        for layer, k_cache, v_cache in zip(self.layers, cache.k, cache.v, strict=True):
            h, delta = layer(h, delta, meta, k_cache, v_cache)
        if last_only:
            assert meta.is_prefill, "last_only picks each prompt's last token"
            rows = meta.last_rows()
            h, delta = h[rows], delta[rows]
        return (self.norm(h, delta)[1] @ self.lm_head.t()).float()
