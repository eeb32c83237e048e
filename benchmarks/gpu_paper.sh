#!/usr/bin/env bash
# The paper setting on GPU(s) as one `udavae sweep`, then `udavae compare`: 30 epochs x 130 iterations, batch 12,
# 160x160 crops, Adam 1e-4 x0.9 per epoch, model selection on LGE patients 1-5, test on patients 6-45.
#
#   benchmarks/gpu_paper.sh PATCH192_DIR [OUT_DIR]
#
# Grid: benchmarks/paper_sweep.yaml (noadapt, uda-vae, cfdnet, udavae++, the paper's ablation rows and the
# augmentation presets, seeds 0,1,2),
# or PRESETS=a,b [SEEDS=0,1] [OVERRIDES="key=value ..."] for a smaller one. Environment: AMP=none|bf16 (default bf16; fp16 is refused for
# training), COMPILE=<torch.compile mode> (default none; reduce-overhead replays the step as CUDA graphs), EPOCHS,
# ITERS, DEVICE (default cuda), GPUS (default 0; e.g. 0,1,2,3), JOBS (runs at once per GPU, default 3: one
# paper-size run leaves an H200 mostly idle) and PROFILE (default paper). Rerunning the script resumes the sweep
# (finished runs are skipped). Check it on a CPU first:
#   DEVICE=cpu PROFILE=tiny EPOCHS=1 ITERS=2 AMP=none PRESETS=noadapt,udavae++ SEEDS=0,1 JOBS=1 \
#       benchmarks/gpu_paper.sh PATCH192_DIR /tmp/smoke
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
DATA=${1:?usage: gpu_paper.sh PATCH192_DIR [OUT_DIR]}
OUT=${2:-runs_paper}
AMP=${AMP:-bf16}
DEVICE=${DEVICE:-cuda}
PROFILE=${PROFILE:-paper}
mkdir -p "$OUT"
[ -f "$OUT/mscmrseg/dataset.json" ] || udavae data import mscmrseg "$DATA" "$OUT/mscmrseg" --link
ARGS=(--out "$OUT/sweep" --dataset "$OUT/mscmrseg" --profile "$PROFILE" --amp "$AMP" --device "$DEVICE"
      --jobs "${JOBS:-3}")
if [ -n "${PRESETS:-}" ]; then ARGS+=(--presets "$PRESETS" --seeds "${SEEDS:-0}"); else ARGS+=(--grid "$HERE/paper_sweep.yaml"); fi
if [ -n "${EPOCHS:-}" ]; then ARGS+=(--epochs "$EPOCHS"); fi
if [ -n "${ITERS:-}" ]; then ARGS+=(--iters-per-epoch "$ITERS"); fi
if [ -n "${COMPILE:-}" ]; then ARGS+=(--compile-mode "$COMPILE"); fi
if [ "$DEVICE" = cuda ]; then ARGS+=(--gpus "${GPUS:-0}"); fi
if [ -f "$OUT/sweep/sweep.json" ]; then ARGS+=(--resume); fi
START=$(date +%s)
rc=0
# shellcheck disable=SC2086  # OVERRIDES is a space-separated list of key=value
udavae sweep "${ARGS[@]}" ${OVERRIDES:-} || rc=$?
echo "sweep wall time $(( $(date +%s) - START )) s (exit status $rc; AMP=$AMP COMPILE=${COMPILE:-none} JOBS=${JOBS:-3})"
udavae compare "$OUT/sweep"
exit $rc
