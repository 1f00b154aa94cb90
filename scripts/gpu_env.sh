# Source this on the GPU test machine (torch + triton only, nothing installed):
# makes `exact_kernels` (folder kernels/) and `rlhf_exact` importable without pip.
_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mkdir -p /tmp/exact_pp
ln -sfn "$_root/kernels" /tmp/exact_pp/exact_kernels
export PYTHONPATH="/tmp/exact_pp:$_root${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
