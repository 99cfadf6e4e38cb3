"""VRAM planner: where the LLM and SDXL live while drawing, decided from byte counts alone (no torch)."""

from engine.vram.memory import GpuMemory, SDXLFootprint
from engine.vram.plan import PLAN_NAMES, VramPlan, plan_vram
from engine.vram.probe import query_gpu_memory

__all__ = ["PLAN_NAMES", "GpuMemory", "SDXLFootprint", "VramPlan", "plan_vram", "query_gpu_memory"]
