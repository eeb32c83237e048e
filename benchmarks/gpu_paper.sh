#!/usr/bin/env bash
# The paper setting on one GPU: UDA-VAE++ (and optionally the baselines), 30 epochs x 130 iterations, batch 12,
# 160x160 crops, Adam 1e-4 x0.9 per epoch, model selection on LGE patients 1-5, test on 6-45.
#
#   benchmarks/gpu_paper.sh PATCH192_DIR [OUT_DIR] [PRESETS]
#
# Expected wall time: the deck reports about 1 hour for 30 epochs on one V100; 5.73 TFLOP per step x 3,900 steps
# is about 22 PFLOP, i.e. roughly 20-40 minutes on an H100 in fp32/TF32 (AMP=bf16 to halve it).
# Smoke test first: EPOCHS=1 ITERS=20 benchmarks/gpu_paper.sh PATCH192_DIR /tmp/smoke
set -euo pipefail
DATA=${1:?usage: gpu_paper.sh PATCH192_DIR [OUT_DIR] [PRESETS]}
OUT=${2:-runs_paper}
PRESETS=${3:-udavae++}
EPOCHS=${EPOCHS:-30}
ITERS=${ITERS:-130}
AMP=${AMP:-none}   # none (fp32, the paper) | bf16 | fp16
mkdir -p "$OUT"
[ -f "$OUT/mscmrseg/dataset.json" ] || udavae data import mscmrseg "$DATA" "$OUT/mscmrseg" --link
for P in ${PRESETS//,/ }; do
  RESUME=""
  [ -f "$OUT/$P/checkpoints/last.pt" ] && RESUME="--resume"
  /usr/bin/time -v udavae train --dataset "$OUT/mscmrseg" --source C0 --target LGE --preset "$P" --profile paper \
      --device cuda --epochs "$EPOCHS" --iters-per-epoch "$ITERS" --seed 0 --workers 4 --amp "$AMP" --out "$OUT/$P" $RESUME \
      2> >(tee "$OUT/$P.time.log" >&2)
  udavae evaluate "$OUT/$P" --split test --device cuda
  udavae evaluate "$OUT/$P" --split val --device cuda
done
