"""VAE decode with the float32 fallback: a NaN or all-black fp16 decode is decoded again in float32."""

from __future__ import annotations

import logging

import torch
from diffusers import AutoencoderKL

logger = logging.getLogger(__name__)

BLACK = -1 + 2 / 255  # every pixel at the lowest 8-bit level


def is_broken(image: torch.Tensor) -> bool:
    """image: [B, 3, H, W] in [-1, 1]."""
    return not bool(torch.isfinite(image).all()) or float(image.max()) <= BLACK


def _decode(vae: AutoencoderKL, latents: torch.Tensor) -> torch.Tensor:
    # latents: [B, 4, H/8, W/8] as the sampler leaves them -> image: [B, 3, H, W]
    return vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]


def decode_latents(vae: AutoencoderKL, latents: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """(image, whether it had to be decoded again in float32)."""
    image = _decode(vae, latents)
    if not is_broken(image) or vae.dtype == torch.float32:
        return image, False
    dtype = vae.dtype
    logger.warning("VAE decode in %s gave a NaN or all-black image; decoding again in float32", dtype)
    vae.to(torch.float32)
    try:
        return _decode(vae, latents.float()), True
    finally:
        vae.to(dtype)
