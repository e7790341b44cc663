#!/usr/bin/env bash
# Run the Triton kernel tests and benchmarks/gpu.py on a lent GPU machine (the device tool's `run`; see
# /work/.library/device/README.md). Not part of CI. The GPU image has torch, Triton and onnxruntime (CPU) but
# not onnx-graphsurgeon, polygraphy or onnx2torch, and no network: bring them, and asvp itself, as wheels.
#
# 1. Here, from the repository root (/.whl/ is git-ignored; pure-Python wheels, so any platform tag matches):
#
#      python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#          --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#          -d .whl onnx-graphsurgeon==0.6.1 polygraphy==0.53.6 onnx2torch==1.5.15 colored==2.3.2
#      rm -f .whl/asvp-*.whl && .venv/bin/pip wheel --no-deps -w .whl .    # asvp, teacher weights included
#
#    (~2.7 MB in all; rebuild the asvp wheel after every change you want measured.)
# 2. Device tool: run(command="bash benchmarks/gpu_remote.sh", carry=[".whl"], timeout_s=600)
#    Extra arguments go to gpu.py, e.g. "bash benchmarks/gpu_remote.sh --quick".
# 3. What comes back under $OUT: gpu-<device>.json, gpu-<device>.md, kernel-tests.log, gpu-run.log. Copy the
#    .json/.md into benchmarks/results/, run `python benchmarks/run_all.py --render-only` (BENCHMARKS.md's GPU
#    section, nothing re-measured) and commit; never edit the figures by hand.
set -uo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "gpu_remote.sh: installing the carried wheels failed (carry .whl, see step 1)"; exit 3; }
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
OUTDIR="${OUT:-benchmarks/results}"
mkdir -p "$OUTDIR"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader || true
# The interpreter tests, now compiled and on CUDA (parity against the float64 reference on the GPU). Run from
# /tmp: with the repository as the working directory, `python3 -m` would import ./asvp instead of the wheel.
# The compile-only tests (explicit sm_86/sm_90 targets, no GPU needed) are left to CI: they would only spend
# device time here.
REPO="$(pwd)"
(cd /tmp && timeout 150 python3 -m pytest -q -p no:cacheprovider -k "not compile and not fit_every" \
    "$REPO/tests/runtime/engines/test_triton_kernel.py") \
    2>&1 | tee "$OUTDIR/kernel-tests.log"
timeout 420 python3 benchmarks/gpu.py --out-dir "$OUTDIR" "$@" 2>&1 | tee "$OUTDIR/gpu-run.log"
