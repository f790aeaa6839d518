#!/usr/bin/env bash
# One prepared GPU session for issue 10 (docs/gpu.md): find or install a Python with CUDA
# PyTorch and Triton, run the GPU tests, then `sparsecnn bench --device cuda` on the seeds'
# VGG-16 table (batch 128, fp16 first: the goal), ResNet-50 1x1 and AlexNet layers, in under
# 8 minutes on one H100 / H200, compilation and autotuning included (Triton's caches go to
# $TRITON_CACHE_DIR, default .triton-cache/ here: a second run finds them warm).
#
# Usage: bash scripts/gpu-bench.sh [RESULTS_DIR]     (default sparsecnn-results/gpu-<time>)
# Writes into RESULTS_DIR: env.txt, tests-*.log, bench-<part>/bench-gpu-*/ (bench.csv, bench.json, plots),
# bench-*.log, summary.txt, and gpu-results.tar.gz holding all of them. Prints the folder first.
# On a lent machine whose results come back through a folder of few files (this workplace's
# device tool: 8 files), write elsewhere and copy the two that matter:
#   bash scripts/gpu-bench.sh /tmp/gpu; cp /tmp/gpu/summary.txt /tmp/gpu/gpu-results.tar.gz "$OUT"/
# Exit 0 when everything passed; 1 when a test or a benchmark check failed; 2 when no GPU.
# Every step has a time limit, so the whole script ends in time even if one step hangs.
set -uo pipefail
cd "$(dirname "$0")/.."
T0=$(date +%s)
RES=${1:-sparsecnn-results/gpu-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$RES" || exit 2
RES=$(cd "$RES" && pwd)
echo "results folder: $RES"
elapsed() { echo $(( $(date +%s) - T0 )); }
log() { echo "[$(elapsed) s] $*" | tee -a "$RES/summary.txt"; }

# --- 1. a Python with CUDA PyTorch and Triton ------------------------------------------------
# $PYTHON, this checkout's .venv or .venv-gpu, else python3 (on the workplace's GPU machines:
# the image's own PyTorch and Triton; the project's pins do not apply there).
PY=""; NOGPU=""
for cand in "${PYTHON:-}" .venv/bin/python .venv-gpu/bin/python python3; do
    [ -n "$cand" ] && command -v "$cand" >/dev/null 2>&1 || continue
    "$cand" -c "import torch, triton" >/dev/null 2>&1 || continue
    if "$cand" -c "import torch; assert torch.cuda.is_available()" >/dev/null 2>&1; then
        PY=$cand; break
    fi
    NOGPU="$NOGPU $cand"
done
if [ -z "$PY" ] && [ -n "$NOGPU" ]; then
    log "FAILED: no CUDA GPU: torch.cuda.is_available() is False with${NOGPU}"
    exit 2
fi
if [ -z "$PY" ]; then
    # no PyTorch + Triton at all: install the project with its GPU extra into .venv-gpu
    # (needs a package registry and a few GB of downloads: minutes, outside the 8-minute plan)
    log "no Python with torch + triton; installing: .venv-gpu, pip install -e '.[gpu,test]'"
    { python3 -m venv .venv-gpu && .venv-gpu/bin/pip install -q -e '.[gpu,test]'; } \
        >"$RES/install.log" 2>&1 && PY=.venv-gpu/bin/python
    if [ -z "$PY" ] || ! "$PY" -c "import torch, triton; assert torch.cuda.is_available()" \
            >>"$RES/install.log" 2>&1; then
        log "FAILED: no PyTorch with CUDA and Triton, or no GPU (see $RES/install.log)"
        exit 2
    fi
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"   # this checkout, installed or not
export PYTHONUNBUFFERED=1
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-$PWD/.triton-cache}
export SPARSECNN_CACHE_DIR="$RES/tuning-cache"
unset TRITON_INTERPRET
mkdir -p "$TRITON_CACHE_DIR"
if ! timeout 120 "$PY" -c "import sparsecnn.bench.gpu" >"$RES/import.log" 2>&1; then
    log "FAILED: sparsecnn does not import with $PY (see $RES/import.log)"
    exit 2
fi
{
    echo "python: $PY ($("$PY" -V 2>&1))"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 \
        || echo "nvidia-smi: not available"
    "$PY" - <<'EOF'
import json, torch, triton
from sparsecnn.bench.gpu_output import gpu_info
print(json.dumps({"torch": torch.__version__, "triton": triton.__version__, **gpu_info()}))
EOF
} >"$RES/env.txt" 2>&1
log "environment: $(tail -n 1 "$RES/env.txt")"
STATUS=0

# --- 2. GPU tests (about 2 minutes) -----------------------------------------------------------
NPROC=$("$PY" -c "import os; print(max(1, min(8, (os.cpu_count() or 2) // 2)))")
# the registry-driven grids, every Triton kernel compiled on CUDA with its heuristic tiles
# (autotuning every test shape would only cost compile time)
SPARSECNN_TRITON_AUTOTUNE=0 timeout 150 "$PY" -m pytest -q -n "$NPROC" -p no:cacheprovider \
    tests/test_kernels_conv.py tests/test_kernels_linear.py -k triton >"$RES/tests-grid.log" 2>&1
rc=$?; log "tests (registry grids on CUDA): rc=$rc, $(tail -n 1 "$RES/tests-grid.log")"
[ $rc -eq 0 ] || STATUS=1
# the Triton tests: fp16 / bf16, autotuned kernels, module .to("cuda"), 2:4, CUDA timing
timeout 120 "$PY" -m pytest -q -p no:cacheprovider -rs tests/test_kernels_triton.py \
    >"$RES/tests-triton.log" 2>&1
rc=$?; log "tests (test_kernels_triton.py, autotuning on): rc=$rc, $(tail -n 1 "$RES/tests-triton.log")"
[ $rc -eq 0 ] || STATUS=1

# --- 3. the benchmark, most important first, each part with a time budget --------------------
# A part starts no case after its budget (the cases left out are listed in its bench.json) and
# is killed at the deadline whatever happens, so the script ends within DEADLINE seconds.
DEADLINE=${DEADLINE:-460}
bench() {  # bench NAME BUDGET_S ARGS...
    local name=$1 budget=$2; shift 2
    local left=$(( DEADLINE - $(elapsed) ))
    if [ "$left" -lt 45 ]; then log "bench $name: skipped, ${left} s left before the deadline"; STATUS=1; return; fi
    [ "$budget" -gt $(( left - 40 )) ] && budget=$(( left - 40 ))
    timeout "$left" "$PY" -m sparsecnn bench --device cuda --no-progress \
        --time-budget "$budget" --out "$RES/bench-$name" "$@" >"$RES/bench-$name.log" 2>&1
    local rc=$?
    log "bench $name (budget ${budget} s): rc=$rc; $(grep -E '^results:|not run' "$RES/bench-$name.log" | tr '\n' ' ')"
    [ $rc -eq 0 ] || STATUS=1
}
# the goal first: every VGG-16 layer at batch 128 in fp16 at the two sparsities that decide it
# (0.9: "beat cuDNN from 90 %"; 0.99), then the rest of the 0.8 .. 0.99 curve
bench vgg16-b128-fp16 100 --suite vgg16-full --batch 128 --dtype float16 --sparsity 0.9 0.99
bench vgg16-b128-fp16-curve 70 --suite vgg16-full --batch 128 --dtype float16 --sparsity 0.8 0.95 0.98
# fp32 at the same batch (cuDNN may use TF32 here)
bench vgg16-b128-fp32 40 --suite vgg16-full --batch 128 --dtype float32 --sparsity 0.9 0.99
# ResNet-50 1x1 (SpMM and 2:4 apply), batch 32 and 128, fp16
bench resnet50-1x1 45 --suite resnet50-1x1 --batch 32 128 --dtype float16 --sparsity 0.8 0.9 0.99
# AlexNet, batch 1 / 32 / 128, fp16 and fp32
bench alexnet 35 --suite alexnet --batch 1 32 128 --dtype float16 float32 --sparsity 0.8 0.9 0.99

# --- 4. pack -----------------------------------------------------------------------------------
log "done in $(elapsed) s, status $STATUS"
tar -czf "$RES/gpu-results.tar.gz" -C "$RES" --exclude gpu-results.tar.gz --exclude tuning-cache . \
    2>/dev/null || true
echo "results folder: $RES (gpu-results.tar.gz holds everything)"
exit $STATUS
