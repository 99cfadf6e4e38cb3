"""Loading the models a Studio runs on: the configured checkpoints, or the demo models."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import CheckpointError
from storyloom.settings import Settings

log = logging.getLogger(__name__)

# The demo models are tiny and random: short answers and small, quick images keep a demo run under a minute.
DEMO_IMAGE_SIDE = 512
DEMO_MAX_STEPS = 4
DEMO_MAX_TOKENS = {"concept": 96, "story": 192, "prompt": 48}
DEMO_MAX_SEQ_LEN = 1024


@dataclass
class LoadedModels:
    """What `load_models` returns: the LLM engine, the SDXL renderer (None without images), adapter folders."""

    engine: Any
    renderer: Any | None
    adapters: dict[str, Path] = field(default_factory=dict)  # name -> PEFT folder to load into the engine


def uses_demo_models(settings: Settings) -> bool:
    """Demo models when the settings ask for them or name no model at all."""
    return settings.use_demo_models or (settings.llm_path is None and settings.sdxl_path is None)


def is_demo_output(settings: Settings) -> bool:
    """True when what the models write must be labelled as demo output (also a demo folder set as a path)."""
    from storyloom.demo import is_demo_model

    return uses_demo_models(settings) or (settings.llm_path is not None and is_demo_model(settings.llm_path))


def effective_settings(settings: Settings) -> Settings:
    """The settings a run uses: with the demo models, small images and short answers."""
    if not uses_demo_models(settings):
        return settings
    sampling = {
        step: dataclasses.replace(s, max_tokens=min(s.max_tokens, DEMO_MAX_TOKENS[step]))
        for step, s in settings.sampling.items()
    }
    image = dataclasses.replace(
        settings.image, width=DEMO_IMAGE_SIDE, height=DEMO_IMAGE_SIDE, steps=min(settings.image.steps, DEMO_MAX_STEPS)
    )
    return dataclasses.replace(settings, image=image, sampling=sampling)


def check_model_paths(settings: Settings, *, render: bool) -> None:
    """Raise CheckpointError listing every problem with the configured model paths (images: SDXL too)."""
    problems = settings.validate_model_paths()
    if not render:
        problems = [p for p in problems if not p.startswith("SDXL")]
    if problems:
        raise CheckpointError("the configured models cannot be used: " + "; ".join(problems))


# Sized for one consumer card: 4 rows (the story + prompt batch, a Compare run or a few API clients) of 2,048
# tokens (a concept, a 900-token story and the prompts fit) keep the 8B KV cache at 1.1 GB, and 4 adapter slots
# (rank <= 64) take at most 1.3 GB; the VRAM planner reads the resulting footprint.
APP_ENGINE_SIZES = {"max_batch_size": 4, "max_seq_len": 2048, "max_loras": 4, "max_lora_rank": 64}


def load_models(settings: Settings, *, render: bool) -> LoadedModels:
    """Load the LLM (and with ``render`` the SDXL renderer) named by ``settings``, or the demo models."""
    from engine import Engine, EngineConfig

    if uses_demo_models(settings):
        from storyloom.demo import ensure_demo_models

        demo = ensure_demo_models(settings.data_dir)
        llm_path, sdxl_path, vae_path, adapters = demo.llm, demo.sdxl, None, dict(demo.adapters)
        config = EngineConfig(model=llm_path, **{**APP_ENGINE_SIZES, "max_seq_len": DEMO_MAX_SEQ_LEN})
    else:
        check_model_paths(settings, render=render)
        llm_path, sdxl_path, vae_path, adapters = settings.llm_path, settings.sdxl_path, settings.sdxl_vae_path, {}
        config = EngineConfig(model=llm_path, **APP_ENGINE_SIZES)
    log.info("loading the LLM from %s", llm_path)
    engine = Engine(config)
    renderer = None
    if render:
        try:
            renderer = _load_renderer(sdxl_path, vae_path)
        except BaseException:
            engine.close()
            raise
    return LoadedModels(engine, renderer, adapters)


def _load_renderer(path: Path, vae_path: Path | None) -> Any:
    from engine.sdxl import SDXLRenderer

    log.info("loading SDXL from %s", path)
    return SDXLRenderer.load(path, vae_path=vae_path)
