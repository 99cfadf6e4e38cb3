"""Story pipeline timing on one GPU: 8B-shaped NF4 LLM + SDXL-shaped image model, both resident.

Story (~600 tokens) and image prompt (~70 tokens) run in one batch with their adapters; the image (1024², 30
steps) starts as soon as the prompt row is done and overlaps the story. Also: our renderer vs plain diffusers.
python -m bench.bench_pipeline --out pipeline.json     (CUDA only)
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from bench.bench_sdxl import sdxl_shaped_pipeline
from bench.llm_shapes import LLAMA3_8B, write_random_llama
from engine import Engine, EngineConfig, SamplingParams
from engine.sdxl import RenderParams, SDXLRenderer
from storyloom.demo.demo_adapters import build_demo_adapter

ALL7 = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def timed(fn) -> tuple[float, object]:
    torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--story-tokens", type=int, default=600)
    ap.add_argument("--render-sm-shares", type=float, nargs="*", default=[0.85, 0.7],
                    help="also time image alone and overlapped with renders confined to these SM shares")  # fmt: skip
    args = ap.parse_args()
    params = RenderParams(prompt="a green giant in an ancient forest, volumetric light, detailed", width=1024,
                          height=1024, steps=args.steps, guidance=5.0, seed=7)  # fmt: skip
    concept = [(i * 37) % 1000 + 10 for i in range(200)]
    sampling = [SamplingParams(temperature=0, max_tokens=args.story_tokens, ignore_eos=True),
                SamplingParams(temperature=0, max_tokens=70, ignore_eos=True)]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folder = write_random_llama(root / "llama", LLAMA3_8B, "cuda")
        eng = Engine(EngineConfig(model=folder, quantization="nf4", max_batch_size=4, max_seq_len=1024,
                                  max_loras=2, max_lora_rank=16))  # fmt: skip
        for name, seed in (("story-writer", 1), ("sdxl-prompter", 2)):
            path = build_demo_adapter(root / name, folder, rank=16, alpha=32, target_modules=ALL7, seed=seed)
            eng.adapters.load(name, path)
        adapters = ["story-writer", "sdxl-prompter"]
        pipe = sdxl_shaped_pipeline("cuda")
        renderer = SDXLRenderer.from_pipeline(pipe, model_id="sdxl-random", device="cuda", plan="all resident")
        report: dict = {"gpu": torch.cuda.get_device_name(), "date": time.strftime("%Y-%m-%d"),
                        "commit": os.environ.get("BENCH_COMMIT", "unknown")}  # fmt: skip

        def render(between=None):
            return eng.run_on_engine_thread(lambda: renderer.render(params, between_steps=between)).result()

        def story():
            return [h.result() for h in eng.submit_batch([concept, concept], sampling, adapters)]

        render()  # warm-up: kernels, cuDNN plans
        story()  # warm-up: CUDA graphs for every KV bucket
        report["image_alone_s"], _ = timed(render)
        report["story_alone_s"], _ = timed(story)

        def overlapped():
            handles = eng.submit_batch([concept, concept], sampling, adapters)
            handles[1].result()  # the image prompt row is done: draw while the story goes on
            image = render(eng.step_between)
            return image, handles[0].result()

        report["overlapped_s"], (_, story_result) = timed(overlapped)
        report["ratio_vs_longer"] = report["overlapped_s"] / max(report["image_alone_s"], report["story_alone_s"])
        report["story_tokens"] = len(story_result.token_ids)
        report["by_render_sm_share"] = []
        for share in args.render_sm_shares:
            eng.set_render_sm_share(share).result()
            render()  # warm-up on the new stream
            image_s, _ = timed(render)
            both_s, _ = timed(overlapped)
            report["by_render_sm_share"].append(dict(share=share, image_alone_s=image_s, overlapped_s=both_s,
                                                     ratio_vs_longer=both_s / max(image_s, report["story_alone_s"])))  # fmt: skip
        eng.set_render_sm_share(None).result()

        def plain():  # the denoising loop alone (latents out): our renderer's decode path differs on purpose
            return pipe(prompt=params.prompt, width=1024, height=1024, num_inference_steps=args.steps, guidance_scale=5.0,
                        generator=torch.Generator("cpu").manual_seed(7), output_type="latent").images  # fmt: skip

        plain()
        torch.cuda.reset_peak_memory_stats()
        report["plain_diffusers_s"], _ = timed(plain)
        report["plain_peak_gib"] = torch.cuda.max_memory_allocated() / 1024**3
        torch.cuda.reset_peak_memory_stats()
        _, ours = timed(lambda: renderer.render(params))
        report["ours_render_s"] = ours.params["timings"]["denoise_s"]
        report["ours_decode_s"] = ours.params["timings"]["decode_s"]
        report["ours_peak_gib"] = torch.cuda.max_memory_allocated() / 1024**3
        report["ours_vs_plain"] = report["ours_render_s"] / report["plain_diffusers_s"]
        report["llm_footprint_gib"] = eng.footprint().total_bytes / 1024**3
        eng.close()
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    print(f"\n| story alone | image alone | overlapped | overlapped / longer | ours vs plain diffusers |\n|---|---|---|---|---|\n"
          f"| {report['story_alone_s']:.2f} s | {report['image_alone_s']:.2f} s | {report['overlapped_s']:.2f} s | "
          f"{report['ratio_vs_longer']:.2f}x | {report['ours_render_s']:.2f} s vs {report['plain_diffusers_s']:.2f} s |")  # fmt: skip
    for row in report["by_render_sm_share"]:
        print(f"renders on {row['share']:.0%} of the SMs: image alone {row['image_alone_s']:.2f} s, overlapped "
              f"{row['overlapped_s']:.2f} s, {row['ratio_vs_longer']:.2f}x the longer")  # fmt: skip


if __name__ == "__main__":
    main()
