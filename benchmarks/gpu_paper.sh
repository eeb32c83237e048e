#!/usr/bin/env bash
# The paper setting on one GPU: 30 epochs x 130 iterations, batch 12, 160x160 crops, Adam 1e-4 x0.9 per epoch,
# model selection on LGE patients 1-5, test on 6-45, for each preset given (default udavae++).
#
#   benchmarks/gpu_paper.sh PATCH192_DIR [OUT_DIR] [PRESETS]
#
# Environment: AMP=none|bf16 (default bf16; fp16 is refused for training), COMPILE=<torch.compile mode> (default:
# none; reduce-overhead replays the step as CUDA graphs), EPOCHS, ITERS, SEED, DEVICE (default cuda) and PROFILE
# (default paper; DEVICE=cpu PROFILE=tiny EPOCHS=1 ITERS=2 checks the script on a CPU). Each run prints its per-epoch time;
# 'time' gives the whole run's wall time. Smoke test first: EPOCHS=1 ITERS=20 benchmarks/gpu_paper.sh DIR /tmp/smoke
set -euo pipefail
DATA=${1:?usage: gpu_paper.sh PATCH192_DIR [OUT_DIR] [PRESETS]}
OUT=${2:-runs_paper}
PRESETS=${3:-udavae++}
EPOCHS=${EPOCHS:-30}
ITERS=${ITERS:-130}
AMP=${AMP:-bf16}
SEED=${SEED:-0}
DEVICE=${DEVICE:-cuda}
PROFILE=${PROFILE:-paper}
COMPILE_ARGS=()
[ -n "${COMPILE:-}" ] && COMPILE_ARGS=(--compile-mode "$COMPILE")
mkdir -p "$OUT"
[ -f "$OUT/mscmrseg/dataset.json" ] || udavae data import mscmrseg "$DATA" "$OUT/mscmrseg" --link
for P in ${PRESETS//,/ }; do
  RESUME=()
  [ -f "$OUT/$P/checkpoints/last.pt" ] && RESUME=(--resume)
  START=$(date +%s)
  udavae train --dataset "$OUT/mscmrseg" --source C0 --target LGE --preset "$P" --profile "$PROFILE" --device "$DEVICE" \
      --epochs "$EPOCHS" --iters-per-epoch "$ITERS" --seed "$SEED" --amp "$AMP" "${COMPILE_ARGS[@]}" \
      --out "$OUT/$P" "${RESUME[@]}"
  echo "$P: training wall time $(( $(date +%s) - START )) s (AMP=$AMP COMPILE=${COMPILE:-none})"
  udavae evaluate "$OUT/$P" --split test --device "$DEVICE"
  udavae evaluate "$OUT/$P" --split val --device "$DEVICE"
done
