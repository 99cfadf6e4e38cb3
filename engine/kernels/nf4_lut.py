"""NF4 nibbles to fp16 with a register lookup table: PTX `prmt` byte permutes, no memory reads.

The 16 fp16 table values are split into a low-byte plane and a high-byte plane of 16 bytes each, four
32-bit words per plane. `prmt` picks 4 bytes at once out of two words (8 entries) by 4 selector nibbles,
so two `prmt` per plane cover entries 0..7 and 8..15 and a `lop3` chooses between them by bit 3 of each
nibble. One call (Triton `inline_asm_elementwise`, pack 4) turns 4 packed bytes (8 weights) into the
even-k and odd-k fp16 values, 21 integer instructions in all.

`prmt` takes its second table word as an immediate but its first from a register. Those four words
(REGISTER_WORDS) are inputs of the call, loaded once per program: written as constants inside the call,
ptxas copied them into fresh registers for every call (8 extra instructions per call).

The program is kept as data (`Instruction` rows) so that it renders to PTX for the GPU and runs under
`run_program`, a model of the three PTX instructions, for the CPU tests.
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass

LOW_MASK = 0xD8  # lop3 (a & ~c) | (b & c)
SELECT_HIGH = ("0x9D8C", "0xBFAE")  # sign-replicate selectors of nibbles 0-3 and 4-7, see _half
MASK32 = 0xFFFFFFFF
REGISTER_WORDS = (0, 2, 4, 6)  # indices into low + high words: the tables' first prmt operands
WORD_OPERANDS = ("$5", "$9", "$13", "$17")  # each input is packed 4 elements a call: 4 operands, all one value
CONSTRAINTS = "=r,=r,=r,=r" + ",r" * 17  # fp16 even, odd (2 registers each); packed bytes; 4 words x 4


@dataclass(frozen=True)
class Instruction:
    op: str  # "and", "shl", "shr", "prmt", "lop3", "mov"
    dst: str
    srcs: tuple[str, ...]

    def ptx(self) -> str:
        kind = {"and": "and.b32", "shl": "shl.b32", "shr": "shr.u32", "prmt": "prmt.b32", "lop3": "lop3.b32",
                "mov": "mov.b32"}[self.op]  # fmt: skip
        return f"{kind} {self.dst}, {', '.join(self.srcs)};"


def table_words(code: tuple[float, ...]) -> tuple[list[int], list[int]]:
    """(low-byte plane, high-byte plane) of the fp16 values of a 16-entry code, 4 little-endian words each."""
    assert len(code) == 16, "NF4 has 16 code values"
    bits = [struct.unpack("<H", struct.pack("<e", value))[0] for value in code]
    planes = ([b & 0xFF for b in bits], [b >> 8 for b in bits])
    return tuple([sum(p[4 * w + i] << (8 * i) for i in range(4)) for w in range(4)] for p in planes)  # type: ignore[return-value]


def _half(sel: str, low: list[str], high: list[str], tag: int) -> list[Instruction]:
    """Look up nibbles 4*tag .. 4*tag+3 of $4, whose low 3 bits are the 4 low selector nibbles of `sel`;
    leaves the fp16 low bytes in lo{tag}, high bytes in hi{tag} (byte i = nibble 4*tag + i). The mask
    m{tag} has byte i = 0xFF where that nibble is >= 8: `prmt`'s sign-replicate mode copies bit 7 of a
    chosen byte; odd nibbles own bit 7 of a byte of $4, even nibbles own it in c4 = $4 << 4."""
    m = f"m{tag}"
    return [
        Instruction("prmt", f"la{tag}", (low[0], low[1], sel)),
        Instruction("prmt", f"lb{tag}", (low[2], low[3], sel)),
        Instruction("prmt", f"ha{tag}", (high[0], high[1], sel)),
        Instruction("prmt", f"hb{tag}", (high[2], high[3], sel)),
        Instruction("prmt", m, ("$4", "c4", SELECT_HIGH[tag])),
        Instruction("lop3", f"lo{tag}", (f"la{tag}", f"lb{tag}", m, hex(LOW_MASK))),
        Instruction("lop3", f"hi{tag}", (f"ha{tag}", f"hb{tag}", m, hex(LOW_MASK))),
    ]


def program(code: tuple[float, ...]) -> list[Instruction]:
    """$0, $1: even-k fp16 pairs of bytes 0-1 and 2-3 of $4 (k = 2j is byte j's high nibble); $2, $3: odd k.
    The REGISTER_WORDS of the table come in as WORD_OPERANDS. Every input is read before the first output is
    written, so outputs may share registers with the inputs."""
    low_words, high_words = table_words(code)
    names = [f"t{i}" for i in range(8)]
    for index, operand in zip(REGISTER_WORDS, WORD_OPERANDS, strict=True):
        names[index] = operand
    low, high = names[:4], names[4:]
    moves = [
        Instruction("mov", name, (hex(word),))
        for name, word in zip(names, low_words + high_words, strict=True)
        if not name.startswith("$")
    ]
    body = [
        Instruction("and", "s0", ("$4", "0x77777777")),
        Instruction("shl", "c4", ("$4", "4")),
        Instruction("shr", "s1", ("s0", "16")),
        *_half("s0", low, high, 0),
        *_half("s1", low, high, 1),
    ]
    # byte i of lo/hi belongs to nibble i: nibbles 1, 3 are even k (high nibbles), 0, 2 odd k
    outputs = [
        Instruction("prmt", "$0", ("lo0", "hi0", "0x7351")),
        Instruction("prmt", "$1", ("lo1", "hi1", "0x7351")),
        Instruction("prmt", "$2", ("lo0", "hi0", "0x6240")),
        Instruction("prmt", "$3", ("lo1", "hi1", "0x6240")),
    ]
    return moves + body + outputs


def register_words(code: tuple[float, ...]) -> list[int]:
    """The table words the call takes as inputs, in WORD_OPERANDS order."""
    low_words, high_words = table_words(code)
    return [(low_words + high_words)[i] for i in REGISTER_WORDS]


@functools.lru_cache(maxsize=4)
def lut_asm(code: tuple[float, ...]) -> str:
    """The PTX of `program(code)` for `tl.inline_asm_elementwise(..., CONSTRAINTS, pack=4)` with inputs: the
    packed bytes, then each of `register_words(code)` as its own int32 tensor."""
    instructions = program(code)
    regs = sorted({i.dst for i in instructions if not i.dst.startswith("$")})
    return "{ .reg .b32 " + ", ".join(regs) + "; " + " ".join(i.ptx() for i in instructions) + " }"


def _prmt(a: int, b: int, selector: int) -> int:
    data = (b << 32 | a).to_bytes(8, "little")
    out = 0
    for i in range(4):
        sel = (selector >> (4 * i)) & 0xF
        byte = data[sel & 7]
        if sel & 8:
            byte = 0xFF if byte & 0x80 else 0
        out |= byte << (8 * i)
    return out


def _lop3(a: int, b: int, c: int, lut: int) -> int:
    return sum(((lut >> ((a >> k & 1) << 2 | (b >> k & 1) << 1 | (c >> k & 1))) & 1) << k for k in range(32))


def run_program(instructions: list[Instruction], packed: int, words: list[int]) -> tuple[int, int, int, int]:
    """Execute the program on one 32-bit input register ($4) and the table words (WORD_OPERANDS); returns the
    output registers $0..$3."""
    regs: dict[str, int] = {"$4": packed, **dict(zip(WORD_OPERANDS, words, strict=True))}

    def value(operand: str) -> int:
        return int(operand, 0) if operand[0].isdigit() else regs[operand]

    for ins in instructions:
        v = [value(s) for s in ins.srcs]
        if ins.op == "mov":
            result = v[0]
        elif ins.op == "and":
            result = v[0] & v[1]
        elif ins.op == "shl":
            result = v[0] << v[1]
        elif ins.op == "shr":
            result = v[0] >> v[1]
        elif ins.op == "prmt":
            result = _prmt(v[0], v[1], v[2])
        else:
            result = _lop3(v[0], v[1], v[2], v[3])
        regs[ins.dst] = result & MASK32
    return regs["$0"], regs["$1"], regs["$2"], regs["$3"]
