#!/usr/bin/env bash
# Install Debian's chromium for the report's headless-browser test (tests/test_report.py), only
# when it is missing. CI runs as root on Debian; elsewhere, run it with sudo or skip it (the test
# then skips unless CI=true).
set -euo pipefail
if command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "install-chromium: chromium is missing and this is not root; run: sudo apt-get install -y chromium" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q chromium
