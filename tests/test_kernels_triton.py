"""Triton kernels against the torch reference. They need CUDA, or the Triton interpreter on the CPU
(`TRITON_INTERPRET=1` with triton installed); otherwise this module is skipped. On the GPU,
`bench/bench_kernels.py --check` covers the 8B shapes."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

HAS_TRITON = importlib.util.find_spec("triton") is not None
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
if not HAS_TRITON:
    pytest.skip("Triton kernels: triton is not installed (CUDA-only path)", allow_module_level=True)
if not (torch.cuda.is_available() or INTERPRET):
    pytest.skip("Triton kernels: no CUDA device and TRITON_INTERPRET=1 is not set", allow_module_level=True)

from bitsandbytes.functional import dequantize_4bit, quantize_4bit  # noqa: E402

from engine.kernels import LoraExpand, lora_reference  # noqa: E402
from engine.kernels.lora_reference import lora_expand_reference  # noqa: E402
from engine.kernels.lora_triton import lora_expand_triton, lora_one_pass_triton, lora_shrink_triton  # noqa: E402
from engine.kernels.lora_types import ONE_PASS_MAX_ROWS  # noqa: E402
from engine.kernels.nf4_configs import Nf4Config  # noqa: E402
from engine.kernels.nf4_triton import (  # noqa: E402
    _code_derived,
    _num_sms,
    _tickets,
    byte_pair_table,
    gluon_ready,
    nf4_dequantize_triton,
    nf4_matmul_triton,
)

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
_num_sms.setdefault(torch.device("cpu"), 4)
CONFIGS = [
    Nf4Config(block_n=32, block_k=128),
    Nf4Config(block_n=16, block_k=64, split_k=4),
    Nf4Config(block_n=64, block_k=128, split_k=2, swap_ab=True),
    Nf4Config(block_n=32, block_k=64, split_k=2, swap_ab=True, lookup=4),
    Nf4Config(block_n=16, block_k=64, swap_ab=True, lookup=4, num_warps=2),
    Nf4Config(block_m=64, block_n=32, block_k=64, split_k=2, swap_ab=True, lookup=4, num_warps=2),
    Nf4Config(block_n=32, block_k=128, split_k=2, swap_ab=True, lookup=4, num_warps=2),  # 2 absmax blocks a step
    Nf4Config(block_n=16, block_k=256, swap_ab=True, lookup=4, num_warps=2),
    Nf4Config(block_m=1, block_n=16, block_k=128, split_k=2, use_dot=False, lookup=4),
    Nf4Config(block_m=1, block_n=8, block_k=64, use_dot=False, split_k=4, lookup=4),
    Nf4Config(block_m=1, block_n=32, block_k=256, use_dot=False, lookup=4, num_warps=2),
]


def _weight(n: int, k: int, seed: int, blocksize: int = 64) -> tuple[torch.Tensor, ...]:
    weight = torch.randn(n, k, generator=torch.Generator().manual_seed(seed)).to(torch.float16)
    qweight, state = quantize_4bit(weight, quant_type="nf4", blocksize=blocksize, compress_statistics=False)
    reference = dequantize_4bit(qweight, state)
    return qweight.to(DEVICE), state.absmax.to(DEVICE), state.code.to(DEVICE), reference.to(DEVICE)


def _rel(got: torch.Tensor, expected: torch.Tensor) -> float:
    return ((got.double() - expected.double()).norm() / expected.double().norm()).item()


def test_dequantize_is_bit_identical() -> None:
    qweight, absmax, code, reference = _weight(48, 256, seed=0)
    assert torch.equal(nf4_dequantize_triton(qweight, absmax, code, 48, 256), reference)


@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
@pytest.mark.parametrize("m", [1, 3, 17])
def test_matmul_matches_fp32_reference(cfg: Nf4Config, m: int) -> None:
    n, k = 80, 256
    qweight, absmax, code, reference = _weight(n, k, seed=m)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(1)).to(torch.float16).to(DEVICE)
    got = nf4_matmul_triton(x, qweight, absmax, code, n, k, config=cfg)
    assert _rel(got, x.float() @ reference.float().t()) < 1e-3  # fp16 output rounding is ~3e-4
    if cfg.split_k > 1:
        assert int(_tickets[x.device].abs().sum()) == 0, "split-K tickets must be reset for the next call"


GLUON_CONFIGS = [  # the register-fed MMA tile (nf4_mma_gluon.py): rows, split-K, warps, row tiles per warp, prefetch
    Nf4Config(8, 64, 128, 1, num_warps=2, num_stages=1, lookup=4, swap_ab=True, gluon=True),
    Nf4Config(8, 64, 128, 2, num_warps=2, num_stages=2, lookup=4, swap_ab=True, gluon=True),
    Nf4Config(8, 128, 128, 4, num_warps=4, num_stages=2, lookup=4, swap_ab=True, gluon=True),
    Nf4Config(16, 64, 128, 2, num_warps=4, num_stages=1, lookup=4, swap_ab=True, gluon=True),
]


@pytest.mark.skipif(not gluon_ready(DEVICE), reason="the Gluon tile needs CUDA (sm_80+) and Triton's Gluon")
@pytest.mark.parametrize("cfg", GLUON_CONFIGS, ids=str)
@pytest.mark.parametrize("m", [1, 3, 8, 13])
def test_gluon_mma_tile_matches_fp32_reference(cfg: Nf4Config, m: int) -> None:
    if m > cfg.block_m:
        pytest.skip("more rows than the tile's MMA columns")
    n, k = 80, 512  # 80 rows: the last program's tile is partly past N
    qweight, absmax, code, reference = _weight(n, k, seed=m)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(3)).to(torch.float16).to(DEVICE)
    got = nf4_matmul_triton(x, qweight, absmax, code, n, k, config=cfg)
    assert _rel(got, x.float() @ reference.float().t()) < 1e-3
    assert torch.equal(got, nf4_matmul_triton(x, qweight, absmax, code, n, k, config=cfg)), "deterministic"
    assert int(_tickets[x.device].abs().sum()) == 0, "split-K tickets must be reset for the next call"


@pytest.mark.parametrize("blocksize", [32, 128])
@pytest.mark.parametrize("m", [1, 2])
def test_matmul_with_other_absmax_blocks_matches_reference(blocksize: int, m: int) -> None:
    n, k = 48, 384
    qweight, absmax, code, reference = _weight(n, k, seed=5, blocksize=blocksize)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(6)).to(torch.float16).to(DEVICE)
    got = nf4_matmul_triton(x, qweight, absmax, code, n, k, blocksize=blocksize)
    assert _rel(got, x.float() @ reference.float().t()) < 1e-3


@pytest.mark.parametrize(
    "cfg",
    [CONFIGS[1], CONFIGS[8], GLUON_CONFIGS[0], GLUON_CONFIGS[1]],
    ids=["tensor cores", "one row", "gluon", "gluon split"],
)
def test_lora_shrink_expand_and_fused_epilogue_match_reference(cfg: Nf4Config) -> None:
    if cfg.gluon and not gluon_ready(DEVICE):
        pytest.skip("the Gluon tile needs CUDA (sm_80+) and Triton's Gluon")
    s, r, k, n, m = 3, 16, 256, 80, 5
    gen = torch.Generator().manual_seed(2)
    a_stack = (torch.randn(s, r, k, generator=gen) * 0.1).to(torch.float16).to(DEVICE)
    b_stack = (torch.randn(s, r, n, generator=gen) * 0.1).to(torch.float16).to(DEVICE)
    scales = torch.tensor([0.5, 2.0, 1.0], device=DEVICE)
    ranks = torch.tensor([4, 16, 8], dtype=torch.int32, device=DEVICE)
    slot_ids = torch.tensor([0, -1, 2, 1, 2], dtype=torch.int32, device=DEVICE)
    x = torch.randn(m, k, generator=gen).to(torch.float16).to(DEVICE)
    y0 = torch.randn(m, n, generator=gen).to(torch.float16).to(DEVICE)
    expected = lora_reference(x, slot_ids, a_stack, b_stack, scales, ranks, y0.float())
    t = lora_shrink_triton(x, slot_ids, a_stack, ranks)
    got = lora_expand_triton(t, slot_ids, b_stack, scales, ranks, y0.clone())
    assert _rel(got - y0, expected - y0.float()) < 2e-3
    assert torch.equal(got[1], y0[1])
    qweight, absmax, code, reference = _weight(n, k, seed=9)
    lora = LoraExpand(t, slot_ids, b_stack, scales, ranks)
    fused = nf4_matmul_triton(x, qweight, absmax, code, n, k, config=cfg, lora=lora)
    base = (x.float() @ reference.float().t()).to(torch.float16)
    assert _rel(fused, lora_reference(x, slot_ids, a_stack, b_stack, scales, ranks, base.float())) < 1e-3


@pytest.mark.parametrize(
    "cfg", [CONFIGS[1], CONFIGS[8], GLUON_CONFIGS[1], GLUON_CONFIGS[2]], ids=["tensor cores", "one row", "gluon",
                                                                              "gluon 4 warps"]
)  # fmt: skip
@pytest.mark.parametrize("splits", [3, 32])  # 32: decode attention's partial sums of o's shrink, one per head
@pytest.mark.parametrize("slot_ranks", [(4, 16, 8), (2, 3, 1)])  # (2, 3, 1): fewer ranks than the Gluon tile's splits
def test_fused_epilogue_sums_the_partials_and_reads_no_rank_past_a_row(
    cfg: Nf4Config, splits: int, slot_ranks: tuple[int, ...]
) -> None:
    """t of many partial sums, NaN past each row's rank: the epilogue adds nothing of those entries."""
    if cfg.gluon and not gluon_ready(DEVICE):
        pytest.skip("the Gluon tile needs CUDA (sm_80+) and Triton's Gluon")
    s, r, k, n, m = 3, 16, 512, 80, 5
    gen = torch.Generator().manual_seed(7)
    b_stack = (torch.randn(s, r, n, generator=gen) * 0.1).to(torch.float16).to(DEVICE)
    scales = torch.tensor([0.5, 2.0, 1.0], device=DEVICE)
    ranks = torch.tensor(slot_ranks, dtype=torch.int32, device=DEVICE)
    slot_ids = torch.tensor([0, -1, 2, 1, 2], dtype=torch.int32, device=DEVICE)
    t = torch.randn(m, splits, r, generator=gen).to(DEVICE)
    past = torch.arange(r, device=DEVICE) >= torch.where(slot_ids >= 0, ranks[slot_ids.clamp(min=0)], 0)[:, None]
    t.masked_fill_(past[:, None, :], float("nan"))
    qweight, absmax, code, reference = _weight(n, k, seed=10)
    x = torch.randn(m, k, generator=gen).to(torch.float16).to(DEVICE)
    lora = LoraExpand(t, slot_ids, b_stack, scales, ranks, rank_bound=max(slot_ranks))
    fused = nf4_matmul_triton(x, qweight, absmax, code, n, k, config=cfg, lora=lora)
    base = (x.float() @ reference.float().t()).to(torch.float16)
    assert _rel(fused, lora_expand_reference(t, slot_ids, b_stack, scales, ranks, base.float())) < 1e-3


@pytest.mark.parametrize("r", [8, 24])  # 24: a 16-row rank chunk of the shrink spans two segments
def test_lora_segments_of_a_fused_projection(r: int) -> None:
    s, k, n, m, segments = 2, 128, 384, 3, (128, 256)
    gen = torch.Generator().manual_seed(3)
    a_stack = (torch.randn(s, 3 * r, k, generator=gen) * 0.1).to(torch.float16).to(DEVICE)  # [S, 3R, K]
    b_stack = (torch.randn(s, r, n, generator=gen) * 0.1).to(torch.float16).to(DEVICE)  # [S, R, N]
    scales = torch.tensor([0.5, 2.0], device=DEVICE)
    ranks = torch.tensor([3, r - 4], dtype=torch.int32, device=DEVICE)
    slot_ids = torch.tensor([1, -1, 0], dtype=torch.int32, device=DEVICE)
    x = torch.randn(m, k, generator=gen).to(torch.float16).to(DEVICE)
    y0 = torch.randn(m, n, generator=gen).to(torch.float16).to(DEVICE)
    expected = lora_reference(x, slot_ids, a_stack, b_stack, scales, ranks, y0.float(), segments)
    t = lora_shrink_triton(x, slot_ids, a_stack, ranks, num_segments=3)
    got = lora_expand_triton(t, slot_ids, b_stack, scales, ranks, y0.clone(), segments)
    assert _rel(got - y0, expected - y0.float()) < 2e-3
    qweight, absmax, code, reference = _weight(n, k, seed=4)
    lora = LoraExpand(t, slot_ids, b_stack, scales, ranks, segments)
    base = (x.float() @ reference.float().t()).to(torch.float16)
    want = lora_reference(x, slot_ids, a_stack, b_stack, scales, ranks, base.float(), segments)
    for cfg in [Nf4Config(block_n=64, block_k=64)] + GLUON_CONFIGS[:1] * gluon_ready(DEVICE):
        assert _rel(nf4_matmul_triton(x, qweight, absmax, code, n, k, config=cfg, lora=lora), want) < 1e-3, cfg


@pytest.mark.parametrize("m", [1, 5, ONE_PASS_MAX_ROWS])
@pytest.mark.parametrize("segments", [(), (256, 512), (128, 384)], ids=["plain", "segments", "segments128"])
def test_lora_one_pass_matches_reference(m: int, segments: tuple[int, ...]) -> None:
    s, r, k, n = 3, 16, 384, 640
    gen = torch.Generator().manual_seed(m)
    groups = len(segments) + 1
    a_stack = (torch.randn(s, groups * r, k, generator=gen) * 0.1).to(torch.float16).to(DEVICE)
    b_stack = (torch.randn(s, r, n, generator=gen) * 0.1).to(torch.float16).to(DEVICE)
    scales = torch.tensor([0.5, 2.0, 1.0], device=DEVICE)
    ranks = torch.tensor([4, 16, 8], dtype=torch.int32, device=DEVICE)
    slot_ids = torch.tensor([(i + 1) % 4 - 1 for i in range(m)], dtype=torch.int32, device=DEVICE)[
        torch.randperm(m, generator=gen)
    ]
    x = torch.randn(m, k, generator=gen).to(torch.float16).to(DEVICE)
    y0 = torch.randn(m, n, generator=gen).to(torch.float16).to(DEVICE)
    expected = lora_reference(x, slot_ids, a_stack, b_stack, scales, ranks, y0.float(), segments)
    bound = int(ranks.max())  # the largest resident rank, as the engine passes it
    got = lora_one_pass_triton(x, slot_ids, a_stack, b_stack, scales, ranks, y0.clone(), segments, rank_bound=bound)
    assert _rel(got - y0, expected - y0.float()) < 2e-3
    no_adapter = slot_ids < 0
    assert torch.equal(got[no_adapter], y0[no_adapter])


def test_byte_pair_table_holds_both_nibbles_of_each_byte() -> None:
    _code_derived.clear()  # tables are cached per code address: an earlier test's freed code may have had this one
    code = torch.linspace(-1.0, 1.0, 16, device=DEVICE)
    pairs = byte_pair_table(code)  # [byte, (even, odd)]
    byte = torch.arange(256, device=DEVICE)
    assert torch.equal(pairs[:, 0], code[byte >> 4]) and torch.equal(pairs[:, 1], code[byte & 15])
