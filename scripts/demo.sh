#!/usr/bin/env bash
# The main job on a sample: self-fit 5 classes on the 1024 x 1024 orthophoto and write a class
# raster, its QGIS style and a preview PNG into ./demo-output/. Extra arguments are passed on,
# e.g. --backbone-weights dino_deitsmall8_300ep_pretrain.pth on a machine without internet.
# Later arguments win: e.g. --fit-steps 20 --crf torch for a quick run.
# SEGUNIFY_DEMO_OUTPUT: another output folder; SEGUNIFY_SETUP=0: .venv is already set up.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "${SEGUNIFY_SETUP:-1}" = 0 ] || ./scripts/setup.sh
SAMPLES=${SEGUNIFY_SAMPLES:-../shared/samples}
OUT=${SEGUNIFY_DEMO_OUTPUT:-demo-output}
mkdir -p "$OUT"
.venv/bin/segunify tile-segment "$SAMPLES/rasterio/cogeo.tif" "$OUT/cogeo_classes.tif" --classes 5 \
  --crf auto --preview "$OUT/cogeo_preview.png" --overwrite "$@"
