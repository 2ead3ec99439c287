#!/usr/bin/env bash
# The test command: sets everything up (scripts/setup.sh), then lint and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
SEGUNIFY_WITH_QGIS=${SEGUNIFY_WITH_QGIS:-0} ./scripts/setup.sh
export SEGUNIFY_CACHE=${SEGUNIFY_CACHE:-$(mktemp -d)}
.venv/bin/ruff check .
.venv/bin/python -m pytest -q -ra "$@"
