#!/usr/bin/env bash
# Run the Triton kernel tests and benchmarks/gpu.py on a GPU machine, in one call. Not part of CI. The machine needs
# an NVIDIA GPU with its driver and Python 3 with torch, Triton and onnxruntime; it may lack onnx-graphsurgeon,
# polygraphy and onnx2torch and have no network, so bring them, and asvp itself, as wheels in .whl/.
#
# 1. On a machine with network, from the repository root (/.whl/ is git-ignored; pure-Python wheels, so any
#    platform tag matches):
#
#      python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#          --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#          -d .whl onnx-graphsurgeon==0.6.1 polygraphy==0.53.6 onnx2torch==1.5.15 colored==2.3.2
#      rm -f .whl/asvp-*.whl && .venv/bin/pip wheel --no-deps -w .whl .    # asvp, teacher weights included
#
#    (~2.7 MB in all; rebuild the asvp wheel after every change you want measured.)
# 2. Copy the repository with its .whl/ to the GPU machine and run there (about 10 min at most):
#
#      bash benchmarks/gpu_remote.sh              # extra arguments go to gpu.py, e.g. --quick
#
# 3. It writes gpu-<device>.json, gpu-<device>.md, kernel-tests.log and gpu-run.log to the folder GPU_OUT names
#    (default benchmarks/results/gpu-run; OUT also works when GPU_OUT is unset). Bring the .json/.md back into
#    benchmarks/results/, run `python -m benchmarks.run_all --render-only` (BENCHMARKS.md's GPU section, nothing
#    re-measured) and commit; never edit the figures by hand.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO="$(pwd)"
OUTDIR="${GPU_OUT:-${OUT:-benchmarks/results/gpu-run}}"
mkdir -p "$OUTDIR" && OUTDIR="$(cd "$OUTDIR" && pwd)"
WORK="$(mktemp -d)"  # the installed wheels, and the working directory of the tests
trap 'rm -rf "$WORK"' EXIT
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" .whl/*.whl \
    || { echo "gpu_remote.sh: installing the wheels in .whl/ failed (see step 1)"; exit 3; }
export PYTHONPATH="$WORK/site" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader || true
# The interpreter tests, now compiled and on CUDA (parity against the float64 reference on the GPU). Run outside
# the repository, and without pyproject's `pythonpath = ["."]`: either would import ./asvp (the source tree, which
# is not an installed package) instead of the wheel. The compile-only tests (explicit sm_86/sm_90 targets, no GPU
# needed) are left to CI: they would only spend GPU time here.
(cd "$WORK" && timeout 150 python3 -m pytest -q -p no:cacheprovider -o pythonpath= -k "not compile and not fit_every" \
    "$REPO/tests/runtime/engines/test_triton_kernel.py") \
    2>&1 | tee "$OUTDIR/kernel-tests.log"
# As a script, not `python3 -m benchmarks.gpu`, for the same reason (gpu.py imports nothing else from benchmarks/
# but its sibling gpu_*.py modules, found beside it). Its fp16/bf16 section runs the defended models through
# onnx2torch (from .whl/); without it that part is skipped, with the reason, and the kernel part still runs.
timeout 420 python3 benchmarks/gpu.py --out-dir "$OUTDIR" "$@" 2>&1 | tee "$OUTDIR/gpu-run.log"
