#!/usr/bin/env bash
# The main job on a sample: self-fit 5 classes on the 1024 x 1024 orthophoto and write a class
# raster, its QGIS style and a preview PNG into ./demo-output/. Extra arguments are passed on,
# e.g. --backbone-weights dino_deitsmall8_300ep_pretrain.pth on a machine without internet.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
SAMPLES=${SEGUNIFY_SAMPLES:-../shared/samples}
mkdir -p demo-output
.venv/bin/segunify tile-segment "$SAMPLES/rasterio/cogeo.tif" demo-output/cogeo_classes.tif --classes 5 \
  --crf auto --preview demo-output/cogeo_preview.png --overwrite "$@"
