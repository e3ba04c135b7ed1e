#!/usr/bin/env bash
# GPU check (benchmarks/gpu_check.py): synthpos's CUDA paths and their speed in under 5 minutes on
# one GPU, with the machine's own Python and torch and the package from src/ (no install, no
# network). Wheels the machine lacks come from benchmarks/gpu_bundle/ (bash benchmarks/gpu_bundle.sh,
# here, beforehand). The JSON is rewritten after every section, so a run cut short still reports.
#
#   bash benchmarks/gpu_check.sh                       # on the GPU machine
#   bash benchmarks/gpu_check.sh --out "$OUT/gpu_check.json"
#   bash benchmarks/gpu_check.sh --cpu --out /tmp/gpu_check.json   # toy size on the CPU (CI)
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-}
if [ -z "$py" ]; then
  for cand in python3.12 python3 python; do command -v "$cand" >/dev/null 2>&1 && { py=$cand; break; }; done
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
exec "$py" benchmarks/gpu_check.py "$@"
