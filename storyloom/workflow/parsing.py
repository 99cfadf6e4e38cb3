"""Turning model output into story parts: title and body, SDXL prompt and negative, CLIP-sized prompts."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable

UNTITLED = "Untitled story"
MAX_TITLE_CHARS = 80
MAX_TITLE_LINE_CHARS = 120  # a longer first line is a paragraph, not a title

_TITLE_LINE = re.compile(r"^\W*title\W*?[:\-–—]\s*(?P<title>.+)$", re.IGNORECASE)
_NEGATIVE_LINE = re.compile(r"^\W*negative(?:\s+prompt)?\W*?[:\-–—]\s*(?P<negative>.*)$", re.IGNORECASE)
_PROMPT_PREFIX = re.compile(r"^\W*(?:sdxl\s+)?(?:positive\s+)?prompt\W*?[:\-–—]\s*", re.IGNORECASE)
_DECORATION = " \t\"'*_#`“”‘’"


def printable(text: str) -> str:
    """``text`` without control characters (models can emit them), keeping newlines and tabs."""
    return "".join(ch for ch in text if ch in "\n\t" or not unicodedata.category(ch).startswith("C"))


def parse_story(text: str) -> tuple[str, str]:
    """(title, body) from the story-writer's output.

    The title is the first line when it is a "Title: ..." line, a Markdown heading, or a short line followed
    by more text (the story-writer's format); otherwise the first sentence, and the body keeps all the text.
    Never returns an empty title.
    """
    text = printable(text)
    lines = text.strip().splitlines()
    if not lines:
        return UNTITLED, ""
    first, rest = lines[0], "\n".join(lines[1:]).strip()
    match = _TITLE_LINE.match(first)
    if match:
        return _clean_title(match.group("title")), rest
    if first.lstrip().startswith("#"):
        return _clean_title(first.lstrip().lstrip("#")), rest
    if rest and len(first.strip()) <= MAX_TITLE_LINE_CHARS:
        return _clean_title(first), rest
    sentence = re.split(r"(?<=[.!?])\s", first.strip(), maxsplit=1)[0]
    return _clean_title(sentence), text.strip()


def parse_image_prompt(text: str) -> tuple[str, str]:
    """(prompt, negative) from the sdxl-prompter's output: prompt lines, then a "Negative: ..." line.

    Prompt lines are joined with commas; a "Prompt:" label is dropped. The negative is "" when absent.
    """
    prompt_lines: list[str] = []
    negative = ""
    for line in printable(text).strip().splitlines():
        match = _NEGATIVE_LINE.match(line)
        if match:
            negative = match.group("negative")
            break
        prompt_lines.append(_PROMPT_PREFIX.sub("", line))
    return _tidy_tags(", ".join(prompt_lines)), _tidy_tags(negative)


def fit_clip_prompt(prompt: str, count_tokens: Callable[[str], int], limit: int) -> str:
    """``prompt`` itself when it fits CLIP's ``limit``; otherwise the leading comma-separated tags that fit.

    A first tag too long on its own is cut word by word (then character by character).
    """
    if count_tokens(prompt) <= limit:
        return prompt
    kept: list[str] = []
    for tag in (t.strip() for t in prompt.split(",")):
        if tag and count_tokens(", ".join([*kept, tag])) > limit:
            break
        if tag:
            kept.append(tag)
    if kept:
        return ", ".join(kept)
    words: list[str] = []
    for word in prompt.split():
        if count_tokens(" ".join([*words, word])) > limit:
            break
        words.append(word)
    if words:
        return " ".join(words).rstrip(",")
    low, high = 0, len(prompt)
    while low < high:  # longest character prefix that fits
        mid = (low + high + 1) // 2
        if count_tokens(prompt[:mid]) <= limit:
            low = mid
        else:
            high = mid - 1
    return prompt[:low]


def _clean_title(text: str) -> str:
    title = " ".join(text.split()).strip(_DECORATION)
    if len(title) > MAX_TITLE_CHARS:
        title = title[:MAX_TITLE_CHARS].rsplit(" ", 1)[0].rstrip(" ,;:") + "…"
    return title or UNTITLED


def _tidy_tags(text: str) -> str:
    tags = [" ".join(t.split()).strip(_DECORATION + ".") for t in text.split(",")]
    return ", ".join(t for t in tags if t)
