"""Launch configurations for the NF4 matmul kernel: tuned per Llama-3-8B shape on the GPU, else a heuristic.

The tuned table comes from `python -m bench.bench_kernels --sweep` (docs/KERNELS.md has the measurements).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

MAX_SMALL_M = 16


@dataclass(frozen=True)
class Nf4Config:
    """One launch shape. `use_dot` multiplies on tensor cores (block_m >= 16); otherwise FMAs, one row per program.
    `gluon` with use_dot: the register-fed MMA tile of nf4_mma_gluon.py for up to block_m (8 or 16) rows, block_n
    weight rows per program in row tiles of 16 per warp, K steps of 128. `gluon` without: the one-row tile of
    nf4_gemv_gluon.py (lookup 5, the byte table in shared memory), block_n rows per tile over all of K in steps of
    block_k, `programs_per_sm` persistent programs per SM. In both, num_stages 2 loads each step's operands one step
    ahead."""

    block_m: int = 16
    block_n: int = 32
    block_k: int = 256
    split_k: int = 1
    use_dot: bool = True
    num_warps: int = 4
    num_stages: int = 3
    lookup: int = 1  # table reads: 0 tl.load gather, 1 PTX per nibble, 3 PTX pair per byte, 4 register table,
    # 5 byte table in shared memory (Gluon one-row tile)
    swap_ab: bool = False  # tensor cores: y^T = W x^T, the dequantized weight tile as the first operand
    gluon: bool = False
    programs_per_sm: int = 0  # the Gluon one-row tile's persistent programs per SM
    words_per_dot: int = 1  # the Gluon one-row tile: packed words (8 weights each) summed in fp16 before fp32

    def __post_init__(self) -> None:
        for name in ("block_m", "block_n", "block_k", "num_warps"):
            value = getattr(self, name)
            if value < 1 or value & (value - 1):
                raise ValueError(f"{name}: must be a power of two, got {value}")
        if self.lookup not in (0, 1, 3, 4, 5):
            raise ValueError(f"lookup: must be 0, 1, 3, 4 or 5, got {self.lookup}")
        if (self.lookup == 5) != (self.gluon and not self.use_dot):
            raise ValueError("lookup: the shared-memory byte table (5) is the Gluon one-row tile's, and only its")
        if self.lookup == 4 and self.use_dot and not self.swap_ab:
            raise ValueError("lookup: on tensor cores the register table (4) runs on the swapped path only")
        if self.split_k < 1 or self.num_stages < 1:
            raise ValueError(f"split_k and num_stages: must be >= 1, got {self.split_k}, {self.num_stages}")
        if self.use_dot and (self.block_m < (8 if self.gluon else 16) or self.block_n < 16 or self.block_k < 64):
            raise ValueError("use_dot: tensor cores need block_m >= 16 (8 gluon), block_n >= 16 and block_k >= 64")
        if self.swap_ab and not self.use_dot:
            raise ValueError("swap_ab: only the tensor-core path (use_dot) swaps its operands")
        if not self.use_dot and self.block_m != 1:
            raise ValueError(f"use_dot: the FMA path computes one row per program (block_m 1), got {self.block_m}")
        if not self.use_dot and self.lookup not in (0, 4, 5):
            raise ValueError(f"lookup: the one-row path reads a table (4, 5) or gathers (0), got {self.lookup}")
        if self.gluon and self.use_dot:
            self._check_gluon_mma()
        if self.gluon and not self.use_dot:
            self._check_gluon_gemv()

    def _check_gluon_gemv(self) -> None:
        lanes_per_row = self.block_k // 32  # 4 words of 8 weights per lane and step
        if self.block_k not in (128, 256, 512, 1024) or self.num_stages not in (1, 2) or self.programs_per_sm < 1:
            raise ValueError(f"gluon one-row: takes block_k 128-1024, 1-2 stages, programs_per_sm >= 1, got {self}")
        if self.words_per_dot not in (1, 2, 4):
            raise ValueError(f"gluon one-row: words_per_dot must be 1, 2 or 4 (a lane's words a step), got {self}")
        if self.block_n % (32 // lanes_per_row * self.num_warps):
            raise ValueError(f"gluon one-row: block_n must cover whole thread rows (32 lanes per warp), got {self}")

    def _check_gluon_mma(self) -> None:
        tiles = self.block_n // (16 * self.num_warps)
        if self.block_m not in (8, 16) or self.block_k != 128 or self.num_stages not in (1, 2):
            raise ValueError(f"gluon: takes block_m 8 or 16, block_k 128 and 1-2 stages, got {self}")
        if tiles < 1 or tiles * 16 * self.num_warps != self.block_n:
            raise ValueError(f"gluon: block_n must be a power-of-two multiple of 16 rows per warp, got {self}")
        if not (self.use_dot and self.swap_ab and self.lookup == 4):
            raise ValueError("gluon: the tile multiplies the register table's weights as the first MMA operand")


def m_bucket(m: int) -> int:
    """The tuned-table key for a batch of m rows: the next power of two up to 16, else 0 (large M)."""
    if m > MAX_SMALL_M:
        return 0
    return 1 << (m - 1).bit_length()


def _lut(split_k: int, block_n: int = 32, block_k: int = 64, num_stages: int = 3) -> Nf4Config:
    """The register-table tile (lookup 4), 2 warps; by default 32 weight rows, one 64-wide absmax block per step."""
    return Nf4Config(16, block_n, block_k, split_k, use_dot=True, num_warps=2, num_stages=num_stages, lookup=4,
                     swap_ab=True)  # fmt: skip


def _pair_table_dot(block_k: int) -> Nf4Config:
    """Byte-pair-table tile for absmax blocks other than 64 (the register-table tile is sized for blocks of 64)."""
    return Nf4Config(16, 64, block_k, 1, use_dot=True, num_warps=4, num_stages=1, lookup=3, swap_ab=True)


def _words(block_n: int = 16, block_k: int = 2048, num_warps: int = 4, split_k: int = 1) -> Nf4Config:
    """The one-row tile (lookup 4): packed int32 words times x on packed fp16 units; by default a few rows over
    long K steps, whole rows per program (run 10: fewer, longer programs stream the weights faster)."""
    return Nf4Config(1, block_n, block_k, split_k, use_dot=False, num_warps=num_warps, num_stages=1, lookup=4)


def _gemv(
    block_n: int, block_k: int, num_warps: int, programs_per_sm: int, prefetch: bool, words_per_dot: int
) -> Nf4Config:
    """The Gluon one-row tile: the byte table in shared memory, persistent programs."""
    return Nf4Config(1, block_n, block_k, 1, use_dot=False, num_warps=num_warps, num_stages=2 if prefetch else 1,
                     lookup=5, gluon=True, programs_per_sm=programs_per_sm, words_per_dot=words_per_dot)  # fmt: skip


def _mma(block_n: int, split_k: int, num_warps: int, prefetch: bool) -> Nf4Config:
    """The Gluon register-fed MMA tile for up to 8 rows of x."""
    return Nf4Config(8, block_n, 128, split_k, num_warps=num_warps, num_stages=2 if prefetch else 1, lookup=4,
                     swap_ab=True, gluon=True)  # fmt: skip


# (N, K, m_bucket) -> the fastest correct config of `bench_kernels --sweep` (docs/KERNELS.md, on an H200).
# M = 1: the one-row word tile (run 10). M = 2..16: the swapped register-table tile (run 7), which pads the batch to
# 16 columns, so its time does not depend on M (run 4 swept M = 8 too: same winners). Llama-3-8B: fused qkv, o,
# fused gate_up, down.
TUNED_BLOCKSIZE = 64  # the absmax block size the table was measured with (bitsandbytes' default)
TUNED: dict[tuple[int, int, int], Nf4Config] = {
    (6144, 4096, 1): _words(),
    (4096, 4096, 1): _words(num_warps=8),
    (28672, 4096, 1): _words(block_n=8, block_k=1024, num_warps=1),
    (4096, 14336, 1): _words(num_warps=8),
    **{(6144, 4096, m): _lut(8, block_k=128) for m in (2, 4, 8, 16)},
    **{(4096, 4096, m): _lut(8, block_k=256, num_stages=2) for m in (2, 4, 8, 16)},
    **{(28672, 4096, m): _lut(4, block_n=64) for m in (2, 4, 8, 16)},
    **{(4096, 14336, m): _lut(8, block_k=128) for m in (2, 4, 8, 16)},
}


# M = 2..8 where Gluon runs: the register-fed MMA tile (docs/KERNELS.md, run 11).
TUNED_MMA: dict[tuple[int, int, int], Nf4Config] = {
    **{(6144, 4096, m): _mma(128, 8, 8, prefetch=True) for m in (2, 4, 8)},
    **{(4096, 4096, m): _mma(128, 8, 8, prefetch=True) for m in (2, 4, 8)},
    **{(28672, 4096, m): _mma(128, 4, 4, prefetch=True) for m in (2, 4, 8)},
    **{(4096, 14336, m): _mma(256, 16, 8, prefetch=True) for m in (2, 4, 8)},
}


# M = 1 where the Gluon one-row tile runs (docs/KERNELS.md, run 13): (rows, k per step, warps, programs per
# SM, prefetch, words summed in fp16). gate_up's 8-warp tile takes 128 registers: 2 programs per SM.
TUNED_GEMV: dict[tuple[int, int, int], Nf4Config] = {
    (6144, 4096, 1): _gemv(16, 1024, 4, 3, prefetch=True, words_per_dot=4),
    (4096, 4096, 1): _gemv(16, 1024, 4, 2, prefetch=True, words_per_dot=4),
    (28672, 4096, 1): _gemv(64, 1024, 8, 2, prefetch=False, words_per_dot=1),
    (4096, 14336, 1): _gemv(16, 1024, 4, 3, prefetch=True, words_per_dot=4),
}


def pick_config(
    m: int, n: int, k: int, blocksize: int, num_sms: int, mma: bool = False, gemv: bool = False
) -> Nf4Config:
    """The tuned config for this shape when there is one (with `gemv` the Gluon one-row tile first, with `mma` the
    Gluon MMA tile); else, for one row, the word tile; for up to 16 rows the register-table tile (or, for absmax
    blocks other than 64, the byte-pair-table tile); each with a split-K that fills the GPU (one row: at least one
    program per SM). Larger M: a plain tiled GEMM."""
    key = (n, k, m_bucket(m))
    tuned = (TUNED_GEMV.get(key) if gemv else None) or (TUNED_MMA.get(key) if mma else None) or TUNED.get(key)
    if tuned is not None and k % (tuned.split_k * tuned.block_k) == 0 and blocksize == TUNED_BLOCKSIZE:
        return tuned
    if m > MAX_SMALL_M:
        block_k = max(blocksize, 256 if k % 256 == 0 else blocksize)
        return Nf4Config(block_m=64, block_n=64, block_k=block_k, num_warps=8)
    if m == 1:
        block_k = next(bk for bk in (2048, 1024, 512, 256, 128, 64, blocksize) if bk % blocksize == 0 and k % bk == 0)
        base = _words(block_k=block_k)
    else:
        base = _lut(1) if blocksize == 64 else _pair_table_dot(max(64, blocksize))
    n_tiles = -(-n // base.block_n)
    programs = num_sms if m == 1 else 2 * num_sms  # one row: whole rows per program unless the tiles are too few
    split_k = 1
    while n_tiles * split_k < programs and k % (2 * split_k * base.block_k) == 0 and split_k < 8:
        split_k *= 2
    return replace(base, split_k=split_k)
