"""A tiny random-init SDXL in the two on-disk forms users have: a diffusers folder and one LDM `.safetensors`.

The components keep SDXL's structure (three UNet levels of two layers, text-time conditioning, a four-level
VAE that downsamples by 8, CLIP-L and OpenCLIP-bigG-shaped text encoders with the real CLIP tokenizers from
`assets/sdxl`) at toy widths, so a 512x512 render of a few steps takes about a second on a CPU.

`save_single_file` writes the original SDXL (LDM) key layout that diffusers' single-file loader reads; it
is the inverse of `diffusers.loaders.single_file_utils` for these components.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import torch
from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from assets import ASSETS_DIR

logger = logging.getLogger(__name__)

SDXL_ASSETS = ASSETS_DIR / "sdxl"
TEXT_HIDDEN = 32  # CLIP-L stand-in; must differ from TEXT_2_HIDDEN (the single-file loader tells them apart)
TEXT_2_HIDDEN = 48  # OpenCLIP-bigG stand-in
TEXT_2_PROJECTION = 32
TIME_EMBED = 8


def _text_config(hidden: int, projection: int, act: str) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=49408,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act=act,
        projection_dim=projection,
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
    )


def build_tiny_sdxl_pipeline(seed: int = 0) -> StableDiffusionXLPipeline:
    """Random-init tiny SDXL components (fp32, CPU), deterministic for a seed."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=64,
        block_out_channels=(16, 32, 32),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 1, 2),
        attention_head_dim=(2, 2, 2),
        norm_num_groups=8,
        cross_attention_dim=TEXT_HIDDEN + TEXT_2_HIDDEN,
        addition_embed_type="text_time",
        addition_time_embed_dim=TIME_EMBED,
        projection_class_embeddings_input_dim=TEXT_2_PROJECTION + 6 * TIME_EMBED,
        use_linear_projection=True,
    )
    vae = AutoencoderKL(
        block_out_channels=(4, 8, 8, 8),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=2,
        sample_size=512,
        scaling_factor=0.13025,
        force_upcast=False,
    )
    text_encoder = CLIPTextModel(_text_config(TEXT_HIDDEN, TEXT_HIDDEN, "quick_gelu"))
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(TEXT_2_HIDDEN, TEXT_2_PROJECTION, "gelu"))
    return assemble_sdxl(unet, vae, text_encoder, text_encoder_2)


def assemble_sdxl(
    unet: UNet2DConditionModel,
    vae: AutoencoderKL,
    text_encoder: CLIPTextModel,
    text_encoder_2: CLIPTextModelWithProjection,
) -> StableDiffusionXLPipeline:
    """An SDXL pipeline from its four models, with the shipped CLIP tokenizers and Euler scheduler."""
    return StableDiffusionXLPipeline(
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        text_encoder_2=text_encoder_2.eval(),
        tokenizer=CLIPTokenizer.from_pretrained(SDXL_ASSETS / "tokenizer"),
        tokenizer_2=CLIPTokenizer.from_pretrained(SDXL_ASSETS / "tokenizer_2"),
        unet=unet.eval(),
        scheduler=EulerDiscreteScheduler.from_pretrained(SDXL_ASSETS / "scheduler"),
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )


def build_tiny_sdxl(folder: str | Path, seed: int = 0) -> Path:
    """Write a tiny random SDXL as a diffusers folder (model_index.json + safetensors) and return it."""
    folder = Path(folder)
    build_tiny_sdxl_pipeline(seed).save_pretrained(folder, safe_serialization=True)
    logger.info("wrote tiny SDXL folder %s", folder)
    return folder


def copy_configs(folder: str | Path, dest: str | Path) -> Path:
    """Copy a diffusers folder without its weights: the config dir a single-file checkpoint loads with."""
    ignore = shutil.ignore_patterns("*.safetensors", "*.bin")
    return Path(shutil.copytree(folder, dest, ignore=ignore))


# --- diffusers -> original SDXL (LDM) key layout ---------------------------------------------------------

_RESNET = (
    ("norm1.", "in_layers.0."),
    ("conv1.", "in_layers.2."),
    ("norm2.", "out_layers.0."),
    ("conv2.", "out_layers.3."),
    ("time_emb_proj.", "emb_layers.1."),
    ("conv_shortcut.", "skip_connection."),
)
_UNET_TOP = (
    ("time_embedding.linear_1.", "time_embed.0."),
    ("time_embedding.linear_2.", "time_embed.2."),
    ("add_embedding.linear_1.", "label_emb.0.0."),
    ("add_embedding.linear_2.", "label_emb.0.2."),
    ("conv_in.", "input_blocks.0.0."),
    ("conv_norm_out.", "out.0."),
    ("conv_out.", "out.2."),
)


def _resnet(diffusers: str, ldm: str) -> list[tuple[str, str]]:
    return [(diffusers + old, ldm + new) for old, new in _RESNET]


def _unet_prefixes(unet: UNet2DConditionModel) -> list[tuple[str, str]]:
    """(diffusers prefix, LDM prefix) pairs for every block of an SDXL-layout UNet."""
    levels = len(unet.config.block_out_channels)
    per = unet.config.layers_per_block
    pairs = list(_UNET_TOP)
    for i in range(levels):
        for j in range(per):
            n = (per + 1) * i + j + 1
            pairs += _resnet(f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{n}.0.")
            pairs.append((f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{n}.1."))
        if i < levels - 1:
            pairs.append((f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{(per + 1) * (i + 1)}.0.op."))
        has_attention = unet.config.up_block_types[i].startswith("CrossAttn")
        for j in range(per + 1):
            n = (per + 1) * i + j
            pairs += _resnet(f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{n}.0.")
            pairs.append((f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{n}.1."))
        if i < levels - 1:
            n = (per + 1) * i + per
            pairs.append((f"up_blocks.{i}.upsamplers.0.", f"output_blocks.{n}.{2 if has_attention else 1}."))
    pairs += _resnet("mid_block.resnets.0.", "middle_block.0.") + _resnet("mid_block.resnets.1.", "middle_block.2.")
    pairs.append(("mid_block.attentions.0.", "middle_block.1."))
    return pairs


def _rename(key: str, pairs: list[tuple[str, str]] | tuple[tuple[str, str], ...], strict: bool = True) -> str:
    for old, new in pairs:
        if key.startswith(old):
            return new + key[len(old) :]
    if strict:
        raise KeyError(f"no LDM name for '{key}'")
    return key


def _unet_to_ldm(unet: UNet2DConditionModel) -> dict[str, torch.Tensor]:
    pairs = _unet_prefixes(unet)
    return {"model.diffusion_model." + _rename(k, pairs): v for k, v in unet.state_dict().items()}


def _vae_to_ldm(vae: AutoencoderKL) -> dict[str, torch.Tensor]:
    levels = len(vae.config.block_out_channels)
    pairs: list[tuple[str, str]] = [
        ("encoder.conv_norm_out.", "encoder.norm_out."),
        ("decoder.conv_norm_out.", "decoder.norm_out."),
    ]
    for part in ("encoder", "decoder"):
        pairs += [(f"{part}.mid_block.resnets.{k}.", f"{part}.mid.block_{k + 1}.") for k in range(2)]
        pairs.append((f"{part}.mid_block.attentions.0.", f"{part}.mid.attn_1."))
    for i in range(levels):
        up = levels - 1 - i
        pairs += [(f"encoder.down_blocks.{i}.resnets.{j}.", f"encoder.down.{i}.block.{j}.")
                  for j in range(vae.config.layers_per_block)]  # fmt: skip
        pairs += [(f"decoder.up_blocks.{i}.resnets.{j}.", f"decoder.up.{up}.block.{j}.")
                  for j in range(vae.config.layers_per_block + 1)]  # fmt: skip
        pairs.append((f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample."))
        pairs.append((f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{up}.upsample."))
    attention = (("group_norm.", "norm."), ("to_q.", "q."), ("to_k.", "k."), ("to_v.", "v."),
                 ("to_out.0.", "proj_out."))  # fmt: skip
    out = {}
    for key, value in vae.state_dict().items():
        ldm = _rename(key, pairs, strict=False)  # conv_in, conv_out, (post_)quant_conv keep their names
        if ".mid.attn_1." in ldm:
            head, _, leaf = ldm.partition(".mid.attn_1.")
            ldm = f"{head}.mid.attn_1.{_rename(leaf, attention)}"
            if value.ndim == 2:  # LDM's VAE attention uses 1x1 convolutions: [C, C] -> [C, C, 1, 1]
                value = value[:, :, None, None]
        out["first_stage_model." + ldm.replace("conv_shortcut.", "nin_shortcut.")] = value
    return out


def _text_encoder_to_ldm(model: CLIPTextModel) -> dict[str, torch.Tensor]:
    prefix = "conditioner.embedders.0.transformer."
    return {prefix + (k if k.startswith("text_model.") else "text_model." + k): v
            for k, v in model.state_dict().items()}  # fmt: skip


def _text_encoder_2_to_ldm(model: CLIPTextModelWithProjection) -> dict[str, torch.Tensor]:
    """OpenCLIP layout: fused in_proj, `resblocks`, `positional_embedding`, transposed `text_projection`."""
    sd = {k.removeprefix("text_model."): v for k, v in model.state_dict().items()}
    prefix = "conditioner.embedders.1.model."
    out = {
        prefix + "token_embedding.weight": sd.pop("embeddings.token_embedding.weight"),
        prefix + "positional_embedding": sd.pop("embeddings.position_embedding.weight"),
        prefix + "ln_final.weight": sd.pop("final_layer_norm.weight"),
        prefix + "ln_final.bias": sd.pop("final_layer_norm.bias"),
        prefix + "text_projection": sd.pop("text_projection.weight").T.contiguous(),
    }
    renames = (("layer_norm1.", "ln_1."), ("layer_norm2.", "ln_2."), ("mlp.fc1.", "mlp.c_fc."),
               ("mlp.fc2.", "mlp.c_proj."), ("self_attn.out_proj.", "attn.out_proj."))  # fmt: skip
    for i in range(model.config.num_hidden_layers):
        src, dst = f"encoder.layers.{i}.", f"{prefix}transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            qkv = [sd.pop(f"{src}self_attn.{p}_proj.{kind}") for p in "qkv"]
            out[f"{dst}attn.in_proj_{kind}"] = torch.cat(qkv, dim=0)
        for key in [k for k in sd if k.startswith(src)]:
            out[dst + _rename(key[len(src) :], renames)] = sd.pop(key)
    assert not sd, f"unconverted text_encoder_2 keys: {sorted(sd)}"
    return out


def save_single_file(pipe: StableDiffusionXLPipeline, path: str | Path) -> Path:
    """Write all SDXL weights of `pipe` into one `.safetensors` file in the original (LDM) key layout."""
    path = Path(path)
    state = {
        **_unet_to_ldm(pipe.unet),
        **_vae_to_ldm(pipe.vae),
        **_text_encoder_to_ldm(pipe.text_encoder),
        **_text_encoder_2_to_ldm(pipe.text_encoder_2),
    }
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    logger.info("wrote single-file SDXL %s (%d tensors)", path, len(state))
    return path
