#!/usr/bin/env bash
# One training chunk on the lent GPU host, from the repository root:
#
#     bash tools/device_train.sh "$OUT" 8.0
#
# = torchrun with one process per GPU (DDP over NCCL; 1 GPU or none works too), resuming from
# .train_ckpt/ckpt_last.safetensors (+ _optim.pt) when present, training for MINUTES of wall clock
# counted from the start of training (start-up adds ~15 s; a hard timeout at MINUTES + 75 s
# guarantees the end), checkpointing every 2 minutes and at the end.
#
# Outputs (7 files): OUT/train.log (everything printed, both ranks), OUT/run/ckpt_last.safetensors
# (loadable weights), OUT/run/ckpt_last_optim.pt (AdamW state, step, time: resume with it),
# OUT/run/{log.csv,val.csv,log.jsonl,summary.json}.
#
# Schedule: a warm restart of the cosine learning rate at the resumed step (peak NRE_LR, default
# 3e-4, 50 warm-up steps, down to 5 % over MINUTES), since the data changed (room scenes,
# material textures) after the earlier run's schedule had ended. Batch 12 pairs per GPU (the
# effective batch is 12 x GPUs; the learning rate is not scaled with the GPU count). Loader
# workers per process: (cores - 2 x GPUs) / GPUs, at most 14 (NRE_WORKERS overrides).
# NRE_TRAIN_ARGS appends arguments to tools/train.py (for a smoke test: "--max-steps 4 ..."),
# NRE_NPROC sets the process count (gloo on CPU without GPUs), PYTHON the interpreter.
set -euo pipefail

OUT=${1:?usage: bash tools/device_train.sh OUT MINUTES}
MINUTES=${2:-8.0}
PY=${PYTHON:-python3}
cd "$(dirname "$0")/.."
mkdir -p "$OUT/run"
LOG="$OUT/train.log"

CORES=$(nproc) # (before OMP_NUM_THREADS is set: nproc honours it)
export PYTHONUNBUFFERED=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

{
    echo "== device_train.sh $(date -u +%FT%TZ) minutes=$MINUTES"
    command -v nvidia-smi >/dev/null && nvidia-smi -L || echo "(no nvidia-smi)"
} 2>&1 | tee "$LOG"

NGPU=$("$PY" -c "import torch; print(torch.cuda.device_count())")
NPROC=${NRE_NPROC:-$((NGPU > 0 ? NGPU : 1))} # (NRE_NPROC: CPU processes for a smoke test)
WORKERS=${NRE_WORKERS:-$(((CORES - 2 * NPROC) / NPROC))}
WORKERS=$((WORKERS > 14 ? 14 : (WORKERS < 1 ? 1 : WORKERS)))

ARGS=(--data .traindata --out "$OUT/run" --max-minutes "$MINUTES" --plan-minutes "$MINUTES"
    --batch 12 --workers "$WORKERS" --lr "${NRE_LR:-3e-4}" --ckpt-minutes 2 --ckpt-every 1000000
    --val-every 400 --log-every 25)
# shared-memory batches need room in /dev/shm (~14 MB a batch, 3 in flight per worker)
SHM_MB=$(df -Pm /dev/shm 2>/dev/null | awk 'NR == 2 {print $4}')
if [ "${SHM_MB:-0}" -lt $((NPROC * WORKERS * 3 * 14 * 2)) ]; then
    ARGS+=(--no-shm)
fi
if [ -f .train_ckpt/ckpt_last.safetensors ]; then
    ARGS+=(--resume .train_ckpt/ckpt_last.safetensors --restart-schedule)
fi
# shellcheck disable=SC2206  # word splitting of the extra arguments is intended
ARGS+=(${NRE_TRAIN_ARGS:-})

LIMIT=$("$PY" -c "print(int(float('$MINUTES') * 60 + 75))")
echo "GPUs $NGPU -> $NPROC processes, $CORES cores, $WORKERS loader workers per process," \
    "/dev/shm ${SHM_MB:-?} MB free, hard limit ${LIMIT}s" | tee -a "$LOG"
echo "train.py ${ARGS[*]}" | tee -a "$LOG"

set +e
timeout --kill-after=15 "$LIMIT" "$PY" -m torch.distributed.run --standalone \
    --nproc_per_node "$NPROC" tools/train.py "${ARGS[@]}" 2>&1 | tee -a "$LOG"
RC=${PIPESTATUS[0]}
set -e
echo "== exit $RC $(date -u +%FT%TZ)" | tee -a "$LOG"
ls -la "$OUT/run" | tee -a "$LOG"
exit "$RC"
