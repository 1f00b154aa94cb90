#!/usr/bin/env bash
# Offline install bundle of the CUDA sampler stack for a GPU node that already has
# torch (an air-gapped cluster image with Python 3.12 and torch 2.11 + CUDA 13), built
# on a machine that can reach a package index.
#
#   bash scripts/offline_bundle.sh OUT_DIR [--part-mib 60] [--with-ray | --with-train] [--python 3.12]
#
# Writes OUT_DIR/bundle.tar.partNN (each at most --part-mib MiB), OUT_DIR/SHA256SUMS and
# OUT_DIR/install.sh. On the node, with every part in one folder:
#
#   bash install.sh PARTS_DIR SITE_DIR      # then: export PYTHONPATH=SITE_DIR
#
# and, from the rlhf_exact checkout, `pip install --no-deps --no-index --no-build-isolation -e .`
# (registers the vLLM plugin entry point; needs setuptools and wheel, as torch images have).
#
# What it holds (the tested pair is vllm 0.26.0 + torch 2.11; README "Tested pairs"):
# - vllm 0.26.0 (pins torch==2.11.0, CUDA 13) as an xz tar of the wheel's files WITHOUT
#   the binaries the exact path and stock dense models do not use: FlashAttention-2
#   (305 MB), the MoE ops (48 MB), flashmla, qutlass, the vllm-rs server binary, the
#   fmha_sm100 (Blackwell) headers, deep_gemm builds for other Pythons. Kept:
#   `_C_stable_libtorch` (vllm/platforms/cuda.py imports it) and FlashAttention-3
#   (`vllm.model_executor.layers.attention` imports vllm.vllm_flash_attn; stock vLLM's
#   attention on Hopper). flashinfer is not carried: run with VLLM_USE_FLASHINFER_SAMPLER=0
#   (install.sh prints it).
# - the pure-Python (and small binary) wheels the offline engine imports that such an
#   image lacks, at the versions listed below (found by starting the engine without them).
# - --with-ray: ray 2.60.0 without ray/jars (Java, 32 of its 79 MB).
# - --with-train: ray as above, plus what `python -m rlhf_exact.train` and the rest of the
#   product's dependencies (pyproject.toml) add to such an image: hydra-core, omegaconf and
#   the antlr4 runtime it pins (4.9.3, published as a source archive only: built into a
#   wheel here), wandb and its OpenTelemetry exporters, datasets, math-verify, protobuf
#   (googleapis-common-protos needs >= 6.33.5). The image's own pandas, pyarrow, psutil,
#   tqdm, matplotlib, aiohttp, grpcio, click and requests are used as they are.
set -euo pipefail

usage() { sed -n '2,13p' "$0" >&2; exit 2; }
[ $# -ge 1 ] || usage
out="$1"; shift
part_mib=60; with_ray=0; with_train=0; py=3.12
while [ $# -gt 0 ]; do
  case "$1" in
    --part-mib) part_mib="$2"; shift 2 ;;
    --with-ray) with_ray=1; shift ;;
    --with-train) with_ray=1; with_train=1; shift ;;
    --python) py="$2"; shift 2 ;;
    *) usage ;;
  esac
done
pytag="cp${py/./}"

VLLM=vllm==0.26.0
RAY=ray==2.60.0
# name==version of each wheel; resolved on 2026-12-01 against vllm 0.26.0's requirements
# (typing-extensions: pydantic 2.14 needs >= 4.16, newer than some images carry).
WHEELS=(
  annotated-types==0.8.0 apache-tvm-ffi==0.1.10 cachetools==8.0.2 cbor2==6.3.0 fastapi==0.136.3
  httpcore2==2.16.2 httpx2==2.16.2 jiter==0.19.0 jsonschema==4.26.0 jsonschema-specifications==2025.9.1
  llguidance==1.7.6 msgspec==0.23.0 openai==3.57.0 openai-harmony==0.0.8 opentelemetry-api==1.45.2
  partial-json-parser==0.2.1.1.post7 pybase64==1.5.1 pydantic==2.14.4 pydantic-core==2.50.5 pyzmq==27.3.0
  referencing==0.37.0 rpds-py==2026.9.1 sniffio==1.3.1 starlette==1.10.0 truststore==0.10.5
  typing-extensions==4.16.0 typing-inspection==0.4.5
  xgrammar==0.2.7  # 0.2.8+ need apache-tvm-ffi>=0.1.11; vllm 0.26 pins 0.1.10
)
# --with-train: resolved on 2026-12-03 against pyproject.toml's dependencies, leaving out
# what the GPU image already holds (README "GPU nodes without a package index").
TRAIN_WHEELS=(
  hydra-core==1.3.8 omegaconf==2.3.0 wandb==0.31.0 cwevals==0.0.1b1 distro==1.9.0 platformdirs==4.14.9
  opentelemetry-sdk==1.45.2 opentelemetry-semantic-conventions==0.66b2 opentelemetry-proto==1.45.2
  opentelemetry-exporter-otlp-proto-http==1.45.2 opentelemetry-exporter-otlp-proto-common==1.45.2
  opentelemetry-exporter-http-transport==0.66b2 opentelemetry-exporter-otlp-common==0.66b2
  googleapis-common-protos==1.76.0 protobuf==6.33.5
  datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 math-verify==0.9.0 latex2sympy2_extended==1.11.0
)
ANTLR=antlr4-python3-runtime==4.9.3  # sdist only: `pip wheel` builds it (pure Python)
# Paths inside the vllm wheel that are left out (see the header).
DROP=(
  vllm/vllm_flash_attn/_vllm_fa2_C.abi3.so vllm/_moe_C_stable_libtorch.abi3.so vllm/_flashmla_C.abi3.so
  vllm/_flashmla_extension_C.abi3.so vllm/_qutlass_C.abi3.so vllm/vllm-rs vllm/third_party/fmha_sm100
)

mkdir -p "$out"
work="$(mktemp -d "${TMPDIR:-/tmp}/offline_bundle.XXXXXX")"
trap 'rm -rf "$work"' EXIT
payload="$work/payload"; mkdir -p "$payload/wheels"
platforms=()
for p in manylinux_2_{17,24,26,27,28,31,34,35}_x86_64 manylinux2014_x86_64 manylinux1_x86_64 any; do
  platforms+=(--platform "$p")
done
download() {  # download DEST SPEC...
  local dest="$1"; shift
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$py" --implementation cp \
    "${platforms[@]}" -d "$dest" "$@"
}

echo "[1/4] $VLLM"
download "$work/dl" "$VLLM"
mkdir -p "$work/vllm"
unzip -q "$work"/dl/vllm-*.whl -d "$work/vllm"
for p in "${DROP[@]}"; do rm -rf "$work/vllm/$p"; done
find "$work/vllm/vllm/third_party/deep_gemm" -name "_C.cpython-*.so" ! -name "_C.cpython-${pytag#cp}-*" -delete 2>/dev/null || true
tar -C "$work/vllm" -cf - . | xz -T0 -6 > "$payload/vllm-0.26.0-slim.tar.xz"

if [ "$with_ray" = 1 ]; then
  echo "[1b] $RAY without ray/jars"
  download "$work/dlray" "$RAY"
  mkdir -p "$work/ray"
  unzip -q "$work"/dlray/ray-*.whl -d "$work/ray" -x 'ray/jars/*'
  tar -C "$work/ray" -cf - . | xz -T0 -6 > "$payload/ray-2.60.0-nojars.tar.xz"
fi

echo "[2/4] ${#WHEELS[@]} wheels"
download "$payload/wheels" "${WHEELS[@]}"
if [ "$with_train" = 1 ]; then
  echo "[2b] ${#TRAIN_WHEELS[@]} training wheels + $ANTLR"
  download "$payload/wheels" "${TRAIN_WHEELS[@]}"
  python3 -m pip wheel -q --no-deps --no-binary=:all: -w "$payload/wheels" "$ANTLR"
fi

echo "[3/4] install script"
cat > "$payload/install.sh" <<'EOF'
#!/usr/bin/env bash
# Installs this bundle into SITE_DIR without a package index: bash install.sh PAYLOAD_DIR SITE_DIR
set -euo pipefail
src="$1"; site="$2"; mkdir -p "$site"
for t in "$src"/*.tar.xz; do xz -dc "$t" | tar -xf - -C "$site"; done
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "$src"/wheels/*.whl
echo "export PYTHONPATH=$site\${PYTHONPATH:+:\$PYTHONPATH} VLLM_USE_FLASHINFER_SAMPLER=0"
EOF
cp "$payload/install.sh" "$out/install_payload.sh"
cat > "$out/install.sh" <<'EOF'
#!/usr/bin/env bash
# bash install.sh PARTS_DIR SITE_DIR: joins bundle.tar.part*, checks them, installs into SITE_DIR.
set -euo pipefail
parts="$1"; site="$2"
(cd "$parts" && sha256sum -c --quiet SHA256SUMS)
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
cat "$parts"/bundle.tar.part* | tar -xf - -C "$tmp"
bash "$tmp/payload/install.sh" "$tmp/payload" "$site"
EOF

echo "[4/4] parts of $part_mib MiB"
rm -f "$out"/bundle.tar.part*
tar -C "$work" -cf - payload | split -b "${part_mib}M" -d -a 2 - "$out/bundle.tar.part"
(cd "$out" && sha256sum bundle.tar.part* > SHA256SUMS)
ls -l "$out"/bundle.tar.part* | awk '{printf "  %s %.1f MiB\n", $NF, $5 / 1048576}'
echo "on the node: bash install.sh PARTS_DIR SITE_DIR, then the export line it prints"
