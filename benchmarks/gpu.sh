#!/usr/bin/env bash
# The benchmark suite on one GPU, bf16 and fp32, larger batches.
#
#   bash benchmarks/gpu.sh                  # from the repository root
#   PARTS=vit,full bash benchmarks/gpu.sh   # choose parts (default: train)
#
# Parts (each under its own time limit, logs and results in $OUT/<part>*):
#   train  bf16: ResNet-50, VGG16, ViT-B/16 train steps vs torch, Grad-CAM
#          vs pytorch-grad-cam, FLOP/s and MFU; fp32 train steps   (< 5 min)
#   vit    ViT-B/16 bf16 step variants side by side (benchmarks.xla_ab):
#          the default (cuDNN fused attention, class-token last block) at
#          batch 128; tanh GELU at batch 256, also without the memory-lean
#          forms (model.memory_lean=false; README lever G-6), with cuBLAS
#          GEMMs instead of Triton's (their epilogues take the bias and
#          GELU), and without the lean forms and with autodiff's position-
#          embedding gradient (model.pos_embed_grad=sum, whose residual
#          stream is batch-minor; lever G-5); torch (timm) in the same
#          process; then where the batch-256 step's device time goes
#          (trace_summary)                                      (< 4 min)
#   full   = densenet,stage2                                   (< 7 min)
#   densenet  DenseNet-201 train step vs torch
#   stage2    the stage-2 step of the cooperative model (no torch reference)
#          at STAGE2_SIZES (default full: the thesis's 640x512; demo);
#          their compiles (XLA autotuning of ~600 cuDNN convolutions) take
#          minutes (AUTOTUNE_LEVEL, below)
#   hlo    the ViT-B/16 batch-256 step's optimised HLO, gzipped (< 1 min)
#
# $OUT defaults to /tmp/cxr_jax_bench_gpu. If JAX already sees a GPU nothing
# is installed from PyPI; otherwise it tries `pip install -r requirements.txt
# jax[cuda12]`. Packages missing from a GPU image come from wheels in .whl/
# (installed into a scratch folder, no network) and pure-python copies in
# .cache/gpu_site (pytorch-grad-cam, ttach), when present: run
# `bash benchmarks/gpu_carry.sh` here first and carry both folders.
# MFU is against the card's published dense peak (H100/H200 SXM: bf16 989,
# fp32 67 TFLOP/s); XLA may run fp32 dots on TF32, so fp32 MFU can exceed 100%.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
OUT_DIR="${OUT:-/tmp/cxr_jax_bench_gpu}"
BATCH="${BATCH:-128}"
PARTS="${PARTS:-train}"
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
# torch shares the process with JAX: leave it room on an 80 GB card.
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.55}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target /tmp/cxr_jax_site .whl/*.whl \
    && export PYTHONPATH="$PYTHONPATH:/tmp/cxr_jax_site"
fi
[ -d .cache/gpu_site ] && export PYTHONPATH="$PYTHONPATH:$PWD/.cache/gpu_site"

has_gpu() { "$PY" -c 'import jax, sys; sys.exit(jax.devices()[0].platform != "gpu")' 2>/dev/null; }
if ! has_gpu; then
  echo "JAX sees no GPU: installing requirements + jax[cuda12]"
  "$PY" -m pip install -q -r requirements.txt "jax[cuda12]" || true
  has_gpu || { echo "still no GPU for JAX; giving up"; exit 1; }
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
"$PY" -c 'import jax, flax; print("jax", jax.__version__, "flax", flax.__version__, jax.devices())'

part() { [[ ",$PARTS," == *",$1,"* ]]; }
COMMON=(--device=gpu --batch="$BATCH" --steps=10 --warmup=2 --matmul_n=8192)

if part vit; then
  echo "== vit: ViT-B/16 bf16 variants (+ a device-time profile of one)"
  timeout 240 "$PY" -m benchmarks.xla_ab --device=gpu --dtype=bfloat16 \
    --model=vit_b16 --batch="$BATCH" --steps=10 --warmup=2 \
    --variant=default: \
    --variant=tanh_b256:model.gelu_approximate=true,batch=256 \
    --variant=plain_b256:model.gelu_approximate=true,batch=256,model.memory_lean=false \
    --variant=cublas_b256:model.gelu_approximate=true,batch=256,xla_gpu_enable_triton_gemm=false \
    --variant=batchminor_b256:model.gelu_approximate=true,batch=256,model.memory_lean=false,model.pos_embed_grad=sum \
    --profile=tanh_b256 --out="$OUT_DIR/vit_ab.json" 2>&1 | tee "$OUT_DIR/vit_ab.log"
fi

if part train; then
  echo "== train: bf16 train steps, Grad-CAM, FLOP/s"
  timeout 200 "$PY" -m benchmarks.run "${COMMON[@]}" --nostage2 \
    --models=resnet50,vgg16,vit_b16 --dtype=bfloat16 \
    --only=train,gradcam,flops --out="$OUT_DIR/bf16" 2>&1 \
    | tee "$OUT_DIR/train_bf16.log"
  echo "== train: fp32 train steps (TF32 may be used by XLA and torch)"
  timeout 120 "$PY" -m benchmarks.run "${COMMON[@]}" --nostage2 --quick \
    --models=resnet50,vgg16,vit_b16 --dtype=float32 --only=train,flops \
    --out="$OUT_DIR/fp32" 2>&1 | tee "$OUT_DIR/train_fp32.log"
fi

# XLA autotunes each of the ~600 cuDNN convolutions of DenseNet-201 and the
# cooperative model; AUTOTUNE_LEVEL=2 (default) skips the correctness check of
# every candidate (same timings, hence choices, as XLA's default 4); 0 takes
# cuDNN's heuristic choice untimed (fast compiles, maybe slower steps). On a
# timeout, SIGABRT makes Python print where each part was (faulthandler).
XLA_FULL="${XLA_FLAGS:-} --xla_gpu_autotune_level=${AUTOTUNE_LEVEL:-2}"
# Untuned XLA against untuned torch: level 0 turns torch's cuDNN autotuning
# (cudnn.benchmark, ~100 distinct DenseNet-201 convolutions) off too.
TORCH_TUNE=--torch_cudnn_benchmark
[ "${AUTOTUNE_LEVEL:-2}" = 0 ] && TORCH_TUNE=--notorch_cudnn_benchmark
if part full || part densenet; then
  echo "== densenet: DenseNet-201 bf16 train step (autotune level ${AUTOTUNE_LEVEL:-2})"
  XLA_FLAGS="$XLA_FULL" timeout -s ABRT "${DENSENET_TIMEOUT:-200}" "$PY" \
    -X faulthandler -m benchmarks.run "${COMMON[@]}" --nostage2 \
    --models=densenet201 --dtype=bfloat16 --only=train,flops "$TORCH_TUNE" \
    --out="$OUT_DIR/densenet" 2>&1 | tee "$OUT_DIR/densenet.log"
fi
if part full || part stage2; then
  echo "== stage2: stage-2 steps (${STAGE2_SIZES:-full}; thesis 640x512 / demo 128x96, batch 8)"
  XLA_FLAGS="$XLA_FULL" timeout -s ABRT "${STAGE2_TIMEOUT:-190}" "$PY" \
    -X faulthandler -m benchmarks.run "${COMMON[@]}" --models= \
    --stage2_sizes="${STAGE2_SIZES:-full}" --dtype=bfloat16 \
    --only=train,flops --out="$OUT_DIR/stage2" 2>&1 | tee "$OUT_DIR/stage2.log"
fi

if part hlo; then  # the optimised HLO of the ViT-B/16 step, for offline reading
  echo "== hlo: ViT-B/16 bf16 batch 256 step HLO"
  timeout 90 "$PY" -m benchmarks.xla_ab --device=gpu --dtype=bfloat16 \
    --model=vit_b16 --notorch --steps=1 --warmup=0 --hlo_out="$OUT_DIR/hlo" \
    --variant=tanh_b256:model.gelu_approximate=true,batch=256 2>&1 \
    | tee "$OUT_DIR/hlo.log"
fi
ls -R "$OUT_DIR" 2>/dev/null | head -20
