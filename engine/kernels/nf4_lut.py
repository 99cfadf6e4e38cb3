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
`run_program`, a model of its PTX instructions, for the CPU tests. `dot_program` extends the lookup into the
one-row kernel's inner product: 8 weights times x in one call, summed on packed fp16 units.
"""

from __future__ import annotations

import functools
import math
import struct
from dataclasses import dataclass

LOW_MASK = 0xD8  # lop3 (a & ~c) | (b & c)
SELECT_HIGH = ("0x9D8C", "0xBFAE")  # sign-replicate selectors of nibbles 0-3 and 4-7, see _half
MASK32 = 0xFFFFFFFF
REGISTER_WORDS = (0, 2, 4, 6)  # indices into low + high words: the tables' first prmt operands
WORD_OPERANDS = ("$5", "$9", "$13", "$17")  # each input is packed 4 elements a call: 4 operands, all one value
CONSTRAINTS = "=r,=r,=r,=r" + ",r" * 17  # fp16 even, odd (2 registers each); packed bytes; 4 words x 4
DOT_WORD_OPERANDS = ("$6", "$7", "$8", "$9")  # dot_program: one element a call
DOT_CONSTRAINTS = "=r" + ",r" * 9  # fp32 dot; packed word; 4 x pairs; 4 table words
PTX = {"and": "and.b32", "shl": "shl.b32", "shr": "shr.u32", "prmt": "prmt.b32", "lop3": "lop3.b32", "mov": "mov.b32",
       "mul": "mul.rn.f16x2", "fma": "fma.rn.f16x2", "unpack": "mov.b32", "cvt": "cvt.f32.f16", "add": "add.f32", "pack": "cvt.rn.f16x2.f32"}  # fmt: skip


@dataclass(frozen=True)
class Instruction:
    op: str  # a key of PTX
    dst: str  # "unpack" writes two 16-bit registers, "{low, high}"
    srcs: tuple[str, ...]

    def ptx(self) -> str:
        return f"{PTX[self.op]} {self.dst}, {', '.join(self.srcs)};"

    def registers(self) -> tuple[str, list[str]]:
        """(PTX register type, names) that this instruction writes, for the declarations."""
        names = self.dst.strip("{}").replace(" ", "").split(",")
        return {"unpack": ".b16", "cvt": ".f32", "add": ".f32"}.get(self.op, ".b32"), names


def table_words(code: tuple[float, ...]) -> tuple[list[int], list[int]]:
    """(low-byte plane, high-byte plane) of the fp16 values of a 16-entry code, 4 little-endian words each."""
    assert len(code) == 16, "NF4 has 16 code values"
    bits = [struct.unpack("<H", struct.pack("<e", value))[0] for value in code]
    planes = ([b & 0xFF for b in bits], [b >> 8 for b in bits])
    return tuple([sum(p[4 * w + i] << (8 * i) for i in range(4)) for w in range(4)] for p in planes)  # type: ignore[return-value]


def _half(packed: str, sel: str, low: list[str], high: list[str], tag: int) -> list[Instruction]:
    """Look up nibbles 4*tag .. 4*tag+3 of `packed`, whose low 3 bits are the 4 low selector nibbles of `sel`;
    leaves the fp16 low bytes in lo{tag}, high bytes in hi{tag} (byte i = nibble 4*tag + i). The mask
    m{tag} has byte i = 0xFF where that nibble is >= 8: `prmt`'s sign-replicate mode copies bit 7 of a
    chosen byte; odd nibbles own bit 7 of a byte of `packed`, even nibbles own it in c4 = packed << 4."""
    m = f"m{tag}"
    return [
        Instruction("prmt", f"la{tag}", (low[0], low[1], sel)),
        Instruction("prmt", f"lb{tag}", (low[2], low[3], sel)),
        Instruction("prmt", f"ha{tag}", (high[0], high[1], sel)),
        Instruction("prmt", f"hb{tag}", (high[2], high[3], sel)),
        Instruction("prmt", m, (packed, "c4", SELECT_HIGH[tag])),
        Instruction("lop3", f"lo{tag}", (f"la{tag}", f"lb{tag}", m, hex(LOW_MASK))),
        Instruction("lop3", f"hi{tag}", (f"ha{tag}", f"hb{tag}", m, hex(LOW_MASK))),
    ]


def _lookup(code: tuple[float, ...], packed: str, word_operands: tuple[str, ...]) -> list[Instruction]:
    """The table lookup of the 8 nibbles of `packed`: byte i of lo0/hi0 (lo1/hi1) holds the low/high byte of the
    fp16 code of nibble i (4 + i). The REGISTER_WORDS of the table come in as `word_operands`."""
    low_words, high_words = table_words(code)
    names = [f"t{i}" for i in range(8)]
    for index, operand in zip(REGISTER_WORDS, word_operands, strict=True):
        names[index] = operand
    low, high = names[:4], names[4:]
    moves = [
        Instruction("mov", name, (hex(word),))
        for name, word in zip(names, low_words + high_words, strict=True)
        if not name.startswith("$")
    ]
    return [
        *moves,
        Instruction("and", "s0", (packed, "0x77777777")),
        Instruction("shl", "c4", (packed, "4")),
        Instruction("shr", "s1", ("s0", "16")),
        *_half(packed, "s0", low, high, 0),
        *_half(packed, "s1", low, high, 1),
    ]


def program(code: tuple[float, ...]) -> list[Instruction]:
    """$0, $1: even-k fp16 pairs of bytes 0-1 and 2-3 of $4 (k = 2j is byte j's high nibble); $2, $3: odd k.
    The REGISTER_WORDS of the table come in as WORD_OPERANDS. Every input is read before the first output is
    written, so outputs may share registers with the inputs."""
    # byte i of lo/hi belongs to nibble i: nibbles 1, 3 are even k (high nibbles), 0, 2 odd k
    outputs = [
        Instruction("prmt", "$0", ("lo0", "hi0", "0x7351")),
        Instruction("prmt", "$1", ("lo1", "hi1", "0x7351")),
        Instruction("prmt", "$2", ("lo0", "hi0", "0x6240")),
        Instruction("prmt", "$3", ("lo1", "hi1", "0x6240")),
    ]
    return _lookup(code, "$4", WORD_OPERANDS) + outputs


def dot_program(code: tuple[float, ...]) -> list[Instruction]:
    """$0 (fp32) = the dot product of the 8 weights in the packed word $1 with x: $2..$5 hold x's fp16 pairs
    (k = 2j, 2j + 1) of bytes 0..3, $6..$9 the table's REGISTER_WORDS. Each byte's two codes are joined into one
    fp16 pair (k = 2j low, 2j + 1 high) and multiplied with its x pair on packed fp16 units; the four pair
    products are summed in fp16 (one rounding each), the two halves in fp32."""
    pairs = [
        Instruction("prmt", f"p{byte}", (f"lo{byte // 2}", f"hi{byte // 2}", "0x6273" if byte % 2 else "0x4051"))
        for byte in range(4)
    ]
    return [
        *_lookup(code, "$1", DOT_WORD_OPERANDS),
        *pairs,
        Instruction("mul", "h", ("p0", "$2")),
        *[Instruction("fma", "h", (f"p{byte}", f"${2 + byte}", "h")) for byte in (1, 2, 3)],
        Instruction("unpack", "{hl, hh}", ("h",)),
        Instruction("cvt", "fl", ("hl",)),
        Instruction("cvt", "fh", ("hh",)),
        Instruction("add", "$0", ("fl", "fh")),
    ]


def pairs_program(code: tuple[float, ...]) -> list[Instruction]:
    """$0..$3: the fp16 pairs (k = 2j low, 2j + 1 high) of bytes 0..3 of the packed word $4, times the fp32 scale
    $5 (rounded to fp16); $6..$9 the table's REGISTER_WORDS."""
    pairs = [
        Instruction("prmt", f"p{byte}", (f"lo{byte // 2}", f"hi{byte // 2}", "0x6273" if byte % 2 else "0x4051"))
        for byte in range(4)
    ]
    return [
        *_lookup(code, "$4", DOT_WORD_OPERANDS),
        *pairs,
        Instruction("pack", "s2", ("$5", "$5")),
        *[Instruction("mul", f"${byte}", (f"p{byte}", "s2")) for byte in range(4)],
    ]


def register_words(code: tuple[float, ...]) -> list[int]:
    """The table words the call takes as inputs, in WORD_OPERANDS order."""
    low_words, high_words = table_words(code)
    return [(low_words + high_words)[i] for i in REGISTER_WORDS]


def _asm(instructions: list[Instruction]) -> str:
    """The instructions as one inline-PTX block that declares its own registers ($n are the call's operands)."""
    declared: dict[str, set[str]] = {}
    for ins in instructions:
        kind, names = ins.registers()
        declared.setdefault(kind, set()).update(n for n in names if not n.startswith("$"))
    decls = " ".join(f".reg {kind} {', '.join(sorted(names))};" for kind, names in sorted(declared.items()) if names)
    return "{ " + decls + " " + " ".join(i.ptx() for i in instructions) + " }"


@functools.lru_cache(maxsize=4)
def lut_asm(code: tuple[float, ...]) -> str:
    """The PTX of `program(code)` for `tl.inline_asm_elementwise(..., CONSTRAINTS, pack=4)` with inputs: the
    packed bytes, then each of `register_words(code)` as its own int32 tensor."""
    return _asm(program(code))


@functools.lru_cache(maxsize=4)
def pairs_asm(code: tuple[float, ...]) -> str:
    return _asm(pairs_program(code))


@functools.lru_cache(maxsize=4)
def dot_asm(code: tuple[float, ...]) -> str:
    """The PTX of `dot_program(code)` for `tl.inline_asm_elementwise(..., DOT_CONSTRAINTS, pack=1)` with int32
    inputs: the packed word, x's four fp16 pairs, then each of `register_words(code)`."""
    return _asm(dot_program(code))


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


def _value(bits: int, fmt: str, width: int) -> float:
    return struct.unpack(f"<{fmt}", (bits & ((1 << width) - 1)).to_bytes(width // 8, "little"))[0]


def _bits(value: float, fmt: str, width: int) -> int:
    """`value` rounded once, to the nearest even, in the IEEE format `fmt` ("e" fp16, "f" fp32); its bits."""
    try:
        return int.from_bytes(struct.pack(f"<{fmt}", value), "little")
    except OverflowError:  # past the format's largest finite value: infinity
        return int.from_bytes(struct.pack(f"<{fmt}", math.copysign(math.inf, value)), "little")


def _half2(a: int, b: int, c: int, op) -> int:
    """A packed fp16x2 operation: `op` on each 16-bit half of a, b, c, rounded once per half."""
    return sum(_bits(op(*(_value(v >> s, "e", 16) for v in (a, b, c))), "e", 16) << s for s in (0, 16))


def run_program(instructions: list[Instruction], inputs: dict[str, int]) -> dict[str, int]:
    """Execute the program on its input registers ($n -> 32-bit value); returns every register it wrote."""
    regs = dict(inputs)

    def value(operand: str) -> int:
        return int(operand, 0) if operand[0].isdigit() else regs[operand]

    for ins in instructions:
        v = [value(s) for s in ins.srcs]
        if ins.op == "unpack":
            low, high = ins.registers()[1]
            regs[low], regs[high] = v[0] & 0xFFFF, v[0] >> 16
            continue
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
        elif ins.op == "lop3":
            result = _lop3(v[0], v[1], v[2], v[3])
        elif ins.op == "mul":
            result = _half2(v[0], v[1], 0, lambda a, b, _: a * b)
        elif ins.op == "fma":
            result = _half2(v[0], v[1], v[2], lambda a, b, c: a * b + c)
        elif ins.op == "pack":
            result = _bits(_value(v[0], "f", 32), "e", 16) << 16 | _bits(_value(v[1], "f", 32), "e", 16)
        elif ins.op == "cvt":
            result = _bits(_value(v[0], "e", 16), "f", 32)
        else:
            result = _bits(_value(v[0], "f", 32) + _value(v[1], "f", 32), "f", 32)
        regs[ins.dst] = result & MASK32
    return regs
