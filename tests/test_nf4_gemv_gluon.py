"""The Gluon one-row NF4 tile (byte table in shared memory) against bitsandbytes' dequantize + an fp32 matmul, and its
fused LoRA expand against the torch reference. GPU only: Gluon does not run in Triton's CPU interpreter."""

from __future__ import annotations

import importlib.util

import pytest
import torch

if importlib.util.find_spec("triton") is None or not torch.cuda.is_available():
    pytest.skip("the Gluon one-row tile needs CUDA and Triton", allow_module_level=True)

from bitsandbytes.functional import dequantize_4bit, quantize_4bit

from engine.kernels import LoraExpand
from engine.kernels.lora_reference import lora_expand_reference
from engine.kernels.nf4_configs import Nf4Config
from engine.kernels.nf4_triton import gluon_ready, nf4_matmul_triton, num_sms

DEVICE = torch.device("cuda")
if not gluon_ready(DEVICE):
    pytest.skip("the Gluon one-row tile needs sm_80+ and Triton's Gluon", allow_module_level=True)


def _gemv(block_n: int, block_k: int, warps: int, stages: int, per_sm: int, words_per_dot: int = 1) -> Nf4Config:
    return Nf4Config(1, block_n, block_k, 1, use_dot=False, num_warps=warps, num_stages=stages, lookup=5, gluon=True,
                     programs_per_sm=per_sm, words_per_dot=words_per_dot)  # fmt: skip


CONFIGS = [  # rows, k per step (4 words per lane), warps, stages (2: the next step loaded ahead), programs per SM,
    # words summed in fp16
    _gemv(16, 128, 2, 1, 1),
    _gemv(16, 256, 2, 2, 2, 2),
    _gemv(32, 512, 4, 2, 3, 4),
    _gemv(16, 1024, 8, 2, 2, 4),
    _gemv(16, 1024, 8, 2, 2),
]


def _weight(n: int, k: int, seed: int) -> tuple[torch.Tensor, ...]:
    weight = torch.randn(n, k, generator=torch.Generator().manual_seed(seed)).to(torch.float16)
    qweight, state = quantize_4bit(weight, quant_type="nf4", blocksize=64, compress_statistics=False)
    return (
        qweight.to(DEVICE),
        state.absmax.to(DEVICE),
        state.code.to(DEVICE),
        dequantize_4bit(qweight, state).to(DEVICE),
    )


def _rel(got: torch.Tensor, expected: torch.Tensor) -> float:
    return ((got.double() - expected.double()).norm() / expected.double().norm()).item()


@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
def test_gemv_tile_matches_fp32_reference(cfg: Nf4Config) -> None:
    n, k = 32 * (num_sms(DEVICE) + 1), 1024  # more row tiles than programs: each program takes several
    qweight, absmax, code, reference = _weight(n, k, seed=1)
    x = torch.randn(1, k, generator=torch.Generator().manual_seed(2)).to(torch.float16).to(DEVICE)
    got = nf4_matmul_triton(x, qweight, absmax, code, n, k, config=cfg)
    assert _rel(got, x.float() @ reference.float().t()) < 1e-3
    assert torch.equal(got, nf4_matmul_triton(x, qweight, absmax, code, n, k, config=cfg)), "deterministic"


def test_gemv_tile_rejects_more_than_one_row() -> None:
    qweight, absmax, code, _ = _weight(32, 1024, seed=3)
    x = torch.zeros(2, 1024, dtype=torch.float16, device=DEVICE)
    with pytest.raises(AssertionError):
        nf4_matmul_triton(x, qweight, absmax, code, 32, 1024, config=CONFIGS[2])


@pytest.mark.parametrize("cfg", CONFIGS[1:3], ids=str)
@pytest.mark.parametrize("splits", [3, 32])  # 32: decode attention's partial sums of o's shrink, one per head
@pytest.mark.parametrize("slot", [2, 0, -1])  # -1: the row has no adapter
def test_fused_expand_matches_reference_and_reads_no_rank_past_the_row(cfg: Nf4Config, splits: int, slot: int) -> None:
    s, r, k, n = 3, 16, 512, 96
    gen = torch.Generator().manual_seed(4)
    b_stack = (torch.randn(s, r, n, generator=gen) * 0.1).to(torch.float16).to(DEVICE)
    scales = torch.tensor([0.5, 2.0, 1.0], device=DEVICE)
    ranks = torch.tensor([4, 16, 8], dtype=torch.int32, device=DEVICE)
    slot_ids = torch.tensor([slot], dtype=torch.int32, device=DEVICE)
    t = torch.randn(1, splits, r, generator=gen).to(DEVICE)
    t[:, :, int(ranks[slot]) if slot >= 0 else 0 :] = float("nan")  # past the row's rank: never read
    qweight, absmax, code, reference = _weight(n, k, seed=5)
    x = torch.randn(1, k, generator=gen).to(torch.float16).to(DEVICE)
    lora = LoraExpand(t, slot_ids, b_stack, scales, ranks, rank_bound=16)
    fused = nf4_matmul_triton(x, qweight, absmax, code, n, k, config=cfg, lora=lora)
    base = (x.float() @ reference.float().t()).to(torch.float16)
    expected = lora_expand_reference(t.nan_to_num(0.0), slot_ids, b_stack, scales, ranks, base.float())
    assert _rel(fused, expected) < 1e-3
