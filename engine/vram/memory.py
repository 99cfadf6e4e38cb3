"""Byte counts the planner reads: the GPU's memory and the SDXL components' footprint."""

from __future__ import annotations

from dataclasses import dataclass

MiB = 1024**2
GiB = 1024**3
MIN_RESERVE_BYTES = 512 * MiB  # CUDA context, cuBLAS workspaces, the desktop's share
RESERVE_FRACTION = 0.07  # allocator fragmentation grows with the card


@dataclass(frozen=True)
class GpuMemory:
    """One GPU. `free_bytes` is measured before Storyloom loads anything (None: the whole card is ours)."""

    total_bytes: int
    free_bytes: int | None = None
    name: str = ""

    def __post_init__(self) -> None:
        if self.total_bytes <= 0:
            raise ValueError(f"total_bytes: must be > 0, got {self.total_bytes}")
        if self.free_bytes is not None and not 0 <= self.free_bytes <= self.total_bytes:
            raise ValueError(f"free_bytes: must be within 0..{self.total_bytes}, got {self.free_bytes}")

    @property
    def reserve_bytes(self) -> int:
        return max(MIN_RESERVE_BYTES, int(self.total_bytes * RESERVE_FRACTION))

    @property
    def usable_bytes(self) -> int:
        """What the plans may fill: the card less a reserve, and never more than was free."""
        usable = self.total_bytes - self.reserve_bytes
        if self.free_bytes is not None:
            usable = min(usable, self.free_bytes)
        return max(usable, 0)


@dataclass(frozen=True)
class SDXLFootprint:
    """Bytes of SDXL's weights per component and the activation peaks of one render at width x height."""

    unet_bytes: int
    text_encoders_bytes: int
    vae_bytes: int
    unet_activation_bytes: int  # one denoising step, both guidance halves
    vae_activation_bytes: int  # decoding the final latents
    width: int = 1024
    height: int = 1024

    def __post_init__(self) -> None:
        for name in (
            "unet_bytes",
            "text_encoders_bytes",
            "vae_bytes",
            "unet_activation_bytes",
            "vae_activation_bytes",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must be >= 0, got {getattr(self, name)}")

    @property
    def weights_bytes(self) -> int:
        return self.unet_bytes + self.text_encoders_bytes + self.vae_bytes

    @property
    def activation_peak_bytes(self) -> int:
        return max(self.unet_activation_bytes, self.vae_activation_bytes)

    @property
    def peak_bytes(self) -> int:
        """All weights resident plus the larger activation peak."""
        return self.weights_bytes + self.activation_peak_bytes
