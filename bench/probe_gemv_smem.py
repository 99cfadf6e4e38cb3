"""Sweep of the one-row NF4 tile with the byte table in shared memory (nf4_gemv_gluon), against the default M = 1 tile.

Per Llama-3-8B shape at M = 1: every config checked against the dequantized reference (rel. error), then timed on
rotating weight copies inside a CUDA graph, in the same process as the default (`nf4_matmul`'s pick); us per call.

python -m bench.probe_gemv_smem [--out r.json]          # GPU only
"""

from __future__ import annotations

import argparse
import itertools
import json

import torch

from bench.bench_kernels import (
    DEVICE,
    SHAPES,
    copy_bandwidth,
    nf4_code,
    ours,
    per_call_ms,
    quantized_weight,
    rel_err,
    rotating_copies,
)
from engine.kernels.nf4_configs import Nf4Config
from engine.kernels.nf4_triton import gemv_resident, num_sms

ROWS_PER_THREAD = (1, 2, 4, 8)
LANES_PER_ROW = (16, 32)
WARPS = (4, 8, 16)
PREFETCH = (False, True)
WORDS_PER_DOT = (1, 2, 4)
LIMIT = 2e-3


def configs(n: int, k: int, sms: int, resident: int) -> list[Nf4Config]:
    """Every tile with at least one row tile per SM."""
    out = []
    space = (ROWS_PER_THREAD, LANES_PER_ROW, WARPS, range(1, resident + 1), PREFETCH, WORDS_PER_DOT)
    for rpt, lpr, warps, per_sm, pre, wpd in itertools.product(*space):
        rows = rpt * (32 // lpr) * warps
        if n % rows == 0 and k % (32 * lpr) == 0 and n // rows >= sms:
            out.append(Nf4Config(1, rows, 32 * lpr, 1, use_dot=False, num_warps=warps, num_stages=2 if pre else 1,
                                 lookup=5, gluon=True, programs_per_sm=per_sm, words_per_dot=wpd))  # fmt: skip
    return out


def shape_rows(n: int, k: int, sms: int, resident: int) -> tuple[float, list[dict]]:
    """(the default tile's us per call, every config's row)."""
    w, ref = quantized_weight(n, k)
    x = torch.randn(1, k, device=DEVICE, dtype=torch.float16)
    expected = x.float() @ ref.float().t()
    copies = rotating_copies(n, k, nf4_code())
    default = per_call_ms(lambda c: ours(x, c), copies) * 1e3
    rows = []
    for cfg in configs(n, k, sms, resident):
        err = rel_err(ours(x, w, cfg), expected)
        us = per_call_ms(lambda c, cfg=cfg: ours(x, c, cfg), copies) * 1e3
        rows.append({"config": str(cfg), "us": us, "rel_err": err, "ok": err < LIMIT})
    return default, rows


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out")
    args = parser.parse_args()
    sms, resident = num_sms(DEVICE), gemv_resident(DEVICE)
    bandwidth = copy_bandwidth()
    result: dict = {"copy_bandwidth": bandwidth, "shapes": {}}
    best = {}
    for name, (n, k) in SHAPES.items():
        default, rows = shape_rows(n, k, sms, resident)
        good = sorted((r for r in rows if r["ok"]), key=lambda r: r["us"])
        bad = [r for r in rows if not r["ok"]]
        floor_us = (n * k // 2 + n * k // 16) / bandwidth * 1e6
        result["shapes"][name] = {"default_us": default, "floor_us": floor_us, "rows": rows}
        best[name] = good[0]["us"] if good else float("nan")
        print(f"{name}: default {default:.2f} us, floor {floor_us:.2f} us; {len(good)} ok, {len(bad)} failed")
        for r in good[:5] + [{**r, "config": "FAILED " + r["config"]} for r in bad[:3]]:
            print(f"  {r['us']:.2f} us, rel err {r['rel_err']:.1e}: {r['config']}", flush=True)
    print(f"per layer: default {sum(s['default_us'] for s in result['shapes'].values()):.1f} us, best byte-table tile "
          f"{sum(best.values()):.1f} us", flush=True)  # fmt: skip
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
