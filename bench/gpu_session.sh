#!/usr/bin/env bash
# One lent-GPU call per stage (each fits in 10 minutes); results land in ${OUT:-out}/<stage>/.
#   bash bench/gpu_session.sh engine    # GPU tests (Triton kernels, render stream, LLM parking), bench_engine, bench_pipeline
#   bash bench/gpu_session.sh sdxl      # bench_sdxl: graphed/eager/diffusers, plans, capped cards with the 8B engine
#   bash bench/gpu_session.sh kernels   # bench_kernels --check, register-table sweep at M = 1 (same tile up to M = 16), --bench,
#                                       # probe_lora_fusion (each fused LoRA half alone)
# BENCH_COMMIT names the commit in the reports (the device copy has no .git).
# A bare GPU image with torch/transformers/peft needs these too (wheels, installed with --no-deps): bitsandbytes,
# diffusers, importlib_metadata, zipp, tomli_w, platformdirs, and pytest with pluggy, iniconfig, packaging.
set -uo pipefail
stage=${1:?usage: gpu_session.sh engine|sdxl|kernels}
out=${OUT:-out}/$stage
mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
case $stage in
engine)
  timeout 240 python -m pytest tests/test_kernels_triton.py tests/test_fused_ops_triton.py tests/test_job_stream.py \
    tests/test_decode_attention_triton.py tests/test_sdxl_graphed_unet.py tests/test_engine_parking.py \
    -q -p no:cacheprovider 2>&1 | tail -5
  timeout 300 python -m bench.bench_engine --out "$out/engine.json" 2>&1 | grep -v "Loading weights" | tee "$out/engine.log" | tail -22
  timeout 150 python -m bench.bench_pipeline --out "$out/pipe.json" 2>&1 | tee "$out/pipe.log" | tail -4
  ;;
sdxl)
  timeout 560 python bench/bench_sdxl.py --out "$out/sdxl.json" --repeats 6 --cards 8 12 16 --skip-cpu \
    --sequential-steps 2 --budget-s 480 2>&1 | grep -v "it/s\]" | tee "$out/sdxl.log" | tail -45
  ;;
kernels)
  timeout 560 python -m bench.bench_kernels --check --sweep --sweep-m 1 --lookups 4 --bench \
    --out "$out/kernels.json" 2>&1 | grep -v "failed:" | tee "$out/kernels.log" | grep -v "^check .* ok" | tail -60
  timeout 90 python -m bench.probe_lora_fusion 2>&1 | tee "$out/lora_fusion.log" | tail -50
  ;;
*)
  echo "unknown stage: $stage" >&2
  exit 2
  ;;
esac
