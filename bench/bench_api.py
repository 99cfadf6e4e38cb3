"""Load test of the local API: many concurrent streaming chat clients, each on its own adapter, one engine.

python -m bench.bench_api --random-8b --out results.json   # Llama-3-8B shapes, random weights, CUDA GPU
python -m bench.bench_api --model PATH --out results.json   # a real checkpoint folder
python -m bench.bench_api --quick                           # the demo models on the CPU (smoke run)

The server listens on 127.0.0.1 only. Clients (httpx, asyncio) run in a separate process, so that they do
not compete with the server and the engine for the interpreter lock; they stream `/v1/chat/completions`
and rotate over the base model and the adapters, each measuring time to first token and total time. Reports output
throughput (completion tokens/s over the whole run), latency percentiles, failures (must be 0) and how full
the engine's batches were. A markdown table is printed last; --out writes everything as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import platform
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np

from storyloom.demo.corpus import CORPUS

if TYPE_CHECKING:
    from engine import Engine

# The engine, the server and the model builders are imported inside the functions that use them: the
# client process imports this module too and needs none of them.

ALL7 = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PERCENTILES = (50, 90, 99)


@dataclass
class Outcome:
    """One request as its client saw it."""

    model: str
    ok: bool
    ttft_s: float | None = None
    total_s: float = 0.0
    completion_tokens: int = 0
    error: str | None = None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", type=Path, help="checkpoint folder to serve")
    source.add_argument("--random-8b", action="store_true", help="Llama-3-8B shapes with random weights")
    source.add_argument("--quick", action="store_true", help="demo models on the CPU, small load")
    p.add_argument("--work-dir", type=Path, default=None, help="where random weights/adapters go (reused)")
    p.add_argument("--clients", type=int, default=None, help="concurrent streaming clients (default 64; quick 6)")
    p.add_argument("--requests", type=int, default=None, help="requests per client (default 4; quick 2)")
    p.add_argument(
        "--adapters", type=int, default=4, help="random rank-16 adapters, all 7 projections (quick: the demo ones)"
    )
    p.add_argument("--prompt-tokens", type=int, default=None, help="prompt length (default 256; quick 32)")
    p.add_argument("--max-tokens", type=int, default=None, help="completion length (default 256; quick 16)")
    p.add_argument("--max-batch-size", type=int, default=None, help="engine batch rows (default 32; quick 8)")
    p.add_argument("--time-limit", type=float, default=600.0, help="no new requests after this many seconds")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = p.parse_args(argv)
    defaults = (6, 2, 32, 16, 8) if args.quick else (64, 4, 256, 256, 32)
    for name, value in zip(
        ("clients", "requests", "prompt_tokens", "max_tokens", "max_batch_size"), defaults, strict=True
    ):
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.clients < 1 or args.requests < 1 or args.max_tokens < 1 or args.adapters < 0:
        p.error("--clients, --requests and --max-tokens must be >= 1, --adapters >= 0")
    return args


def prepare_models(args: argparse.Namespace, work: Path) -> tuple[Path, dict[str, Path]]:
    """The checkpoint folder and the adapters' PEFT folders (built once per work dir)."""
    from bench.llm_shapes import LLAMA3_8B, write_random_llama
    from storyloom.demo.demo_adapters import build_demo_adapter

    if args.quick:
        from storyloom.demo import ensure_demo_models

        demo = ensure_demo_models(work)
        return demo.llm, dict(demo.adapters)
    if args.random_8b:
        folder = work / "llama3-8b-random"
        if not (folder / "config.json").is_file():
            print(f"writing random Llama-3-8B-shaped weights to {folder} ...", flush=True)
            write_random_llama(folder, LLAMA3_8B, "cuda" if args.device != "cpu" else "cpu")
    else:
        folder = args.model
    adapters = {}
    for k in range(args.adapters):
        path = work / f"{folder.name}-lora{k}"
        if not (path / "adapter_config.json").is_file():
            build_demo_adapter(path, folder, rank=16, alpha=32, target_modules=ALL7, seed=100 + k)
        adapters[f"lora{k}"] = path
    return folder, adapters


def make_prompts(engine: Engine, count: int, num_tokens: int) -> list[list[dict[str, str]]]:
    """``count`` different chat prompts of about ``num_tokens`` tokens each, cut from the demo corpus."""
    words = CORPUS.split()
    prompts = []
    for i in range(count):
        start = (i * 37) % len(words)
        take = max(1, num_tokens // 4)
        while True:
            text = " ".join((words[start:] + words[:start]) * (take // len(words) + 1))
            text = " ".join(text.split()[:take])
            messages = [{"role": "user", "content": text}]
            if engine.count_tokens(messages) >= num_tokens or take > 8 * num_tokens:
                break
            take += max(1, num_tokens // 32)
        prompts.append(messages)
    return prompts


async def one_request(http: httpx.AsyncClient, model: str, messages: list[dict], max_tokens: int) -> Outcome:
    body = {
        "model": model,
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0.8,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    ttft, tokens, finished, done = None, 0, False, False
    try:
        async with http.stream("POST", "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                await response.aread()
                return Outcome(model, False, error=f"HTTP {response.status_code}: {response.text[:200]}")
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line.removeprefix("data: ")
                if data == "[DONE]":
                    done = True
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    return Outcome(model, False, error=chunk["error"]["message"])
                for choice in chunk["choices"]:
                    if choice["delta"].get("content") and ttft is None:
                        ttft = time.perf_counter() - start
                    finished = finished or choice["finish_reason"] is not None
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
    except httpx.HTTPError as exc:
        return Outcome(model, False, error=f"{type(exc).__name__}: {exc}")
    ok = done and finished
    return Outcome(model, ok, ttft, time.perf_counter() - start, tokens, None if ok else "stream ended early")


async def run_load(url: str, models: list[str], prompts: list[list[dict]], args: argparse.Namespace) -> list[Outcome]:
    deadline = time.perf_counter() + args.time_limit
    limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(None), limits=limits) as http:

        async def client(index: int) -> list[Outcome]:
            outcomes = []
            for r in range(args.requests):
                if time.perf_counter() > deadline:
                    break
                model = models[(index + r) % len(models)]
                outcomes.append(await one_request(http, model, prompts[index], args.max_tokens))
            return outcomes

        per_client = await asyncio.gather(*(client(i) for i in range(args.clients)))
    return [o for outcomes in per_client for o in outcomes]


def client_process(
    url: str, models: list[str], prompts: list[list[dict]], settings: dict[str, Any]
) -> tuple[list[Outcome], float]:
    """The whole load, run in the client process: (outcomes, wall seconds from first request to last)."""
    start = time.perf_counter()
    outcomes = asyncio.run(run_load(url, models, prompts, argparse.Namespace(**settings)))
    return outcomes, time.perf_counter() - start


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {f"p{q}": None for q in PERCENTILES}
    return {f"p{q}": float(np.percentile(values, q)) for q in PERCENTILES}


def summarize(outcomes: list[Outcome], wall_s: float, engine: Engine) -> dict[str, Any]:
    good = [o for o in outcomes if o.ok]
    tokens = sum(o.completion_tokens for o in good)
    stats = engine.stats()
    return {
        "requests": len(outcomes),
        "failed": len(outcomes) - len(good),
        "errors": sorted({o.error for o in outcomes if o.error})[:10],
        "wall_s": wall_s,
        "completion_tokens": tokens,
        "tokens_per_s": tokens / wall_s if wall_s > 0 else 0.0,
        "requests_per_s": len(good) / wall_s if wall_s > 0 else 0.0,
        "ttft_s": percentiles([o.ttft_s for o in good if o.ttft_s is not None]),
        "total_s": percentiles([o.total_s for o in good]),
        "engine_max_batch_rows": stats.max_batch_rows,
        "engine_max_adapters_in_step": stats.max_adapters_in_step,
        "engine_decode_steps": stats.num_decode_steps,
    }


def markdown(setup: dict[str, Any], result: dict[str, Any]) -> str:
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value * 1000:.0f}"

    rows = [
        ("model", setup["model"]),
        ("device", setup["device"]),
        ("clients x requests", f"{setup['clients']} x {setup['requests']}"),
        ("prompt / max tokens", f"{setup['prompt_tokens']} / {setup['max_tokens']}"),
        ("models served", f"base + {setup['num_adapters']} adapters"),
        ("requests (failed)", f"{result['requests']} ({result['failed']})"),
        ("throughput (completion tokens/s)", f"{result['tokens_per_s']:.1f}"),
        ("requests/s", f"{result['requests_per_s']:.2f}"),
        ("TTFT p50 / p90 / p99 (ms)", " / ".join(ms(result["ttft_s"][f"p{q}"]) for q in PERCENTILES)),
        ("total p50 / p90 / p99 (ms)", " / ".join(ms(result["total_s"][f"p{q}"]) for q in PERCENTILES)),
        ("max batch rows / adapters in a step", f"{result['engine_max_batch_rows']} / {result['engine_max_adapters_in_step']}"),
    ]  # fmt: skip
    lines = ["| metric | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from engine import Engine, EngineConfig
    from storyloom.api import create_app, start_in_thread

    args = parse_args(argv)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="storyloom-bench-api-"))
    work.mkdir(parents=True, exist_ok=True)
    folder, adapter_paths = prepare_models(args, work)
    device = "cpu" if args.quick else args.device
    config = EngineConfig(
        model=folder,
        device=device,
        max_batch_size=args.max_batch_size,
        max_seq_len=2 * args.prompt_tokens + args.max_tokens + 64,
        max_loras=max(1, len(adapter_paths)),
        max_queue=max(256, args.clients * 2),
    )
    clients = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    with Engine(config) as engine, clients:
        for name, path in adapter_paths.items():
            engine.adapters.load(name, path)
        models = [engine.model_id, *adapter_paths]
        prompts = make_prompts(engine, args.clients, args.prompt_tokens)
        server = start_in_thread(create_app(engine, max_queue=max(128, args.clients * 2)), "127.0.0.1", 0)
        try:
            warm_up = {**vars(args), "clients": 1, "requests": 1, "max_tokens": 4}
            clients.submit(client_process, server.url, models, prompts, warm_up).result()
            outcomes, wall = clients.submit(client_process, server.url, models, prompts, vars(args)).result()
            result = summarize(outcomes, wall, engine)
        finally:
            server.stop()
        setup = {
            "model": engine.model_id,
            "device": str(engine.device),
            "clients": args.clients,
            "requests": args.requests,
            "prompt_tokens": args.prompt_tokens,
            "max_tokens": args.max_tokens,
            "max_batch_size": args.max_batch_size,
            "num_adapters": len(adapter_paths),
            "python": platform.python_version(),
        }
    report = {"setup": setup, "result": result, "outcomes": [asdict(o) for o in outcomes]}
    if args.out is not None:
        args.out.write_text(json.dumps(report, indent=2))
    if result["errors"]:
        print("errors:", *result["errors"], sep="\n  ")
    print(markdown(setup, result))
    return 0 if result["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
