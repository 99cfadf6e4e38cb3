"""Prompt encoding with the checkpoint's own tokenizer and chat template."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from engine.errors import CheckpointError, InvalidRequestError
from engine.model_config import LlamaArgs

log = logging.getLogger(__name__)

Prompt = str | list[int] | list[dict[str, Any]]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")


class PromptEncoder:
    def __init__(self, folder: Path, args: LlamaArgs) -> None:
        if not any((folder / f).is_file() for f in TOKENIZER_FILES):
            raise CheckpointError(f"{folder}: tokenizer.json not found in the model folder")
        try:
            self.tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{folder}: tokenizer cannot be loaded ({e})") from e
        self.vocab_size = args.vocab_size
        self.bos_id = args.bos_token_id if args.bos_token_id is not None else self.tokenizer.bos_token_id
        self.eos_ids = frozenset(self._eos_ids(folder, args))

    def _eos_ids(self, folder: Path, args: LlamaArgs) -> set[int]:
        ids = set(args.eos_token_ids)
        gen = folder / "generation_config.json"
        if gen.is_file():
            try:
                eos = json.loads(gen.read_text(encoding="utf-8")).get("eos_token_id")
            except json.JSONDecodeError as e:
                raise CheckpointError(f"{gen}: not valid JSON ({e})") from e
            ids.update(eos if isinstance(eos, list) else [] if eos is None else [eos])
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        return {int(i) for i in ids}

    def encode(self, prompt: Prompt) -> list[int]:
        if isinstance(prompt, str):
            ids = self.tokenizer.encode(prompt, add_special_tokens=False)
            return ([self.bos_id] if self.bos_id is not None else []) + ids
        if not isinstance(prompt, list) or not prompt:
            raise InvalidRequestError("prompt: must be a non-empty str, list of token ids, or list of chat messages")
        if all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            bad = [t for t in prompt if not 0 <= t < self.vocab_size]
            if bad:
                raise InvalidRequestError(
                    f"prompt: token id {bad[0]} is outside the vocabulary (0..{self.vocab_size - 1})"
                )
            return list(prompt)
        if all(isinstance(m, dict) for m in prompt):
            return self.encode_chat(prompt)
        raise InvalidRequestError("prompt: a list prompt must hold only token ids or only chat messages")

    def encode_chat(self, messages: list[dict[str, Any]]) -> list[int]:
        for i, m in enumerate(messages):
            if not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise InvalidRequestError(f"prompt: chat message {i} needs a string 'role' and a string 'content'")
        if not self.tokenizer.chat_template:
            raise InvalidRequestError("prompt: this model's tokenizer has no chat template; send plain text")
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.tokenizer.encode(text, add_special_tokens=False)


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text deltas without ever splitting a multi-byte character."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0
        self.text = ""

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def add(self, token_id: int) -> str:
        self.ids.append(token_id)
        prefix = self._decode(self.ids[self.prefix_offset : self.read_offset])
        full = self._decode(self.ids[self.prefix_offset :])
        if len(full) <= len(prefix) or full.endswith("\ufffd"):
            return ""
        delta = full[len(prefix) :]
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        self.text += delta
        return delta

    def flush(self) -> str:
        """Whatever is still held back at the end (e.g. an incomplete byte sequence), as a final delta."""
        prefix = self._decode(self.ids[self.prefix_offset : self.read_offset])
        full = self._decode(self.ids[self.prefix_offset :])
        delta = full[len(prefix) :] if len(full) > len(prefix) else ""
        self.prefix_offset = self.read_offset = len(self.ids)
        self.text += delta
        return delta
