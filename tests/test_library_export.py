"""Exports (Markdown, self-contained HTML) and the file-name sanitiser."""

from __future__ import annotations

import base64
import html.parser
import io
import re

import pytest
from PIL import Image

from storyloom.library import LibraryError, StoryLibrary
from storyloom.library.filenames import MAX_NAME_CHARS, safe_filename
from tests.test_library_store import make_draft


class _Collector(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.text: list[str] = []
        self.img_src: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img":
            self.img_src.append(dict(attrs)["src"])

    def handle_data(self, data):
        self.text.append(data)


def test_html_is_self_contained_and_escaped(tmp_path):
    lib = StoryLibrary(tmp_path / "lib")
    evil = '<script>alert("x")</script> & friends'
    story_id = lib.save(make_draft(title=evil, story=f"Once {evil}.\n\nThe end."))
    page = lib.export(story_id, "html", tmp_path)
    assert page.parent == tmp_path and page.suffix == ".html"
    text = page.read_text(encoding="utf-8")
    assert "<script>" not in text
    parsed = _Collector()
    parsed.feed(text)
    assert "script" not in parsed.tags
    assert any(evil in chunk for chunk in parsed.text)
    (src,) = parsed.img_src
    assert src.startswith("data:image/png;base64,")
    with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as img:
        assert img.size == (64, 48)
        assert img.convert("RGB").getpixel((3, 5)) == (1, 2, 3)
    assert not re.search(r'src="(?!data:)', text)


def test_markdown_export_with_image_next_to_it(tmp_path):
    lib = StoryLibrary(tmp_path / "lib")
    story_id = lib.save(make_draft(title="Sea Clock"))
    page = lib.export(story_id, "md", tmp_path)
    assert page == tmp_path / "Sea Clock.md"
    text = page.read_text(encoding="utf-8")
    assert text.startswith("# Sea Clock\n")
    assert "(Sea%20Clock.png)" in text
    assert "The cat climbed the stairs." in text and "Negative: blurry, text" in text
    assert (tmp_path / "Sea Clock.png").exists()


def test_export_refuses_existing_target_unless_overwrite(tmp_path):
    lib = StoryLibrary(tmp_path / "lib")
    story_id = lib.save(make_draft(title="Twice"))
    target = tmp_path / "out.html"
    target.write_text("precious", encoding="utf-8")
    with pytest.raises(LibraryError, match="already exists"):
        lib.export(story_id, "html", target)
    assert target.read_text(encoding="utf-8") == "precious"
    lib.export(story_id, "html", target, overwrite=True)
    assert "Twice" in target.read_text(encoding="utf-8")
    # Markdown: the image file next to the page counts as a target too.
    (tmp_path / "Twice.png").write_bytes(b"keep")
    with pytest.raises(LibraryError, match="already exists"):
        lib.export(story_id, "md", tmp_path)
    assert not (tmp_path / "Twice.md").exists()


def test_export_bad_format_and_missing_folder(tmp_path):
    lib = StoryLibrary(tmp_path / "lib")
    story_id = lib.save(make_draft())
    with pytest.raises(LibraryError, match="format 'pdf'"):
        lib.export(story_id, "pdf", tmp_path)
    with pytest.raises(LibraryError, match="does not exist"):
        lib.export(story_id, "md", tmp_path / "nope" / "x.md")


def test_export_title_with_path_traversal_stays_in_folder(tmp_path):
    lib = StoryLibrary(tmp_path / "lib")
    out = tmp_path / "out"
    out.mkdir()
    story_id = lib.save(make_draft(title="../../etc/passwd"))
    page = lib.export(story_id, "html", out)
    assert page.parent == out
    assert page.name == "etc passwd.html"


@pytest.mark.parametrize(
    ("title", "expected"),
    [
        ("The Lighthouse Cat", "The Lighthouse Cat"),
        ("../../etc/passwd", "etc passwd"),
        ("..\\..\\windows\\system32", "windows system32"),
        ("..", "story"),
        ("   ", "story"),
        ("", "story"),
        ("CON", "CON_"),
        ("con.txt", "con_.txt"),
        ("Lpt1", "Lpt1_"),
        ("COM9 . tale", "COM9_. tale"),
        ("Console", "Console"),
        ("a\x00b\x1fc\u202ed", "a b c d"),
        ('what? "no": <yes>|*', "what no yes"),
        ("trailing dots...", "trailing dots"),
        (".hidden", "hidden"),
        ("ﬁne ligature", "fine ligature"),
    ],
)
def test_safe_filename(title, expected):
    assert safe_filename(title) == expected


def test_safe_filename_caps_length():
    name = safe_filename("word " * 100)
    assert 0 < len(name) <= MAX_NAME_CHARS and not name.endswith(" ")
