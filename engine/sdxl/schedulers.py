"""The three samplers Storyloom offers, built from the checkpoint's own scheduler config."""

from __future__ import annotations

from typing import Any

from diffusers import DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler, EulerDiscreteScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin


def make_scheduler(name: str, config: dict[str, Any]) -> SchedulerMixin:
    """A fresh scheduler for one render: "euler", "euler_a" (ancestral) or "dpmpp_2m_karras"."""
    if name == "euler":
        return EulerDiscreteScheduler.from_config(config)
    if name == "euler_a":
        return EulerAncestralDiscreteScheduler.from_config(config)
    if name == "dpmpp_2m_karras":
        return DPMSolverMultistepScheduler.from_config(
            config, algorithm_type="dpmsolver++", solver_order=2, use_karras_sigmas=True
        )
    raise AssertionError(f"scheduler '{name}' passed RenderParams validation but has no factory")
