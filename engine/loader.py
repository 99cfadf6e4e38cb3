"""Builds our LlamaModel from a checkpoint folder, quantizing one layer at a time on the target device."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from engine.checkpoint import Checkpoint
from engine.errors import CheckpointError
from engine.lora.projection import Projection
from engine.model import MLP, Attention, DecoderLayer, LlamaModel, RMSNorm
from engine.model_config import LlamaArgs
from engine.quant import make_linear
from engine.rope import RotaryEmbedding

log = logging.getLogger(__name__)


def load_model(
    folder: Path,
    device: torch.device,
    dtype: torch.dtype,
    quantization: str,
    max_seq_len: int,
    triton_rows: range,
) -> LlamaModel:
    t0 = time.perf_counter()
    with Checkpoint(folder) as ckpt:
        args = LlamaArgs.from_file(folder / "config.json")
        biases = [n for n in ckpt.names() if n.endswith(".bias")]
        if biases:
            raise CheckpointError(f"{folder}: projection biases are not supported ({biases[0]})")

        def tensor(name: str, shape: tuple[int, ...]) -> torch.Tensor:
            t = ckpt.get(name)
            if tuple(t.shape) != shape:
                raise CheckpointError(f"{folder}: tensor '{name}' has shape {tuple(t.shape)}, expected {shape}")
            return t

        def linear(prefix: str, parts: dict[str, int], in_features: int) -> Projection:
            weight = torch.cat([tensor(f"{prefix}{m}.weight", (n, in_features)) for m, n in parts.items()])
            return Projection(make_linear(weight, quantization, device, dtype, triton_rows), parts)

        def norm(name: str) -> RMSNorm:
            return RMSNorm(tensor(name, (args.hidden_size,)).to(device=device, dtype=dtype), args.rms_norm_eps)

        rope = RotaryEmbedding(args.head_dim, max_seq_len, args.rope_theta, args.rope_scaling, device, dtype=dtype)
        layers = []
        for i in range(args.num_layers):
            p = f"model.layers.{i}."
            attn, mlp, hidden = p + "self_attn.", p + "mlp.", args.hidden_size
            qkv = linear(attn, {"q_proj": args.q_size, "k_proj": args.kv_size, "v_proj": args.kv_size}, hidden)
            o = linear(attn, {"o_proj": hidden}, args.q_size)
            gate_up = linear(mlp, {"gate_proj": args.intermediate_size, "up_proj": args.intermediate_size}, hidden)
            down = linear(mlp, {"down_proj": hidden}, args.intermediate_size)
            layers.append(
                DecoderLayer(
                    norm(p + "input_layernorm.weight"),
                    Attention(args, qkv, o),
                    norm(p + "post_attention_layernorm.weight"),
                    MLP(gate_up, down, args.intermediate_size),
                )
            )
        embed = tensor("model.embed_tokens.weight", (args.vocab_size, args.hidden_size)).to(device, dtype)
        if "lm_head.weight" in ckpt and not args.tie_word_embeddings:
            lm_head = tensor("lm_head.weight", (args.vocab_size, args.hidden_size)).to(device, dtype)
        else:
            lm_head = embed
        model = LlamaModel(args, embed, layers, norm("model.norm.weight"), lm_head, rope)
    log.info("loaded %s (%s, %s) in %.1f s", folder.name, quantization, device, time.perf_counter() - t0)
    return model
