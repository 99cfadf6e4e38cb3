"""Does the LoRA shrink on a side stream (engine/lora/stack.py) make multi-LoRA decode steps cheaper? The same
engine and adapters (rank 16 on all seven projections, one adapter per row), the shrink beside the base matmul
and in turn with it, taken in turn (decode graphs captured again after each switch).

python -m bench.probe_lora_overlap --out r.json     # GPU, Llama-3-8B shapes; --quick: tiny shapes on the CPU
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from bench.bench_engine import ALL7, run_decode
from bench.llm_shapes import LLAMA3_8B, TINY, write_random_llama
from engine import Engine, EngineConfig
from engine.lora.stack import LoraStack
from storyloom.demo.demo_adapters import build_demo_adapter

ARMS = {"beside": True, "in_turn": False}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--tokens", type=int, default=60)
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folder = write_random_llama(root / "llama", TINY if args.quick else LLAMA3_8B, device)
        config = EngineConfig(model=folder, device=device, quantization="nf4", max_batch_size=8, max_seq_len=512,
                              max_loras=8, max_lora_rank=64)  # fmt: skip
        with Engine(config) as eng:
            names = []
            for k in range(8):
                path = build_demo_adapter(root / f"a{k}", folder, rank=16, alpha=32, target_modules=ALL7, seed=k)
                eng.adapters.load(f"a{k}", path)
                names.append(f"a{k}")

            def switch(arm: str) -> None:
                LoraStack.shrink_beside = ARMS[arm]
                eng.runner.release_graphs()

            rows = {}
            for batch in (1, 8):
                arms = {arm: names[:batch] for arm in ARMS}
                rows[batch] = run_decode(eng, batch, 43, args.tokens, arms, switch)
                steps = {arm: round(row["step_ms"], 3) for arm, row in rows[batch].items()}
                print(f"rank 16 all 7, batch {batch}: step ms {steps}", flush=True)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
