"""Where one 8B-shaped decode step spends its GPU time (torch.profiler, eager mode, batch 1 and 8)."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from torch.profiler import ProfilerActivity, profile

from bench.llm_shapes import LLAMA3_8B, write_random_llama
from engine import Engine, EngineConfig, SamplingParams


def main() -> None:
    kernels = sys.argv[1] if len(sys.argv) > 1 else "bitsandbytes"
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_random_llama(Path(tmp) / "llama", LLAMA3_8B, "cuda")
        cfg = EngineConfig(model=folder, quantization="nf4", max_batch_size=8, max_seq_len=512, cuda_graphs=False,
                           kernels=kernels)  # fmt: skip
        with Engine(cfg) as eng:
            for batch in (1, 8):
                prompts = [list(range(10 + r, 53 + r)) for r in range(batch)]
                params = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
                eng.generate(prompts, params)
                with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
                    eng.generate(prompts, params)
                print(f"\n=== batch {batch}, kernels={kernels}, 40 tokens (eager, no CUDA graphs) ===")
                print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=60))


if __name__ == "__main__":
    main()
