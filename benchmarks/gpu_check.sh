#!/usr/bin/env bash
# Everything issue 'GPU: bf16 that trains, the paper run in minutes' measures, in one go on a lent GPU machine
# (about 10 minutes on an H200). Expects ../shared/device copied to .gpu/ (git-ignored):
#   .gpu/mscmrseg_p192_12bit.tar.xz  .gpu/nibabel-*.whl  .gpu/reference/
# Writes everything under ${OUT:-gpu_out}/ (the bench JSON also to benchmarks/results/gpu_<gpu>.json).
set -uo pipefail
OUT=${OUT:-gpu_out}
mkdir -p "$OUT" /tmp/site
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/nibabel-*.whl && export PYTHONPATH=/tmp/site:$PWD/src
python3 -c "import torch, udavae; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name())"
# 1. the CUDA tests (bf16 steps of every variational preset, CUDA-graph step)
python3 -m pytest -q tests/engine/test_runtime.py -p no:cacheprovider 2>&1 | tee "$OUT/tests.log"
# 2. speed: peaks, each lever on and off, the authors' step beside it
python3 benchmarks/bench_gpu.py --steps ${STEPS:-20} --warmup 5 --reference .gpu/reference/ref_step.py \
    --json "$OUT/bench_gpu.json" 2>&1 | tee "$OUT/bench.log"
# 3. the paper run in bf16 (30 epochs, per-epoch validation), evaluated on the test patients: udavae++ and, with
#    PAPER_PRESETS=udavae++,slaug JOBS=2, the best augmentation preset beside it on the same GPU. udavae++ alone
#    trains as the paper's code does, without the standard augmentation the paper profile switches on.
[ -d .gpu/Patch192 ] || tar xJf .gpu/mscmrseg_p192_12bit.tar.xz -C .gpu
udavae() { python3 -m udavae "$@"; }
export -f udavae
PIN=""; [ -z "${PAPER_PRESETS:-}" ] && PIN="augment.spatial=false augment.intensity=false"
OVERRIDES=$PIN AMP=${AMP:-bf16} COMPILE=${COMPILE:-} PRESETS=${PAPER_PRESETS:-udavae++} SEEDS=0 JOBS=${JOBS:-1} bash benchmarks/gpu_paper.sh .gpu/Patch192 \
    "$OUT/runs" 2>&1 | grep -v '^\s*$' | tee "$OUT/paper.log"
RUN="$OUT/runs/sweep/runs/udavae++_seed0"
cp "$RUN/log.csv" "$OUT/paper_log.csv" 2>/dev/null
cp "$RUN/eval/LGE_test_best/summary.json" "$OUT/paper_test_summary.json" 2>/dev/null
