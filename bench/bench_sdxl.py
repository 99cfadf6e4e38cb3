"""SDXL renderer benchmark (GPU): ours vs plain diffusers, peak VRAM per plan, plans on simulated cards.

Uses SDXL-shaped random weights built from the shipped assets/sdxl configs (fp16 on CUDA), so no download.

    python bench/bench_sdxl.py --out bench_sdxl.json                 # 1024x1024, 30 steps, on CUDA
    python bench/bench_sdxl.py --quick --tiny --out /tmp/bench.json  # smoke run (512x512, 2 steps), CPU ok

Sections (each row records its own error and the run goes on; JSON is rewritten after every section):
1. speed: the same pipeline called three ways in turn, "all resident": SDXLRenderer with the UNet step replayed
   from CUDA graphs, SDXLRenderer eager (`use_cuda_graphs=False`), and plain StableDiffusionXLPipeline.__call__:
   total time, denoising it/s, peak VRAM, the pixel differences, and the graph counters (captures, replays,
   plain calls by reason). The warm-up renders capture the graph; timed renders replay it.
2. plans: every plan applied in turn: measured peak VRAM against the planner's estimate.
3. capped: `torch.cuda.set_per_process_memory_fraction` simulates 8/12/16 GB cards, with the engine beside SDXL:
   an NF4 Llama-3-8B-shaped model (random weights) at the app's sizes (4 rows x 2,048 tokens, 4 adapter slots).
   Every GPU plan is tried; the planner's pick must complete. Plans that swap the LLM draw inside
   `Engine.parked()`, as the story pipeline does, and each row then checks that the LLM still generates.
4. cpu only (last: it turns the pipeline to float32 on the CPU), with --cpu-steps steps.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import os
import platform
import sys
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from statistics import median
from time import perf_counter

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import diffusers
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from assets import ASSETS_DIR
from bench.llm_shapes import LLAMA3_8B, write_random_llama
from engine import Engine, EngineConfig, SamplingParams
from engine.config import ModelFootprint
from engine.sdxl import RenderOutOfMemoryError, RenderParams, SDXLRenderer
from engine.vram import PLAN_NAMES, GpuMemory, plan_vram
from storyloom.demo.tiny_sdxl import assemble_sdxl
from storyloom.workflow.models import APP_ENGINE_SIZES

logger = logging.getLogger("bench_sdxl")
GiB = 1024**3
PROMPT = "a lighthouse on a cliff at dusk, oil painting"
CPU_RESERVE_S = 120  # the "cpu only" row (SDXL in fp32 on the CPU) starts only with this much budget left
NO_LLM = ModelFootprint(weights_bytes=0, kv_cache_bytes=0, lora_slots_bytes=0, workspace_bytes=0)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="JSON results path")
    ap.add_argument("--quick", action="store_true", help="smoke run: 512x512, 2 steps, 1 repeat")
    ap.add_argument("--tiny", action="store_true", help="tiny random SDXL instead of SDXL-shaped weights")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cards", type=float, nargs="*", default=[8, 12, 16], help="simulated card sizes, GiB")
    ap.add_argument("--sequential-steps", type=int, default=10, help="steps of 'sequential offload' rows (slow)")
    ap.add_argument("--cpu-steps", type=int, default=2, help="steps of the 'cpu only' plan")
    ap.add_argument("--skip-cpu", action="store_true", help="skip the 'cpu only' plan")
    ap.add_argument("--budget-s", type=float, default=500, help="skip what is left after this many seconds")
    args = ap.parse_args()
    if args.quick:
        args.size, args.steps, args.repeats, args.cpu_steps = 512, 2, 1, 1
    return args


# --- building the model --------------------------------------------------------------------------------------


def sdxl_shaped_pipeline(device: str) -> StableDiffusionXLPipeline:
    """SDXL base architecture from assets/sdxl with random weights, fp16 on CUDA (built on the device)."""
    cfg = ASSETS_DIR / "sdxl"
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(cfg / "unet")).to(dtype)
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(cfg / "vae")).to(dtype)
        te1 = CLIPTextModel(CLIPTextConfig.from_pretrained(cfg / "text_encoder")).to(dtype)
        te2 = CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(cfg / "text_encoder_2")).to(dtype)
    return assemble_sdxl(unet, vae, te1, te2)


def tiny_pipeline(device: str) -> StableDiffusionXLPipeline:
    from storyloom.demo.tiny_sdxl import build_tiny_sdxl_pipeline

    pipe = build_tiny_sdxl_pipeline(seed=0)
    return pipe.to(torch.float16) if device.startswith("cuda") else pipe


# --- measuring -----------------------------------------------------------------------------------------------


def is_cuda(device: str) -> bool:
    return device.startswith("cuda")


def sync(device: str) -> None:
    if is_cuda(device):
        torch.cuda.synchronize(device)


def reset_peak(device: str) -> None:
    gc.collect()
    if is_cuda(device):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gb(device: str) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / GiB, 3) if is_cuda(device) else None


def render_ours(renderer: SDXLRenderer, params: RenderParams, device: str) -> dict:
    """One timed render through SDXLRenderer (a progress callback as the app passes; sync at the last step)."""
    stamps: dict[str, float] = {}

    def on_progress(p) -> None:
        if p.step == p.total:
            sync(device)
            stamps["denoised"] = perf_counter()

    reset_peak(device)
    start = perf_counter()
    res = renderer.render(params, on_progress=on_progress)
    sync(device)
    end = perf_counter()
    return {
        "total_s": end - start,
        "it_per_s": params.steps / (stamps["denoised"] - start),
        "peak_vram_gb": peak_gb(device),
        "plan": res.params["plan"],
        "warnings": res.warnings,
        "image": res.image,
    }


def render_diffusers(pipe: StableDiffusionXLPipeline, params: RenderParams, device: str, scheduler_cfg) -> dict:
    """The same request through plain StableDiffusionXLPipeline.__call__."""
    stamps: dict[str, float] = {}

    def on_step_end(_pipe, i, _t, tensors):
        if i + 1 == params.steps:
            sync(device)
            stamps["denoised"] = perf_counter()
        return tensors

    pipe.scheduler = EulerDiscreteScheduler.from_config(scheduler_cfg)
    reset_peak(device)
    start = perf_counter()
    image = pipe(
        PROMPT,
        width=params.width,
        height=params.height,
        num_inference_steps=params.steps,
        guidance_scale=params.guidance,
        generator=torch.Generator("cpu").manual_seed(params.seed),
        callback_on_step_end=on_step_end,
    ).images[0]
    sync(device)
    end = perf_counter()
    return {
        "total_s": end - start,
        "it_per_s": params.steps / (stamps["denoised"] - start),
        "peak_vram_gb": peak_gb(device),
        "image": image,
    }


def set_vae_for_diffusers(pipe: StableDiffusionXLPipeline, diffusers_turn: bool, device: str) -> None:
    """Plain diffusers upcasts an fp16 `force_upcast` VAE itself; our renderer keeps such a VAE in fp32."""
    if is_cuda(device) and pipe.vae.config.force_upcast:
        pipe.vae.to(torch.float16 if diffusers_turn else torch.float32)


def summarize(runs: list[dict]) -> dict:
    keys = ("total_s", "it_per_s", "peak_vram_gb")
    out = {k: round(median(r[k] for r in runs), 4) for k in keys if runs and runs[0][k] is not None}
    out["runs"] = [{k: round(r[k], 4) for k in keys if r[k] is not None} for r in runs]
    return out


def pixel_diff(a, b) -> dict:
    import numpy as np

    x = np.asarray(a).astype(np.int16)
    y = np.asarray(b).astype(np.int16)
    return {"max_abs": int(np.abs(x - y).max()), "mean_abs": round(float(np.abs(x - y).mean()), 4)}


# --- the run -------------------------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.start = perf_counter()
        self.results: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "errors": []}

    def time_left(self, reserve_s: float = 0) -> bool:
        return perf_counter() - self.start < self.args.budget_s - reserve_s

    def write(self) -> None:
        out: Path = self.args.out
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
        with os.fdopen(fd, "w") as f:
            json.dump(self.results, f, indent=2, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)

    def error(self, where: str, exc: BaseException) -> str:
        text = f"{type(exc).__name__}: {exc}"
        logger.error("%s failed: %s\n%s", where, text, traceback.format_exc())
        self.results["errors"].append({"where": where, "error": text})
        return text

    def environment(self, device: str) -> None:
        env = {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "device": device,
        }
        if is_cuda(device):
            props = torch.cuda.get_device_properties(device)
            env.update(gpu=props.name, gpu_total_gb=round(props.total_memory / GiB, 2))
        self.results["environment"] = env

    def speed(self, pipe: StableDiffusionXLPipeline, renderer: SDXLRenderer, params: RenderParams) -> None:
        device = self.args.device
        scheduler_cfg = dict(pipe.scheduler.config)

        def ours(graphs: bool) -> Callable[[RenderParams], dict]:
            def turn(p: RenderParams) -> dict:
                set_vae_for_diffusers(pipe, False, device)
                renderer.use_cuda_graphs = graphs
                return render_ours(renderer, p, device)

            return turn

        def plain(p: RenderParams) -> dict:
            set_vae_for_diffusers(pipe, True, device)
            return render_diffusers(pipe, p, device, scheduler_cfg)

        turns = {"storyloom_graphed": ours(True), "storyloom_eager": ours(False), "diffusers": plain}
        warm = replace(params, steps=min(2, params.steps))
        warmup_s = {name: round(turn(warm)["total_s"], 4) for name, turn in turns.items()}
        runs: dict[str, list[dict]] = {name: [] for name in turns}
        for _ in range(self.args.repeats):
            for name, turn in turns.items():
                runs[name].append(turn(params))
        renderer.use_cuda_graphs = True
        set_vae_for_diffusers(pipe, False, device)  # the later sections measure the renderer as the app runs it
        speed: dict = {name: summarize(r) for name, r in runs.items()}
        graphed, eager, diffusers_ = (speed[name]["total_s"] for name in turns)
        speed["warmup_s"] = warmup_s  # the graphed warm-up includes the capture
        speed["ours_vs_diffusers_time"] = round(graphed / diffusers_, 4)
        speed["graphed_vs_eager_time"] = round(graphed / eager, 4)
        speed["eager_vs_diffusers_time"] = round(eager / diffusers_, 4)
        first = {name: r[0]["image"] for name, r in runs.items()}
        speed["pixel_diff"] = pixel_diff(first["storyloom_graphed"], first["diffusers"])
        speed["pixel_diff_graphed_vs_eager"] = pixel_diff(first["storyloom_graphed"], first["storyloom_eager"])
        speed["pixel_diff_eager_vs_diffusers"] = pixel_diff(first["storyloom_eager"], first["diffusers"])
        g = renderer.graphed_unet
        speed["cuda_graphs"] = {
            "captures": g.num_captures,
            "graphs": g.num_graphs,
            "replays": g.num_replays,
            "plain_calls": dict(g.eager_calls),
        }
        self.results["speed"] = speed

    def plan_row(self, renderer: SDXLRenderer, plan, params: RenderParams) -> dict:
        if plan.sdxl_placement == "sequential_offload":
            params = replace(params, steps=min(params.steps, self.args.sequential_steps))
        row = {"plan": plan.name, "steps": params.steps, "estimated_peak_gb": round(plan.estimated_peak_bytes / GiB, 3)}
        try:
            renderer.apply_plan(plan)
            row["applied_plan"] = renderer.plan.name
            run = render_ours(renderer, params, self.args.device)
            row.update(
                status="ok",
                total_s=round(run["total_s"], 3),
                s_per_step=round(1 / run["it_per_s"], 4),
                peak_vram_gb=run["peak_vram_gb"],
                final_plan=run["plan"],
                warnings=run["warnings"],
            )
        except (torch.OutOfMemoryError, RenderOutOfMemoryError) as exc:
            row.update(status="OOM", error=str(exc)[:300])
        except Exception as exc:
            row.update(status="error", error=self.error(f"plan {plan.name}", exc))
        return row

    def plans(self, renderer: SDXLRenderer, params: RenderParams) -> None:
        device = self.args.device
        fp = renderer.footprint(params.width, params.height)
        gpu = GpuMemory(torch.cuda.get_device_properties(device).total_memory) if is_cuda(device) else None
        rows = []
        for name in PLAN_NAMES[:-1] if is_cuda(device) else ():
            if not self.time_left():
                rows.append({"plan": name, "status": "skipped (time budget)"})
                continue
            rows.append(self.plan_row(renderer, plan_vram(gpu, NO_LLM, fp, override=name), params))
            self.write()
        self.results["plans"] = rows

    def capped(self, renderer: SDXLRenderer, params: RenderParams) -> None:
        """Rows of (card, plan) under a memory cap with the 8B-shaped engine loaded beside SDXL."""
        device = self.args.device
        if not is_cuda(device):
            self.results["capped"] = [{"status": "skipped (no CUDA)"}]
            return
        total = torch.cuda.get_device_properties(device).total_memory
        fp = renderer.footprint(params.width, params.height)
        gpus = {card_gb: GpuMemory(total_bytes=int(card_gb * GiB)) for card_gb in self.args.cards}
        rows = []
        with tempfile.TemporaryDirectory() as tmp:
            folder = write_random_llama(Path(tmp) / "llama", LLAMA3_8B, device)
            with Engine(EngineConfig(model=folder, quantization="nf4", **APP_ENGINE_SIZES)) as engine:
                llm = engine.footprint()
                picks = {card_gb: plan_vram(gpu, llm, fp).name for card_gb, gpu in gpus.items()}
                # The planner's pick on every card first (the claim to check), then the other plans.
                order = [(c, picks[c]) for c in gpus] + [(c, n) for c in gpus for n in PLAN_NAMES[:-1] if n != picks[c]]
                try:
                    for card_gb, name in order:
                        row = {"card_gb": card_gb, "llm_gb": round(llm.total_bytes / GiB, 2),
                               "planner_pick": name == picks[card_gb]}  # fmt: skip
                        if not self.time_left():
                            rows.append({**row, "plan": name, "status": "skipped (time budget)"})
                            continue
                        plan = plan_vram(gpus[card_gb], llm, fp, override=name)
                        fraction = gpus[card_gb].total_bytes / total
                        rows.append({**row, **self.capped_row(renderer, plan, params, fraction, engine)})
                        self.write()
                finally:
                    torch.cuda.set_per_process_memory_fraction(1.0, device)
                    reset_peak(device)
        self.results["capped"] = rows

    def capped_row(self, renderer: SDXLRenderer, plan, params: RenderParams, fraction: float, engine: Engine) -> dict:
        device = self.args.device
        # Start each row from the CPU (model offload keeps fp16 weights in CPU RAM), then cap and place.
        fp = renderer.footprint(params.width, params.height)
        total = GpuMemory(torch.cuda.get_device_properties(device).total_memory)
        renderer.apply_plan(plan_vram(total, NO_LLM, fp, override="sdxl model offload"))
        reset_peak(device)
        torch.cuda.set_per_process_memory_fraction(min(fraction, 1.0), device)

        def draw() -> dict:  # on the engine thread, as the story pipeline draws
            with engine.parked() if plan.llm_offload_while_drawing else contextlib.nullcontext():
                return self.plan_row(renderer, plan, params)

        try:
            row = engine.run_on_engine_thread(draw).result()
            row["fits_estimate"] = plan.fits
            check = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
            row["llm_after"] = engine.generate([[1, 2, 3]], check)[0].finish_reason
            return row
        finally:
            torch.cuda.set_per_process_memory_fraction(1.0, device)
            reset_peak(device)

    def cpu_only(self, renderer: SDXLRenderer, params: RenderParams) -> None:
        if self.args.skip_cpu or not self.time_left(reserve_s=CPU_RESERVE_S):
            self.results["cpu_only"] = {"status": "skipped"}
            return
        plan = plan_vram(None, NO_LLM, renderer.footprint(params.width, params.height))
        self.results["cpu_only"] = self.plan_row(renderer, plan, replace(params, steps=self.args.cpu_steps))


def params_of(args: argparse.Namespace) -> RenderParams:
    return RenderParams(PROMPT, width=args.size, height=args.size, steps=args.steps, guidance=5.0, seed=1)


def print_tables(results: dict) -> None:
    lines = []
    speed = results.get("speed")
    if speed:
        lines += ["| renderer | total s | denoise it/s | peak VRAM GB |", "|---|---|---|---|"]
        for name in ("storyloom_graphed", "storyloom_eager", "diffusers"):
            s = speed[name]
            lines.append(f"| {name} | {s.get('total_s')} | {s.get('it_per_s')} | {s.get('peak_vram_gb', '-')} |")
        lines += [
            f"\ngraphed / diffusers time: {speed['ours_vs_diffusers_time']}; graphed / eager time: "
            f"{speed['graphed_vs_eager_time']}; pixel diff graphed vs diffusers: {speed['pixel_diff']}, "
            f"graphed vs eager: {speed['pixel_diff_graphed_vs_eager']}; CUDA graphs: {speed['cuda_graphs']}",
            "",
        ]
    rows = results.get("plans", []) + ([results["cpu_only"]] if "plan" in results.get("cpu_only", {}) else [])
    if rows:
        lines += ["| plan | status | est. peak GB | peak VRAM GB | total s | s/step |", "|---|---|---|---|---|---|"]
        lines += [
            f"| {r['plan']} | {r['status']} | {r.get('estimated_peak_gb', '-')} | {r.get('peak_vram_gb', '-')} "
            f"| {r.get('total_s', '-')} | {r.get('s_per_step', '-')} |"
            for r in rows
        ]
        lines.append("")
    capped = [r for r in results.get("capped", []) if "card_gb" in r]
    if capped:
        lines += [
            "| card GB | LLM GB | plan | planner pick | status | final plan | est. peak GB | peak VRAM GB | total s "
            "| LLM after |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['card_gb']} | {r['llm_gb']} | {r['plan']} | {'yes' if r['planner_pick'] else ''} | {r['status']} "
            f"| {r.get('final_plan', '-')} | {r.get('estimated_peak_gb', '-')} | {r.get('peak_vram_gb', '-')} "
            f"| {r.get('total_s', '-')} | {r.get('llm_after', '-')} |"
            for r in capped
        ]
    print("\n".join(lines))


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = parse_args()
    bench = Bench(args)
    device = args.device if args.device != "cuda" else "cuda:0"
    args.device = device
    bench.environment(device)
    params = params_of(args)
    try:
        started = perf_counter()
        pipe = tiny_pipeline(device) if args.tiny else sdxl_shaped_pipeline(device)
        pipe.to(device)
        pipe.set_progress_bar_config(disable=True)
        model_id = "tiny" if args.tiny else "sdxl-shaped-random"
        plan = "all resident" if is_cuda(device) else None
        renderer = SDXLRenderer.from_pipeline(pipe, model_id=model_id, device=device, plan=plan)
        bench.results["build_s"] = round(perf_counter() - started, 2)
        bench.results["footprint_gb"] = {
            k.removesuffix("_bytes"): round(v / GiB, 3)
            for k, v in vars(renderer.footprint(args.size, args.size)).items()
            if k.endswith("_bytes")
        }
    except Exception as exc:
        bench.error("build", exc)
        bench.write()
        return 1
    for name, section in (
        ("speed", lambda: bench.speed(pipe, renderer, params)),
        ("plans", lambda: bench.plans(renderer, params)),
        ("capped", lambda: bench.capped(renderer, params)),
        ("cpu_only", lambda: bench.cpu_only(renderer, params)),
    ):
        if not bench.time_left():
            bench.results[name] = {"status": "skipped (time budget)"}
            continue
        try:
            section()
        except Exception as exc:
            bench.error(name, exc)
        bench.write()
    bench.results["elapsed_s"] = round(perf_counter() - bench.start, 1)
    bench.write()
    print_tables(bench.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
