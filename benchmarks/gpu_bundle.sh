#!/usr/bin/env bash
# Fill benchmarks/gpu_bundle/ (git-ignored) with what benchmarks/gpu_check.sh needs on a GPU machine
# that has its own Python 3.12 and torch but no network: the wheels of synthpos's dependencies
# (without the torch stack, numpy and Pillow, which such a machine has; pure-Python wheels, plus
# CPython 3.12 manylinux builds of the few compiled ones), at the versions of this .venv, and the
# four Fashion-MNIST files. gpu_check adds a wheel only where the machine lacks the package or
# has one older than another bundled wheel requires. Needs network here (pip download).
#
#   bash benchmarks/gpu_bundle.sh            # then carry benchmarks/gpu_bundle with the tree
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
out=benchmarks/gpu_bundle
mkdir -p "$out/wheels" "$out/fashion-mnist"
# name==version of every dependency of synthpos's runtime closure, minus what a torch machine has.
pins=$("$py" - <<'PY'
import importlib.metadata as md, re
skip = re.compile(r"^(torch|torchvision|triton|nvidia-.*|numpy|pillow|sympy|mpmath|networkx|jinja2|markupsafe|setuptools"
                  r"|matplotlib|contourpy|cycler|fonttools|kiwisolver|pyparsing|python-dateutil|six|requests|urllib3"
                  r"|idna|certifi|charset-normalizer|tqdm|packaging|typer|click|shellingham|colorama|tomli|cuda-.*)$")
todo, seen = ["diffusers", "lightning", "pydantic", "rich", "safetensors", "pyyaml"], {}
while todo:
    name = re.sub(r"[-_.]+", "-", todo.pop()).lower()
    if name in seen or skip.match(name):
        continue
    try:
        dist = md.distribution(name)
    except md.PackageNotFoundError:
        continue
    seen[name] = dist.version
    for req in dist.requires or []:
        if "extra ==" in req:
            continue
        if ";" in req and "platform_machine" not in req:
            continue
        todo.append(re.split(r"[ ;<>=!~\[(]", req, maxsplit=1)[0])
print(" ".join(f"{n}=={v}" for n, v in sorted(seen.items())))
PY
)
echo "== wheels: $pins"
# shellcheck disable=SC2086
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --dest "$out/wheels" $pins
data=${SYNTHPOS_DATA:-/usr/share/datasets/fashion-mnist}
cp "$data"/train-images-idx3-ubyte.gz "$data"/train-labels-idx1-ubyte.gz \
   "$data"/t10k-images-idx3-ubyte.gz "$data"/t10k-labels-idx1-ubyte.gz "$out/fashion-mnist/"
du -sh "$out/wheels" "$out/fashion-mnist" "$out"
