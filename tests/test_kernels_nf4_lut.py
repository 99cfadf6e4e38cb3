"""The NF4 register lookup table (engine/kernels/nf4_lut.py), run on a model of its PTX instructions."""

from __future__ import annotations

import random
import re
import struct

import pytest

from engine.kernels.nf4_lut import WORD_OPERANDS, lut_asm, program, register_words, run_program, table_words

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


@pytest.mark.parametrize("code", [NF4, tuple(float(i - 8) / 8 for i in range(16))], ids=["nf4", "linear"])
def test_every_byte_in_every_position_gives_both_nibbles_fp16(code: tuple[float, ...]) -> None:
    rng = random.Random(0)
    instructions, words = program(code), register_words(code)
    for position in range(4):
        for byte in range(256):
            packed = bytearray(rng.randrange(256) for _ in range(4))
            packed[position] = byte
            got = run_program(instructions, int.from_bytes(packed, "little"), words)
            assert got == _expected(bytes(packed), code), (position, byte)


def test_table_words_hold_the_low_and_high_bytes_of_each_entry() -> None:
    low, high = table_words(NF4)
    for i, value in enumerate(NF4):
        bits = _fp16_bits(value)
        assert (low[i // 4] >> (8 * (i % 4))) & 0xFF == bits & 0xFF
        assert (high[i // 4] >> (8 * (i % 4))) & 0xFF == bits >> 8


def test_ptx_declares_every_register_it_uses() -> None:
    asm = lut_asm(NF4)
    declared = set(re.search(r"\.reg \.b32 ([^;]+);", asm).group(1).replace(" ", "").split(","))
    statements = [st.strip() for st in asm.strip("{} ").split(";")[1:] if st.strip()]
    operands = {op.strip() for st in statements for op in st.split(None, 1)[1].split(",")}
    registers = {op for op in operands if not op[0].isdigit()}
    assert registers - declared == {"$0", "$1", "$2", "$3", "$4", *WORD_OPERANDS}
    assert len(statements) == len(program(NF4))
