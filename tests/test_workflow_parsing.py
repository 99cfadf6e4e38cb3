"""Parsing model output into title/body and prompt/negative; fitting prompts to CLIP's 77 tokens."""

from __future__ import annotations

import pytest

from storyloom.workflow.parsing import UNTITLED, fit_clip_prompt, parse_image_prompt, parse_story


@pytest.mark.parametrize(
    ("text", "title", "body"),
    [
        (
            "Title: The Glass Fox\n\nOnce upon a time.\n\nThe end.",
            "The Glass Fox",
            "Once upon a time.\n\nThe end.",
        ),
        ('**Title:** "The Glass Fox"\nBody here.', "The Glass Fox", "Body here."),
        ("# The Glass Fox\n\nBody.", "The Glass Fox", "Body."),
        ("The Glass Fox\n\nOnce upon a time.", "The Glass Fox", "Once upon a time."),
        ("x" * 130 + "\nmore", "x" * 80 + "…", "x" * 130 + "\nmore"),
        ("TITLE - Night Train\nBody.", "Night Train", "Body."),
        (
            "The fox was made of glass. It shone.",
            "The fox was made of glass.",
            "The fox was made of glass. It shone.",
        ),
        ("", UNTITLED, ""),
        ("Title: ***\nBody.", UNTITLED, "Body."),
        ("Bell\x07 Title\r\nBo\x1bdy\tok.", "Bell Title", "Body\tok."),
    ],
)
def test_parse_story(text, title, body):
    assert parse_story(text) == (title, body)


def test_parse_story_caps_long_titles():
    title, _ = parse_story("Title: " + "word " * 60)
    assert len(title) <= 81 and title.endswith("…")


@pytest.mark.parametrize(
    ("text", "prompt", "negative"),
    [
        (
            "a glass fox, snowy forest, moonlight\nNegative: blurry, text",
            "a glass fox, snowy forest, moonlight",
            "blurry, text",
        ),
        ("Prompt: fox, forest\nNegative prompt: lowres", "fox, forest", "lowres"),
        ("fox\nforest,, night.\n**Negative:** watermark", "fox, forest, night", "watermark"),
        ("fox, forest", "fox, forest", ""),
        ("Negative: only this", "", "only this"),
    ],
)
def test_parse_image_prompt(text, prompt, negative):
    assert parse_image_prompt(text) == (prompt, negative)


def count_words(text: str) -> int:
    """A stand-in tokenizer: BOS + EOS + one token per word piece split at commas and spaces."""
    return 2 + len(text.replace(",", " , ").split())


def test_fit_keeps_prompt_that_fits():
    prompt = "fox, forest, night"
    assert fit_clip_prompt(prompt, count_words, limit=75) is prompt


def test_fit_keeps_leading_tags():
    prompt = ", ".join(f"tag{i} word" for i in range(40))
    fitted = fit_clip_prompt(prompt, count_words, limit=20)
    assert count_words(fitted) <= 20
    assert fitted == ", ".join(f"tag{i} word" for i in range(6))  # 6 tags = 12 words + 5 commas + 2 = 19


def test_fit_cuts_one_long_tag_by_words_then_chars():
    fitted = fit_clip_prompt("a b c d e f g h i j", count_words, limit=5)
    assert fitted == "a b c"
    fitted = fit_clip_prompt("x" * 100, lambda s: 2 + len(s) // 10, limit=7)
    assert fitted == "x" * 59
