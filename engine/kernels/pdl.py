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
_enabled = True
_capable: dict[torch.device, bool] = {}


def set_pdl(enabled: bool) -> None:
    """Turn PDL launches on or off for kernels launched from now on (benchmarks compare both)."""
    global _enabled
    _enabled = enabled


def pdl_for(device: torch.device) -> bool:
    """True when kernels on `device` launch with PDL: enabled, compiled for a GPU, compute capability >= 9."""
    if not _enabled or INTERPRETED or device.type != "cuda":
        return False
    if device not in _capable:
        _capable[device] = torch.cuda.get_device_capability(device) >= (9, 0)
    return _capable[device]


@triton.jit
def wait_for_previous_grid(PDL: tl.constexpr):
    """First statement of a PDL kernel: let the next kernel launch, then wait for the previous one."""
    if PDL:
        gdc_launch_dependents()
        gdc_wait()
