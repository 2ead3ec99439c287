#!/usr/bin/env bash
# Sets up everything SegUnify needs on a fresh Debian 12 machine (run as root for apt):
# system packages, a virtual environment in .venv, PyTorch + timm, SegUnify itself with its
# test tools, the cloud extra (pystac, fsspec, s3fs), the pydensecrf CRF backend (built from pydensecrf2
# with Cython 0.29.36), and nginx (the HTTP server the remote-data tests start on 127.0.0.1).
# Safe to rerun: finished steps are skipped.
# Two settings for machines that already hold PyTorch or reach no registry (scripts/gpu_check.sh):
#   SEGUNIFY_SYSTEM_TORCH=1  use the packages $PYTHON already imports (say, its CUDA build of PyTorch):
#                            the venv sees $PYTHON's site-packages and PyTorch + timm are not installed.
#   SEGUNIFY_WHEELS=DIR      offline: install exactly the wheels in DIR (no registry, no dependency
#                            resolution), then SegUnify itself; nothing is built, so no compiler is needed.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${SEGUNIFY_VENV:-.venv}
PY=${PYTHON:-python3}
SYSTEM_TORCH=${SEGUNIFY_SYSTEM_TORCH:-0}
WHEELS=${SEGUNIFY_WHEELS:-}

need_apt=()
if [ "$SYSTEM_TORCH" = 1 ]; then
  # a venv without pip of its own: $PYTHON's pip is seen through its site-packages
  $PY -m pip --version >/dev/null 2>&1 || need_apt+=(python3-pip)
else
  $PY -c "import venv, ensurepip" 2>/dev/null || need_apt+=(python3-venv)
fi
if [ -z "$WHEELS" ]; then
  command -v g++ >/dev/null || need_apt+=(g++)
  $PY -c "import sysconfig, os, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()['include'], 'Python.h')))" \
    || need_apt+=(python3-dev)
fi
if [ "${SEGUNIFY_WITH_QGIS:-0}" = 1 ]; then
  # Debian's QGIS 3.22 and pytest for its own Python (the plugin tests run there).
  command -v qgis_process.bin >/dev/null || need_apt+=(qgis python3-qgis qgis-providers)
  /usr/bin/python3 -c "import pytest" 2>/dev/null || need_apt+=(python3-pytest)
  /usr/bin/python3 -c "import pytest_timeout" 2>/dev/null || need_apt+=(python3-pytest-timeout)
  # The plugin's Install environment makes a venv from QGIS's Python; its tests build wheels with its pip.
  /usr/bin/python3 -c "import venv, ensurepip" 2>/dev/null || need_apt+=(python3-venv)
  /usr/bin/python3 -m pip --version >/dev/null 2>&1 || need_apt+=(python3-pip)
fi
# The remote-data tests serve a COG with nginx (range requests, bytes counted in its log). Optional
# outside CI (those tests skip without it), installed when running as root, required under CI=true.
if [ -z "$WHEELS" ] && ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then
  if [ "$(id -u)" = 0 ]; then
    need_apt+=(nginx-light)
  elif [ "${CI:-}" = true ]; then
    echo "setup: nginx is missing (apt-get install nginx-light, as root; CI=true: every optional part is required)" >&2
    exit 1
  else
    echo "setup: warning: nginx is missing; the remote-data tests that serve over HTTP will skip" >&2
  fi
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "setup: apt-get install ${need_apt[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  else
    echo "setup: please install ${need_apt[*]} (apt-get, as root)" >&2
    exit 1
  fi
fi

if [ "$SYSTEM_TORCH" = 1 ]; then
  [ -x "$VENV/bin/python" ] || $PY -m venv --without-pip "$VENV"
  # $PYTHON's site folders (those its own .pth files add too) as a .pth of the venv, after its own
  $PY -c 'import sys; print("\n".join(p for p in sys.path if p.endswith(("site-packages", "dist-packages"))))' \
    > "$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/zz_system_packages.pth"
else
  [ -x "$VENV/bin/python" ] || $PY -m venv "$VENV"
fi
stamp="$VENV/.segunify-setup"
want=$( (cat pyproject.toml scripts/setup.sh; echo "$SYSTEM_TORCH $WHEELS"; [ -z "$WHEELS" ] || ls "$WHEELS") \
  | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] && [ -n "$WHEELS" ]; then
  wheels=("$WHEELS"/*.whl)
  [ -e "${wheels[0]}" ] || { echo "setup: no wheels in $WHEELS (SEGUNIFY_WHEELS)" >&2; exit 1; }
  "$VENV/bin/python" -m pip install -q --no-index --no-deps --no-build-isolation "${wheels[@]}"
  "$VENV/bin/python" -m pip install -q --no-index --no-deps --no-build-isolation -e .
  echo "$want" > "$stamp"
elif [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  "$VENV/bin/python" -m pip install -q --upgrade pip
  # The registry's default torch wheel pairs with torchvision (timm imports it); it runs on CPU too.
  [ "$SYSTEM_TORCH" = 1 ] || "$VENV/bin/python" -m pip install -q torch timm
  "$VENV/bin/python" -m pip install -q -e ".[dev,distributed,cloud]"
  # pydensecrf2 builds only with Cython 0.29.x; without build isolation it uses the one pinned here.
  "$VENV/bin/python" -m pip install -q "cython==0.29.36"
  if ! "$VENV/bin/python" -m pip install -q --no-build-isolation "pydensecrf2>=1.1"; then
    # In CI every optional part must be there (the tests fail rather than skip); elsewhere the torch
    # CRF backend stands in.
    if [ "${CI:-}" = true ]; then
      echo "setup: pydensecrf2 did not build (CI=true: every optional part is required)" >&2
      exit 1
    fi
    echo "setup: warning: pydensecrf2 did not build; the torch CRF backend will be used" >&2
  fi
  echo "$want" > "$stamp"
fi
echo "setup: ready ($("$VENV/bin/python" -c 'import torch, timm, segunify_core; print("torch", torch.__version__, "timm", timm.__version__)'))"
