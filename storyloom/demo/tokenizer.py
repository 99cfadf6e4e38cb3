"""A real, tiny Llama-3-style tokenizer: byte-level BPE trained locally on the demo corpus.

The layout follows Llama-3: the regular BPE vocabulary first, the special tokens after it
(`<|begin_of_text|>`, `<|end_of_text|>`, reserved tokens, header markers, `<|eot_id|>`), the same
pre-tokenization regex, a byte-level decoder (any Unicode text round-trips) and the Llama-3 Instruct chat
template. Training is deterministic, so every build gives the same vocabulary.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from storyloom.demo.corpus import CORPUS

logger = logging.getLogger(__name__)

BOS_TOKEN = "<|begin_of_text|>"
END_OF_TEXT_TOKEN = "<|end_of_text|>"
START_HEADER_TOKEN = "<|start_header_id|>"
END_HEADER_TOKEN = "<|end_header_id|>"
EOT_TOKEN = "<|eot_id|>"
NUM_RESERVED_TOKENS = 11

# Llama-3's order: begin, end, reserved 0-3, start/end header, reserved 4, eot, then the other reserved ones.
SPECIAL_TOKENS = [
    BOS_TOKEN,
    END_OF_TEXT_TOKEN,
    *(f"<|reserved_special_token_{i}|>" for i in range(4)),
    START_HEADER_TOKEN,
    END_HEADER_TOKEN,
    "<|reserved_special_token_4|>",
    EOT_TOKEN,
    *(f"<|reserved_special_token_{i}|>" for i in range(5, NUM_RESERVED_TOKENS)),
]

BPE_VOCAB_SIZE = 1536

# The pre-tokenization pattern of Llama-3 (tiktoken cl100k style).
LLAMA3_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# The chat template shipped with Meta-Llama-3-8B-Instruct.
LLAMA3_CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}"
    "{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)


def _train_backend() -> Tokenizer:
    tokenizer = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB_SIZE,
        min_frequency=1,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tokenizer.train_from_iterator(CORPUS.splitlines(keepends=True), trainer=trainer)
    # Appended after training, so the special tokens sit above the regular vocabulary as in Llama-3.
    tokenizer.add_special_tokens(SPECIAL_TOKENS)
    bos_id = tokenizer.token_to_id(BOS_TOKEN)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN}:0 $A:0",
        pair=f"{BOS_TOKEN}:0 $A:0 {BOS_TOKEN}:1 $B:1",
        special_tokens=[(BOS_TOKEN, bos_id)],
    )
    return tokenizer


def _write_meta_style_config(folder: Path) -> None:
    """Keep the chat template inside tokenizer_config.json and name the generic fast tokenizer class, as
    Meta's Llama-3 checkpoints do (older transformers versions read only that layout)."""
    config_file, template_file = folder / "tokenizer_config.json", folder / "chat_template.jinja"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config.pop("backend", None)
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config["chat_template"] = LLAMA3_CHAT_TEMPLATE
    config_file.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    template_file.unlink(missing_ok=True)


def build_demo_tokenizer(folder: Path | None = None) -> PreTrainedTokenizerFast:
    """Train the demo tokenizer; with `folder`, also save it there (tokenizer.json + config)."""
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_train_backend(),
        bos_token=BOS_TOKEN,
        eos_token=EOT_TOKEN,
        clean_up_tokenization_spaces=False,
        model_input_names=["input_ids", "attention_mask"],
        model_max_length=131072,
    )
    tokenizer.chat_template = LLAMA3_CHAT_TEMPLATE
    if folder is not None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tokenizer.save_pretrained(folder)
        _write_meta_style_config(folder)
        logger.debug("demo tokenizer (%d tokens) saved to %s", len(tokenizer), folder)
    return tokenizer
