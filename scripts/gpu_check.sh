#!/usr/bin/env bash
# On a GPU machine with torch + triton only: `bash scripts/gpu_check.sh tests [LOG_DIR]`
# runs every gpu-marked test; `bash scripts/gpu_check.sh bench [LOG_DIR]` runs every
# benchmark; `all` both. Logs go under LOG_DIR (default /tmp/gpu_out); a short summary
# is printed last.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/gpu_env.sh
out="${2:-/tmp/gpu_out}"; mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu --format=csv | tee "$out/gpu.txt"
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$out/gpu.txt"
run_tests() {
    timeout "${TEST_TIMEOUT:-600}" python -m pytest -q -m gpu tests/kernels tests/models -p no:cacheprovider \
        --durations=15 ${PYTEST_XDIST:-} > "$out/pytest_gpu.log" 2>&1
    echo "pytest exit $?"; grep -E "^(FAILED|ERROR)|passed|failed" "$out/pytest_gpu.log" | tail -15
}
case "${1:-tests}" in
  tests) run_tests ;;
  all) run_tests; "$0" bench "$out" ;;
  bench)
    for b in matmul attention rms_norm activation rotary logprobs model; do
      extra=(); [ "$b" != matmul ] && [ "$b" != attention ] && [ "$b" != model ] && extra=(--quick)
      echo "== bench_$b ${extra[*]}" | tee -a "$out/bench.log"
      case $b in matmul) t=75;; attention|model) t=60;; *) t=25;; esac
      timeout "${BENCH_TIMEOUT:-$t}" python "benchmarks/bench_$b.py" "${extra[@]}" >> "$out/bench.log" 2>&1 || echo "bench_$b exit $?" | tee -a "$out/bench.log"
    done
    grep -E "^==|sum|verdict|bar|tokens/s|ratio" "$out/bench.log" | tail -40
    ;;
esac
