#!/usr/bin/env bash
# The project's test command (README): the whole suite, in parallel over the machine's cores.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] && PY=.venv/bin/python || PY=python3
exec "$PY" -m pytest -q -n auto --dist loadfile "$@"
