"""The CUDA stream that jobs (image renders) run on beside the LLM's stream.

A render's kernels can fill every SM, and the LLM's small decode kernels then queue behind them even on a
higher-priority stream. With a share of the SMs given, the job stream belongs to a CUDA green context limited
to that share, so the remaining SMs are always free for LLM steps. Needs PyTorch's green contexts (CUDA 12.4+
driver); without them, jobs share every SM and a warning says so.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)
SM_GRANULE = 8  # green contexts split SMs in groups; 8 is a multiple of every current GPU's group size


class JobStream:
    """`stream`: where jobs run; `green_context` keeps the SM partition alive while the stream is used."""

    def __init__(self, device: torch.device, sm_share: float | None) -> None:
        self.sm_share = sm_share
        self.green_context = None
        self.stream = torch.cuda.Stream(device)
        if sm_share is None:
            return
        total = torch.cuda.get_device_properties(device).multi_processor_count
        sms = max(SM_GRANULE, int(total * sm_share) // SM_GRANULE * SM_GRANULE)
        try:
            from torch.cuda.green_contexts import GreenContext

            self.green_context = GreenContext.create(num_sms=sms, device_id=device.index or 0)
            self.stream = self.green_context.Stream()
        except (ImportError, AttributeError, RuntimeError) as exc:
            log.warning("render_sm_share=%s: no CUDA green contexts here (%s); renders share every SM", sm_share, exc)
            self.sm_share, self.green_context = None, None
            return
        log.info("renders run on %d of %d SMs; the other %d SMs stay free for LLM steps", sms, total, total - sms)
