"""SDXLRenderer: load SDXL once, draw images step by step with progress, previews, cancel and OOM fallback."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, replace
from pathlib import Path
from time import perf_counter

import torch
from diffusers import StableDiffusionXLPipeline

from engine.config import ModelFootprint
from engine.errors import InvalidRequestError, RenderCancelledError
from engine.sdxl.decode import decode_latents
from engine.sdxl.errors import RenderOutOfMemoryError
from engine.sdxl.footprint import estimate_footprint
from engine.sdxl.graphed_unet import GraphedUNet
from engine.sdxl.loading import load_pipeline
from engine.sdxl.params import RenderParams, RenderProgress
from engine.sdxl.placement import apply_placement, release_memory
from engine.sdxl.preview import latents_to_preview
from engine.sdxl.result import RenderResult
from engine.sdxl.schedulers import make_scheduler
from engine.sdxl.tokens import MAX_PROMPT_TOKENS, cut_off_text, prompt_token_ids
from engine.vram import SDXLFootprint, VramPlan, plan_vram, query_gpu_memory

logger = logging.getLogger(__name__)

NO_LLM = ModelFootprint(weights_bytes=0, kv_cache_bytes=0, lora_slots_bytes=0, workspace_bytes=0)
PREVIEW_EVERY = 5
STILL_WEIGHTS = ("gpu", "cpu")  # placements without offload hooks: the UNet's weights stay put while drawing


def _grad_free(fn: Callable) -> Callable:
    """Places and draws with gradients off but inference mode off too, on any thread (the engine thread runs in
    inference mode). Weights moved in inference mode become inference tensors, and accelerate's offload hooks,
    re-wrapping them as Parameters on a later placement outside inference mode, then fail."""
    return torch.inference_mode(False)(torch.no_grad()(fn))


def resolve_device(device: str) -> str:
    """Map "auto" to "cuda:0" when CUDA is available (else "cpu") and "cuda" to "cuda:0"."""
    device = str(device)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return device
    if device.split(":", 1)[0] != "cuda":
        raise InvalidRequestError(f"device: unknown device '{device}'; use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise InvalidRequestError(f"device: '{device}' was asked for but no CUDA GPU is available")
    return device if ":" in device else "cuda:0"


def _upcast_unsafe_vae(pipe: StableDiffusionXLPipeline) -> None:
    """A VAE known to overflow in fp16 (`force_upcast`, as SDXL's own) is kept and decoded in fp32."""
    if pipe.vae.dtype == torch.float16 and pipe.vae.config.force_upcast:
        pipe.vae.to(torch.float32)


class SDXLRenderer:
    """Draws SDXL images on the engine thread. Not thread-safe: one render at a time.

    `use_cuda_graphs` (default True): in the "all resident" plan on CUDA the UNet step replays CUDA graphs
    (engine/sdxl/graphed_unet.py), captured on the first step of each image size and kept until the plan
    changes, an out-of-memory fallback, or `release_graphs()`. Turning it off keeps graphs already captured.
    """

    def __init__(
        self, pipe: StableDiffusionXLPipeline, *, model_id: str, device: str, preview_every: int = PREVIEW_EVERY
    ) -> None:
        self._pipe = pipe
        self._dtype = pipe.unet.dtype  # fp16 on CUDA; "cpu only" switches to fp32 while it lasts
        self.model_id = model_id
        self.device = device
        self.preview_every = preview_every
        self._scheduler_config = dict(pipe.scheduler.config)
        self._plan = plan_vram(None, NO_LLM, self.footprint())  # "cpu only" until apply_plan
        self.use_cuda_graphs = True
        self._graphed = GraphedUNet(pipe.unet)
        pipe.set_progress_bar_config(disable=True)

    @classmethod
    def load(
        cls,
        path: str | Path,
        device: str = "auto",
        vae_path: str | Path | None = None,
        plan: VramPlan | str | None = None,
        config_dir: str | Path | None = None,
    ) -> SDXLRenderer:
        """A diffusers folder (model_index.json) or one .safetensors checkpoint; fp16 on CUDA, fp32 on CPU.

        `plan`: a VramPlan from the planner, a plan name (an override), or None to plan for SDXL alone.
        """
        device = resolve_device(device)
        dtype = torch.float16 if device.startswith("cuda") else torch.float32
        path = Path(path)
        pipe = load_pipeline(
            path, dtype, Path(vae_path) if vae_path else None, Path(config_dir) if config_dir else None
        )
        return cls.from_pipeline(pipe, model_id=path.stem if path.is_file() else path.name, device=device, plan=plan)

    @classmethod
    def from_pipeline(
        cls, pipe: StableDiffusionXLPipeline, *, model_id: str, device: str, plan: VramPlan | str | None = None
    ) -> SDXLRenderer:
        """Wrap an already built pipeline (its dtype as given) and place it as `plan` says."""
        _upcast_unsafe_vae(pipe)
        renderer = cls(pipe, model_id=model_id, device=resolve_device(device))
        if isinstance(plan, VramPlan):
            renderer.apply_plan(plan)
        else:
            gpu = query_gpu_memory(renderer.device)
            renderer.apply_plan(plan_vram(gpu, NO_LLM, renderer.footprint(), override=plan))
        return renderer

    @property
    def plan(self) -> VramPlan:
        return self._plan

    @property
    def pipeline(self) -> StableDiffusionXLPipeline:
        return self._pipe

    @property
    def graphed_unet(self) -> GraphedUNet:
        """The UNet's graph cache and its counters (captures, replays, plain calls by reason)."""
        return self._graphed

    def release_graphs(self) -> None:
        """Drop the UNet's CUDA graphs and their memory (call before unloading); the next render captures again."""
        self._graphed.release()

    def _release_memory(self) -> None:
        self._graphed.release()
        release_memory(self._pipe)

    @_grad_free
    def apply_plan(self, plan: VramPlan) -> None:
        """Place SDXL as `plan` says; out of memory while placing drops to the next lower placement.

        On a CPU device every plan becomes "cpu only"."""
        if self.device == "cpu" and plan.sdxl_placement != "cpu":
            plan = plan_vram(None, NO_LLM, self.footprint(), override=plan.name)
        self._graphed.release()  # graphs point at where the weights are now
        try:
            self._place(plan.sdxl_placement)
        except torch.OutOfMemoryError:
            lower = plan.lower_placement()
            self._release_memory()
            if lower is None:
                raise
            logger.warning("out of GPU memory placing SDXL for plan '%s'; trying '%s'", plan.name, lower.name)
            self.apply_plan(lower)
            return
        self._plan = plan
        logger.info("SDXL plan '%s': %s", plan.name, " ".join(plan.notes))

    def _place(self, placement: str) -> None:
        pipe = self._pipe
        if placement != "cpu" and pipe.unet.dtype != self._dtype:  # leaving "cpu only" (fp32) for the GPU
            pipe.remove_all_hooks()
            pipe.to(dtype=self._dtype)
            _upcast_unsafe_vae(pipe)
        apply_placement(pipe, placement, self.device)

    def footprint(self, width: int = 1024, height: int = 1024) -> SDXLFootprint:
        return estimate_footprint(self._pipe, width, height)

    def tokens_used(self, prompt: str) -> int:
        """CLIP tokens of `prompt` without the start/end markers; SDXL reads the first 75."""
        return len(prompt_token_ids(self._pipe.tokenizer, prompt))

    @_grad_free
    def render(
        self,
        params: RenderParams,
        on_progress: Callable[[RenderProgress], None] | None = None,
        should_cancel: Callable[[], bool] | None = None,
        between_steps: Callable[[], None] | None = None,
    ) -> RenderResult:
        """Draw one image. Raises RenderCancelledError when `should_cancel()` turns true (polled every step),
        RenderOutOfMemoryError when the GPU runs out of memory again after dropping one plan level.

        On out of memory the renderer drops one plan level and draws again from step 1 (same seed, same image);
        the result's warnings say so, and `plan` shows the new level for the next renders."""
        params = replace(params, seed=params.seed if params.seed is not None else secrets.randbits(32))
        callbacks = (on_progress, should_cancel, between_steps)
        try:
            return self._render(params, *callbacks, notes=[])
        except torch.OutOfMemoryError as exc:
            note = self._drop_plan(exc)
        try:
            return self._render(params, *callbacks, notes=[note])
        except torch.OutOfMemoryError as exc:
            self._release_memory()
            raise RenderOutOfMemoryError(
                f"out of GPU memory again with plan '{self._plan.name}' after dropping a level: {exc}"
            ) from exc

    def _drop_plan(self, exc: torch.OutOfMemoryError) -> str:
        self._release_memory()
        lower = self._plan.lower_placement()
        if lower is None:
            raise RenderOutOfMemoryError(f"out of GPU memory with plan '{self._plan.name}': {exc}") from exc
        note = f"out of GPU memory with plan '{self._plan.name}'; dropped to '{lower.name}' and drew again"
        logger.warning(note)
        self.apply_plan(lower)
        return note

    def _prompt_warnings(self, params: RenderParams) -> list[str]:
        warnings = []
        for name in ("prompt", "negative_prompt"):
            text = getattr(params, name)
            ignored = cut_off_text(self._pipe.tokenizer, text)
            if ignored:
                warnings.append(
                    f"{name}: {self.tokens_used(text)} CLIP tokens, SDXL reads the first {MAX_PROMPT_TOKENS}; "
                    f"ignored: '{ignored}'"
                )
                logger.warning(warnings[-1])
        return warnings

    def _render(
        self,
        params: RenderParams,
        on_progress: Callable[[RenderProgress], None] | None,
        should_cancel: Callable[[], bool] | None,
        between_steps: Callable[[], None] | None,
        notes: list[str],
    ) -> RenderResult:
        warnings = [*notes, *self._prompt_warnings(params)]
        if should_cancel is not None and should_cancel():
            raise RenderCancelledError("render cancelled before the first step")
        pipe = self._pipe
        pipe.scheduler = make_scheduler(params.scheduler, self._scheduler_config)
        cancelled_at: list[int] = []

        def on_step_end(pipe: StableDiffusionXLPipeline, i: int, t: torch.Tensor, tensors: dict) -> dict:
            step = i + 1
            if on_progress is not None:
                latents = tensors["latents"]  # [1, 4, H/8, W/8]
                preview = latents_to_preview(latents) if step % self.preview_every == 0 else None
                on_progress(RenderProgress(step=step, total=params.steps, preview=preview))
            if between_steps is not None:
                between_steps()
            if should_cancel is not None and should_cancel():
                pipe._interrupt = True  # the pipeline skips the remaining steps
                cancelled_at.append(step)
            return tensors

        # The wrapper replays graphs for CUDA inputs only; on the CPU it is the plain forward.
        use_graphs = self.use_cuda_graphs and self._plan.sdxl_placement in STILL_WEIGHTS
        graphs = self._graphed.installed() if use_graphs else nullcontext()
        start = perf_counter()
        try:
            with graphs:
                latents = pipe(
                    prompt=params.prompt,
                    negative_prompt=params.negative_prompt or None,
                    width=params.width,
                    height=params.height,
                    num_inference_steps=params.steps,
                    guidance_scale=params.guidance,
                    generator=torch.Generator("cpu").manual_seed(params.seed),
                    output_type="latent",
                    callback_on_step_end=on_step_end,
                    callback_on_step_end_tensor_inputs=["latents"],
                ).images  # [1, 4, H/8, W/8]
            if cancelled_at:
                raise RenderCancelledError(f"render cancelled after step {cancelled_at[0]} of {params.steps}")
            denoised = perf_counter()
            image, upcast = decode_latents(pipe.vae, latents)
            pil = pipe.image_processor.postprocess(image.float(), output_type="pil")[0]
        finally:
            pipe.maybe_free_model_hooks()  # with model offload: the VAE goes back to the CPU
        if upcast:
            warnings.append("the VAE gave a NaN/black image in fp16; decoded again in fp32")
        done = perf_counter()
        record = {
            **asdict(params),
            "model": self.model_id,
            "plan": self._plan.name,
            "tokens_used": self.tokens_used(params.prompt),
            "vae_fp32_fallback": upcast,
            "timings": {
                "denoise_s": round(denoised - start, 4),
                "decode_s": round(done - denoised, 4),
                "total_s": round(done - start, 4),
                "steps_per_s": round(params.steps / max(denoised - start, 1e-9), 3),
            },
            "warnings": warnings,
        }
        return RenderResult(image=pil, params=record, warnings=warnings)
