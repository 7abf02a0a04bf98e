#!/usr/bin/env bash
# The benchmark suite on one GPU, bf16 and fp32, larger batches; < 5 min.
#
#   bash benchmarks/gpu.sh            # from the repository root
#
# Results: $OUT/{bf16,fp32}/results.{json,md} ($OUT defaults to
# /tmp/cxr_jax_bench_gpu). If JAX already sees a GPU nothing is installed;
# otherwise it tries `pip install -r requirements.txt jax[cuda12]` (needs
# PyPI). Pure-python extras missing from a GPU image (ml_collections,
# pytorch-grad-cam, ttach) are read from .cache/gpu_site when present.
# MFU is against the card's published dense peak (H100/H200 SXM: bf16 989,
# fp32 67 TFLOP/s); XLA may run fp32 dots on TF32, so fp32 MFU can exceed 100%.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
OUT_DIR="${OUT:-/tmp/cxr_jax_bench_gpu}"
BATCH="${BATCH:-128}"
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
[ -d .cache/gpu_site ] && export PYTHONPATH="$PYTHONPATH:$PWD/.cache/gpu_site"

has_gpu() { "$PY" -c 'import jax, sys; sys.exit(jax.devices()[0].platform != "gpu")' 2>/dev/null; }
if ! has_gpu; then
  echo "JAX sees no GPU: installing requirements + jax[cuda12]"
  "$PY" -m pip install -q -r requirements.txt "jax[cuda12]" || true
  has_gpu || { echo "still no GPU for JAX; giving up"; exit 1; }
fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || true
"$PY" -c 'import jax; print("jax", jax.__version__, jax.devices())'

# DenseNet-201 and the cooperative model (DenseNet-201 inside) took > 2 min
# each to compile on an H200 (XLA autotuning), so they run only with FULL=1.
MODELS="resnet50,vgg16,vit_b16"
EXTRA=(--nostage2)
if [ "${FULL:-0}" = 1 ]; then MODELS="$MODELS,densenet201"; EXTRA=(); fi
COMMON=(--device=gpu --batch="$BATCH" --steps=10 --warmup=2 --matmul_n=8192
        --models="$MODELS")
# bf16: train steps + Grad-CAM (fp32 models) + FLOP utilisation / MFU.
timeout 200 "$PY" -m benchmarks.run "${COMMON[@]}" "${EXTRA[@]}" \
  --dtype=bfloat16 --only=train,gradcam,flops --out="$OUT_DIR/bf16"
# fp32: train steps + FLOP utilisation (TF32 may be used by XLA and torch).
timeout 120 "$PY" -m benchmarks.run "${COMMON[@]}" --nostage2 --quick \
  --dtype=float32 --only=train,flops --out="$OUT_DIR/fp32"
