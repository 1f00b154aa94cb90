#!/usr/bin/env bash
# The training loop on a GPU node without a package index (README "GPU nodes without a
# package index"): installs the offline bundle built with `offline_bundle.sh --with-train`
# (once per machine, into SITE_DIR), registers the plugin, checks that the entry point's
# imports resolve, then runs benchmarks/bench_train.py (exact against kernels=default).
#
#   bash scripts/gpu_train_check.sh PARTS_DIR OUT_DIR [RECIPE] [STEPS] [-- key=value ...]
#
# SITE_DIR is $SITE_DIR or /tmp/rlhf_exact_site. Logs and the results JSON go to OUT_DIR; the
# bench's table is printed last.
set -uo pipefail
cd "$(dirname "$0")/.."
parts="$1"; out="$2"; recipe="${3:-grpo_qwen3_gpu}"; steps="${4:-20}"
shift $(( $# < 4 ? $# : 4 )); [ "${1:-}" = "--" ] && shift
site="${SITE_DIR:-/tmp/rlhf_exact_site}"
mkdir -p "$out"
if [ ! -f "$site/.installed" ]; then
  t=$SECONDS
  bash "$parts/install.sh" "$parts" "$site" > "$out/install.log" 2>&1 || { cat "$out/install.log"; exit 1; }
  touch "$site/.installed"; echo "bundle installed in $((SECONDS - t)) s"
fi
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1
python3 -m pip install -q --no-deps --no-index --no-build-isolation -e . > "$out/pip.log" 2>&1 || { cat "$out/pip.log"; exit 1; }
python3 - <<'PY' 2>&1 | tee "$out/imports.log"
import importlib.metadata as md
import ray, hydra, omegaconf, wandb, vllm, torch, triton, rlhf_exact.train, exact_kernels  # noqa: F401
print("imports ok:", ", ".join(f"{p} {md.version(p)}" for p in ("torch", "triton", "vllm", "ray", "hydra-core", "wandb")))
PY
nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total --format=csv,noheader | tee "$out/gpu.txt"
python3 benchmarks/bench_train.py --out "$out" --recipe "$recipe" --steps "$steps" ${BENCH_ARGS:-} -- "$@"
