"""Does the NF4 kernel's read pattern cap its bandwidth? The same packed bytes, read as the real [N, K] matrix
(each K step reads BLOCK_K/2 bytes of BLOCK_N rows, 2 KB apart) and as a taller, narrower matrix [N*K/K', K']
whose tiles are contiguous runs of memory. Same kernel, same instructions per byte; only the addresses differ.

python -m bench.probe_layout          # GPU only
"""

from __future__ import annotations

import torch

from bench.bench_kernels import SHAPES, copy_bandwidth, nf4_code, ours, per_call_ms, rotating_copies
from engine.kernels.nf4_configs import Nf4Config

TILES = [Nf4Config(16, bn, bk, split, True, 2, stages, 4, True) for bn, bk, split, stages in
         ((32, 64, 8, 3), (32, 128, 4, 3), (64, 128, 4, 3), (64, 128, 1, 3), (32, 256, 1, 2))]  # fmt: skip
NARROW_K = (128, 256, 512, 1024)


def main() -> None:
    bandwidth = copy_bandwidth()
    print(f"copy bandwidth {bandwidth / 1e12:.2f} TB/s", flush=True)
    code = nf4_code()
    for name in ("gate_up", "down"):
        n, k = SHAPES[name]
        copies = rotating_copies(n, k, code)
        for view_k in (k, *NARROW_K):
            view_n = n * k // view_k
            views = [type(w)(w.qweight, w.absmax, code, view_n, view_k) for w in copies]
            x = torch.randn(1, view_k, device="cuda", dtype=torch.float16)
            for cfg in TILES:
                if view_k % (cfg.split_k * cfg.block_k):
                    continue
                ms = per_call_ms(lambda w, cfg=cfg, x=x: ours(x, w, cfg), views)
                tb_s = copies[0].nbytes / (ms / 1e3) / 1e12
                print(f"{name} as [{view_n}, {view_k}] bn{cfg.block_n} bk{cfg.block_k} split{cfg.split_k} "
                      f"st{cfg.num_stages}: {ms * 1e3:6.1f} us {tb_s:.2f} TB/s {tb_s * 1e12 / bandwidth:.0%}",
                      flush=True)  # fmt: skip
        del copies


if __name__ == "__main__":
    main()
