#!/usr/bin/env bash
# Regenerates the CPU table of experiments/BENCHMARKS.md: jaxres against the
# same PyTorch training step in the same process, float32, every model at 1
# and then 2 threads (XLA:CPU and PyTorch alike), one JSON per row with the
# load average at its start and end.
#
#   bash experiments/run_cpu_table.sh                # all rows, ~25-40 min on
#                                                    # 2 shared cores
#   MODELS="mobilenet_v2" THREADS="1" bash experiments/run_cpu_table.sh
#   OUT=/tmp/rows bash experiments/run_cpu_table.sh  # elsewhere
#   JAXRES_DEPTHWISE_IMPL=grouped JAXRES_POINTWISE_IMPL=conv \
#     OUT=/tmp/xla_convs bash experiments/run_cpu_table.sh   # XLA's own convs
#
# XLA_FLAGS is cleared for each row: jaxres sets no XLA flag on CPU, and a
# flag left in the environment would change what is measured. Threads are
# set by benchmark.py --cpu_threads (CPU affinity while XLA's backend starts,
# torch.set_num_threads); each row records how many threads were busy.
# OMP_WAIT_POLICY=PASSIVE (PyTorch's OpenMP threads sleep instead of spinning
# while they wait): on a shared 2-core host spinning threads steal the core
# the other thread needs, and PyTorch's 2-thread steps then ran 2-10x slower
# (ResNet-50: 0.54 img/s against 2.58 with 1 thread), which measures the
# host, not the framework. Set OMP_WAIT_POLICY= to run without it.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY-PASSIVE}
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-experiments/results}
THREADS=${THREADS:-"1 2"}
MODELS=${MODELS:-"resnet50 resnet18 mobilenet_v2 deeplabv3plus_mobilenet_v2 unet_resnet50"}
WINDOWS=${WINDOWS:-3}
mkdir -p "$OUT"

row_args() {  # batch, image size and steps per timed window of each row
  case "$1" in
    resnet50) echo "--batch_size=8 --image_size=224 --steps=1" ;;
    resnet18) echo "--batch_size=16 --image_size=224 --steps=1" ;;
    mobilenet_v2) echo "--batch_size=16 --image_size=224 --steps=2" ;;
    deeplabv3plus_mobilenet_v2) echo "--batch_size=4 --image_size=128 --steps=2" ;;
    unet_resnet50) echo "--batch_size=4 --image_size=128 --steps=1" ;;
    *) echo "unknown model $1" >&2; return 1 ;;
  esac
}

rows=()
for model in $MODELS; do
  args=$(row_args "$model")
  for threads in $THREADS; do
    json="$OUT/cpu_${model}_t${threads}.json"
    echo "== $(date -u +%FT%TZ) load $(cut -d' ' -f1-3 /proc/loadavg): $model, $threads thread(s)"
    # shellcheck disable=SC2086
    env -u XLA_FLAGS python experiments/benchmark.py --model="$model" $args \
      --cpu_threads="$threads" --dtype=float32 --warmup=1 \
      --windows="$WINDOWS" --eval_windows=2 --json="$json" | grep -v '^|'
    rows+=("$json")
  done
done

echo
python experiments/benchmark.py --table_format=cpu --table "${rows[@]}"
