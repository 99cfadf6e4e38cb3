"""The NF4 register lookup table (engine/kernels/nf4_lut.py), run on a model of its PTX instructions."""

from __future__ import annotations

import random
import re
import struct

import pytest

from engine.kernels.nf4_lut import (
    DOT_WORD_OPERANDS,
    WORD_OPERANDS,
    dot_asm,
    dot_program,
    lut_asm,
    pairs_asm,
    pairs_program,
    program,
    register_words,
    run_program,
    table_words,
)

NF4 = (-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
       -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
       0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941, 0.7229568362236023,
       1.0)  # fmt: skip


def _fp16_bits(value: float) -> int:
    return struct.unpack("<H", struct.pack("<e", value))[0]


def _expected(packed: bytes, code: tuple[float, ...]) -> tuple[int, int, int, int]:
    even = [_fp16_bits(code[b >> 4]) for b in packed]  # k = 2j: the high nibble
    odd = [_fp16_bits(code[b & 0xF]) for b in packed]
    return even[0] | even[1] << 16, even[2] | even[3] << 16, odd[0] | odd[1] << 16, odd[2] | odd[3] << 16


def _words_with_every_byte_in_every_position(rng: random.Random):
    """(position, byte, 4 packed bytes): each byte value at each of the 4 positions, the other bytes random."""
    for position in range(4):
        for byte in range(256):
            packed = bytearray(rng.randrange(256) for _ in range(4))
            packed[position] = byte
            yield position, byte, bytes(packed)


@pytest.mark.parametrize("code", [NF4, tuple(float(i - 8) / 8 for i in range(16))], ids=["nf4", "linear"])
def test_every_byte_in_every_position_gives_both_nibbles_fp16(code: tuple[float, ...]) -> None:
    rng = random.Random(0)
    instructions, words = program(code), register_words(code)
    for position, byte, packed in _words_with_every_byte_in_every_position(rng):
        regs = run_program(
            instructions, {"$4": int.from_bytes(packed, "little"), **dict(zip(WORD_OPERANDS, words, strict=True))}
        )
        assert tuple(regs[f"${i}"] for i in range(4)) == _expected(packed, code), (position, byte)


def _half(value: float) -> float:
    return struct.unpack("<e", struct.pack("<e", value))[0]


def _word_dot(instructions, packed: bytes, x: list[float], words: list[int]) -> float:
    """dot_program on one packed word and x's 8 values (fp16), run on the model."""
    pairs = [_fp16_bits(x[2 * b]) | _fp16_bits(x[2 * b + 1]) << 16 for b in range(4)]
    inputs = {"$1": int.from_bytes(packed, "little"), **{f"${2 + b}": p for b, p in enumerate(pairs)}}
    regs = run_program(instructions, {**inputs, **dict(zip(DOT_WORD_OPERANDS, words, strict=True))})
    return struct.unpack("<f", struct.pack("<I", regs["$0"]))[0]


@pytest.mark.parametrize("code", [NF4, tuple(float(i - 8) / 8 for i in range(16))], ids=["nf4", "linear"])
def test_dot_program_multiplies_each_weight_with_its_own_x(code: tuple[float, ...]) -> None:
    rng = random.Random(1)
    instructions, words = dot_program(code), register_words(code)
    for position, byte, packed in _words_with_every_byte_in_every_position(rng):
        x = [_half(rng.uniform(-4, 4)) for _ in range(8)]
        weights = [code[b >> 4 if i % 2 == 0 else b & 0xF] for b in packed for i in range(2)]  # k = 2j: high
        exact = sum(w * v for w, v in zip(weights, x, strict=True))
        scale = sum(abs(_half(w) * v) for w, v in zip(weights, x, strict=True))
        got = _word_dot(instructions, packed, x, words)
        assert abs(got - exact) <= 4 * 2**-11 * scale + 1e-6, (position, byte)


def test_dot_program_sums_the_pairs_in_fp16() -> None:
    """Each half of the packed sum rounds to fp16: 2048 + 1 + 1 + 1 + 1 in one half gives 2048, not 2052."""
    packed = bytes([0xFF, 0xFF, 0xFF, 0xFF])  # every nibble is code[15] = 1.0
    x = [2048.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0]
    assert _word_dot(dot_program(NF4), packed, x, register_words(NF4)) == 2048.0


def test_table_words_hold_the_low_and_high_bytes_of_each_entry() -> None:
    low, high = table_words(NF4)
    for i, value in enumerate(NF4):
        bits = _fp16_bits(value)
        assert (low[i // 4] >> (8 * (i % 4))) & 0xFF == bits & 0xFF
        assert (high[i // 4] >> (8 * (i % 4))) & 0xFF == bits >> 8


@pytest.mark.parametrize(
    ("asm", "instructions", "operands"),
    [
        (lut_asm(NF4), program(NF4), {"$0", "$1", "$2", "$3", "$4", *WORD_OPERANDS}),
        (dot_asm(NF4), dot_program(NF4), {"$0", "$1", "$2", "$3", "$4", "$5", *DOT_WORD_OPERANDS}),
    ],
    ids=["lookup", "dot"],
)
def test_ptx_declares_every_register_it_uses(asm: str, instructions: list, operands: set[str]) -> None:
    declared = {
        name for group in re.findall(r"\.reg \.\w+ ([^;]+);", asm) for name in group.replace(" ", "").split(",")
    }
    statements = [st.strip() for st in asm.strip("{} ").split(";") if st.strip() and not st.strip().startswith(".reg")]
    fields = [op.strip() for st in statements for op in st.split(None, 1)[1].split(",")]
    registers = {f.strip("{} ") for f in fields if not f[0].isdigit()}
    assert registers - declared == operands
    assert len(statements) == len(instructions)


@pytest.mark.parametrize("code", [NF4, tuple(float(i - 8) / 8 for i in range(16))], ids=["nf4", "linear"])
def test_pairs_program_returns_each_bytes_scaled_codes_in_k_order(code: tuple[float, ...]) -> None:
    rng = random.Random(2)
    instructions, words = pairs_program(code), register_words(code)
    for position, byte, packed in _words_with_every_byte_in_every_position(rng):
        scale = rng.uniform(1e-3, 4.0)
        inputs = {"$4": int.from_bytes(packed, "little"), "$5": struct.unpack("<I", struct.pack("<f", scale))[0]}
        regs = run_program(instructions, {**inputs, **dict(zip(DOT_WORD_OPERANDS, words, strict=True))})
        for b, value in enumerate(
            packed
        ):  # pair b: k = 2b (high nibble) low, k = 2b + 1 high; fp16(code) x fp16(scale)
            want = [_fp16_bits(_half(code[value >> 4]) * _half(scale)),
                    _fp16_bits(_half(code[value & 0xF]) * _half(scale))]  # fmt: skip
            assert regs[f"${b}"] == want[0] | want[1] << 16, (position, byte, b)


def test_pairs_asm_declares_its_registers_and_writes_outputs_last() -> None:
    text = pairs_asm(NF4)
    assert text.startswith("{ .reg .b32 ") and "cvt.rn.f16x2.f32 s2, $5, $5;" in text
    after_first_output = text[min(text.index(f"mul.rn.f16x2 ${b},") for b in range(4)) :].split(";", 1)[1]
    assert not any(f"${i}" in after_first_output for i in range(4, 10)), "outputs may share the inputs' registers"
