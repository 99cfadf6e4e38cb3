"""StoryPipeline on the demo models: one batch for both adapter rows, fallbacks, re-runs, cancel, early render."""

from __future__ import annotations

import hashlib
import threading
from concurrent.futures import CancelledError
from pathlib import Path
from types import SimpleNamespace

import pytest

from adapters import AdapterStore
from engine import Engine, EngineConfig, SamplingParams
from engine.errors import InvalidRequestError
from engine.sdxl import SDXLRenderer
from engine.sdxl.tokens import MAX_PROMPT_TOKENS
from storyloom.demo import DemoModels, ensure_demo_models
from storyloom.settings import ImageDefaults, Settings
from storyloom.workflow import Job, StoryDraft, StoryEvent, StoryOptions
from storyloom.workflow.models import DEMO_MAX_SEQ_LEN, LoadedModels
from storyloom.workflow.pipeline import PROMPT_ROLE, STORY_ROLE, StoryPipeline

ROLES = (STORY_ROLE, PROMPT_ROLE)
TEST_IMAGE = ImageDefaults(width=512, height=512, steps=2)


# --- shared fixtures (imported by the studio and CLI tests) -----------------------------------------------
@pytest.fixture(scope="session")
def demo_models(tmp_path_factory) -> DemoModels:
    """The demo models, built once per test session."""
    return ensure_demo_models(tmp_path_factory.getbasetemp() / "shared-demo-data")


@pytest.fixture(scope="session")
def demo_renderer(demo_models) -> SDXLRenderer:
    return SDXLRenderer.load(demo_models.sdxl, device="cpu")


def make_engine(demo_models: DemoModels, adapters: tuple[str, ...] = ROLES) -> Engine:
    engine = Engine(EngineConfig(model=demo_models.llm, device="cpu", max_seq_len=DEMO_MAX_SEQ_LEN))
    for name in adapters:
        engine.adapters.load(name, demo_models.adapters[name])
    return engine


def demo_factory(demo_models: DemoModels, renderer: SDXLRenderer):
    """A Studio engine_factory over the shared demo models (a fresh engine each time, the shared renderer)."""

    def factory(settings: Settings, render: bool) -> LoadedModels:
        engine = Engine(EngineConfig(model=demo_models.llm, device="cpu", max_seq_len=DEMO_MAX_SEQ_LEN))
        return LoadedModels(engine, renderer if render else None, dict(demo_models.adapters))

    return factory


class Recorder:
    def __init__(self) -> None:
        self.events: list[StoryEvent] = []

    def __call__(self, event: StoryEvent) -> None:
        self.events.append(event)

    def kinds(self, step: str | None = None) -> list[str]:
        return [e.kind for e in self.events if step is None or e.step == step]

    def index(self, kind: str, step: str) -> int:
        return next(i for i, e in enumerate(self.events) if e.kind == kind and e.step == step)

    def text(self, step: str) -> str:
        return "".join(e.text for e in self.events if e.kind == "text_delta" and e.step == step)

    def sources(self, step: str) -> set[str]:
        return {e.source for e in self.events if e.step == step and e.kind == "step_started"}


def small_settings(tmp_path: Path) -> Settings:
    settings = Settings(data_dir=tmp_path)
    for step, tokens in (("concept", 24), ("story", 48), ("prompt", 24)):
        settings.sampling[step] = settings.sampling[step].__class__(temperature=0.8, top_p=0.95, max_tokens=tokens)
    settings.image = TEST_IMAGE
    return settings


@pytest.fixture
def engine(demo_models):
    with make_engine(demo_models) as eng:
        yield eng


def run(pipeline_step, *args, **kwargs) -> tuple[StoryDraft, Recorder]:
    recorder = Recorder()
    job = Job(recorder)
    job.execute(lambda j: pipeline_step(*args, j, **kwargs))
    return job.result(), recorder


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- tests ----------------------------------------------------------------------------------------------
def test_full_pipeline_shares_one_batch_and_draws_early(tmp_path, demo_models, demo_renderer, engine):
    store = AdapterStore(tmp_path)
    plan = SimpleNamespace(both_resident=True)
    pipeline = StoryPipeline(engine, demo_renderer, store, plan, settings=small_settings(tmp_path))
    options = StoryOptions(seed=7, sampling={"prompt": {"max_tokens": 4}, "story": {"max_tokens": 96}})
    draft, rec = run(pipeline.run, StoryDraft(idea="  a cat keeps a lighthouse  ", width=512, height=512), options)

    assert draft.idea == "a cat keeps a lighthouse"
    assert draft.concept and draft.story and draft.title and draft.image_prompt
    assert draft.image is not None and draft.image.size == (512, 512)
    assert draft.seed == draft.render_params["seed"]
    assert draft.sources == {
        "concept": "base model",
        "story": STORY_ROLE,
        "prompt": PROMPT_ROLE,
        "image": "SDXL (sdxl)",
    }
    expected = {name: sha256_file(demo_models.adapters[name] / "adapter_model.safetensors") for name in ROLES}
    assert dict(draft.adapters_used) == expected
    assert set(draft.timings) == {"concept", "story", "prompt", "image"}
    assert draft.model_ids == {"llm": "llm", "sdxl": "sdxl"}
    assert draft.sampling["prompt"]["max_tokens"] == 4 and draft.sampling["story"]["seed"] == 8
    assert draft.sampling["story"]["repetition_penalty"] == store.manifests[STORY_ROLE].sampling["repetition_penalty"]

    # Both adapter rows were admitted together: one prefill holding both, then shared decode steps.
    steps = engine.stats().recent_steps
    prefills = [s for s in steps if s.kind == "prefill" and set(s.adapters) == set(ROLES)]
    assert len(prefills) == 1 and len(prefills[0].request_ids) == 2
    ids = prefills[0].request_ids
    assert engine.stats().shared_decode_steps(*ids) >= 1

    # Events: the concept streams first, then both rows; the prompt row finishes early (4 tokens) and the
    # image starts while the story is still being written (the plan keeps both models resident).
    assert rec.index("step_finished", "concept") < rec.index("step_started", "story")
    assert rec.text("concept").strip() == draft.concept
    assert rec.index("step_finished", "prompt") < rec.index("step_started", "image")
    assert rec.index("step_started", "image") < rec.index("step_finished", "story")
    progress = [e.progress for e in rec.events if e.kind == "image_progress"]
    assert progress == [(1, 2), (2, 2)]
    assert rec.kinds()[-1] == "finished" and rec.events[-1].text == "completed"
    assert rec.sources("story") == {STORY_ROLE} and rec.sources("prompt") == {PROMPT_ROLE}


def test_missing_weights_run_on_the_base_model_and_say_so(tmp_path, demo_models):
    with make_engine(demo_models, adapters=(PROMPT_ROLE,)) as engine:
        pipeline = StoryPipeline(engine, None, AdapterStore(tmp_path), None, settings=small_settings(tmp_path))
        draft = StoryDraft(idea="a storm", concept="A storm visits an island.")
        draft, rec = run(pipeline.write_story_and_prompt, draft, StoryOptions(seed=1))
        steps = engine.stats().recent_steps
    fallback = "base model (story-writer weights not installed)"
    assert rec.sources("story") == {fallback}
    assert draft.sources["story"] == fallback and draft.sources["prompt"] == PROMPT_ROLE
    assert [name for name, _ in draft.adapters_used] == [PROMPT_ROLE]
    notices = [e.text for e in rec.events if e.kind == "notice"]
    assert any("story-writer" in n and "base model" in n for n in notices)
    batch = [s for s in steps if s.kind == "prefill" and len(s.request_ids) == 2]
    assert [s.adapters for s in batch] == [(None, PROMPT_ROLE)]
    assert "concept" not in rec.kinds() and draft.image is None


def test_each_step_reruns_alone(tmp_path, demo_renderer, engine):
    pipeline = StoryPipeline(engine, demo_renderer, AdapterStore(tmp_path), None, settings=small_settings(tmp_path))
    concept = "Characters: Mara, a keeper. Setting: a lighthouse. Beats: a storm, a rescue."
    first = StoryDraft(idea="a lighthouse", concept=concept, width=512, height=512)

    story, rec = run(pipeline.write_story_and_prompt, first, StoryOptions(seed=1))
    assert story.concept == concept and story.story and story.image is None
    assert not [e for e in rec.events if e.step in ("concept", "image")]

    again, _ = run(pipeline.write_story_and_prompt, story, StoryOptions(seed=2))
    assert again.concept == concept and (again.story, again.image_prompt) != (story.story, story.image_prompt)

    drawn, rec = run(pipeline.render, story.copy(seed=11))
    assert drawn.seed == 11 and drawn.image is not None
    assert drawn.story == story.story and {e.step for e in rec.events} == {"image", "run"}

    long_prompt = ", ".join(f"tag number {i} with detail" for i in range(60))
    redrawn, rec = run(pipeline.render, drawn.copy(image_prompt=long_prompt))
    assert redrawn.seed == 11
    assert demo_renderer.tokens_used(redrawn.image_prompt) <= MAX_PROMPT_TOKENS
    assert long_prompt.startswith(redrawn.image_prompt) and redrawn.render_params["prompt"] == redrawn.image_prompt
    assert any(e.kind == "notice" and "CLIP tokens" in e.text for e in rec.events)
    assert list(redrawn.image.getdata()) != list(drawn.image.getdata())
    assert story.image is None, "the input draft is never changed"


def test_cancel_mid_story_keeps_the_concept(tmp_path, engine):
    pipeline = StoryPipeline(engine, None, AdapterStore(tmp_path), None, settings=small_settings(tmp_path))
    started = threading.Event()
    recorder = Recorder()

    def on_event(event: StoryEvent) -> None:
        recorder(event)
        if event.kind == "text_delta" and event.step == "story":
            started.set()

    job = Job(on_event)
    options = StoryOptions(sampling={"story": {"max_tokens": 400}})
    worker = threading.Thread(target=job.execute, args=(lambda j: pipeline.run(StoryDraft("a storm"), options, j),))
    worker.start()
    assert started.wait(timeout=120)
    job.cancel()
    worker.join()
    with pytest.raises(CancelledError):
        job.result()
    final = recorder.events[-1]
    assert final.kind == "finished" and final.text == "cancelled"
    assert final.draft is not None and final.draft.concept and not final.draft.story
    assert job.cancelled and job.done
    assert not engine.stats().num_running


def test_story_after_image_when_models_cannot_both_stay(tmp_path, demo_renderer, engine):
    pipeline = StoryPipeline(
        engine,
        demo_renderer,
        AdapterStore(tmp_path),
        SimpleNamespace(both_resident=False),
        settings=small_settings(tmp_path),
    )
    draft = StoryDraft(idea="a storm", concept="A storm visits an island.", width=512, height=512)
    options = StoryOptions(seed=3, sampling={"prompt": {"max_tokens": 4}, "story": {"max_tokens": 32}})
    draft, rec = run(pipeline.write_story_and_prompt, draft, options, render=True)
    assert rec.index("step_finished", "story") < rec.index("step_started", "image")
    assert draft.image is not None


def test_bad_ideas(tmp_path, engine):
    pipeline = StoryPipeline(engine, None, AdapterStore(tmp_path), None, settings=small_settings(tmp_path))
    for idea in ("", "   \n\t "):
        with pytest.raises(InvalidRequestError, match="idea: must not be empty"):
            pipeline.check_idea(idea)
    with pytest.raises(InvalidRequestError, match=rf"context of {DEMO_MAX_SEQ_LEN} tokens") as info:
        pipeline.check_idea("storm " * 3000)
    assert "keep the idea under about" in str(info.value)
    assert pipeline.check_idea("  a storm  ") == "a storm"
    with pytest.raises(InvalidRequestError, match="no concept yet"):
        run(pipeline.write_story_and_prompt, StoryDraft("a storm"), StoryOptions())


class SwapPlanRenderer:
    """The demo renderer under a VRAM plan that may swap the LLM out while drawing; records where the LLM's
    embedding lived during each render."""

    def __init__(self, renderer: SDXLRenderer, engine: Engine, swap: bool) -> None:
        self._renderer, self._engine = renderer, engine
        self.plan = SimpleNamespace(llm_offload_while_drawing=swap, both_resident=False)
        self.embed_during_render: list[int] = []

    def __getattr__(self, name: str):
        return getattr(self._renderer, name)

    def render(self, *args, **kwargs):
        self.embed_during_render.append(self._engine.model.embed.data_ptr())
        return self._renderer.render(*args, **kwargs)


@pytest.mark.parametrize("swap", [True, False], ids=["swap-plan", "llm-stays"])
def test_the_swap_plan_parks_the_llm_while_drawing_and_brings_it_back(tmp_path, demo_renderer, engine, swap):
    renderer = SwapPlanRenderer(demo_renderer, engine, swap)
    pipeline = StoryPipeline(engine, renderer, AdapterStore(tmp_path), renderer.plan, settings=small_settings(tmp_path))
    greedy = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    text_before = engine.generate(["a storm"], greedy)[0].token_ids
    home = engine.model.embed.data_ptr()
    draft = StoryDraft(idea="a storm", image_prompt="a lighthouse in a storm", seed=5, width=512, height=512)
    drawn, _ = run(pipeline.render, draft)
    assert drawn.image is not None
    assert (renderer.embed_during_render[0] != home) is swap
    assert engine.generate(["a storm"], greedy)[0].token_ids == text_before
