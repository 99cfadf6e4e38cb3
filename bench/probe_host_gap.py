"""How much of an engine decode step is the GPU, and how much the host between two graph replays?

Llama-3-8B shapes, random NF4 weights, batch 1 and 8 (base rows), ms per step:
  engine            Engine.generate, (total - time to first token) / decode steps, as bench_engine reports it
  replays           the same decode graph replayed back to back, one sync at the end: the GPU's time alone
  replay + sync     each replay followed by the engine's greedy sample and .tolist()

python -m bench.probe_host_gap          # GPU only
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench.llm_shapes import LLAMA3_8B, write_random_llama
from engine import Engine, EngineConfig, SamplingParams
from engine.sampling import RowSampler, sample

OUT_LEN, RUNS = 100, 5


def engine_step_ms(eng: Engine, batch: int) -> float:
    prompts = [[(7 * r + 13 * i) % 1000 + 10 for i in range(43)] for r in range(batch)]
    params = SamplingParams(temperature=0, max_tokens=OUT_LEN, ignore_eos=True)
    eng.generate(prompts, params)
    steps = []
    for _ in range(RUNS):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        results = eng.generate(prompts, params)
        torch.cuda.synchronize()
        total = time.perf_counter() - t0
        steps.append((total - max(r.time_to_first_token_s for r in results)) / (OUT_LEN - 1) * 1000)
    return statistics.median(steps)


def replay_ms(eng: Engine, batch: int, with_sync: bool) -> float:
    def run() -> float:
        graph = next(g for (n, _, lora, _), g in eng.runner._graphs.items() if n == batch and not lora)
        vocab = graph.logits.shape[-1]
        samplers = [RowSampler(SamplingParams(temperature=0), [], vocab, graph.logits.device) for _ in range(batch)]
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(OUT_LEN):
            graph.graph.replay()
            if with_sync:
                index = torch.tensor(list(range(batch)), device="cuda")
                sample(graph.logits.index_select(0, index), samplers).tolist()
        torch.cuda.synchronize()
        return (time.perf_counter() - t0) / OUT_LEN * 1000

    return eng.run_on_engine_thread(lambda: statistics.median(run() for _ in range(RUNS))).result()


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_random_llama(Path(tmp) / "llama", LLAMA3_8B, "cuda")
        cfg = EngineConfig(model=folder, device="cuda", quantization="nf4", max_batch_size=8, max_seq_len=512)
        with Engine(cfg) as eng:
            for batch in (1, 8):
                step = engine_step_ms(eng, batch)
                gpu = replay_ms(eng, batch, with_sync=False)
                synced = replay_ms(eng, batch, with_sync=True)
                print(f"batch {batch}: engine {step:.3f} ms, replays {gpu:.3f} ms, replay + sync {synced:.3f} ms, "
                      f"host share {(step - gpu) / step:.1%}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
