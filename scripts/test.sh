#!/usr/bin/env bash
# The project's test command (README): the whole suite, in parallel over the machine's cores;
# then the kernel suites (every kernel x format x geometry) again with Numba compiling for other
# CPUs -- `haswell` (AVX2 + FMA) and `x86-64` (the SSE2 baseline) -- so code paths of CPUs other
# than this one are run too (this machine executes both). Each target has its own Numba cache
# directory (.numba-cache/<cpu>).
#
#   bash scripts/test.sh                     # everything (what CI runs)
#   bash scripts/test.sh tests/test_x.py     # just these tests, host target only
#   SPARSECNN_TEST_TARGETS="x86-64" bash scripts/test.sh   # choose the extra targets ("" = none)
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] && PY=.venv/bin/python || PY=python3
KERNEL_SUITES=(tests/test_kernels_conv.py tests/test_direct_conv.py tests/test_kernels_linear.py
               tests/test_kernels_conv_pool.py tests/test_conv1d.py tests/test_direct_live.py)
if [ $# -gt 0 ]; then
  "$PY" -m pytest -q -n auto --dist loadfile "$@"
  TARGETS=${SPARSECNN_TEST_TARGETS-}
else
  "$PY" -m pytest -q -n auto --dist loadfile
  TARGETS=${SPARSECNN_TEST_TARGETS-haswell x86-64}
fi
for cpu in $TARGETS; do
  echo "== kernel suites, Numba targeting $cpu (NUMBA_CPU_NAME=$cpu NUMBA_CPU_FEATURES=)"
  # (TRITON_INTERPRET=0: the Triton kernels do not depend on Numba's target; without a GPU
  # they are skipped here, having run in the interpreter above)
  NUMBA_CPU_NAME=$cpu NUMBA_CPU_FEATURES= NUMBA_CACHE_DIR=.numba-cache/$cpu TRITON_INTERPRET=0 \
    "$PY" -m pytest -q -n auto --dist load -p no:cacheprovider "${KERNEL_SUITES[@]}"
done
