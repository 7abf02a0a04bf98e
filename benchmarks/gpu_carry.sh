#!/usr/bin/env bash
# Prepares what `benchmarks/gpu.sh` needs on an offline GPU image, here,
# where pip reaches the package registry: run once per checkout, then name
# both folders in the device tool's `carry` (about 7 MiB in all).
#
#   bash benchmarks/gpu_carry.sh   # from the repository root
#   # then on the GPU machine (carry [".whl", ".cache/gpu_site"]):
#   PARTS=vit bash benchmarks/gpu.sh
#
# .whl/            Python 3.12 wheels the GPU image lacks (its python3 is
#                  3.12 with jax, flax, optax, orbax, torch, timm, scikit-image
#                  already there): grain, array_record, portpicker, pydicom,
#                  ml_collections, tensorboardX. gpu.sh installs them into a
#                  scratch folder without network.
# .cache/gpu_site  pure-Python packages put on PYTHONPATH as they are:
#                  pytorch-grad-cam (an sdist on PyPI) and ttach.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
rm -rf .whl .cache/gpu_site
mkdir -p .whl .cache/gpu_site
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 \
  --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl \
  grain==0.2.18 array_record==0.8.6 portpicker pydicom==3.0.2 \
  ml_collections tensorboardX==2.6.5
"$PY" -m pip install -q --no-deps --no-compile --target .cache/gpu_site \
  grad-cam==1.5.7 ttach==0.0.3
rm -rf .cache/gpu_site/bin
du -sh .whl .cache/gpu_site
