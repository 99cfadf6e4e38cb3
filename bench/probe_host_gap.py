"""How much of an engine decode step is the GPU, and how much the host between two graph replays?

Llama-3-8B shapes, random NF4 weights, batch 1 and 8 (base rows), ms per step:
  engine            Engine.generate, (total - time to first token) / decode steps, as bench_engine reports it
  replays           the same decode graph replayed back to back, one sync at the end: the GPU's time alone

python -m bench.probe_host_gap          # GPU only
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench.bench_engine import run_decode
from bench.llm_shapes import LLAMA3_8B, write_random_llama
from engine import Engine, EngineConfig

OUT_LEN, RUNS = 100, 5  # as bench_engine: 43 tokens in, 100 out


def replay_ms(eng: Engine, batch: int) -> float:
    def run() -> float:
        graph = next(g for (n, _, lora, _), g in eng.runner._graphs.items() if n == batch and not lora)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(OUT_LEN):
            graph.graph.replay()
        torch.cuda.synchronize()
        return (time.perf_counter() - t0) / OUT_LEN * 1000

    return eng.run_on_engine_thread(lambda: statistics.median(run() for _ in range(RUNS))).result()


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_random_llama(Path(tmp) / "llama", LLAMA3_8B, "cuda")
        cfg = EngineConfig(model=folder, device="cuda", quantization="nf4", max_batch_size=8, max_seq_len=512)
        with Engine(cfg) as eng:
            for batch in (1, 8):
                step = run_decode(eng, batch, 43, OUT_LEN, {"base": [None] * batch})["base"]["step_ms"]
                gpu = replay_ms(eng, batch)
                print(f"batch {batch}: engine {step:.3f} ms, replays {gpu:.3f} ms, "
                      f"host share {(step - gpu) / step:.1%}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
