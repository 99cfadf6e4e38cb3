"""The Studio facade on the demo models: jobs, saving, re-runs, compare, adapters, status, close."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from concurrent.futures import CancelledError

import pytest

from engine.errors import AdapterError, AdapterNotFoundError, CheckpointError, InvalidRequestError
from storyloom.demo.demo_adapters import build_demo_adapter
from storyloom.demo.tiny_llama import build_tiny_llama
from storyloom.settings import ImageDefaults, Settings, StepSampling
from storyloom.studio import NotReadyError, Studio
from storyloom.workflow import StoryDraft, StoryOptions
from storyloom.workflow.pipeline import PROMPT_ROLE, STORY_ROLE
from tests.test_workflow_pipeline import Recorder, demo_factory, demo_models, demo_renderer, sha256_file

__all__ = ["demo_models", "demo_renderer"]  # session fixtures shared with the pipeline tests


def studio_settings(tmp_path, **changes) -> Settings:
    settings = Settings(data_dir=tmp_path / "data", use_demo_models=True, image=ImageDefaults(steps=2), **changes)
    for step, tokens in (("concept", 24), ("story", 32), ("prompt", 16)):
        settings.sampling[step] = settings.sampling[step].__class__(temperature=0.8, top_p=0.95, max_tokens=tokens)
    return settings


@pytest.fixture
def studio(tmp_path, demo_models, demo_renderer):
    with Studio(studio_settings(tmp_path), engine_factory=demo_factory(demo_models, demo_renderer)) as studio:
        yield studio


@pytest.fixture
def ready(studio):
    studio.start().result()
    return studio


def test_importing_the_facade_loads_no_torch():
    code = "import sys, storyloom.studio; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_not_ready_until_started(studio):
    assert not studio.is_ready and studio.is_demo
    assert studio.status().ready is False and studio.status().demo is True
    with pytest.raises(NotReadyError, match="not loaded yet"):
        studio.generate("a storm", StoryOptions(), lambda e: None)
    future = studio.start()
    assert studio.start() is future
    status = future.result()
    assert status.ready and studio.is_ready
    assert status.device_name == "CPU" and status.llm_bytes > 0 and status.sdxl_bytes > 0
    assert status.plan_name == "cpu only" and status.llm_model_id == "llm" and status.sdxl_model_id == "sdxl"
    assert studio.default_options() == StoryOptions(width=512, height=512, steps=2)


def test_generate_saves_the_story_and_reruns_update_it(ready):
    rec = Recorder()
    draft = ready.generate("a lighthouse keeper and a storm", StoryOptions(seed=5, steps=1), rec).result()
    assert draft.story_id and draft.demo and draft.image is not None
    final = rec.events[-1]
    assert final.kind == "finished" and final.story_id == draft.story_id
    saved = ready.library.get(draft.story_id)
    assert (saved.title, saved.story, saved.image_prompt) == (draft.title, draft.story, draft.image_prompt)
    assert saved.adapters_used == draft.adapters_used and saved.demo

    story_again = ready.new_story(draft, Recorder()).result()
    assert story_again.story_id == draft.story_id and story_again.concept == draft.concept
    assert story_again.image is not None and story_again.seed == draft.seed
    image_again = ready.new_image(story_again, Recorder(), seed=99).result()
    assert image_again.seed == 99 and image_again.story == story_again.story
    edited = ready.rerender(image_again, "a red lighthouse, storm, oil painting", "blurry", Recorder()).result()
    assert edited.image_prompt == "a red lighthouse, storm, oil painting" and edited.negative_prompt == "blurry"
    assert edited.sources["prompt"] == "edited by you"
    assert [s.id for s in ready.library.list()] == [draft.story_id]
    assert ready.library.get(draft.story_id).image_prompt == edited.image_prompt
    assert draft.seed == 5 and draft.image_prompt != edited.image_prompt, "callers' drafts are never changed"


def test_bare_images_are_not_saved(ready):
    drawn = ready.new_image(StoryDraft(idea="", image_prompt="a fox", width=512, height=512), Recorder()).result()
    assert drawn.image is not None and drawn.story_id is None
    assert ready.library.list() == []


def test_bad_requests_fail_at_once(ready):
    for idea in ("", "  \n "):
        with pytest.raises(InvalidRequestError, match="idea: must not be empty"):
            ready.generate(idea, StoryOptions(), Recorder())
    with pytest.raises(InvalidRequestError, match="too long"):
        ready.generate("word " * 5000, StoryOptions(), Recorder())
    with pytest.raises(InvalidRequestError, match="no concept"):
        ready.new_story(StoryDraft("x"), Recorder())
    with pytest.raises(InvalidRequestError, match="prompt: must not be empty"):
        ready.rerender(StoryDraft("x"), "  ", "", Recorder())
    with pytest.raises(ValueError, match="seed"):
        ready.new_image(StoryDraft("x", image_prompt="fox"), Recorder(), seed=-1)
    with pytest.raises(AdapterNotFoundError, match="nope"):
        ready.compare("hello", [None, "nope"], Recorder())
    with pytest.raises(InvalidRequestError, match="sampling"):
        ready.compare("hello", [None], Recorder(), sampling={"warmth": 2})
    with pytest.raises(ValueError, match="top_p"):
        ready.compare("hello", [None], Recorder(), sampling={"top_p": 0})
    with pytest.raises(InvalidRequestError, match="plan"):
        ready.set_vram_override("warp speed")
    assert ready.library.list() == []


def test_compare_runs_all_rows_in_one_batch(ready):
    rec = Recorder()
    adapters = [None, STORY_ROLE, PROMPT_ROLE]
    rows = ready.compare("Tell me about the sea.", adapters, rec, sampling={"max_tokens": 8, "seed": 1}).result()
    assert [row.adapter for row in rows] == adapters
    assert [row.label for row in rows] == ["base model", STORY_ROLE, PROMPT_ROLE]
    assert all(row.finish_reason in ("stop", "length") and row.num_completion_tokens > 0 for row in rows)
    assert all(row.tokens_per_s > 0 for row in rows)
    prefills = [s for s in ready.engine.stats().recent_steps if s.kind == "prefill" and len(s.request_ids) == 3]
    assert [s.adapters for s in prefills] == [tuple(adapters)]
    for i, row in enumerate(rows):
        streamed = "".join(e.text for e in rec.events if e.kind == "text_delta" and e.row == i)
        assert streamed == row.text


def test_adapter_manager(ready, tmp_path, demo_models):
    rows = {row.name: row for row in ready.list_adapters()}
    assert set(rows) == {STORY_ROLE, PROMPT_ROLE}
    writer = rows[STORY_ROLE]
    assert writer.builtin and writer.installed and writer.enabled and writer.state in ("ram", "gpu")
    assert writer.sha256 == sha256_file(demo_models.adapters[STORY_ROLE] / "adapter_model.safetensors")
    assert writer.rank == 16 and "q_proj" in writer.target_modules and writer.size_bytes > 0

    good = build_demo_adapter(tmp_path / "good", demo_models.llm, rank=4, alpha=8, target_modules=["q_proj"], seed=9)
    row = ready.import_adapter(good, "my-style")
    assert (row.name, row.role, row.builtin, row.installed, row.rank) == ("my-style", "custom", False, True, 4)
    assert row.state in ("ram", "gpu") and "my-style" in ready.engine.adapters.names()
    assert row.warnings == ()

    # An adapter trained for another model family loads, with a warning the user sees.
    cfg = json.loads((good / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "Qwen/Qwen2-7B"
    (good / "adapter_config.json").write_text(json.dumps(cfg))
    qwen = ready.import_adapter(good, "qwen-style")
    assert qwen.warnings and "different model family" in qwen.warnings[0]
    ready.remove_adapter("qwen-style")

    # Files fine, shapes wrong for this base: the engine refuses and nothing is kept.
    other_base = build_tiny_llama(tmp_path / "other-llm", hidden_size=32, num_heads=2, num_kv_heads=1)
    wrong = build_demo_adapter(tmp_path / "wrong", other_base, rank=4, alpha=8, target_modules=["q_proj"])
    with pytest.raises(AdapterError, match="wrong-shape"):
        ready.import_adapter(wrong, "wrong-shape")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AdapterError) as info:
        ready.import_adapter(tmp_path / "empty", "Bad Name!")
    assert len(info.value.problems) >= 3  # the name and both missing files, all at once
    assert {r.name for r in ready.list_adapters()} == {STORY_ROLE, PROMPT_ROLE, "my-style"}
    assert "wrong-shape" not in ready.engine.adapters.names()

    with pytest.raises(AdapterError, match="built-in"):
        ready.remove_adapter(STORY_ROLE)
    ready.remove_adapter("my-style")
    assert "my-style" not in ready.engine.adapters.names()
    assert {r.name for r in ready.list_adapters()} == {STORY_ROLE, PROMPT_ROLE}

    ready.set_adapter_enabled(STORY_ROLE, False)
    assert STORY_ROLE not in ready.engine.adapters.names()
    row = next(r for r in ready.list_adapters() if r.name == STORY_ROLE)
    assert not row.enabled and row.state == "disk"
    ready.settings.sampling["story"] = StepSampling(temperature=0.5, top_p=0.9, max_tokens=7)  # as the GUI does
    # greedy: a sampled prompt row (new_story draws a fresh seed) can start with the end token and write nothing
    ready.settings.sampling["prompt"] = StepSampling(temperature=0.0, top_p=1.0, max_tokens=8)
    draft = ready.new_story(StoryDraft("a storm", concept="A storm visits."), Recorder()).result()
    assert draft.sources["story"] == "base model (story-writer weights not installed)"
    assert draft.sampling["story"]["max_tokens"] == 7 and draft.sampling["story"]["temperature"] == 0.5
    ready.set_adapter_enabled(STORY_ROLE, True)
    assert STORY_ROLE in ready.engine.adapters.names()


def test_vram_override_is_saved(ready):
    ready.set_vram_override("cpu only").result()
    assert Settings.load().vram_plan_override == "cpu only"
    assert ready.status().plan_override == "cpu only" and ready.status().plan_name == "cpu only"
    ready.set_vram_override(None).result()
    assert Settings.load().vram_plan_override is None


def test_close_mid_generation_cancels_and_leaves_library_clean(tmp_path, demo_models, demo_renderer):
    studio = Studio(studio_settings(tmp_path), engine_factory=demo_factory(demo_models, demo_renderer))
    studio.start().result()
    streaming = threading.Event()
    rec = Recorder()

    def on_event(event):
        rec(event)
        if event.kind == "text_delta":
            streaming.set()

    options = StoryOptions(sampling={"concept": {"max_tokens": 200}})
    job = studio.generate("a storm over the sea", options, on_event)
    assert streaming.wait(timeout=120)
    studio.close()
    assert job.done
    with pytest.raises(CancelledError):
        job.result()
    assert rec.events[-1].text == "cancelled"
    assert studio.library.list() == []
    assert not [p for p in studio.library.root.iterdir() if p.name != "index.sqlite3"]
    with pytest.raises(NotReadyError, match="closed"):
        studio.generate("again", StoryOptions(), on_event)


def test_model_paths_that_do_not_exist(tmp_path):
    settings = Settings(data_dir=tmp_path / "data", llm_path=tmp_path / "no-llm", sdxl_path=tmp_path / "no.safetensors")
    with Studio(settings) as studio:
        assert not studio.is_demo
        future = studio.start()
        with pytest.raises(CheckpointError, match="does not exist") as info:
            future.result()
        assert "no-llm" in str(info.value) and "no.safetensors" in str(info.value)
        status = studio.status()
        assert not status.ready and not status.loading and "does not exist" in status.error
        assert studio.start() is not future, "a failed start can be retried"
