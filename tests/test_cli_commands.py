"""`storyloom` commands end to end, in-process, on the demo models; every bad input exits 2 with one line."""

from __future__ import annotations

import os

import pytest

from storyloom import cli, paths
from storyloom.library import StoryLibrary
from storyloom.settings import Settings
from tests.test_workflow_pipeline import demo_models

__all__ = ["demo_models"]  # the session fixture shared with the pipeline tests


@pytest.fixture
def data_dir(demo_models):
    """The test's data folder, with the session's demo models in it (so nothing is rebuilt)."""
    folder = paths.data_dir()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "demo-models").symlink_to(demo_models.root, target_is_directory=True)
    return folder


@pytest.fixture
def quick(data_dir):
    """Settings for quick runs: short answers, one denoising step."""
    for key, value in (
        ("sampling.concept.max_tokens", "16"),
        ("sampling.story.max_tokens", "24"),
        ("sampling.prompt.max_tokens", "12"),
        ("image.steps", "1"),
    ):
        assert cli.main(["settings", "set", key, value]) == 0
    return data_dir


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("storyloom: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0]


def test_generate_then_library_commands(quick, tmp_path, capsys):
    out_dir = tmp_path / "out"
    code, out, err = run(capsys, "generate", "a cat keeps a lighthouse", "--seed", "3", "--out", str(out_dir))
    assert code == 0, err
    assert out.count(cli.DEMO_BANNER) == 2
    assert "== Concept (base model) ==" in out and "== Story (story-writer) ==" in out
    assert "== Image prompt (sdxl-prompter) ==" in out and "Drawing [" in out and "1/1" in out
    library = StoryLibrary(quick / "library")
    (story,) = library.list()
    assert f"Saved to the library as {story.id}" in out
    exported = sorted(p.suffix for p in out_dir.iterdir())
    assert exported == [".md", ".png"]

    code, out, _ = run(capsys, "library", "list")
    assert code == 0 and story.id in out and "[demo]" in out
    code, out, _ = run(capsys, "library", "list", "--search", "no such thing")
    assert code == 0 and "No stories match" in out
    code, out, _ = run(capsys, "library", "show", story.id)
    assert code == 0 and story.title in out and "DEMO" in out and "adapter: story-writer" in out

    page = tmp_path / "story.html"
    code, out, _ = run(capsys, "library", "export", story.id, "--format", "html", "--out", str(page))
    assert code == 0 and page.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    code, _, err = run(capsys, "library", "export", story.id, "--format", "html", "--out", str(page))
    assert_one_line_error(code, err, "already exists")
    code, _, _ = run(capsys, "library", "export", story.id, "--format", "html", "--out", str(page), "--overwrite")
    assert code == 0


def test_generate_without_image_and_demo(quick, capsys):
    code, out, err = run(capsys, "generate", "a storm", "--no-image")
    assert code == 0, err
    assert "Drawing" not in out
    (story,) = StoryLibrary(quick / "library").list()
    assert not story.has_image

    code, out, err = run(capsys, "demo")
    assert code == 0, err
    assert out.startswith(cli.DEMO_BANNER) and "Image done." in out
    assert len(StoryLibrary(quick / "library").list()) == 2


def test_bad_story_input(quick, capsys):
    code, _, err = run(capsys, "generate", "   ")
    assert_one_line_error(code, err, "idea: must not be empty")
    code, _, err = run(capsys, "generate", "storm " * 3000, "--no-image")
    assert_one_line_error(code, err, "too long", "1024 tokens")
    code, _, err = run(capsys, "library", "show", "20990101-000000-deadbeef")
    assert_one_line_error(code, err, "not in the library")
    code, _, err = run(capsys, "library", "export", "x", "--format", "pdf")
    assert code == 2 and "invalid choice" in err
    assert run(capsys, "generate")[0] == 2
    assert run(capsys, "--help")[0] == 0


def test_model_paths_that_do_not_exist(data_dir, tmp_path, capsys):
    assert cli.main(["settings", "set", "models.llm_path", str(tmp_path / "missing-llm")]) == 0
    assert cli.main(["settings", "set", "models.sdxl_path", str(tmp_path / "missing.safetensors")]) == 0
    capsys.readouterr()
    code, _, err = run(capsys, "generate", "a storm")
    assert_one_line_error(code, err, "missing-llm: does not exist", "missing.safetensors: does not exist")


def test_library_folder_not_writable(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder", encoding="utf-8")
    monkeypatch.setenv(paths.DATA_DIR_ENV, str(blocker / "data"))
    for argv in (["library", "list"], ["generate", "a storm"]):
        code, _, err = run(capsys, *argv)
        assert_one_line_error(code, err, "library folder", "cannot be created")


def test_adapter_commands(data_dir, demo_models, capsys):
    code, out, _ = run(capsys, "adapters", "list")
    assert code == 0 and "story-writer" in out and "weights not installed" in out
    source = demo_models.adapters["sdxl-prompter"]
    code, out, err = run(capsys, "adapters", "add", str(source), "--name", "my-style")
    assert code == 0, err
    assert "Imported adapter 'my-style'" in out
    code, out, _ = run(capsys, "adapters", "list")
    assert "my-style" in out and "imported" in out
    code, _, err = run(capsys, "adapters", "add", str(source), "--name", "my-style")
    assert_one_line_error(code, err, "already imported")
    code, _, err = run(capsys, "adapters", "add", str(data_dir / "nowhere"), "--name", "x")
    assert_one_line_error(code, err, "does not exist")
    code, _, err = run(capsys, "adapters", "remove", "story-writer")
    assert_one_line_error(code, err, "built-in")
    assert run(capsys, "adapters", "remove", "my-style")[0] == 0
    code, _, err = run(capsys, "adapters", "remove", "my-style")
    assert_one_line_error(code, err, "unknown adapter 'my-style'")


def test_settings_commands(capsys):
    code, out, _ = run(capsys, "settings", "show")
    assert code == 0 and "[image]" in out and str(paths.settings_file()) in out
    assert run(capsys, "settings", "set", "image.width", "768")[0] == 0
    assert run(capsys, "settings", "set", "api.key", "s3cret")[0] == 0
    assert Settings.load().image.width == 768
    code, out, _ = run(capsys, "settings", "show")
    assert "s3cret" not in out and "hidden" in out
    code, _, err = run(capsys, "settings", "set", "image.width", "770")
    assert_one_line_error(code, err, "width", "multiple of 8", "770")
    code, _, err = run(capsys, "settings", "set", "image.colour", "red")
    assert_one_line_error(code, err, "unknown key 'image.colour'")
    assert run(capsys, "settings", "unset", "api.key")[0] == 0
    assert Settings.load().api_key is None and Settings.load().image.width == 768


def test_serve_refuses_open_bind_without_key(capsys, monkeypatch):
    code, _, err = run(capsys, "serve", "--host", "0.0.0.0", "--port", "8765")
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    calls = []
    monkeypatch.setattr("storyloom.api.server.run_server", lambda *args: calls.append(args))
    assert run(capsys, "serve", "--port", "9000", "--api-key", "k")[0] == 0
    settings, host, port, key = calls[0]
    assert (host, port, key) == ("127.0.0.1", 9000, "k") and isinstance(settings, Settings)


def test_python_dash_m_entry_point():
    import subprocess
    import sys

    env = {**os.environ}
    result = subprocess.run([sys.executable, "-m", "storyloom", "--help"], capture_output=True, text=True, env=env)
    assert result.returncode == 0 and "generate" in result.stdout


def test_unexpected_failures_exit_1_with_one_line(monkeypatch, capsys, caplog):
    def broken(args):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(cli, "cmd_library_list", broken)
    code, _, err = run(capsys, "library", "list")
    assert code == 1 and err.strip() == "storyloom: error: disk on fire"
    assert "Traceback" not in caplog.text
    code, _, err = run(capsys, "--verbose", "library", "list")
    assert code == 1 and "Traceback" in caplog.text, "--verbose logs the traceback"


def test_printer_keeps_the_prompt_out_of_the_streaming_story():
    import io

    from storyloom.workflow import StoryDraft, StoryEvent

    out = io.StringIO()
    printer = cli.TerminalPrinter(out)
    for event in (
        StoryEvent("step_started", "story", source="story-writer"),
        StoryEvent("step_started", "prompt", source="sdxl-prompter"),
        StoryEvent("text_delta", "story", text="Once \x1b[2Jupon"),
        StoryEvent("text_delta", "prompt", text="fox, "),
        StoryEvent("step_finished", "prompt", text="fox, forest", source="sdxl-prompter"),
        StoryEvent("notice", "prompt", text="trimmed"),
        StoryEvent("text_delta", "story", text=" a time."),
        StoryEvent("step_finished", "story", text="Once upon a time.", draft=StoryDraft("i", title="Once")),
        StoryEvent("image_progress", "image", progress=(1, 2)),
        StoryEvent("image_progress", "image", progress=(2, 2)),
        StoryEvent("image_done", "image"),
    ):
        printer(event)
    text = out.getvalue()
    assert "Once [2Jupon a time.\n" in text and "\x1b" not in text
    assert text.index("a time.") < text.index("Title: Once") < text.index("fox, forest") < text.index("Note: trimmed")
    assert "fox, \n" not in text, "prompt deltas are not streamed into the story"
    assert text.endswith(f"\rDrawing [{'#' * 30}] 2/2\nImage done.\n")
