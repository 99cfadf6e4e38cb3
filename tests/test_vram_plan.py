"""VRAM planner: a table of cards with Llama-3-8B (NF4) and SDXL (fp16) shaped footprints."""

from __future__ import annotations

import pytest

from engine.config import ModelFootprint
from engine.errors import InvalidRequestError
from engine.vram import PLAN_NAMES, GpuMemory, SDXLFootprint, plan_vram

GiB = 1024**3

# NF4 Llama-3-8B with a 4k-token KV cache and 8 rank-64 LoRA slots: ~5.3 GB with the workspace.
LLM = ModelFootprint(weights_bytes=4_300_000_000, kv_cache_bytes=500_000_000, lora_slots_bytes=244_000_000)
# SDXL base in fp16: UNet 2.57 B params, CLIP-L + bigG 0.82 B, VAE 84 M; ~9 GB peak at 1024².
SDXL = SDXLFootprint(
    unet_bytes=5_135_000_000,
    text_encoders_bytes=1_635_000_000,
    vae_bytes=167_000_000,
    unet_activation_bytes=1_800_000_000,
    vae_activation_bytes=1_500_000_000,
)


def test_footprints_are_8b_shaped():
    assert 5.2e9 < LLM.total_bytes < 5.4e9
    assert 6.9e9 < SDXL.weights_bytes < 7.0e9
    assert 8.6e9 < SDXL.peak_bytes < 9.0e9


@pytest.mark.parametrize(
    ("card_gb", "name", "llm_offload", "both_resident"),
    [
        (24, "all resident", False, True),
        (16, "all resident", False, True),
        (12, "swap llm while drawing", True, False),
        (8, "swap llm while drawing", True, False),
        (6, "sequential offload", True, False),
        (None, "cpu only", False, False),
    ],
)
def test_card_table(card_gb, name, llm_offload, both_resident):
    gpu = GpuMemory(total_bytes=card_gb * GiB) if card_gb else None
    plan = plan_vram(gpu, LLM, SDXL)
    assert plan.name == name
    assert plan.llm_offload_while_drawing is llm_offload
    assert plan.both_resident is both_resident
    assert plan.fits
    assert plan.estimated_peak_bytes == plan.llm_bytes + plan.sdxl_bytes
    assert plan.total_bytes == (card_gb or 0) * GiB
    if gpu:
        assert plan.estimated_peak_bytes <= gpu.usable_bytes < gpu.total_bytes
    assert plan.notes and all(isinstance(n, str) and n for n in plan.notes)


def test_all_resident_peak_is_both_models_plus_activations():
    plan = plan_vram(GpuMemory(24 * GiB), LLM, SDXL)
    assert plan.llm_bytes == LLM.total_bytes
    assert plan.sdxl_bytes == SDXL.weights_bytes + SDXL.activation_peak_bytes


def test_every_better_plan_was_rejected_for_memory():
    """The chosen plan is the first that fits: each plan above it is estimated over the card's budget."""
    for card_gb in (6, 8, 12, 16, 24):
        gpu = GpuMemory(card_gb * GiB)
        chosen = plan_vram(gpu, LLM, SDXL)
        for name in PLAN_NAMES[: PLAN_NAMES.index(chosen.name)]:
            better = plan_vram(gpu, LLM, SDXL, override=name)
            assert not better.fits and better.estimated_peak_bytes > gpu.usable_bytes, (card_gb, name)


def test_smaller_images_need_less():
    small = SDXLFootprint(
        unet_bytes=SDXL.unet_bytes,
        text_encoders_bytes=SDXL.text_encoders_bytes,
        vae_bytes=SDXL.vae_bytes,
        unet_activation_bytes=SDXL.unet_activation_bytes // 4,
        vae_activation_bytes=SDXL.vae_activation_bytes // 4,
        width=512,
        height=512,
    )
    assert plan_vram(GpuMemory(12 * GiB), LLM, small).name == "sdxl model offload"


def test_free_memory_limits_the_budget():
    busy = GpuMemory(total_bytes=24 * GiB, free_bytes=9 * GiB)
    assert busy.usable_bytes == 9 * GiB
    assert plan_vram(busy, LLM, SDXL).name == "swap llm while drawing"


def test_sequential_keeps_the_llm_when_both_fit():
    plan = plan_vram(GpuMemory(12 * GiB), LLM, SDXL, override="sequential offload")
    assert plan.fits and not plan.llm_offload_while_drawing
    assert plan.llm_bytes == LLM.total_bytes


def test_override_is_kept_with_a_note_even_if_it_does_not_fit():
    plan = plan_vram(GpuMemory(8 * GiB), LLM, SDXL, override="all resident")
    assert plan.name == "all resident" and not plan.fits
    assert any("may run out of memory" in n for n in plan.notes)
    assert plan_vram(GpuMemory(8 * GiB), LLM, SDXL, override="cpu only").sdxl_bytes == 0


def test_override_without_gpu_falls_back_to_cpu():
    plan = plan_vram(None, LLM, SDXL, override="all resident")
    assert plan.name == "cpu only"
    assert any("needs a CUDA GPU" in n for n in plan.notes)


def test_unknown_override_is_refused():
    with pytest.raises(InvalidRequestError, match="plan: unknown VRAM plan 'turbo'"):
        plan_vram(GpuMemory(8 * GiB), LLM, SDXL, override="turbo")


def test_cpu_only_always_fits_even_when_the_llm_alone_is_too_big():
    plan = plan_vram(GpuMemory(2 * GiB), LLM, SDXL)
    assert plan.name == "cpu only" and plan.fits
    assert plan.llm_bytes == LLM.total_bytes > plan.usable_bytes


def test_fallback_chain_drops_one_level_at_a_time():
    plan = plan_vram(GpuMemory(24 * GiB), LLM, SDXL)
    names = []
    while plan is not None:
        names.append(plan.name)
        plan = plan.fallback
    assert tuple(names) == PLAN_NAMES


def test_lower_placement_skips_levels_the_renderer_cannot_apply():
    offload = plan_vram(GpuMemory(24 * GiB), LLM, SDXL, override="sdxl model offload")
    # "swap llm while drawing" keeps SDXL's model offload: only the engine can swap the LLM.
    assert offload.lower_placement().name == "sequential offload"
    assert plan_vram(None, LLM, SDXL).lower_placement() is None


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"total_bytes": 0}, "total_bytes"), ({"total_bytes": GiB, "free_bytes": 2 * GiB}, "free_bytes")],
)
def test_bad_gpu_memory(kwargs, field):
    with pytest.raises(ValueError, match=field):
        GpuMemory(**kwargs)


def test_negative_footprint_is_refused():
    with pytest.raises(ValueError, match="vae_bytes"):
        SDXLFootprint(1, 1, -1, 1, 1)
