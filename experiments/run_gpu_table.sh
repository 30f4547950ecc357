#!/bin/bash
# The GPU table of experiments/BENCHMARKS.md in one call of the device tool.
#
#   run(command="bash experiments/run_gpu_table.sh", kind="nvidia-h200",
#       timeout_s=600)                                   # the table (~8-9 min)
#   run(command="bash experiments/run_gpu_table.sh ablations",
#       kind="nvidia-h200", timeout_s=600)               # what each change buys
#
# Rows, in this order (ResNet-50 first, so a cut-short run still has it):
#   resnet50 bf16 b256@224 (+ persistent-cache check), resnet18, mobilenet_v2
#   (b256@224), deeplabv3plus_mobilenet_v2 and unet_resnet50 (b16@512),
#   resnet101 (b256@224). Each row: jaxres vs PyTorch eager, AMP bf16 +
#   channels_last, same process, windows alternating.
# MODELS="resnet50 resnet101" picks rows; BUDGET_S (default 560) stops
# starting rows when fewer than ROW_S (default 100) seconds are left.
#
# Nothing to install and nothing to carry: the GPU image has jax, flax, optax,
# orbax, chex, numpy, torch; benchmark.py needs no tensorflow, clu or
# ml_collections (it stubs the last two, which jaxres.train imports for its
# training loop only).
#
# Output: experiments/results/gpu_<row>.json on the device, and, since only
# $OUT comes back, $OUT/gpu_table.json (all rows, rewritten after each row),
# $OUT/gpu_table.md and $OUT/gpu_table.log. Back here:
#   cp <files_at>/gpu_table.json experiments/results/gpu_table_h200.json
#   python experiments/benchmark.py --table experiments/results/gpu_table_h200.json
set -u
cd "$(dirname "$0")/.."
MODE=${1:-table}
OUT_DIR=${OUT:-experiments/results}
mkdir -p experiments/results "$OUT_DIR"
LOG="$OUT_DIR/gpu_table.log"
exec > >(tee -a "$LOG") 2>&1
START=$(date +%s)
BUDGET_S=${BUDGET_S:-560}
ROW_S=${ROW_S:-100}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2

# --- XLA flags (each is checked below; one XLA does not know is dropped). ---
# autotune_level=4: time cuDNN convolution algorithms and GEMM configs at
#   compile time and keep the fastest (XLA's default level; stated so that a
#   changed default shows up here).
# latency_hiding_scheduler: overlap asynchronous copies/collectives with
#   compute; matters from 2 GPUs on, costs nothing on one.
# command buffers: record fusions, cuBLAS/cuDNN calls and custom calls of one
#   step into CUDA graphs, which removes per-kernel launch gaps (small models,
#   small batches). The ablations mode measures it off.
XLA_TABLE_FLAGS=(
  --xla_gpu_autotune_level=4
  --xla_gpu_enable_latency_hiding_scheduler=true
  --xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUDNN,CUSTOM_CALL
)
# jax takes half the GPU (not its default 75 %) so PyTorch, in the same
# process, has the other half.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.5}

flags_ok() {
  XLA_FLAGS="$*" timeout 120 "$PY" -c 'import jax; jax.devices()' >/dev/null 2>&1
}
if flags_ok "${XLA_TABLE_FLAGS[*]}"; then
  XLA_BASE="${XLA_TABLE_FLAGS[*]}"
else
  XLA_BASE=""
  for f in "${XLA_TABLE_FLAGS[@]}"; do
    if flags_ok "$f"; then XLA_BASE="$XLA_BASE $f"; else echo "XLA does not know $f: dropped"; fi
  done
fi
export XLA_FLAGS="${XLA_FLAGS:-} $XLA_BASE"

echo "== $(date -Is) mode=$MODE XLA_FLAGS=$XLA_FLAGS"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv 2>/dev/null
"$PY" -c 'import jax, torch, flax, optax; print("jax", jax.__version__, jax.devices(), "| torch", torch.__version__, "| flax", flax.__version__, "| optax", optax.__version__)'

ROWS_JSON=()
row() {  # row NAME BENCHMARK-ARGS...
  local name=$1; shift
  local left=$(( BUDGET_S - ($(date +%s) - START) ))
  if (( left < ROW_S )); then
    echo "== SKIPPED $name: ${left}s of the budget left. Next call: MODELS=... with the rows not run."
    return
  fi
  echo "== $(date -Is) $name (${left}s left): $*"
  local json="experiments/results/gpu_$name.json"
  if timeout "$left" "$PY" experiments/benchmark.py --json="$json" "$@"; then
    ROWS_JSON+=("$json")
    "$PY" - "$OUT_DIR/gpu_table.json" "${ROWS_JSON[@]}" <<'EOF'
import json, sys
rows = [json.load(open(p)) for p in sys.argv[2:]]
json.dump(rows, open(sys.argv[1], 'w'), indent=2)
EOF
  else
    echo "== FAILED $name (exit $?)"
  fi
}

COMMON=(--warmup=5 --windows=5 --eval_windows=3)
BF16=(--dtype=bfloat16 --peak_tflops=790)  # 790: bf16 GEMM measured on H200
CLS=(--batch_size=256 --image_size=224 --steps=10)
SEG=(--batch_size=16 --image_size=512 --steps=10)

if [[ $MODE == table ]]; then
  for m in ${MODELS:-resnet50 resnet18 mobilenet_v2 deeplabv3plus_mobilenet_v2 unet_resnet50 resnet101}; do
    case $m in
      resnet50) row resnet50_bf16_b256 --model=resnet50 "${BF16[@]}" "${CLS[@]}" "${COMMON[@]}" --cache_check ;;
      deeplabv3plus_mobilenet_v2|unet_resnet50)
        row "${m}_bf16_b16_512" --model=$m "${BF16[@]}" "${SEG[@]}" "${COMMON[@]}" ;;
      *) row "${m}_bf16_b256" --model=$m "${BF16[@]}" "${CLS[@]}" "${COMMON[@]}" ;;
    esac
  done
elif [[ $MODE == ablations ]]; then
  # ResNet-50 b256: one change at a time against the table's configuration.
  R50=(--model=resnet50 "${CLS[@]}" "${COMMON[@]}")
  row abl_r50_bf16_table "${R50[@]}" "${BF16[@]}" --torch=none
  XLA_FLAGS="$XLA_FLAGS --xla_gpu_enable_command_buffer=" \
    row abl_r50_bf16_no_command_buffers "${R50[@]}" "${BF16[@]}" --torch=none
  XLA_FLAGS="$XLA_FLAGS --xla_gpu_autotune_level=0" \
    row abl_r50_bf16_no_autotune "${R50[@]}" "${BF16[@]}" --torch=none
  row abl_r50_bf16_f32_input "${R50[@]}" "${BF16[@]}" --input_dtype=float32 --torch=none
  row abl_r50_f32 "${R50[@]}" --dtype=float32
  row abl_r50_bf16_torch_compile "${R50[@]}" "${BF16[@]}" --torch=compile
else
  echo "usage: $0 [table|ablations]"; exit 2
fi

if (( ${#ROWS_JSON[@]} )); then
  "$PY" experiments/benchmark.py --table "$OUT_DIR/gpu_table.json" | tee "$OUT_DIR/gpu_table.md"
fi
echo "== done in $(( $(date +%s) - START ))s"
sleep 1  # let tee finish writing the log under $OUT
