"""StoryLibrary: round trip, search, delete, crash safety, index rebuild."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from engine import atomic as atomic_mod
from storyloom.library import LibraryError, StoryLibrary
from storyloom.library import store as store_mod
from storyloom.library.codec import read_png_parameters
from storyloom.workflow import StoryDraft


def make_draft(title: str = "The Lighthouse Cat", idea: str = "a cat keeps a lighthouse", **kw) -> StoryDraft:
    image = Image.new("RGB", (64, 48), (200, 40, 90))
    image.putpixel((3, 5), (1, 2, 3))
    fields = dict(
        idea=idea,
        concept="Characters: a cat. Setting: a storm.",
        title=title,
        story="The cat climbed the stairs.\n\nThe light came on.",
        image_prompt="cat, lighthouse, storm, oil painting",
        negative_prompt="blurry, text",
        seed=1234,
        width=64,
        height=48,
        steps=4,
        image=image,
        adapters_used=[("story-writer", "ab" * 32), ("sdxl-prompter", "cd" * 32)],
        sources={"concept": "base model", "story": "story-writer"},
        model_ids={"llm": "tiny-llama", "sdxl": "tiny-sdxl"},
        sampling={"story": {"temperature": 0.8, "max_tokens": 64}},
        timings={"concept": 1.5, "story": 2.0},
        render_params={"scheduler": "euler", "guidance": 5.0},
    )
    fields.update(kw)
    return StoryDraft(**fields)


def test_round_trip_keeps_every_field(tmp_path):
    lib = StoryLibrary(tmp_path / "lib")
    draft = make_draft()
    story_id = lib.save(draft)
    assert draft.story_id == story_id and draft.created
    loaded = lib.get(story_id)
    for name in ("idea", "concept", "title", "story", "image_prompt", "negative_prompt", "seed", "width"):
        assert getattr(loaded, name) == getattr(draft, name)
    assert loaded.adapters_used == draft.adapters_used
    assert loaded.sampling == draft.sampling and loaded.timings == draft.timings
    assert loaded.model_ids == draft.model_ids and loaded.sources == draft.sources
    assert loaded.created == draft.created and loaded.story_id == story_id
    assert loaded.image.size == (64, 48)
    assert loaded.image.getpixel((3, 5)) == (1, 2, 3)
    folder = tmp_path / "lib" / story_id
    assert sorted(p.name for p in folder.iterdir()) == ["image.png", "story.json", "story.md"]
    params = read_png_parameters((folder / "image.png").read_bytes())
    assert params["prompt"] == draft.image_prompt and params["seed"] == 1234
    assert params["adapters"] == [list(p) for p in draft.adapters_used]
    assert "# The Lighthouse Cat" in (folder / "story.md").read_text(encoding="utf-8")


def test_story_without_image(tmp_path):
    lib = StoryLibrary(tmp_path)
    story_id = lib.save(make_draft(image=None))
    assert lib.get(story_id).image is None
    assert lib.thumbnail(story_id) is None
    assert not lib.list()[0].has_image


def test_list_search_newest_first_and_thumbnail(tmp_path):
    lib = StoryLibrary(tmp_path)
    a = lib.save(make_draft("Moon Garden", "flowers on the moon", created="2026-01-01T00:00:00+00:00"))
    b = lib.save(make_draft("Sea Clock", "a clock under the sea", created="2026-02-01T00:00:00+00:00"))
    assert [s.id for s in lib.list()] == [b, a]
    assert [s.id for s in lib.list("moon")] == [a]
    assert [s.id for s in lib.list("UNDER THE")] == [b]
    assert lib.list("100%") == []
    assert lib.list("_") == []
    thumb = lib.thumbnail(a, size=32)
    assert max(thumb.size) == 32


def test_save_again_replaces_the_entry(tmp_path):
    lib = StoryLibrary(tmp_path)
    draft = make_draft()
    story_id = lib.save(draft)
    draft.title = "A New Title"
    draft.image = None
    assert lib.save(draft) == story_id
    assert lib.get(story_id).title == "A New Title"
    assert not (tmp_path / story_id / "image.png").exists()
    assert [s.title for s in lib.list()] == ["A New Title"]


def test_delete_and_unknown_ids(tmp_path):
    lib = StoryLibrary(tmp_path)
    story_id = lib.save(make_draft())
    lib.delete(story_id)
    assert lib.list() == []
    assert not (tmp_path / story_id).exists()
    for bad in (story_id, "../etc", "nope"):
        with pytest.raises(LibraryError, match="not in the library"):
            lib.get(bad)


def test_failure_mid_write_leaves_library_intact(tmp_path, monkeypatch):
    lib = StoryLibrary(tmp_path)
    keep = lib.save(make_draft("Kept"))
    calls = {"n": 0}
    real = atomic_mod.write_bytes_atomic

    def fail_on_second_file(path, data):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("simulated crash")
        real(path, data)

    monkeypatch.setattr(store_mod, "write_bytes_atomic", fail_on_second_file)
    monkeypatch.setattr(atomic_mod, "write_bytes_atomic", fail_on_second_file)
    replaced = make_draft("Replacement", story_id=keep)
    with pytest.raises(RuntimeError, match="simulated crash"):
        lib.save(replaced)
    calls["n"] = 0
    with pytest.raises(RuntimeError, match="simulated crash"):
        lib.save(make_draft("Brand new"))
    monkeypatch.undo()

    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["index.sqlite3", keep])
    reopened = StoryLibrary(tmp_path)
    assert [s.title for s in reopened.list()] == ["Kept"]
    assert reopened.get(keep).title == "Kept"


def test_crash_leftovers_are_cleaned_and_replaced_story_restored(tmp_path):
    lib = StoryLibrary(tmp_path)
    story_id = lib.save(make_draft("Original"))
    # A process died while building a folder, and another died between moving the old version away and
    # moving the new one in.
    half = tmp_path / f".tmp-{story_id}-deadbeef"
    half.mkdir()
    (half / "story.json").write_text('{"idea": "trunc', encoding="utf-8")
    (tmp_path / story_id).rename(tmp_path / f".trash-{story_id}")

    reopened = StoryLibrary(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["index.sqlite3", story_id])
    assert reopened.get(story_id).title == "Original"


@pytest.mark.parametrize("damage", ["garbage", "missing_table", "deleted", "stale"])
def test_damaged_index_is_rebuilt_from_folders(tmp_path, damage):
    lib = StoryLibrary(tmp_path)
    ids = {lib.save(make_draft(f"Story {i}", f"idea {i}")) for i in range(3)}
    index = tmp_path / "index.sqlite3"
    if damage == "garbage":
        index.write_bytes(b"\x00garbage" * 100)
    elif damage == "missing_table":
        import sqlite3

        with sqlite3.connect(index) as db:
            db.execute("DROP TABLE stories")
    elif damage == "deleted":
        index.unlink()
    else:
        import sqlite3

        with sqlite3.connect(index) as db:
            db.execute("DELETE FROM stories WHERE title = 'Story 1'")
    reopened = StoryLibrary(tmp_path)
    assert {s.id for s in reopened.list()} == ids
    assert {s.title for s in reopened.list("story")} == {"Story 0", "Story 1", "Story 2"}


def test_index_damaged_while_open_is_rebuilt_on_next_query(tmp_path):
    lib = StoryLibrary(tmp_path)
    story_id = lib.save(make_draft())
    (tmp_path / "index.sqlite3").write_bytes(b"not a database at all" * 50)
    assert [s.id for s in lib.list()] == [story_id]


def test_rebuild_skips_damaged_story_folders(tmp_path):
    lib = StoryLibrary(tmp_path)
    good = lib.save(make_draft("Good"))
    bad = lib.save(make_draft("Bad"))
    (tmp_path / bad / "story.json").write_text("{not json", encoding="utf-8")
    assert lib.rebuild_index() == 1
    assert [s.id for s in lib.list()] == [good]
    with pytest.raises(LibraryError, match="damaged"):
        lib.get(bad)


def test_story_json_is_plain_json(tmp_path):
    lib = StoryLibrary(tmp_path)
    story_id = lib.save(make_draft())
    record = json.loads((tmp_path / story_id / "story.json").read_text(encoding="utf-8"))
    assert record["format_version"] == 1 and record["image_file"] == "image.png"
    assert "image" not in record


def test_library_folder_not_writable(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(LibraryError, match="cannot be created"):
        StoryLibrary(blocker / "library")


def test_png_is_a_real_png(tmp_path):
    lib = StoryLibrary(tmp_path)
    story_id = lib.save(make_draft())
    data = (tmp_path / story_id / "image.png").read_bytes()
    with Image.open(io.BytesIO(data)) as img:
        assert img.format == "PNG"
        assert "Negative prompt: blurry, text" in img.text["parameters"]


def test_reading_while_another_thread_saves(tmp_path, monkeypatch):
    import os
    import threading
    import time

    real_replace = os.replace

    def slow_replace(src, dst):
        real_replace(src, dst)
        if ".trash-" in str(dst):  # widen the moment where the old version is moved away
            time.sleep(0.02)

    monkeypatch.setattr(store_mod.os, "replace", slow_replace)
    lib = StoryLibrary(tmp_path)
    first = lib.save(make_draft("First"))
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            draft = lib.get(first)
            for i in range(5):
                draft.title = f"First v{i}"
                lib.save(draft)
                lib.save(make_draft(f"Other {i}"))
        except BaseException as exc:  # reported below
            errors.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    while thread.is_alive():
        assert first in {s.id for s in lib.list()}
        assert lib.get(first).title.startswith("First")
    thread.join()
    assert errors == []
    assert len(lib.list()) == 6 and lib.get(first).title == "First v4"
