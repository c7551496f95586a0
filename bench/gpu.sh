#!/usr/bin/env bash
# The GPU benchmark: ours and the reference in ONE run (at most ~8 minutes), SD-1.5 architecture
# with random weights (speed does not depend on the weights; nothing is downloaded).
#
#   device call:  bash bench/gpu.sh          (carry [".gpu"]; see docs/benchmarks.md for .gpu/)
#   CPU dry run:  TINY=1 bash bench/gpu.sh   (tiny model, seconds; checks the plumbing)
#
# Items, each under `timeout`, most important first: build the model (gpu-anchor/make_model.py)
# -> our training worker through the real job path (bench/train_job.py: warm-up, 24 class
# images, a job drawing 200 class images then an 800-step LoRA, a job with them cached, and a
# profile of the step) -> diffusers' train_dreambooth_lora.py v0.40.0 on the same model, class
# images and photos (bench/train.py --sides ref) -> sampling (bench/sample.py: ours with the
# default settings vs a plain StableDiffusionPipeline loading the LoRA per request) -> full
# fine-tune, ours vs train_dreambooth.py, if time is left. PART=train or PART=sample runs one
# half (two device calls on one warm machine reuse the model the first built).
# Tables go to stdout and JSON to $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
SECONDS=0
PY=${PY:-python3}
OUT=${OUT:-/tmp/bench_out}
TINY=${TINY:-0}
BUDGET=${BUDGET:-470}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 PYTHONUNBUFFERED=1 \
  TOKENIZERS_PARALLELISM=false WANDB_MODE=disabled

say() { echo "[$(printf '%4d' "$SECONDS")s] $*"; }
left() { echo $(( BUDGET - SECONDS - 10 )); }
bounded() {  # CAP command...: run with timeout min(CAP, time left)
  local cap=$1; shift
  local l; l=$(left)
  local t=$(( l < cap ? l : cap ))
  if [ "$t" -lt 20 ]; then say "SKIPPED (no time left): $*"; return 0; fi
  say "start (timeout ${t}s): $*"
  timeout -k 5 "$t" "$@"
  say "rc=$? for: $1 $2"
}

# Wheels carried in .gpu/whl: diffusers always (the version our tests use, for both sides);
# the rest only where the image lacks the module.
SITE=/tmp/dreambot-site; rm -rf "$SITE"; mkdir -p "$SITE"
for whl in .gpu/whl/*.whl; do
  [ -e "$whl" ] || continue
  dist=$(basename "$whl" | cut -d- -f1 | tr 'A-Z' 'a-z')
  mod=${dist/pyyaml/yaml}; mod=${mod/python_dotenv/dotenv}; mod=${mod/python_dateutil/dateutil}
  mod=${mod/click_didyoumean/click_didyoumean}; mod=${mod/prompt_toolkit/prompt_toolkit}
  if [ "$dist" != diffusers ] && "$PY" -c "import $mod" 2>/dev/null; then continue; fi
  "$PY" -m pip install -q --no-deps --no-index --target "$SITE" "$whl" 2>&1 | tail -1 || true
done
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
say "host: $(nvidia-smi -L 2>/dev/null | head -1 || echo CPU) | $($PY -c 'import torch,diffusers;print("torch",torch.__version__,"diffusers",diffusers.__version__)')"

MODEL=/tmp/sd15; RES=512; S_REF=${S_REF:-110}; S_FULL=${S_FULL:-60}; JOB_ARGS=(); SAMPLE_ARGS=(); PROFILE_ARGS=()
REF_ARGS=(--res 512)
if [ "$TINY" = 1 ]; then
  MODEL=/tmp/sd15-tiny; RES=64; S_REF=6; S_FULL=6; JOB_ARGS=(--steps 4 --class-images 4)
  REF_ARGS=(--res 64 --n-class 6 --batch 2); SAMPLE_ARGS=(--res 64 --steps 4 --n1 2 --n4 1); PROFILE_ARGS=(--res 64)
fi
build=(.gpu/make_model.py "$MODEL"); [ "$TINY" = 1 ] && build+=(--tiny)
[ -f "$MODEL/bench_model_ok.json" ] || bounded 150 "$PY" "${build[@]}"

errors() { grep -h "" "$@" 2>/dev/null | grep -E "Error|error:|Traceback|failed" | tail -5; }
train_job() {  # CAP: our worker through the real job path (warm-up, class images, two jobs, profile)
  bounded "$1" "$PY" bench/train_job.py --model "$MODEL" --work /tmp/bench-job --out "$OUT/train_job.json" "${JOB_ARGS[@]}"
}
reference() {  # CAP CONFIG SIDES STEPS: bench/train.py (diffusers' scripts; ours for the full fine-tune)
  bounded "$1" "$PY" bench/train.py --model "$MODEL" --ref-dir .gpu/ref --tv-shim .gpu/shim/dreambooth_tv_shim.py \
    --configs "$2" --sides "$3" --steps "$4" "${REF_ARGS[@]}" --work "/tmp/bench-train-$2" --out "$OUT/train_$2.json"
  errors "/tmp/bench-train-$2"/logs/*.log
}
sample() {
  bounded "$1" "$PY" bench/sample.py --model "$MODEL" "${SAMPLE_ARGS[@]}" --variants "$SAMPLE_VARIANTS" \
    --out "$OUT/sample.json"
}
# PART=train | sample | all. "all" runs what matters most first: a device call cut short by its
# time limit loses the end (the full fine-tune), never the LoRA job path or sampling.
PART=${PART:-all}; SAMPLE_VARIANTS=${SAMPLE_VARIANTS:-eager,compiled}
why() {  # WHAT: torch.profiler tables of our step (where the time goes), ~1 minute
  bounded 100 "$PY" bench/step_profile.py --model "$MODEL" --what "$1" "${PROFILE_ARGS[@]}"
}
case "$PART" in
  train) train_job 280; reference 100 lora ref "$S_REF"; reference 200 full ours,ref "$S_FULL" ;;
  sample) sample 300; why sample ;;
  *) train_job 260; reference 90 lora ref "$S_REF"; sample 170; reference 160 full ours,ref "$S_FULL" ;;
esac
say "done; JSON in $OUT"
