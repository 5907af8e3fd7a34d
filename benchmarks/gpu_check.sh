#!/usr/bin/env bash
# The GPU checks of issue 12, item 5, as one short script: on a GPU, is data loading the bottleneck,
# what do num_workers, AMP and channels-last give, and how fast does each side of the time-to-accuracy
# benchmark reach 60 %. About 10 minutes on one GPU with a 28k-image dataset; it also runs on a CPU
# (slowly), which is how it is tested.
#
#   bash benchmarks/gpu_check.sh DATA_DIR [OUT_DIR]
#
# DATA_DIR: a dataset folder (train/ and validation/, or train/ alone: then 10 % of train/ is the
# validation split, as in benchmarks/README.md). OUT_DIR (default benchmarks/results/gpu): at most
# six files, the tables in gpu_check.md and the figures in JSON.
#   PYTHON      the interpreter (default python3; .venv/bin/python here)
#   TTA_BUDGET  wall seconds per side of time_to_accuracy.py (default 150; 0 skips it)
# On a machine without Poetry (the lent GPU machine): PYTHONPATH is set to this checkout, and the
# missing wheels (albumentations, omegaconf, wandb...) go on PYTHONPATH first, as the device README says.
set -uo pipefail
DATA=${1:?usage: bash benchmarks/gpu_check.sh DATA_DIR [OUT_DIR]}
OUT=${2:-benchmarks/results/gpu}
PY=${PYTHON:-python3}
BUDGET=${TTA_BUDGET:-150}
cd "$(dirname "$0")/.." || exit 2
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" PYTHONUNBUFFERED=1 WANDB_MODE=disabled
if [ ! -d "$DATA/train" ]; then
    echo "error: $DATA has no train/ folder; give a dataset folder (train/ and validation/, or train/ alone)" >&2
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
    echo "CPUs: $(nproc)"
} | tee "$REPORT"

for preset in scratch_cnn efficientnet_lite0; do
    # num_workers as set, then the same preset with AMP and channels-last off (model-only figure: their effect).
    for variant in default fp32; do
        extra=()
        workers=(0 2 4 auto)
        if [ "$variant" = fp32 ]; then extra=(train.amp=false train.channels_last=false); workers=(auto); fi
        printf '\n## %s, %s\n\n' "$preset" "$variant" | tee -a "$REPORT"
        "$PY" benchmarks/loader_throughput.py --preset "$preset" --data "$DATA" --workers "${workers[@]}" \
            --json "$OUT/loader-$preset-$variant.json" "${SPLIT[@]}" "${extra[@]}" | tee -a "$REPORT" || status=1
    done
done

if [ "$BUDGET" != 0 ] && [ ! -d "$DATA/validation" ]; then
    printf '\n## time to 60 %%, %s s per side\n\n' "$BUDGET" | tee -a "$REPORT"
    "$PY" benchmarks/time_to_accuracy.py --data "$DATA" --val-fraction 0.1 --preset scratch_cnn --budget-s "$BUDGET" \
        --baseline-budget-s "$BUDGET" --stop-at-target --overrides wandb.mode=disabled \
        --json "$OUT/tta.json" | tee -a "$REPORT" || status=1
fi
exit $status
