#!/usr/bin/env bash
# Install Debian's AArch64 cross compiler and user-mode QEMU for the Arm test of the portable
# direct-convolution tile (tests/test_cross_targets.py::test_neon_tile_runs_under_qemu), only
# when they are missing. CI runs as root on Debian; elsewhere, run it with sudo or skip it (the
# test then skips, saying what is missing).
set -euo pipefail
if command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 && command -v qemu-aarch64 >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "install-arm-cross: missing; run: sudo apt-get install -y qemu-user gcc-aarch64-linux-gnu" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends qemu-user gcc-aarch64-linux-gnu libc6-dev-arm64-cross
