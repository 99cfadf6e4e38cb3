"""A cheap preview of SDXL latents: a fixed linear latent->RGB map, no VAE call."""

from __future__ import annotations

import torch
from PIL import Image

# Least-squares fit of SDXL latent channels to RGB in [-1, 1] (the factors ComfyUI uses for SDXL previews).
LATENT_RGB_FACTORS = torch.tensor(
    [
        [0.3651, 0.4232, 0.4341],
        [-0.2533, -0.0042, 0.1068],
        [0.1076, 0.1111, -0.0362],
        [-0.3165, -0.2492, -0.2188],
    ]
)
LATENT_RGB_BIAS = torch.tensor([0.1084, -0.0175, -0.0011])


def latents_to_preview(latents: torch.Tensor) -> Image.Image:
    """latents: [B, 4, h, w] (the first image is shown) -> an RGB image of h x w pixels."""
    lat = latents[0].detach().float().cpu()  # [4, h, w]
    rgb = torch.einsum("chw,cr->hwr", lat, LATENT_RGB_FACTORS) + LATENT_RGB_BIAS  # [h, w, 3]
    rgb = ((rgb.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return Image.fromarray(rgb.numpy())
