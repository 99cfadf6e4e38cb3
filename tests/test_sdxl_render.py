"""SDXL rendering on a tiny random SDXL: parity with plain diffusers, seeds, progress, cancel, fallbacks."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from diffusers import (
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    StableDiffusionXLPipeline,
)

from engine.errors import RenderCancelledError
from engine.sdxl import RenderOutOfMemoryError, RenderParams, SDXLRenderer
from engine.sdxl.placement import apply_placement
from engine.sdxl.renderer import NO_LLM
from engine.vram import GpuMemory, plan_vram
from storyloom.demo.tiny_sdxl import build_tiny_sdxl

GiB = 1024**3
SMALL = {"width": 512, "height": 512, "steps": 3}


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """The tiny models' ops are too small to gain from threads; on a busy 2-core box threads cost 5-10x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return build_tiny_sdxl(tmp_path_factory.mktemp("sdxl") / "tiny-sdxl", seed=1)


@pytest.fixture(scope="module")
def renderer(folder):
    return SDXLRenderer.load(folder)


@pytest.fixture(scope="module")
def reference(folder):
    """Plain diffusers on the same folder: the independent reference."""
    pipe = StableDiffusionXLPipeline.from_pretrained(folder, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _pixels(result) -> np.ndarray:
    return np.asarray(result.image).astype(np.int16)


REFERENCE_SCHEDULERS = {
    "euler": lambda cfg: EulerDiscreteScheduler.from_config(cfg),
    "euler_a": lambda cfg: EulerAncestralDiscreteScheduler.from_config(cfg),
    "dpmpp_2m_karras": lambda cfg: DPMSolverMultistepScheduler.from_config(
        cfg, use_karras_sigmas=True, algorithm_type="dpmsolver++"
    ),
}


@pytest.mark.parametrize("scheduler", sorted(REFERENCE_SCHEDULERS))
def test_same_image_as_plain_diffusers(folder, reference, renderer, scheduler):
    ref = reference
    ref.scheduler = REFERENCE_SCHEDULERS[scheduler](EulerDiscreteScheduler.load_config(folder / "scheduler"))
    negative = "blurry" if scheduler == "euler" else None
    expected = ref(
        "a lighthouse at dusk",
        negative_prompt=negative,
        width=512,
        height=512,
        num_inference_steps=3,
        guidance_scale=6.0,
        generator=torch.Generator().manual_seed(5),
    ).images[0]
    params = RenderParams(
        "a lighthouse at dusk", negative_prompt=negative or "", guidance=6.0, seed=5, scheduler=scheduler, **SMALL
    )
    ours = renderer.render(params)
    assert np.array_equal(np.asarray(expected), np.asarray(ours.image))
    assert np.asarray(expected).std() > 1  # not a flat image


def test_image_has_the_asked_size_and_a_full_record(renderer):
    res = renderer.render(RenderParams("a fox", negative_prompt="rain", width=576, height=512, steps=2, seed=9))
    assert res.image.size == (576, 512) and res.image.mode == "RGB"
    p = res.params
    assert {k: p[k] for k in ("prompt", "negative_prompt", "width", "height", "steps", "guidance", "seed")} == {
        "prompt": "a fox", "negative_prompt": "rain", "width": 576, "height": 512, "steps": 2, "guidance": 5.0,
        "seed": 9,
    }  # fmt: skip
    assert (p["scheduler"], p["model"], p["plan"], p["tokens_used"]) == ("euler", "tiny-sdxl", "cpu only", 2)
    assert set(p["timings"]) == {"denoise_s", "decode_s", "total_s", "steps_per_s"}
    assert p["warnings"] == [] and res.warnings == []


def test_seeds(renderer):
    first = renderer.render(RenderParams("a tree", **SMALL))
    assert isinstance(first.seed, int) and first.params["seed"] == first.seed
    again = renderer.render(RenderParams("a tree", seed=first.seed, **SMALL))
    other = renderer.render(RenderParams("a tree", seed=first.seed + 1, **SMALL))
    assert np.array_equal(_pixels(first), _pixels(again))
    assert np.abs(_pixels(first) - _pixels(other)).mean() > 1


def test_progress_once_per_step_with_previews(renderer, monkeypatch):
    monkeypatch.setattr(renderer, "preview_every", 2)
    events = []
    renderer.render(
        RenderParams("a boat", width=512, height=512, steps=5, seed=1),
        on_progress=lambda p: events.append(("progress", p.step, p.total, p.preview)),
        between_steps=lambda: events.append(("between",)),
    )
    progress = [e for e in events if e[0] == "progress"]
    assert [(e[1], e[2]) for e in progress] == [(i, 5) for i in range(1, 6)]
    assert events[::2] == progress and events[1::2] == [("between",)] * 5  # one LLM slot after each step
    previews = {e[1]: e[3] for e in progress if e[3] is not None}
    assert sorted(previews) == [2, 4]
    assert all(img.size == (64, 64) and img.mode == "RGB" for img in previews.values())


def _count_unet_calls(renderer):
    calls = []
    handle = renderer.pipeline.unet.register_forward_hook(lambda *_: calls.append(1))
    return calls, handle


def test_cancel_stops_early_and_the_renderer_stays_usable(renderer):
    steps = []
    calls, handle = _count_unet_calls(renderer)
    try:
        with pytest.raises(RenderCancelledError, match="after step 2 of 10"):
            renderer.render(
                RenderParams("a castle", width=512, height=512, steps=10, seed=3),
                on_progress=lambda p: steps.append(p.step),
                should_cancel=lambda: len(steps) >= 2,
            )
    finally:
        handle.remove()
    assert steps == [1, 2] and len(calls) == 2
    assert renderer.render(RenderParams("a castle", width=512, height=512, steps=1, seed=3)).image.size == (512, 512)


def test_cancel_before_the_first_step(renderer):
    calls, handle = _count_unet_calls(renderer)
    try:
        with pytest.raises(RenderCancelledError, match="before the first step"):
            renderer.render(RenderParams("a castle", **SMALL), should_cancel=lambda: True)
    finally:
        handle.remove()
    assert calls == []


@pytest.mark.parametrize("broken", [float("nan"), -1.0])
def test_broken_fp16_decode_is_decoded_again_in_fp32(renderer, monkeypatch, caplog, broken):
    params = RenderParams("a harbour", seed=4, **SMALL)
    expected = _pixels(renderer.render(params))
    vae = renderer.pipeline.vae
    saved = {k: v.clone() for k, v in vae.state_dict().items()}
    real_decode = vae.decode
    seen = []

    def decode(latents, return_dict=True):
        seen.append((latents.dtype, vae.dtype))
        if len(seen) == 1:  # an fp16 overflow: NaN, or black once NaNs are clamped
            b, _, h, w = latents.shape
            return (torch.full((b, 3, 8 * h, 8 * w), broken, dtype=latents.dtype),)
        return real_decode(latents, return_dict=return_dict)

    vae.to(torch.float16)
    monkeypatch.setattr(vae, "decode", decode)
    try:
        with caplog.at_level(logging.WARNING, logger="engine.sdxl.decode"), torch.inference_mode():
            res = renderer.render(params)  # in inference mode, as on the engine thread
        assert vae.dtype == torch.float16  # put back after the fp32 decode
        assert _inference_tensors(renderer.pipeline) == []
    finally:
        vae.to(torch.float32)
        vae.load_state_dict(saved)
    assert seen == [(torch.float16, torch.float16), (torch.float32, torch.float32)]
    assert res.params["vae_fp32_fallback"] is True
    assert any("decoded again in fp32" in w for w in res.warnings)
    assert "decoding again in float32" in caplog.text
    assert np.abs(_pixels(res) - expected).mean() < 2  # the same picture, from fp16-rounded VAE weights


def _inference_tensors(pipe: StableDiffusionXLPipeline) -> list[str]:
    modules = {name: c for name, c in pipe.components.items() if isinstance(c, torch.nn.Module)}
    return [f"{name}.{key}" for name, m in modules.items() for key, t in m.state_dict().items() if t.is_inference()]


def test_placing_on_the_engine_thread_leaves_weights_that_offload_hooks_can_move_later(folder):
    """The engine thread runs in inference mode; weights the renderer moves there must stay ordinary tensors, or
    accelerate's hooks fail when a later placement (on any thread) takes them off."""
    pipe = StableDiffusionXLPipeline.from_pretrained(folder, torch_dtype=torch.float16, local_files_only=True)
    with torch.inference_mode():
        r = SDXLRenderer.from_pipeline(pipe, model_id="tiny", device="cpu")  # "cpu only": cast to float32
    assert r.pipeline.unet.dtype == torch.float32
    assert _inference_tensors(r.pipeline) == []
    apply_placement(r.pipeline, "sequential_offload", "cpu")
    apply_placement(r.pipeline, "model_offload", "cpu")
    assert r.render(RenderParams("a mill", seed=8, **SMALL)).image.size == (512, 512)


def test_long_prompt_warns_with_the_cut_off_text(renderer, caplog):
    prompt = " ".join(["cat"] * 80) + " zebra"
    assert renderer.tokens_used(prompt) == 81
    assert renderer.tokens_used("a photo of a cat") == 5
    with caplog.at_level(logging.WARNING, logger="engine.sdxl.renderer"):
        res = renderer.render(RenderParams(prompt, width=512, height=512, steps=1, seed=0))
    assert res.warnings == ["prompt: 81 CLIP tokens, SDXL reads the first 75; ignored: 'cat cat cat cat cat zebra'"]
    assert res.params["tokens_used"] == 81 and res.params["warnings"] == res.warnings
    assert "ignored: 'cat cat cat cat cat zebra'" in caplog.text


# --- out of GPU memory: drop one plan level, retry once ------------------------------------------------------


@pytest.fixture
def gpu_renderer(folder, monkeypatch):
    """A CPU renderer that believes it holds a CUDA plan; placements are recorded instead of applied."""
    r = SDXLRenderer.load(folder)
    placements = []
    monkeypatch.setattr(
        "engine.sdxl.renderer.apply_placement", lambda pipe, placement, device: placements.append(placement)
    )
    r.device = "cuda:0"
    r.apply_plan(plan_vram(GpuMemory(24 * GiB), NO_LLM, r.footprint(), override="sdxl model offload"))
    return r, placements


def _fail_unet(renderer, times: int) -> None:
    left = [times]

    def hook(*_):
        if left[0] > 0:
            left[0] -= 1
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    renderer.pipeline.unet.register_forward_pre_hook(hook)


def test_oom_drops_one_level_and_draws_again(gpu_renderer, renderer):
    r, placements = gpu_renderer
    _fail_unet(r, times=1)
    params = RenderParams("a mill", seed=8, **SMALL)
    res = r.render(params)
    assert placements == ["model_offload", "sequential_offload"]
    assert r.plan.name == "sequential offload" and res.params["plan"] == "sequential offload"
    assert res.warnings == [
        "out of GPU memory with plan 'sdxl model offload'; dropped to 'sequential offload' and drew again"
    ]
    assert np.array_equal(_pixels(res), _pixels(renderer.render(params)))  # same seed, same image


def test_second_oom_is_reported_and_the_renderer_still_works(gpu_renderer):
    r, placements = gpu_renderer
    _fail_unet(r, times=2)
    with pytest.raises(RenderOutOfMemoryError, match="again with plan 'sequential offload'"):
        r.render(RenderParams("a mill", seed=8, **SMALL))
    assert placements == ["model_offload", "sequential_offload"]  # one level, once
    assert r.render(RenderParams("a mill", seed=8, **SMALL)).image.size == (512, 512)


def test_oom_with_nothing_lower(folder):
    r = SDXLRenderer.load(folder)
    _fail_unet(r, times=1)
    with pytest.raises(RenderOutOfMemoryError, match="plan 'cpu only'"):
        r.render(RenderParams("a mill", seed=8, **SMALL))
    assert r.plan.name == "cpu only"
    assert r.render(RenderParams("a mill", seed=8, **SMALL)).image.size == (512, 512)


def test_oom_while_placing_drops_to_the_next_placement(folder, monkeypatch):
    r = SDXLRenderer.load(folder)
    placements = []

    def place(pipe, placement, device):
        placements.append(placement)
        if placement == "gpu":
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr("engine.sdxl.renderer.apply_placement", place)
    r.device = "cuda:0"
    r.apply_plan(plan_vram(GpuMemory(24 * GiB), NO_LLM, r.footprint()))
    assert placements == ["gpu", "model_offload"]
    assert r.plan.name == "sdxl model offload"


def test_from_pipeline_wraps_a_built_pipeline(reference):
    r = SDXLRenderer.from_pipeline(reference, model_id="in-memory", device="cpu")
    assert (r.model_id, r.device, r.plan.name) == ("in-memory", "cpu", "cpu only")
    assert r.pipeline is reference
