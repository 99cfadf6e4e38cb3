"""CLIP token counting. SDXL reads 75 prompt tokens (77 positions less the start and end markers); longer
prompts are not chunk-encoded: the renderer warns and names the text that is cut off."""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

MAX_PROMPT_TOKENS = 75


def prompt_token_ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False, truncation=False, verbose=False).input_ids


def cut_off_text(tokenizer: PreTrainedTokenizerBase, text: str) -> str:
    """The part of `text` past the first 75 CLIP tokens ("" if it all fits)."""
    ids = prompt_token_ids(tokenizer, text)
    return tokenizer.decode(ids[MAX_PROMPT_TOKENS:]).strip() if len(ids) > MAX_PROMPT_TOKENS else ""
