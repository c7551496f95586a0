#!/usr/bin/env bash
# Prepare .gpu/ for one device call of bench/gpu.sh: the shared anchor's harness, diffusers'
# two reference scripts and wheels (../shared/gpu-anchor/prepare.sh), plus the wheels our
# own code needs beyond that list on the GPU image (Python 3.12): the worker path of
# bench/train_job.py imports Celery, which needs tzlocal.
#
#   usage, from the project root after scripts/setup.sh:
#     bash bench/gpu_prepare.sh <diffusers git dir (fetch github:huggingface/diffusers)>
#   CPU dry run of the same plumbing in a venv shaped like the GPU image:
#     PYVER=3.11 bash bench/gpu_prepare.sh <dir>   (wheels for this machine's Python)
set -euo pipefail
cd "$(dirname "$0")/.."
bash ../shared/gpu-anchor/prepare.sh "${1:?give the path of a fetched huggingface/diffusers git directory}"
extra=(tzlocal)
pins=()
for n in "${extra[@]}"; do
  v=$( (.venv/bin/pip show "$n" 2>/dev/null || true) | sed -n 's/^Version: //p')
  pins+=("$n${v:+==$v}")
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux2014_x86_64 -d .gpu/whl "${pins[@]}"
if [[ -n ${PYVER:-} ]]; then  # a dry run here: the same versions, built for this machine's Python
  names=(); for w in .gpu/whl/*.whl; do b=$(basename "$w"); names+=("$(cut -d- -f1 <<<"$b")==$(cut -d- -f2 <<<"$b")"); done
  rm -rf .gpu/whl && mkdir .gpu/whl
  python3 -m pip download -q --no-deps --only-binary=:all: -d .gpu/whl "${names[@]}"
fi
echo "prepared .gpu/: $(ls .gpu/whl | wc -l) wheels, $(du -sh .gpu | cut -f1) in all"
