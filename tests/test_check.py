"""`segunify check --json`: what the QGIS installer verifies and Check environment shows."""

from __future__ import annotations

import json
import subprocess
import sys

import torch

from segunify_core.method.backbone import cpu_has_native_bf16


def test_check_json_reports_device_versions_weights_and_crf(tmp_path):
    env = {"HF_HOME": str(tmp_path / "hf"), "PATH": "/usr/bin:/bin"}  # an empty weights cache
    out = subprocess.run([sys.executable, "-m", "segunify_cli", "check", "--json"], capture_output=True, text=True,
                         check=True, timeout=300, env=env)
    report = json.loads(out.stdout)
    assert report["segunify"] and report["torch"] == torch.__version__ and report["timm"]
    assert report["backbone"] == "dino_vits8" and report["backbone_weights"] == "download"
    assert report["crf_backend"] in ("pydensecrf", "torch")
    if torch.cuda.is_available():
        assert report["gpu"]["name"] and report["gpu"]["memory_gb"] > 0 and report["device"].startswith("cuda (")
    else:
        assert report["gpu"] is None and report["bf16"] is cpu_has_native_bf16()
        assert report["device"].startswith("cpu (") and "bfloat16" in report["device"]
