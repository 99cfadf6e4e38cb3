"""NF4 reference path (the CPU path of engine.kernels) against bitsandbytes and hand-packed bytes."""

from __future__ import annotations

import pytest
import torch
from bitsandbytes.functional import dequantize_4bit, quantize_4bit

from engine.kernels import nf4_dequantize, nf4_dequantize_reference, nf4_matmul
from engine.kernels.nf4_configs import TUNED, TUNED_GEMV, TUNED_MMA, Nf4Config, m_bucket, pick_config

LLAMA3_8B_SHAPES = [(6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336)]


def _quantize(n: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(n, k, generator=gen).to(torch.float16)  # [N, K]
    qweight, state = quantize_4bit(weight, quant_type="nf4", blocksize=64, compress_statistics=False)
    return qweight, state.absmax, state.code, dequantize_4bit(qweight, state)


@pytest.mark.parametrize(("n", "k"), [(8, 128), (48, 320), (3, 40), (1, 64)])
def test_dequantize_is_bit_identical_to_bitsandbytes(n: int, k: int) -> None:
    qweight, absmax, code, expected = _quantize(n, k, seed=n * 1000 + k)
    got = nf4_dequantize(qweight, absmax, code, n, k)
    assert got.dtype == torch.float16 and got.shape == (n, k)
    assert torch.equal(got, expected)


def test_high_nibble_is_the_first_element_of_each_byte() -> None:
    code = torch.linspace(-1.0, 1.0, 16)
    qweight = torch.tensor([0x7F, 0x02] * 32, dtype=torch.uint8)  # one row of 128, one 64-block per 32 bytes
    absmax = torch.tensor([2.0, 0.5])
    w = nf4_dequantize_reference(qweight, absmax, code, 1, 128)[0].float()  # [128]
    expected = torch.tensor([code[7], code[15], code[0], code[2]] * 32) * torch.tensor([2.0] * 64 + [0.5] * 64)
    assert torch.allclose(w, expected.to(torch.float16).float())


@pytest.mark.parametrize("m", [1, 5, 33])
def test_matmul_matches_dequantize_then_fp64_matmul(m: int) -> None:
    n, k = 40, 192
    qweight, absmax, code, weight = _quantize(n, k, seed=m)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(7))  # fp32 on the CPU
    got = nf4_matmul(x, qweight, absmax, code, n, k)  # [M, N]
    expected = x.double() @ weight.double().t()
    assert got.shape == (m, n)
    assert ((got.double() - expected).norm() / expected.norm()).item() < 1e-6


def test_bad_arguments_name_the_argument() -> None:
    qweight, absmax, code, _ = _quantize(8, 128, seed=1)
    with pytest.raises(ValueError, match="qweight"):
        nf4_matmul(torch.randn(1, 128), qweight[:-1], absmax, code, 8, 128)
    with pytest.raises(ValueError, match="absmax"):
        nf4_matmul(torch.randn(1, 128), qweight, absmax[:-1], code, 8, 128)
    with pytest.raises(ValueError, match="code"):
        nf4_matmul(torch.randn(1, 128), qweight, absmax, code[:8], 8, 128)
    with pytest.raises(ValueError, match="x: expected"):
        nf4_matmul(torch.randn(1, 64), qweight, absmax, code, 8, 128)


@pytest.mark.parametrize(("n", "k"), [*LLAMA3_8B_SHAPES, (2048, 8192), (256, 192), (96, 64)])
@pytest.mark.parametrize("m", [1, 2, 3, 8, 16, 17, 512])
@pytest.mark.parametrize(("mma", "gemv"), [(False, False), (True, False), (True, True)])
def test_picked_config_tiles_k_exactly(n: int, k: int, m: int, mma: bool, gemv: bool) -> None:
    cfg = pick_config(m, n, k, blocksize=64, num_sms=132, mma=mma, gemv=gemv)
    assert k % (cfg.split_k * cfg.block_k) == 0
    assert cfg.block_k % 64 == 0
    assert not cfg.use_dot or cfg.block_m >= (m if cfg.gluon else 16)
    assert cfg.use_dot == (m > 1), "one row runs a word tile, more rows the tensor-core tiles"
    assert not cfg.gluon or (mma and 2 <= m <= 8) or (gemv and m == 1), "Gluon tiles only where asked for"
    assert not (cfg.gluon and m == 1) or n % cfg.block_n == 0, "the Gluon one-row tile takes whole row tiles"


@pytest.mark.parametrize("blocksize", [32, 64, 128, 256])
def test_one_row_config_steps_whole_absmax_blocks(blocksize: int) -> None:
    for k in (blocksize, 3 * blocksize, 4096):
        cfg = pick_config(1, 80, k, blocksize=blocksize, num_sms=4)
        assert not cfg.use_dot and cfg.block_k % blocksize == 0 and k % (cfg.split_k * cfg.block_k) == 0


def test_tuned_table_covers_the_8b_shapes_and_tiles_their_k() -> None:
    for n, k in LLAMA3_8B_SHAPES:
        for m in (1, 2, 3, 4, 8, 16):
            assert pick_config(m, n, k, blocksize=64, num_sms=132) is TUNED[(n, k, m_bucket(m))]
    for (_, k, _), cfg in TUNED.items():
        assert k % (cfg.split_k * cfg.block_k) == 0
    for n, k in LLAMA3_8B_SHAPES:  # with Gluon (and no fused LoRA expand): the MMA tile for 2-8 rows
        for m in (1, 2, 3, 4, 8, 16):
            want = TUNED_MMA[(n, k, m_bucket(m))] if 2 <= m <= 8 else TUNED[(n, k, m_bucket(m))]
            assert pick_config(m, n, k, blocksize=64, num_sms=132, mma=True) is want
            one_row = TUNED_GEMV[(n, k, 1)] if m == 1 else want
            assert pick_config(m, n, k, blocksize=64, num_sms=132, mma=True, gemv=True) is one_row


def test_m_bucket_and_config_validation() -> None:
    assert [m_bucket(m) for m in (1, 2, 3, 5, 16, 17)] == [1, 2, 4, 8, 16, 0]
    with pytest.raises(ValueError, match="block_n"):
        Nf4Config(block_n=24)
    with pytest.raises(ValueError, match="use_dot"):
        Nf4Config(block_m=1, use_dot=True)
    with pytest.raises(ValueError, match="use_dot"):
        Nf4Config(block_m=2, use_dot=False)
    with pytest.raises(ValueError, match="lookup"):
        Nf4Config(lookup=2)
    with pytest.raises(ValueError, match="swapped"):
        Nf4Config(lookup=4)
    with pytest.raises(ValueError, match="one-row path"):
        Nf4Config(block_m=1, use_dot=False, lookup=3)
    gluon = dict(block_m=8, block_n=64, block_k=128, num_warps=2, num_stages=1, lookup=4, swap_ab=True, gluon=True)
    assert Nf4Config(**gluon).gluon
    with pytest.raises(ValueError, match="block_k 128"):
        Nf4Config(**{**gluon, "block_k": 256})
    with pytest.raises(ValueError, match="rows per warp"):
        Nf4Config(**{**gluon, "block_n": 16})
    with pytest.raises(ValueError, match="first MMA operand"):
        Nf4Config(**{**gluon, "lookup": 3})
    gemv = dict(
        block_m=1,
        block_n=16,
        block_k=512,
        use_dot=False,
        num_warps=4,
        num_stages=2,
        lookup=5,
        gluon=True,
        programs_per_sm=2,
    )
    assert Nf4Config(**gemv).gluon
    with pytest.raises(ValueError, match="byte table"):
        Nf4Config(**{**gemv, "gluon": False})
    with pytest.raises(ValueError, match="whole thread rows"):
        Nf4Config(**{**gemv, "block_n": 4})
    with pytest.raises(ValueError, match="programs_per_sm"):
        Nf4Config(**{**gemv, "programs_per_sm": 0})
    assert Nf4Config(**{**gemv, "words_per_dot": 4}).words_per_dot == 4
    with pytest.raises(ValueError, match="words_per_dot"):
        Nf4Config(**{**gemv, "words_per_dot": 3})
