"""Byte counts of a loaded SDXL pipeline for the VRAM planner."""

from __future__ import annotations

from itertools import chain

import torch
from diffusers import StableDiffusionXLPipeline

from engine.vram import SDXLFootprint
from engine.vram.memory import GiB

# Activation peaks of SDXL base at 1024x1024 in fp16 with PyTorch SDPA attention. They scale with the pixel
# count, the first block's width and the element size. The VAE figure is measured (bench/bench_sdxl.py, H200,
# 2026-11-29): all resident peaked 2.6 GiB above the weights with an fp16 VAE and 5.0 GiB with the fp32 VAE the
# renderer keeps for SDXL's own (force_upcast) VAE; the UNet step stays below it.
UNET_ACTIVATION_1024 = int(1.6 * GiB)  # one step, batch 2 (the two halves of classifier-free guidance)
VAE_ACTIVATION_1024 = int(2.5 * GiB)  # decoding one image
SDXL_UNET_WIDTH = 320
SDXL_VAE_WIDTH = 128


def module_bytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in chain(module.parameters(), module.buffers()))


def estimate_footprint(pipe: StableDiffusionXLPipeline, width: int, height: int) -> SDXLFootprint:
    pixels = width * height / 1024**2
    unet_scale = pipe.unet.config.block_out_channels[0] / SDXL_UNET_WIDTH * pipe.unet.dtype.itemsize / 2
    vae_scale = pipe.vae.config.block_out_channels[0] / SDXL_VAE_WIDTH * pipe.vae.dtype.itemsize / 2
    return SDXLFootprint(
        unet_bytes=module_bytes(pipe.unet),
        text_encoders_bytes=module_bytes(pipe.text_encoder) + module_bytes(pipe.text_encoder_2),
        vae_bytes=module_bytes(pipe.vae),
        unet_activation_bytes=int(UNET_ACTIVATION_1024 * pixels * unet_scale),
        vae_activation_bytes=int(VAE_ACTIVATION_1024 * pixels * vae_scale),
        width=width,
        height=height,
    )
