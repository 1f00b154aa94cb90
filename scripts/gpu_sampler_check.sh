#!/usr/bin/env bash
# The exact sampler's speed work on a GPU node with vLLM installed (the offline bundle:
# README "GPU nodes without a package index"; PYTHONPATH pointing at it):
#
#   bash scripts/gpu_sampler_check.sh tests OUT_DIR         # bitwise checks of the fast paths, then
#                                                           # benchmarks/bench_eager_step.py
#   bash scripts/gpu_sampler_check.sh seed OUT_DIR [SHAPE] [MODE]  # seed experiment 2 (default 8b),
#                                   # profiled: stock (graphs on) and/or exact (graphs on, mixed);
#                                   # MODE stock, exact or both (default; at 8b over 10 minutes)
#   environment for seed: EXPERIMENTS (default 2; "1,2" adds the many-small-calls experiment),
#   EXACT_GRAPHS (default on,mixed), PROFILE (default --profile; empty: unprofiled, faster)
#
# tests: the sampler's fused q/k/v and gate/up against separate linears, the tile-list
# attention against one packed prefill, and the engine's parity with decode graphs and
# with mixed-step graphs (TestCudaGraphs64, TestCudaMixedGraphs64); then the eager step's
# host time, exact and fused against stock ops, at the 0.6B shape and 8 layers of 8B.
# seed: one model checkpoint (in MODEL_ROOT, default /tmp/seed_models: 16 GB at 8b, kept out
# of OUT_DIR; written if absent), then one child process per engine
# (scripts/seed_experiments.py). Compare stock and exact from the same machine. Logs and
# JSON go to OUT_DIR; a short table is printed last.
set -uo pipefail
cd "$(dirname "$0")/.."
what="${1:?tests or seed}"; out="${2:?OUT_DIR}"; shape="${3:-8b}"; modes="${4:-both}"
experiments="${EXPERIMENTS:-2}"; exact_graphs="${EXACT_GRAPHS:-on,mixed}"; profile="${PROFILE---profile}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1 VLLM_USE_FLASHINFER_SAMPLER=0
case "$what" in
  tests)
    timeout "${TEST_TIMEOUT:-420}" python3 -m pytest -q -o addopts="" -p no:cacheprovider \
      "tests/kernels/test_matmul.py::test_stacked_weights_same_bits" \
      "tests/kernels/test_attention.py::test_paged_tiles_equal_prefill_bitwise" \
      "tests/models/test_parity.py::test_fused_projections_same_bits" \
      "tests/sampler/test_engine_parity.py::TestCudaGraphs64" \
      "tests/sampler/test_engine_parity.py::TestCudaMixedGraphs64" > "$out/pytest.log" 2>&1
    echo "pytest exit $?"; grep -E "^(FAILED|ERROR)|passed|failed" "$out/pytest.log" | tail -12
    for args in "--shape 0.6b" "--shape 8b --layers 8"; do
      timeout 120 python3 benchmarks/bench_eager_step.py $args >> "$out/bench_eager_step.log" 2>&1 \
        || echo "bench_eager_step $args: exit $?" | tee -a "$out/bench_eager_step.log"
    done
    grep -vE "^\s*$" "$out/bench_eager_step.log" | tail -16
    ;;
  seed)
    model="${MODEL_ROOT:-/tmp/seed_models}/model-$shape"
    case "$modes" in stock|exact|both) ;; *) echo "MODE: stock, exact or both, not $modes" >&2; exit 2 ;; esac
    if [ "$modes" != exact ]; then
      python3 scripts/seed_experiments.py "$out/stock" --device cuda --shape "$shape" --experiments "$experiments" $profile \
        --modes stock --graphs on --model-dir "$model" --timeout 280 > "$out/stock.log" 2>&1 \
        || echo "stock: exit $? (see $out/stock.log)"
    fi
    if [ "$modes" != stock ]; then
      python3 scripts/seed_experiments.py "$out/exact" --device cuda --shape "$shape" --experiments "$experiments" $profile \
        --modes exact --graphs "$exact_graphs" --model-dir "$model" --timeout 280 > "$out/exact.log" 2>&1 \
        || echo "exact: exit $? (see $out/exact.log)"
    fi
    for f in "$out/stock.log" "$out/exact.log"; do [ -f "$f" ] && tail -n 14 "$f"; done
    ;;
  *) echo "usage: $0 tests OUT_DIR | seed OUT_DIR [SHAPE] [stock|exact|both]" >&2; exit 2 ;;
esac
