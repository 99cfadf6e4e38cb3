"""Where one 8B-shaped decode step spends its GPU time (torch.profiler, eager mode, batch 1 and 8).

python -m bench.profile_decode [auto|triton|bitsandbytes] [rank8-qkv|rank16-all7]: with an adapter setup, each
row of the batch on its own adapter of that setup, and the base profiled beside it."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from torch.profiler import ProfilerActivity, profile

from bench.bench_engine import LORA_CONFIGS
from bench.llm_shapes import LLAMA3_8B, write_random_llama
from engine import Engine, EngineConfig, SamplingParams
from storyloom.demo.demo_adapters import build_demo_adapter


def main() -> None:
    kernels = sys.argv[1] if len(sys.argv) > 1 else "bitsandbytes"
    setup = sys.argv[2] if len(sys.argv) > 2 else None
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_random_llama(Path(tmp) / "llama", LLAMA3_8B, "cuda")
        cfg = EngineConfig(model=folder, quantization="nf4", max_batch_size=8, max_seq_len=512, cuda_graphs=False,
                           kernels=kernels, max_loras=8, max_lora_rank=64)  # fmt: skip
        with Engine(cfg) as eng:
            names: list[str] = []
            if setup is not None:
                rank, targets = LORA_CONFIGS[setup]
                for k in range(8):
                    path = build_demo_adapter(Path(tmp) / f"a{k}", folder, rank=rank, alpha=2 * rank,
                                              target_modules=targets, seed=k)  # fmt: skip
                    eng.adapters.load(f"a{k}", path)
                    names.append(f"a{k}")
            for batch in (1, 8):
                prompts = [list(range(10 + r, 53 + r)) for r in range(batch)]
                params = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
                for label, adapters in (("base", None), (setup, names[:batch])) if setup else (("base", None),):
                    eng.generate(prompts, params, adapters=adapters)
                    with profile(activities=[ProfilerActivity.CUDA]) as prof:
                        eng.generate(prompts, params, adapters=adapters)
                    print(f"\n=== batch {batch}, {label}, kernels={kernels}, 40 tokens (eager, no CUDA graphs) ===")
                    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=16, max_name_column_width=50))


if __name__ == "__main__":
    main()
