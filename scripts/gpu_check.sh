#!/usr/bin/env bash
# The GPU check: on a machine with a CUDA GPU, set up (scripts/setup.sh), run the tests marked gpu
# and the GPU bench (bench/run.py --device cuda), and write what they say to OUTDIR:
#   summary.txt (each step's exit status and seconds), env.json (Python, PyTorch, GPU), setup.log,
#   tests.log + tests.xml (JUnit), bench.jsonl (the figures, one JSON object a line) + bench.log.
#
#   scripts/gpu_check.sh OUTDIR [--dry-run]           --dry-run: the same steps on the CPU (the gpu
#                                                     tests skip with their reason, the bench runs tiny)
#   scripts/gpu_check.sh --fetch-wheels DIR [X.Y]     on a machine with a registry: the wheels that a GPU
#                                                     machine without one lacks (for Python X.Y, default 3.12)
#
# It fits in 8 minutes on an H100, set-up included (each step has its own time limit: 90 + 150 +
# 210 s; the dry run's bench gets 600 s on slow CPUs), so that two runs fit in 15 minutes of GPU time. It is made for a machine whose python3 already holds a CUDA
# build of PyTorch (with timm, numpy, scipy, safetensors, pytest...) and reaches no registry:
# PyTorch is then used as it is (SEGUNIFY_SYSTEM_TORCH=1) and the few missing packages come from a
# folder of wheels (SEGUNIFY_WHEELS; default .gpu/wheels, made by --fetch-wheels). Without either,
# setup.sh installs from the registry as usual. The sample rasters: SEGUNIFY_SAMPLES, default
# ../shared/samples, else .gpu/samples. The venv: SEGUNIFY_VENV, default .gpu/venv. The folder .gpu/
# is ignored by git. Environment: PYTHON (default python3), the Python whose PyTorch sees the GPU.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if [ "${1:-}" = --fetch-wheels ]; then
  dest=${2:?usage: scripts/gpu_check.sh --fetch-wheels DIR [PYTHON_VERSION]}
  # rasterio (the release the CPU suite runs) and its own needs beyond what such an image holds
  # (numpy, click, attrs, certifi, pyparsing are there)
  exec $PY -m pip download -q --no-deps --only-binary=:all: --python-version "${3:-3.12}" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$dest" rasterio==1.4.4 affine cligj click-plugins
fi

out=${1:?usage: scripts/gpu_check.sh OUTDIR [--dry-run]}
dry=0
[ "${2:-}" = --dry-run ] && dry=1
mkdir -p "$out"
out=$(cd "$out" && pwd)
export SEGUNIFY_VENV=${SEGUNIFY_VENV:-.gpu/venv} SEGUNIFY_WITH_QGIS=0 PYTHON=$PY PYTHONUNBUFFERED=1
[ -z "${SEGUNIFY_WHEELS:-}" ] && [ -d .gpu/wheels ] && export SEGUNIFY_WHEELS=$PWD/.gpu/wheels
[ -z "${SEGUNIFY_SAMPLES:-}" ] && [ ! -d ../shared/samples ] && [ -d .gpu/samples ] && export SEGUNIFY_SAMPLES=$PWD/.gpu/samples
export SEGUNIFY_CACHE=${SEGUNIFY_CACHE:-$(mktemp -d)}

if [ $dry = 0 ] && ! $PY -c "import torch, sys; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
  echo "gpu_check: $PY sees no CUDA GPU through PyTorch; run on a GPU machine, or add --dry-run to check the steps on the CPU" >&2
  exit 1
fi
# PyTorch already there (the GPU image's CUDA build): keep it rather than install the registry's
$PY -c "import torch, timm" 2>/dev/null && export SEGUNIFY_SYSTEM_TORCH=1

failed=0
: > "$out/summary.txt"
ms() { echo $(( $(date +%s%N) / 1000000 )); }
seconds() { local d=$(( $(ms) - $1 )); printf '%d.%d' $((d / 1000)) $((d % 1000 / 100)); }
step() {  # step NAME LIMIT_S STDOUT STDERR COMMAND...: run with a time limit, record its status and seconds
  local name=$1 limit=$2 stdout=$3 stderr=$4 start rc
  shift 4
  start=$(ms)
  timeout "$limit" "$@" > "$stdout" 2> "$stderr"
  rc=$?
  [ $rc = 0 ] || failed=1
  printf '%-6s rc=%-3s %6s s%s\n' "$name" "$rc" "$(seconds "$start")" "$([ $rc = 124 ] && echo " (time limit $limit s)")" \
    | tee -a "$out/summary.txt"
  return $rc
}
begin=$(ms)
vpy=$SEGUNIFY_VENV/bin/python
step setup 90 "$out/setup.log" "$out/setup.log" scripts/setup.sh || { tail -n 30 "$out/setup.log" >&2; exit 1; }
$vpy - > "$out/env.json" <<'EOF2'
import json, platform, torch
cuda = torch.cuda.is_available()
print(json.dumps({"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
                  "device": torch.cuda.get_device_name() if cuda else "cpu",
                  "capability": ".".join(map(str, torch.cuda.get_device_capability())) if cuda else None,
                  "bf16": torch.cuda.is_bf16_supported() if cuda else None}))
EOF2
cat "$out/env.json"
# the tests marked gpu (the QGIS suite needs Debian's QGIS; a module that fails to import is reported, the rest run)
step tests 150 "$out/tests.log" "$out/tests.log" "$vpy" -m pytest -m gpu -ra -q -p no:cacheprovider \
  --ignore=tests/qgis --continue-on-collection-errors --junitxml="$out/tests.xml" tests
tail -n 15 "$out/tests.log"
# the figures, printed as they come: a run cut by its limit keeps the lines before
step bench "$([ $dry = 1 ] && echo 600 || echo 210)" "$out/bench.jsonl" "$out/bench.log" "$vpy" bench/run.py --device cuda $([ $dry = 1 ] && echo --dry-run)
cat "$out/bench.jsonl"
printf 'total  %s %6s s%s\n' "$([ $failed = 0 ] && echo ok || echo FAILED)" "$(seconds "$begin")" \
  "$([ $dry = 1 ] && echo ' (dry run on the CPU)')" | tee -a "$out/summary.txt"
exit $failed
