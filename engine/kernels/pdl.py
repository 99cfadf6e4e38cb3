"""Programmatic dependent launch (PDL, Hopper and newer) for the decode step's Triton kernels.

A kernel launched with PDL may start while the kernel before it on the stream is still finishing: its
programs get resident, then wait (`griddepcontrol.wait`) until the previous grid has completed and its
memory is visible. Each kernel also lets the next one launch early (`griddepcontrol.launch_dependents`)
as soon as all of its own programs are running. That hides the launch and ramp-up gap between the ~10
small kernels per layer of a decode step; stream order and results are unchanged. CUDA graphs keep the
programmatic edges when the step is captured.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"  # the CPU interpreter cannot run inline PTX
OFF, WAIT, EARLY = (
    0,
    1,
    2,
)  # no PDL; wait for the previous grid (next one launches as this one exits); also trigger early
_mode = OFF  # measured slower on an H200 in EARLY mode; docs/PERFORMANCE.md
_capable: dict[torch.device, bool] = {}


def set_pdl(mode: int) -> None:
    """PDL mode for kernels launched from now on: OFF, WAIT or EARLY (benchmarks compare them)."""
    global _mode
    if mode not in (OFF, WAIT, EARLY):
        raise ValueError(f"PDL mode: must be OFF (0), WAIT (1) or EARLY (2), got {mode}")
    _mode = mode


def pdl_mode() -> int:
    """The PDL mode set now (before the device check of pdl_for)."""
    return _mode


def pdl_for(device: torch.device) -> int:
    """The PDL mode of kernels on `device`: OFF unless compiled for a GPU of compute capability >= 9."""
    if _mode == OFF or INTERPRETED or device.type != "cuda":
        return OFF
    if device not in _capable:
        _capable[device] = torch.cuda.get_device_capability(device) >= (9, 0)
    return _mode if _capable[device] else OFF


@triton.jit
def wait_for_previous_grid(PDL: tl.constexpr):
    """First statement of a kernel launched with PDL: (EARLY) let the next kernel launch, then wait for the
    previous one to complete."""
    if PDL == 2:
        gdc_launch_dependents()
    if PDL > 0:
        gdc_wait()
