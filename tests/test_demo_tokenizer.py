"""The demo tokenizer: a real byte-level BPE with Llama-3 special tokens and chat template."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from storyloom.demo.tokenizer import (
    BOS_TOKEN,
    END_OF_TEXT_TOKEN,
    EOT_TOKEN,
    SPECIAL_TOKENS,
    build_demo_tokenizer,
)

TEXTS = [
    "Once upon a time, in a village at the edge of a quiet forest.",
    "A café for the naïve, in Zürich — “quoted” text… and São Paulo.",
    "日本の東京でこんにちは。Привет, мир! Γειά σου κόσμε. مرحبا",
    "Dragons 🐉✨🌙 and a family emoji 👨‍👩‍👧 and a clef 𝄞.",
    "  leading spaces, tabs\tand\nnew lines\r\n\n\ntrailing   ",
    "numbers 1234567890 and symbols <>{}[]()#@$%^&*_+=|\\/~`",
    "e\u0301 combining accent, zero\u200bwidth, nul-free control \x07 bell",
    "",
]


@pytest.fixture(scope="module")
def tokenizer():
    return build_demo_tokenizer()


@pytest.mark.parametrize("text", TEXTS)
def test_any_text_round_trips(tokenizer, text):
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert tokenizer.decode(ids) == text
    # Without special tokens no id may be a special one.
    assert all(i < tokenizer.vocab_size for i in ids)


def test_training_is_deterministic(tokenizer):
    again = build_demo_tokenizer()
    assert again.backend_tokenizer.to_str() == tokenizer.backend_tokenizer.to_str()


def test_vocabulary_is_learned_not_bytes_only(tokenizer):
    assert 1000 <= tokenizer.vocab_size <= 2000
    text = "Once upon a time, the dragon and the girl walked to the village."
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert len(ids) < len(text) / 3  # merges compress common English well below one token per byte


def test_multibyte_characters_span_several_tokens(tokenizer):
    # A rare character is split into byte tokens: a prefix of its ids is not valid UTF-8. Streaming
    # detokenizers must hold such bytes back; this is what the demo model exercises.
    ids = tokenizer("𝄞", add_special_tokens=False).input_ids
    assert len(ids) > 1
    assert "\ufffd" in tokenizer.decode(ids[:1])
    assert tokenizer.decode(ids) == "𝄞"


def test_special_tokens_sit_above_the_regular_vocabulary(tokenizer):
    ids = tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS)
    assert ids == list(range(tokenizer.vocab_size, tokenizer.vocab_size + len(SPECIAL_TOKENS)))
    assert len(tokenizer) == tokenizer.vocab_size + len(SPECIAL_TOKENS)
    assert len(tokenizer) % 16 == 0
    assert tokenizer.bos_token == BOS_TOKEN
    assert tokenizer.eos_token == EOT_TOKEN
    # Llama-3 order: begin_of_text, end_of_text first; eot_id ninth after the header markers.
    assert SPECIAL_TOKENS[:2] == [BOS_TOKEN, END_OF_TEXT_TOKEN]
    assert SPECIAL_TOKENS[9] == EOT_TOKEN


@pytest.mark.parametrize("special", SPECIAL_TOKENS)
def test_special_token_in_text_is_one_id(tokenizer, special):
    ids = tokenizer(f"hi{special}there", add_special_tokens=False).input_ids
    assert tokenizer.convert_tokens_to_ids(special) in ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == "hithere"


def test_encoding_adds_exactly_one_bos(tokenizer):
    ids = tokenizer("hello").input_ids
    assert ids[0] == tokenizer.bos_token_id
    assert ids.count(tokenizer.bos_token_id) == 1


def test_chat_template_matches_llama3_instruct(tokenizer):
    messages = [
        {"role": "system", "content": "You are a storyteller."},
        {"role": "user", "content": "  A fox in a clock tower.\n"},
    ]
    expected = (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are a storyteller.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nA fox in a clock tower.<|eot_id|>"
    )
    assert tokenizer.apply_chat_template(messages, tokenize=False) == expected
    with_prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert with_prompt == expected + "<|start_header_id|>assistant<|end_header_id|>\n\n"


def test_tokenized_chat_has_one_bos_and_header_ids(tokenizer):
    messages = [{"role": "user", "content": "Tell me a story about 日本."}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert ids[0] == tokenizer.bos_token_id
    assert ids.count(tokenizer.bos_token_id) == 1
    assert ids.count(tokenizer.convert_tokens_to_ids("<|start_header_id|>")) == 2
    assert ids.count(tokenizer.convert_tokens_to_ids(EOT_TOKEN)) == 1
    assert tokenizer.decode(ids) == text


def test_saved_folder_loads_with_auto_tokenizer(tmp_path, tokenizer):
    build_demo_tokenizer(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokenizer.json", "tokenizer_config.json"]
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"  # Meta's layout: template inside the config
    assert config["chat_template"] == tokenizer.chat_template
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    for text in TEXTS:
        assert loaded(text).input_ids == tokenizer(text).input_ids
    assert loaded.eos_token == EOT_TOKEN
    messages = [{"role": "user", "content": "hi"}]
    assert loaded.apply_chat_template(messages, tokenize=False) == tokenizer.apply_chat_template(
        messages, tokenize=False
    )
