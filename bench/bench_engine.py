"""LLM engine benchmark: ours (NF4 + multi-LoRA) vs transformers + bitsandbytes (+ PEFT), same GPU, same run.

python bench/bench_engine.py --out results.json           # Llama-3-8B shapes on a CUDA GPU
python bench/bench_engine.py --quick                        # tiny shapes, CPU smoke run
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from bench.llm_shapes import LLAMA3_8B, TINY, write_random_llama
from engine import Engine, EngineConfig, SamplingParams
from storyloom.demo.demo_adapters import build_demo_adapter

ALL7 = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TIMED_RUNS = 5  # medians: one run's step time varies by up to 10% on the same GPU
LORA_CONFIGS = {"rank8-qkv": (8, ["q_proj", "k_proj", "v_proj"]), "rank16-all7": (16, ALL7)}


def copy_bandwidth(device: str) -> float:
    """Bytes read + written per second by a large device-to-device copy (bytes/s)."""
    if device != "cuda":
        return float("nan")
    src = torch.empty(2 * 1024**3, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        dst.copy_(src)
    end.record()
    torch.cuda.synchronize()
    seconds = start.elapsed_time(end) / 1000 / 10
    del src, dst
    return 2 * 2 * 1024**3 / seconds


def step_bytes(eng: Engine) -> int:
    """Bytes one decode step must read: every quantized weight + scales once, lm_head, norms."""
    fp = eng.footprint()
    embed = eng.model.embed.numel() * eng.model.embed.element_size()
    return fp.weights_bytes - embed


def run_decode(
    eng: Engine, batch: int, prompt_len: int, out_len: int, arms: dict[str, list[str | None]]
) -> dict[str, dict]:
    """Each arm (a name -> one adapter per row) timed TIMED_RUNS times, arms taken in turn, medians per arm: arms
    compared with each other see the same GPU clocks and neighbours."""
    prompts = [[(7 * r + 13 * i) % 1000 + 10 for i in range(prompt_len)] for r in range(batch)]
    params = SamplingParams(temperature=0, max_tokens=out_len, ignore_eos=True)
    for adapters in arms.values():
        eng.generate(prompts, params, adapters=adapters)  # warm-up: captures CUDA graphs
    totals: dict[str, list[float]] = {name: [] for name in arms}
    ttfts: dict[str, list[float]] = {name: [] for name in arms}
    for _ in range(TIMED_RUNS):
        for name, adapters in arms.items():
            sync()
            t0 = time.perf_counter()
            results = eng.generate(prompts, params, adapters=adapters)
            sync()
            totals[name].append(time.perf_counter() - t0)
            ttfts[name].append(max(r.time_to_first_token_s for r in results))
    steps = out_len - 1
    rows = {}
    for name in arms:
        total, ttft = statistics.median(totals[name]), statistics.median(ttfts[name])
        rows[name] = {
            "batch": batch,
            "tok_s": batch * out_len / total,
            "decode_tok_s": batch * steps / (total - ttft),
            "step_ms": (total - ttft) / steps * 1000,
            "ttft_ms": ttft * 1000,
        }
    return rows


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def bench_ours(folder: Path, device: str, batches: list[int], out_len: int, root: Path, kernels: str) -> dict:
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    eng = Engine(EngineConfig(model=folder, device=device, quantization="nf4", max_batch_size=8, max_seq_len=2304,
                              max_loras=8, max_lora_rank=64, kernels=kernels))  # fmt: skip
    sync()
    out: dict = {"load_s": time.perf_counter() - t0}
    if device == "cuda":
        out["vram_after_load_gib"] = torch.cuda.memory_allocated() / 1024**3
        out["peak_load_gib"] = torch.cuda.max_memory_allocated() / 1024**3
    out["step_bytes"] = step_bytes(eng)
    out["base"] = [run_decode(eng, b, 43, out_len, {"base": [None] * b})["base"] for b in batches]
    print("base:", out["base"], flush=True)
    prompt = list(range(10, 53))
    eng.generate([prompt], SamplingParams(max_tokens=1))
    sync()
    t = time.perf_counter()
    eng.generate([prompt], SamplingParams(max_tokens=1))
    sync()
    out["ttft_43_ms"] = (time.perf_counter() - t) * 1000
    long_prompt = [(i * 31) % 1000 + 10 for i in range(2000)]
    eng.generate([long_prompt], SamplingParams(max_tokens=1))
    sync()
    t = time.perf_counter()
    eng.generate([long_prompt], SamplingParams(max_tokens=1))
    sync()
    out["prefill_2000_tok_s"] = 2000 / (time.perf_counter() - t)
    for label, (rank, targets) in LORA_CONFIGS.items():
        names = []
        load_times = []
        for k in range(8):
            path = build_demo_adapter(root / f"{label}-{k}", folder, rank=rank, alpha=2 * rank,
                                      target_modules=targets, seed=k)  # fmt: skip
            t = time.perf_counter()
            eng.adapters.load(f"{label}-{k}", path)
            load_times.append(time.perf_counter() - t)
            names.append(f"{label}-{k}")
        t = time.perf_counter()
        eng.generate([prompt], SamplingParams(max_tokens=1), adapters=[names[0]])  # writes the GPU slot
        sync()
        out[f"{label}_hot_load_s"] = load_times[0] + (time.perf_counter() - t)
        out[f"{label}_adapter_mb"] = eng.adapters.get(names[0]).size_bytes / 1e6
        paired = [run_decode(eng, b, 43, out_len, {"base": [None] * b, label: names[:b]}) for b in batches]
        out[label] = [rows[label] for rows in paired]
        out[f"{label}_base"] = [rows["base"] for rows in paired]  # the base timed in turn with this config
        print(f"{label}:", out[label], flush=True)
        for name in names:
            eng.adapters.unload(name)
    out["lora_slot_bytes_per_slot"] = eng.footprint().lora_slots_bytes / 8
    if device == "cuda":
        out["peak_gib"] = torch.cuda.max_memory_allocated() / 1024**3
    eng.close()
    del eng
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    return out


def bench_peer(folder: Path, device: str, batches: list[int], out_len: int, peft_len: int, root: Path) -> dict:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float16)
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(folder, quantization_config=quant, dtype=torch.float16,
                                                 device_map=device)  # fmt: skip
    out: dict = {"load_s": time.perf_counter() - t0, "base": []}

    def timed(m, batch: int, new: int, **kw) -> dict:
        ids = torch.tensor([[(7 * r + 13 * i) % 1000 + 10 for i in range(43)] for r in range(batch)], device=device)
        m.generate(input_ids=ids, max_new_tokens=2, min_new_tokens=2, do_sample=False, **kw)
        sync()
        t = time.perf_counter()
        m.generate(input_ids=ids, max_new_tokens=new, min_new_tokens=new, do_sample=False, **kw)
        sync()
        return {"batch": batch, "tok_s": batch * new / (time.perf_counter() - t), "new_tokens": new}

    out["base"] = [timed(model, b, out_len) for b in batches]
    names = [f"rank16-all7-{k}" for k in range(8)]
    peft = PeftModel.from_pretrained(model, root / names[0], adapter_name=names[0])
    for name in names[1:]:
        peft.load_adapter(root / name, adapter_name=name)
    out["peft_mixed"] = [timed(peft, b, peft_len, adapter_names=names[:b]) for b in batches]
    return out


def gpu_parity(device: str, root: Path, kernels: str) -> dict:
    """Our greedy tokens vs transformers + PEFT on the GPU, NF4 + fp16, one mixed batch of three rows. Where a
    row's tokens differ, `gap` is how far below the reference's best logit our pick was at the first
    difference, against the spread of that step's logits: a near-tie gives a gap near 0."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    folder = write_random_llama(root / "parity", {**TINY, "num_hidden_layers": 4}, device)
    adapters = {f"p{k}": build_demo_adapter(root / f"p{k}", folder, rank=8 * (k + 1), alpha=16, target_modules=ALL7,
                                            seed=k) for k in range(2)}  # fmt: skip
    prompt = list(range(10, 40))
    new = 16
    greedy = SamplingParams(temperature=0, max_tokens=new, ignore_eos=True)
    with Engine(EngineConfig(model=folder, device=device, quantization="nf4", max_loras=2, kernels=kernels)) as eng:
        for name, path in adapters.items():
            eng.adapters.load(name, path)
        ours = eng.fan_out(prompt, greedy, adapters=[None, *adapters])
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float16)
    base = AutoModelForCausalLM.from_pretrained(
        folder, quantization_config=quant, dtype=torch.float16, device_map=device
    )
    ref = PeftModel.from_pretrained(base, adapters["p0"], adapter_name="p0")
    ref.load_adapter(adapters["p1"], adapter_name="p1")
    ids = torch.tensor([prompt] * 3, device=device)
    out = ref.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new, do_sample=False, output_logits=True,
                       return_dict_in_generate=True, adapter_names=["__base__", "p0", "p1"])  # fmt: skip
    expected = out.sequences[:, len(prompt) :].tolist()
    rows = []
    for i, (o, e) in enumerate(zip(ours, expected, strict=True)):
        first = next((j for j, (a, b) in enumerate(zip(o.token_ids, e, strict=True)) if a != b), None)
        row = {"equal": first is None, "first_difference": first}
        if first is not None:
            logits = out.logits[first][i].float()  # [V], the reference's step where we differ
            row["gap"] = float((logits.max() - logits[o.token_ids[first]]) / logits.std())
        rows.append(row)
    return {"kernels": kernels, "rows": rows}


def use_tuned(path: Path) -> None:
    """The winners of a `bench_kernels --sweep` JSON replace the NF4 launch tables (TUNED, and TUNED_MMA for the
    Gluon tile) for their shapes and M buckets."""
    from engine.kernels.nf4_configs import TUNED, TUNED_MMA, Nf4Config

    report = json.loads(path.read_text())
    for name, table in (("tuned", TUNED), ("tuned_mma", TUNED_MMA)):
        for key, fields in report.get(name, {}).items():
            n, k, m = (int(v) for v in key.split(","))
            table[(n, k, m)] = Nf4Config(**fields)
            print(f"{name} ({n}, {k}, {m}): {table[(n, k, m)]}", flush=True)


def commit() -> str:
    if os.environ.get("BENCH_COMMIT"):
        return os.environ["BENCH_COMMIT"]
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def table(ours: dict, peer: dict | None, floor_s: float) -> str:
    lines = ["| config | batch | ours tok/s | ours step ms | floor ms | % of floor | peer tok/s | ours / peer |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for label, peer_key in (("base", "base"), ("rank8-qkv", None), ("rank16-all7", "peft_mixed")):
        for i, row in enumerate(ours[label]):
            peer_row = peer[peer_key][i] if peer and peer_key else None
            frac = floor_s * 1000 / row["step_ms"] * 100 if floor_s == floor_s else float("nan")
            ratio = row["tok_s"] / peer_row["tok_s"] if peer_row else float("nan")
            lines.append(
                f"| {label} | {row['batch']} | {row['tok_s']:.1f} | {row['step_ms']:.2f} | {floor_s * 1000:.2f} | "
                f"{frac:.0f}% | {peer_row['tok_s'] if peer_row else float('nan'):.1f} | {ratio:.1f}x |"
            )
    for label in LORA_CONFIGS:
        costs = [f"b{o['batch']}: {(o['step_ms'] / b['step_ms'] - 1) * 100:+.1f}%"
                 for o, b in zip(ours[label], ours[f"{label}_base"], strict=True)]  # fmt: skip
        lines.append(f"\nLoRA cost vs the base timed in turn with it, {label}: " + ", ".join(costs))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="tiny shapes; runs on the CPU")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--no-peer", action="store_true")
    ap.add_argument("--peft-tokens", type=int, default=30)
    ap.add_argument("--kernels", choices=["auto", "bitsandbytes", "triton"], default="auto")
    ap.add_argument(
        "--tuned",
        type=Path,
        default=None,
        help="a bench_kernels --sweep JSON: its winners replace the NF4 launch tables",
    )
    args = ap.parse_args()
    if args.tuned:
        use_tuned(args.tuned)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    shape = TINY if args.quick else LLAMA3_8B
    batches = [1, 4, 8]
    out_len = 16 if args.quick else 100
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        bandwidth = copy_bandwidth(device)
        t = time.perf_counter()
        folder = write_random_llama(root / "llama", shape, device)
        print(f"checkpoint written in {time.perf_counter() - t:.1f} s", flush=True)
        ours = bench_ours(folder, device, batches, out_len, root, args.kernels)
        print(json.dumps(ours, indent=1), flush=True)
        peer = None if args.no_peer or device != "cuda" else bench_peer(folder, device, batches, out_len,
                                                                         args.peft_tokens, root)  # fmt: skip
        print(json.dumps(peer, indent=1), flush=True)
        parity = [gpu_parity(device, root, k) for k in ("bitsandbytes", "triton", "auto")] if device == "cuda" else None
    floor_s = ours["step_bytes"] / bandwidth if bandwidth == bandwidth else float("nan")
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "gpu": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
        "commit": commit(),
        "copy_bandwidth_gb_s": bandwidth / 1e9,
        "floor_ms": floor_s * 1000,
        "kernels": args.kernels,
        "ours": ours,
        "peer": peer,
        "gpu_parity": parity,
    }
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))
    print(
        f"\n{report['gpu']}, {report['date']}, commit {report['commit']}, copy {report['copy_bandwidth_gb_s']:.0f} GB/s"
    )
    print(table(ours, peer, floor_s))
    for p in parity or []:
        print(f"GPU parity, kernels={p['kernels']} (rows base/p0/p1 vs transformers+PEFT):", p["rows"])


if __name__ == "__main__":
    main()
