"""`storyloom`: the command line. Every command exits 0 on success, 2 on bad input, 1 on other failures.

Errors are one readable line on stderr; ``--verbose`` adds logging and, for unexpected failures, tracebacks.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from engine.errors import AdapterError, CheckpointError, StoryloomError
from storyloom.library import LibraryError
from storyloom.workflow.events import StoryEvent
from storyloom.workflow.job import describe_error
from storyloom.workflow.parsing import printable

if TYPE_CHECKING:
    from storyloom.settings import Settings
    from storyloom.studio import Studio
    from storyloom.workflow.draft import StoryDraft

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
DEMO_IDEA = "A lighthouse keeper befriends the storm that visits her island every autumn."
DEMO_BANNER = (
    "DEMO: tiny random models. The text is gibberish and the image abstract; they only show the pipeline "
    "working. Configure real models with `storyloom settings set models.llm_path ...`."
)
BAR_WIDTH = 30


class UsageError(StoryloomError, ValueError):
    """The command line names something that does not exist or cannot be used."""


# Errors that mean "the user asked for something impossible" (InvalidRequestError is a ValueError): exit 2.
BAD_INPUT_ERRORS: tuple[type[BaseException], ...] = (ValueError, AdapterError, CheckpointError, LibraryError)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status (the console script passes it to sys.exit)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse reports usage errors (2) and --help (0) this way
        return int(exc.code or 0)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.handler(args) or EXIT_OK)
    except KeyboardInterrupt:
        print("storyloom: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BAD_INPUT_ERRORS as exc:
        print(f"storyloom: error: {describe_error(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:
        if args.verbose:
            log.exception("command failed")
        print(f"storyloom: error: {describe_error(exc)}", file=sys.stderr)
        return EXIT_FAILURE


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="storyloom", description="Stories and illustrations from one local Llama-3 with LoRA adapters."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress and show tracebacks")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    gen = commands.add_parser("generate", help="write a story (and its illustration) from an idea")
    gen.add_argument("idea", help="the story idea, in a sentence or two")
    _add_generate_options(gen)
    gen.set_defaults(handler=cmd_generate)

    demo = commands.add_parser("demo", help="run the whole pipeline on tiny demo models (gibberish output)")
    _add_generate_options(demo)
    demo.set_defaults(handler=cmd_demo, idea=DEMO_IDEA)

    adapters = commands.add_parser("adapters", help="list, add or remove LoRA adapters")
    adapter_cmds = adapters.add_subparsers(dest="action", required=True, metavar="ACTION")
    adapter_cmds.add_parser("list", help="list adapters").set_defaults(handler=cmd_adapters_list)
    add = adapter_cmds.add_parser("add", help="import a PEFT adapter folder")
    add.add_argument("path", type=Path, help="folder with adapter_config.json and adapter_model.safetensors")
    add.add_argument("--name", required=True, help="name to serve the adapter under")
    add.add_argument("--role", default="custom", help="role (default: custom)")
    add.set_defaults(handler=cmd_adapters_add)
    remove = adapter_cmds.add_parser("remove", help="remove an imported adapter")
    remove.add_argument("name")
    remove.set_defaults(handler=cmd_adapters_remove)

    library = commands.add_parser("library", help="list, show or export saved stories")
    library_cmds = library.add_subparsers(dest="action", required=True, metavar="ACTION")
    lst = library_cmds.add_parser("list", help="list stories, newest first")
    lst.add_argument("--search", help="only stories whose title or idea contains this text")
    lst.set_defaults(handler=cmd_library_list)
    show = library_cmds.add_parser("show", help="print one story")
    show.add_argument("id")
    show.set_defaults(handler=cmd_library_show)
    export = library_cmds.add_parser("export", help="export a story as Markdown or HTML")
    export.add_argument("id")
    export.add_argument("--format", choices=("md", "html"), default="md", dest="fmt")
    export.add_argument("--out", type=Path, default=Path("."), help="folder or file (default: this folder)")
    export.add_argument("--overwrite", action="store_true", help="replace an existing file")
    export.set_defaults(handler=cmd_library_export)

    serve = commands.add_parser("serve", help="run the local OpenAI-compatible API")
    serve.add_argument("--host", default=None, help="address to bind (default: the settings, 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port (default: the settings, 8765)")
    serve.add_argument("--api-key", default=None, help="require this bearer key (needed beyond localhost)")
    serve.set_defaults(handler=cmd_serve)

    settings = commands.add_parser("settings", help="show or change settings")
    settings_cmds = settings.add_subparsers(dest="action", required=True, metavar="ACTION")
    settings_cmds.add_parser("show", help="print the settings").set_defaults(handler=cmd_settings_show)
    set_cmd = settings_cmds.add_parser("set", help="set KEY (e.g. models.llm_path, image.width) to VALUE")
    set_cmd.add_argument("key")
    set_cmd.add_argument("value")
    set_cmd.set_defaults(handler=cmd_settings_set)
    unset = settings_cmds.add_parser("unset", help="clear KEY back to its default")
    unset.add_argument("key")
    unset.set_defaults(handler=cmd_settings_unset)
    return parser


def _add_generate_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=None, help="seed for the text and the image")
    parser.add_argument("--no-image", action="store_true", help="write the story only")
    parser.add_argument("--out", type=Path, default=None, help="also export the story (Markdown + PNG) here")


# --- generate / demo ------------------------------------------------------------------------------------
def cmd_generate(args: argparse.Namespace, settings: Settings | None = None) -> int:
    from storyloom.studio import Studio
    from storyloom.workflow.draft import StoryOptions

    if not args.idea.strip():
        raise UsageError("idea: must not be empty; describe the story you want in a sentence")
    options = StoryOptions(seed=args.seed, render_image=not args.no_image)
    if args.out is not None:
        _check_out_folder(args.out)
    settings = settings or _load_settings()
    with Studio(settings) as studio:
        if studio.is_demo:
            print(DEMO_BANNER)
        print("Loading models...", flush=True)
        studio.start(render=not args.no_image).result()
        idea = studio.check_idea(args.idea)
        printer = TerminalPrinter(sys.stdout)
        job = studio.generate(idea, options, printer)
        try:
            draft: StoryDraft = job.result()
        except KeyboardInterrupt:
            job.cancel()
            raise
        print(f"\nSaved to the library as {draft.story_id} ({studio.library.root / str(draft.story_id)})")
        if args.out is not None:
            page = studio.library.export(str(draft.story_id), "md", args.out)
            print(f"Exported to {page}")
        if studio.is_demo:
            print(DEMO_BANNER)
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    settings = _load_settings()
    settings.use_demo_models = True
    return cmd_generate(args, settings)


def _check_out_folder(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out: '{out}' is a file, not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--out: folder '{out}' cannot be created: {exc.strerror or exc}") from exc


class TerminalPrinter:
    """Prints a story job's events: streamed concept and story, the prompt, a progress bar for the image.

    The prompt row finishes while the story still streams; its text waits until the story is done.
    """

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.streaming: str | None = None
        self.held: list[str] = []

    def __call__(self, event: StoryEvent) -> None:
        handler: Callable[[StoryEvent], None] | None = getattr(self, f"_on_{event.kind}", None)
        if handler is not None:
            handler(event)
        self.out.flush()

    def _on_step_started(self, event: StoryEvent) -> None:
        if event.step in ("concept", "story"):
            self.streaming = event.step
            self._write(f"\n== {event.step.capitalize()} ({event.source}) ==\n")

    def _on_text_delta(self, event: StoryEvent) -> None:
        if event.step == self.streaming:
            self._write(printable(event.text))  # model output may hold terminal control sequences

    def _on_step_finished(self, event: StoryEvent) -> None:
        if event.step == self.streaming:
            self.streaming = None
            self._write("\n")
        if event.step == "story" and event.draft is not None:
            self._write(f"\nTitle: {event.draft.title}\n")
        if event.step == "prompt":
            self.held.append(f"\n== Image prompt ({event.source}) ==\n{event.text}\n")
        self._release()

    def _on_image_progress(self, event: StoryEvent) -> None:
        if event.progress is None:
            return
        step, total = event.progress
        filled = BAR_WIDTH * step // max(total, 1)
        self._write(f"\rDrawing [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {step}/{total}")

    def _on_image_done(self, event: StoryEvent) -> None:
        self._write("\nImage done.\n")

    def _on_notice(self, event: StoryEvent) -> None:
        self.held.append(f"\nNote: {event.text}\n")
        self._release()

    def _release(self) -> None:
        """Print what waited for a stream to end, unless a stream is still going."""
        if self.streaming is None:
            self._write("".join(self.held))
            self.held.clear()

    def _write(self, text: str) -> None:
        self.out.write(text)


# --- adapters -------------------------------------------------------------------------------------------
def cmd_adapters_list(args: argparse.Namespace) -> int:
    with _studio() as studio:
        rows = studio.list_adapters()
        if studio.is_demo:
            print("Demo mode: the built-in adapters run with the demo models' own random weights.")
    if not rows:
        print("No adapters.")
        return EXIT_OK
    header = ("NAME", "ROLE", "STATE", "ENABLED", "RANK", "SIZE", "SHA256", "NOTE")
    table = [header]
    for row in rows:
        note = "built-in" if row.builtin else "imported"
        if not row.installed:
            note += ", weights not installed"
        table.append(
            (
                row.name,
                row.role,
                row.state,
                "yes" if row.enabled else "no",
                str(row.rank or "-"),
                _size(row.size_bytes),
                row.sha256[:12] or "-",
                note,
            )
        )
    _print_table(table)
    return EXIT_OK


def cmd_adapters_add(args: argparse.Namespace) -> int:
    with _studio() as studio:
        row = studio.import_adapter(args.path, args.name, role=args.role)
    print(f"Imported adapter '{row.name}' (role {row.role}, rank {row.rank}, sha256 {row.sha256[:12]})")
    return EXIT_OK


def cmd_adapters_remove(args: argparse.Namespace) -> int:
    with _studio() as studio:
        studio.remove_adapter(args.name)
    print(f"Removed adapter '{args.name}'")
    return EXIT_OK


# --- library --------------------------------------------------------------------------------------------
def cmd_library_list(args: argparse.Namespace) -> int:
    with _studio() as studio:
        stories = studio.library.list(args.search)
    if not stories:
        print("No stories." if not args.search else f"No stories match '{args.search}'.")
        return EXIT_OK
    table = [("ID", "CREATED", "TITLE", "IDEA", "")]
    for story in stories:
        created = story.created[:16].replace("T", " ")
        table.append((story.id, created, _clip(story.title, 40), _clip(story.idea, 50), "[demo]" * story.demo))
    _print_table(table)
    return EXIT_OK


def cmd_library_show(args: argparse.Namespace) -> int:
    with _studio() as studio:
        draft = studio.library.get(args.id)
        folder = studio.library.root / args.id
    lines = [f"# {draft.title}"]
    if draft.demo:
        lines.append("[DEMO output: tiny random models]")
    lines += [
        f"id: {draft.story_id}    created: {draft.created}",
        f"idea: {draft.idea}",
        "",
        draft.story,
        "",
        "## Concept",
        draft.concept,
        "",
        "## Image prompt",
        draft.image_prompt,
        f"Negative: {draft.negative_prompt}",
        f"seed: {draft.seed}    size: {draft.width}x{draft.height}    steps: {draft.steps}",
    ]
    lines += [f"model ({kind}): {mid}" for kind, mid in sorted(draft.model_ids.items())]
    lines += [f"adapter: {name} (sha256 {sha[:16]})" for name, sha in draft.adapters_used]
    lines += [f"written by ({step}): {source}" for step, source in draft.sources.items()]
    if draft.image is not None:
        lines.append(f"image: {folder / 'image.png'}")
    print("\n".join(lines))
    return EXIT_OK


def cmd_library_export(args: argparse.Namespace) -> int:
    with _studio() as studio:
        page = studio.library.export(args.id, args.fmt, args.out, overwrite=args.overwrite)
    print(f"Exported to {page}")
    return EXIT_OK


# --- serve ----------------------------------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace) -> int:
    from storyloom.api.server import run_server

    settings = _load_settings()
    host = args.host or settings.api_host
    port = args.port if args.port is not None else settings.api_port
    if not 1 <= port <= 65535:
        raise UsageError(f"--port: must be in 1..65535, got {port}")
    run_server(settings, host, port, args.api_key or settings.api_key)
    return EXIT_OK


# --- settings -------------------------------------------------------------------------------------------
def cmd_settings_show(args: argparse.Namespace) -> int:
    import tomli_w

    from storyloom import paths

    settings = _load_settings()
    print(f"# {paths.settings_file()}")
    print(f"# data folder: {settings.data_dir}")
    doc = settings.to_toml_dict()
    if "key" in doc.get("api", {}):
        doc["api"]["key"] = "(set, hidden)"
    print(tomli_w.dumps(doc), end="")
    return EXIT_OK


def cmd_settings_set(args: argparse.Namespace) -> int:
    _change_setting(args.key, _parse_value(args.value))
    print(f"{args.key} = {args.value}")
    return EXIT_OK


def cmd_settings_unset(args: argparse.Namespace) -> int:
    _change_setting(args.key, None)
    print(f"{args.key} cleared")
    return EXIT_OK


def _change_setting(key: str, value: Any) -> None:
    from storyloom.settings import Settings

    settings = _load_settings()
    doc = settings.to_toml_dict()
    known = _setting_keys()
    if key not in known:
        raise UsageError(f"settings: unknown key '{key}'; known keys: {', '.join(sorted(known))}")
    *parents, leaf = key.split(".")
    table = doc
    for part in parents:
        table = table.setdefault(part, {})
    if value is None:
        table.pop(leaf, None)
    else:
        table[leaf] = value
    try:
        updated = Settings.from_toml_dict(doc)
    except ValueError as exc:
        raise UsageError(f"settings: {describe_error(exc)}") from exc
    updated.save()


def _setting_keys() -> set[str]:
    from storyloom.settings import TOML_SECTIONS, Settings

    keys = {f"{section}.{key}" for section, table in TOML_SECTIONS.items() for key in table}
    doc = Settings().to_toml_dict()
    keys |= {f"sampling.{step}.{k}" for step, values in doc["sampling"].items() for k in values}
    keys |= {f"image.{k}" for k in doc["image"]}
    return keys


def _parse_value(text: str) -> Any:
    """A TOML value (number, true/false) when the text is one, else the text itself."""
    from storyloom.settings import tomllib

    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


# --- helpers --------------------------------------------------------------------------------------------
def _load_settings() -> Settings:
    from storyloom.settings import Settings, SettingsError

    try:
        return Settings.load()
    except SettingsError as exc:
        raise UsageError(describe_error(exc)) from exc


def _studio() -> Studio:
    from storyloom.studio import Studio

    return Studio(_load_settings())


def _print_table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _size(num_bytes: int) -> str:
    if num_bytes <= 0:
        return "-"
    if num_bytes < 1024:
        return f"{num_bytes} B"
    size = num_bytes / 1024
    for unit in ("KB", "MB"):
        if size < 1024:
            return f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"
