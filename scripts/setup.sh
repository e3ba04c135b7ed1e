#!/usr/bin/env bash
# Set up synthpos in ./.venv: the package (and, with --test, the test extras) and
# the Fashion-MNIST data. Safe to run again: it only does what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# pip on some machines warns about every missing local index folder; keep the rest of its output.
pip_install() { .venv/bin/python -m pip install -q "$@" 2> >(grep -v "WARNING: Location '" >&2); }

extras=""
[ "${1:-}" = "--test" ] && extras="[test]"

py=""
for cand in python3.11 python3 python; do
  if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    py="$cand"; break
  fi
done
[ -n "$py" ] || { echo "synthpos needs Python >= 3.11 (python3.11 not found)" >&2; exit 2; }

if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv with $($py --version)"
  "$py" -m venv .venv
fi
# torch and torchvision first, pinned, so that no other package pulls another build.
if ! .venv/bin/python -c 'import torch, torchvision; assert torch.__version__.startswith("2.14.1")' 2>/dev/null; then
  echo "== installing torch 2.14.1 and torchvision 0.29.1"
  pip_install --upgrade pip
  pip_install torch==2.14.1 torchvision==0.29.1
fi
echo "== installing synthpos${extras}"
pip_install -e ".${extras}"

data=/usr/share/datasets/fashion-mnist
if [ -n "${SYNTHPOS_DATA:-}" ] && ls "$SYNTHPOS_DATA"/train-images-idx3-ubyte* >/dev/null 2>&1; then
  echo "== Fashion-MNIST: $SYNTHPOS_DATA"
elif ls "$data"/train-images-idx3-ubyte* >/dev/null 2>&1; then
  echo "== Fashion-MNIST: $data"
elif command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "== installing Fashion-MNIST (Debian package dataset-fashion-mnist)"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
else
  echo "Fashion-MNIST is missing: put train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz," >&2
  echo "t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz in a folder and export SYNTHPOS_DATA=that/folder" >&2
  echo "(or, as root on Debian/Ubuntu: apt-get install dataset-fashion-mnist)" >&2
  exit 2
fi
# The report's browser test renders the HTML in headless Chromium (Debian package chromium).
if [ -n "$extras" ] && ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "== installing chromium (the report's browser test)"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "chromium is missing: the report's browser test will be skipped (as root on Debian: apt-get install chromium)" >&2
  fi
fi
echo "== ready: .venv/bin/synthpos --help"
