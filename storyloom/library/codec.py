"""Story <-> files: story.json fields, Markdown and HTML pages, PNG bytes with generation parameters."""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import json
from typing import TYPE_CHECKING, Any

from PIL import Image, PngImagePlugin

from storyloom.workflow.draft import StoryDraft

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

FORMAT_VERSION = 1
DEMO_LABEL = "DEMO output (tiny random models: the text is gibberish, the image abstract)"
_FIELDS = {f.name for f in dataclasses.fields(StoryDraft)} - {"image"}


def draft_to_record(draft: StoryDraft) -> dict[str, Any]:
    """The JSON record of a draft (everything but the image pixels)."""
    record = {name: getattr(draft, name) for name in sorted(_FIELDS)}
    record["adapters_used"] = [list(pair) for pair in draft.adapters_used]
    record["format_version"] = FORMAT_VERSION
    record["image_file"] = "image.png" if draft.image is not None else None
    return record


def record_to_draft(record: dict[str, Any], image: PILImage | None) -> StoryDraft:
    """Inverse of draft_to_record; unknown keys are ignored, missing ones take their defaults."""
    if not isinstance(record.get("idea"), str):
        raise ValueError("story.json has no 'idea' text")
    known = {k: v for k, v in record.items() if k in _FIELDS}
    known["adapters_used"] = [(str(n), str(h)) for n, h in known.get("adapters_used", [])]
    return StoryDraft(**known, image=image)


def record_to_json(record: dict[str, Any]) -> str:
    return json.dumps(record, indent=2, ensure_ascii=False, sort_keys=True) + "\n"


def generation_parameters(draft: StoryDraft) -> dict[str, Any]:
    """What produced the image, as stored in the PNG text chunk "storyloom"."""
    return {
        "prompt": draft.image_prompt,
        "negative_prompt": draft.negative_prompt,
        "seed": draft.seed,
        "width": draft.width,
        "height": draft.height,
        "steps": draft.steps,
        "models": draft.model_ids,
        "adapters": [list(pair) for pair in draft.adapters_used],
        "render": draft.render_params,
        "demo": draft.demo,
    }


def png_bytes(draft: StoryDraft) -> bytes:
    """The image as PNG with text chunks "parameters" (readable lines) and "storyloom" (JSON)."""
    assert draft.image is not None
    params = generation_parameters(draft)
    info = PngImagePlugin.PngInfo()
    info.add_itxt("parameters", _parameters_text(params))
    info.add_itxt("storyloom", json.dumps(params, ensure_ascii=False, sort_keys=True))
    if draft.title:
        info.add_itxt("Title", draft.title)
    buffer = io.BytesIO()
    draft.image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def read_png_parameters(data: bytes) -> dict[str, Any]:
    """The "storyloom" JSON chunk of a PNG written by png_bytes ({} when absent)."""
    with Image.open(io.BytesIO(data)) as img:
        text = img.text.get("storyloom") if hasattr(img, "text") else None
    return json.loads(text) if text else {}


def markdown_page(draft: StoryDraft, image_link: str | None) -> str:
    """The story as Markdown; ``image_link``: the picture relative to the page (None: no image)."""
    lines = [f"# {_md_line(draft.title or 'Untitled story')}", ""]
    if draft.demo:
        lines += [f"> **{DEMO_LABEL}**", ""]
    lines += [f"*Idea:* {_md_line(draft.idea)}", ""]
    if image_link:
        lines += [f"![{_md_line(draft.title or 'illustration')}]({image_link})", ""]
    lines += [draft.story.strip(), "", "## Concept", "", draft.concept.strip(), ""]
    lines += ["## Image prompt", "", draft.image_prompt.strip(), ""]
    if draft.negative_prompt:
        lines += [f"Negative: {draft.negative_prompt.strip()}", ""]
    lines += ["## Details", ""] + [f"- {key}: {value}" for key, value in _details(draft)] + [""]
    return "\n".join(lines)


def html_page(draft: StoryDraft) -> str:
    """A self-contained HTML page: every text escaped, the image embedded as a base64 data URI."""
    esc = html.escape
    title = esc(draft.title or "Untitled story")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{title}</title>",
        "<style>body{font-family:Georgia,serif;max-width:46em;margin:2em auto;padding:0 1em;line-height:1.6}"
        "img{max-width:100%;height:auto;border-radius:6px}.demo{background:#fff3cd;padding:.5em 1em}"
        "details{margin-top:2em;font-family:sans-serif;font-size:.9em}</style>",
        "</head><body>",
        f"<h1>{title}</h1>",
    ]
    if draft.demo:
        parts.append(f'<p class="demo"><strong>{esc(DEMO_LABEL)}</strong></p>')
    parts.append(f"<p><em>Idea:</em> {esc(draft.idea)}</p>")
    if draft.image is not None:
        data = base64.b64encode(png_bytes(draft)).decode("ascii")
        parts.append(f'<img alt="{title}" src="data:image/png;base64,{data}">')
    parts += [f"<p>{esc(p)}</p>" for p in _paragraphs(draft.story)]
    parts.append("<details><summary>How this story was made</summary>")
    parts.append("<h2>Concept</h2>")
    parts += [f"<p>{esc(p)}</p>" for p in _paragraphs(draft.concept)]
    parts.append(f"<h2>Image prompt</h2><p>{esc(draft.image_prompt)}</p>")
    if draft.negative_prompt:
        parts.append(f"<p>Negative: {esc(draft.negative_prompt)}</p>")
    parts.append("<ul>" + "".join(f"<li>{esc(k)}: {esc(str(v))}</li>" for k, v in _details(draft)) + "</ul>")
    parts += ["</details>", "</body></html>", ""]
    return "\n".join(parts)


def _details(draft: StoryDraft) -> list[tuple[str, str]]:
    rows = [("created", draft.created or ""), ("seed", str(draft.seed))]
    if draft.width and draft.height:
        rows.append(("size", f"{draft.width}x{draft.height}"))
    rows += [(f"model ({kind})", mid) for kind, mid in sorted(draft.model_ids.items())]
    rows += [(f"adapter {name}", f"sha256 {sha[:16]}") for name, sha in draft.adapters_used]
    rows += [(f"written by ({step})", src) for step, src in draft.sources.items()]
    rows += [(f"time ({step})", f"{seconds:.1f} s") for step, seconds in draft.timings.items()]
    return rows


def _parameters_text(params: dict[str, Any]) -> str:
    lines = [str(params["prompt"]), f"Negative prompt: {params['negative_prompt']}"]
    lines.append(f"Seed: {params['seed']}, Size: {params['width']}x{params['height']}, Steps: {params['steps']}")
    lines += [f"Model ({kind}): {mid}" for kind, mid in sorted(params["models"].items())]
    return "\n".join(lines)


def _paragraphs(text: str) -> list[str]:
    return [p.strip() for p in text.replace("\r\n", "\n").split("\n\n") if p.strip()]


def _md_line(text: str) -> str:
    return " ".join(text.split())
