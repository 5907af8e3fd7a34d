#!/usr/bin/env bash
# The GPU checks of issue 12, item 5, as one short script: on a GPU, is data loading the bottleneck,
# what do num_workers, AMP and channels-last give, and how fast does each side of the time-to-accuracy
# benchmark reach 60 %. It also runs on a CPU (slowly), which is how it is tested; it has not been
# timed on a GPU yet: gpu_check.md records each step's seconds.
#
#   bash benchmarks/gpu_check.sh DATA_DIR [OUT_DIR]
#
# DATA_DIR: a dataset folder (train/ and validation/, or train/ alone: then 10 % of train/ is the
# validation split, as in benchmarks/README.md, and the time-to-accuracy race runs too).
# OUT_DIR (default benchmarks/results/gpu): six files, the tables in gpu_check.md and the figures in JSON.
#   PYTHON      the interpreter (default python3; .venv/bin/python here)
#   TTA_BUDGET  wall seconds per side of time_to_accuracy.py (default 90; 0 skips it)
#   REPEATS     rounds of loader_throughput.py per table (default 2)
#   MODEL_BATCHES  batches of the model-only pass of loader_throughput.py (default 20)
#   OVERRIDES   extra config overrides for every loader table, e.g. "data.image_size=32" (default none;
#               the test suite shrinks the run with it)
# Without Poetry (the lent GPU machine) PYTHONPATH is set to this checkout; the packages that
# machine lacks travel as wheels on PYTHONPATH (benchmarks/README.md lists them).
set -uo pipefail
usage="usage: bash benchmarks/gpu_check.sh DATA_DIR [OUT_DIR]"
DATA=$(realpath -m -- "${1:?$usage}")
OUT=$(realpath -m -- "${2:-benchmarks/results/gpu}")
PY=${PYTHON:-python3}
BUDGET=${TTA_BUDGET:-90}
REPEATS=${REPEATS:-2}
MODEL_BATCHES=${MODEL_BATCHES:-20}
read -r -a EXTRA <<< "${OVERRIDES:-}"
cd "$(dirname "$0")/.." || exit 2
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" PYTHONUNBUFFERED=1 WANDB_MODE=disabled
if [ ! -d "$DATA/train" ]; then
    echo "error: $DATA has no train/ folder; give a dataset folder (train/ and validation/, or train/ alone)" >&2
    exit 2
fi
if ! missing=$("$PY" -c 'import torch, torchvision, timm, cv2, sklearn, albumentations, omegaconf, research.builders' 2>&1); then
    echo "error: $PY cannot import what the benchmarks need ($(echo "$missing" | tail -1)); install the wheels listed in benchmarks/README.md (\"Data loading and the GPU\") on PYTHONPATH" >&2
    exit 2
fi
mkdir -p "$OUT" || exit 2
SPLIT=()
[ -d "$DATA/validation" ] || SPLIT=(data.val_fraction=0.1)
REPORT="$OUT/gpu_check.md"
status=0
{
    echo "# GPU check, $(date -u +%Y-%m-%dT%H:%MZ)"
    echo
    "$PY" -c 'import torch; print("torch", torch.__version__, "| CUDA:", torch.cuda.get_device_name() if torch.cuda.is_available() else "none (CPU run)")'
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    echo "CPUs: $(nproc); data: $DATA"
} | tee "$REPORT"

step() {  # step NAME COMMAND...: run it, append its output and its seconds to the report
    local name=$1 start=$SECONDS
    shift
    printf '\n## %s\n\n' "$name" | tee -a "$REPORT"
    "$@" | tee -a "$REPORT" || status=1
    printf '\n(%s: %d s)\n' "$name" $((SECONDS - start)) | tee -a "$REPORT"
}

# Each preset as committed, over num_workers; then once with what it leaves off or on flipped:
# scratch_cnn trains with bf16 autocast + channels-last (so: both off), efficientnet_lite0 in
# fp32 with channels-last (so: AMP on). Only the model-only figure matters for those two.
step "scratch_cnn, preset" "$PY" benchmarks/loader_throughput.py --preset scratch_cnn --data "$DATA" \
    --workers 0 2 4 auto --repeats "$REPEATS" --model-batches "$MODEL_BATCHES" --json "$OUT/loader-scratch_cnn-preset.json" "${SPLIT[@]}" "${EXTRA[@]}"
step "scratch_cnn, fp32 without channels-last" "$PY" benchmarks/loader_throughput.py --preset scratch_cnn --data "$DATA" \
    --workers auto --repeats "$REPEATS" --model-batches "$MODEL_BATCHES" --json "$OUT/loader-scratch_cnn-fp32.json" "${SPLIT[@]}" "${EXTRA[@]}" \
    train.amp=false train.channels_last=false
step "efficientnet_lite0, preset" "$PY" benchmarks/loader_throughput.py --preset efficientnet_lite0 --data "$DATA" \
    --workers 0 2 4 auto --repeats "$REPEATS" --model-batches "$MODEL_BATCHES" --json "$OUT/loader-efficientnet_lite0-preset.json" "${SPLIT[@]}" "${EXTRA[@]}"
step "efficientnet_lite0, AMP on" "$PY" benchmarks/loader_throughput.py --preset efficientnet_lite0 --data "$DATA" \
    --workers auto --repeats "$REPEATS" --model-batches "$MODEL_BATCHES" --json "$OUT/loader-efficientnet_lite0-amp.json" "${SPLIT[@]}" "${EXTRA[@]}" train.amp=true

if [ "$BUDGET" != 0 ] && [ ! -d "$DATA/validation" ]; then
    step "time to 60 %, $BUDGET s per side" "$PY" benchmarks/time_to_accuracy.py --data "$DATA" --val-fraction 0.1 \
        --preset scratch_cnn --budget-s "$BUDGET" --baseline-budget-s "$BUDGET" --stop-at-target \
        --overrides wandb.mode=disabled --json "$OUT/tta.json"
fi
printf '\n(all: %d s)\n' "$SECONDS" | tee -a "$REPORT"
exit $status
