#!/usr/bin/env bash
# Set up bionas in ./.venv on a fresh machine with Python 3.11 and the package registries.
# Idempotent: a second run only re-checks. Usage: ./setup.sh [--bench]
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python
$VPY -m pip install -q --upgrade pip >/dev/null
# torch first: the versions pinned here install from a local wheel cache where one exists;
# pyproject.toml only asks for a range.
$VPY -m pip install -q "torch==2.14.1" "torchvision==0.29.1" 2>&1 | grep -v '^WARNING: Location' || true
extras="test"
[ "${1:-}" = "--bench" ] && extras="test,bench"
$VPY -m pip install -q -e ".[$extras]" 2>&1 | grep -v '^WARNING: Location' || true
# pillow-simd replaces Pillow's PIL/ folder (torchvision pulls in Pillow, so it goes last).
if ! $VPY -c 'import PIL, sys; sys.exit(0 if ".post" in PIL.__version__ else 1)' 2>/dev/null; then
  flags=""
  grep -q avx2 /proc/cpuinfo 2>/dev/null && flags="-mavx2"
  CC="cc $flags" $VPY -m pip install -q --force-reinstall --no-deps --no-cache-dir pillow-simd \
    2>&1 | grep -v '^WARNING: Location' || true
fi
$VPY -c 'import PIL; print("PIL", PIL.__version__)'
