"""The GPU path: tests marked `gpu` compare what runs on a CUDA GPU with the CPU's result and skip
without one (scripts/gpu_check.sh runs them on a GPU machine). The unmarked tests run everywhere:
the CLI's out-of-memory message, and the GPU bench's code path with its device forced to the CPU."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import rasterio
import torch
from scipy.optimize import linear_sum_assignment

from segunify_core import SegmentOptions, TrainConfig, create_backbone, load_model, segment_raster, train
from segunify_core.method.backbone import choose_precision
from segunify_core.method.crf import TorchDenseCRF
from segunify_core.synthetic import make_blobs, write_geotiff
from tests.conftest import REPO, TINY_VIT

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA GPU (PyTorch sees none); scripts/gpu_check.sh runs these on one")
CUDA = torch.device("cuda")


def _labels(path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read(1)


def _segment(model_path, weights, src, dst, device: str, precision: str) -> np.ndarray:
    model = load_model(model_path, backbone_weights=weights, precision=precision)
    segment_raster(src, dst, model, SegmentOptions(device=device, overwrite=True))
    return _labels(dst)


def _matched_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Share of pixels with the same label once the two models' classes are paired one to one (the
    order of the classes a training finds is arbitrary)."""
    k = int(max(a.max(), b.max())) + 1
    confusion = np.zeros((k, k), np.int64)
    np.add.at(confusion, (a.ravel(), b.ravel()), 1)
    rows, cols = linear_sum_assignment(-confusion)
    return confusion[rows, cols].sum() / a.size


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.gpu
@needs_cuda
def test_backbone_features_on_gpu_match_cpu_float32(tmp_path, precision):
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bfloat16")
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    vit = timm.create_model("vit_small_patch8_224.dino", pretrained=False, num_classes=0)
    weights = tmp_path / "vits8.safetensors"
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(weights))
    rgb = torch.stack([torch.from_numpy(make_blobs(320, 320, seed=s)[0]).float() for s in (1, 2)])
    reference = create_backbone("dino_vits8", weights, precision="fp32")(rgb)
    on_gpu = create_backbone("dino_vits8", weights, precision=precision).to(CUDA)(rgb.to(CUDA)).cpu()
    cosine = torch.nn.functional.cosine_similarity(on_gpu, reference, dim=1)
    assert on_gpu.dtype == torch.float32 and on_gpu.shape == reference.shape
    assert cosine.mean() >= 0.995, f"{precision}: mean cosine {cosine.mean():.4f}, min {cosine.min():.4f}"


@pytest.mark.gpu
@needs_cuda
def test_tile_segment_on_gpu_matches_cpu(tmp_path, samples, tiny_model, tiny_weights):
    src = samples / "rasterio" / "cogeo.tif"
    cpu = _segment(tiny_model, tiny_weights, src, tmp_path / "cpu.tif", "cpu", "fp32")
    gpu_labels = _segment(tiny_model, tiny_weights, src, tmp_path / "gpu.tif", "cuda", choose_precision("auto", CUDA))
    assert gpu_labels.shape == cpu.shape and (cpu > 0).all()
    agreement = (gpu_labels == cpu).mean()
    assert agreement >= 0.99, f"GPU and CPU labels agree on {agreement:.2%} of pixels"


@pytest.mark.gpu
@needs_cuda
def test_torch_crf_on_gpu_matches_cpu():
    rgb, labels = make_blobs(320, 320, seed=3, cells=12)
    images = torch.from_numpy(rgb).float()[None].repeat(2, 1, 1, 1)
    noisy = torch.nn.functional.one_hot(torch.from_numpy(labels).long() % 5, 5).permute(2, 0, 1).float()
    torch.manual_seed(0)
    log_probs = torch.log_softmax(3 * noisy[None] + torch.randn(2, 5, 320, 320), 1)
    crf = TorchDenseCRF()
    cpu = crf(images, log_probs)
    on_gpu = crf(images.to(CUDA), log_probs.to(CUDA)).cpu()
    agreement = (on_gpu.argmax(1) == cpu.argmax(1)).float().mean()
    assert agreement >= 0.999, f"CRF labels agree on {agreement:.3%} of pixels"
    assert (on_gpu - cpu).abs().max() <= 0.02  # fp16 kernel weights on the GPU, bf16 or fp32 on CPUs


@pytest.mark.gpu
@needs_cuda
def test_training_on_cached_features_on_gpu_matches_cpu(tmp_path, tiny_weights):
    img, _ = make_blobs(640, 640, seed=1)
    tif = write_geotiff(tmp_path / "train.tif", img)
    config = TrainConfig(classes=3, steps=150, batch_size=16, max_windows=48, window=224, seed=0)
    cache = tmp_path / "cache"  # the CPU run fills it; the GPU run trains on the same cached features
    # a backbone of its own for each run: train moves the one it is given to its device
    for device in ("cpu", "cuda"):
        train([tif], tmp_path / f"{device}.safetensors", config, backbone=create_backbone(TINY_VIT, tiny_weights),
              cache_dir=cache, device=device)
    scene = write_geotiff(tmp_path / "scene.tif", make_blobs(448, 448, seed=5)[0])
    weights = tiny_weights
    cpu = _segment(tmp_path / "cpu.safetensors", weights, scene, tmp_path / "cpu.tif", "cpu", "fp32")
    gpu_labels = _segment(tmp_path / "cuda.safetensors", weights, scene, tmp_path / "gpu.tif", "cpu", "fp32")
    agreement = _matched_agreement(cpu, gpu_labels)
    assert agreement >= 0.98, (f"labels of the GPU- and CPU-trained models agree on {agreement:.2%} of pixels "
                               f"({(cpu == gpu_labels).mean():.2%} without pairing classes)")


def _tile_segment(tmp_path, model, weights, *extra: str):
    from click.testing import CliRunner
    from segunify_cli import main

    src = write_geotiff(tmp_path / "in.tif", make_blobs(320, 320, seed=2)[0])
    return CliRunner().invoke(main.cli, ["tile-segment", str(src), str(tmp_path / "out.tif"), "--model", str(model),
                                         "--backbone-weights", str(weights), "--quiet", *extra], obj={})


def _one_line_oom(result) -> None:
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: The GPU ran out of memory"), result.output
    assert "--batch-size" in lines[0] and "Traceback" not in result.output


@pytest.mark.gpu
@needs_cuda
def test_gpu_out_of_memory_is_one_line_with_the_fix(tmp_path, tiny_model, tiny_weights):
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(1e-6)  # every allocation fails, as on a full GPU
    try:
        result = _tile_segment(tmp_path, tiny_model, tiny_weights, "--device", "cuda", "--batch-size", "64")
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    _one_line_oom(result)
    assert not (tmp_path / "out.tif").exists()


@pytest.mark.parametrize("error", [torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                                   RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (older PyTorch)")],
                         ids=["OutOfMemoryError", "RuntimeError"])
def test_cuda_out_of_memory_message_names_the_batch_size(tmp_path, monkeypatch, tiny_model, tiny_weights, error):
    """The same message without a GPU: the backbone raises what PyTorch raises on a full GPU."""
    from segunify_core.method.backbone import Backbone

    def full(self, rgb):
        raise error

    monkeypatch.setattr(Backbone, "forward", full)
    _one_line_oom(_tile_segment(tmp_path, tiny_model, tiny_weights))
    assert not (tmp_path / "out.tif").exists()


def test_other_runtime_errors_stay_unexpected(tmp_path, monkeypatch, tiny_model, tiny_weights):
    from segunify_core.method.backbone import Backbone

    def broken(self, rgb):
        raise RuntimeError("something else")

    monkeypatch.setattr(Backbone, "forward", broken)
    result = _tile_segment(tmp_path, tiny_model, tiny_weights)
    assert result.exit_code == 1 and "Unexpected RuntimeError: something else" in result.output
    assert "GPU ran out of memory" not in result.output


@pytest.mark.slow
def test_bench_cuda_branch_runs_on_cpu():
    """bench/run.py --device cuda with its device forced to the CPU and tiny sizes (--dry-run):
    every figure of the GPU family comes out, from the same code a GPU run uses."""
    run = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), "--device", "cuda", "--dry-run"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    tiny = "vit_tiny_patch16_224"  # bench/gpu.py's DRY_RUN backbone
    lines = {line["name"]: line for line in map(json.loads, run.stdout.strip().splitlines())}
    assert set(lines) == {f"gpu_backbone_share_{tiny}", f"gpu_end_to_end_{tiny}_no_crf",
                          f"gpu_end_to_end_{tiny}_crf_torch"}
    share = lines[f"gpu_backbone_share_{tiny}"]
    assert 0 < share["value"] and share["matmul_tflops"] > 0 and share["batch"] == 4
    assert share["batch_choice"] == "fixed (no CUDA)" and share["images_per_call"] == 8
    for crf in ("no_crf", "crf_torch"):
        e2e = lines[f"gpu_end_to_end_{tiny}_{crf}"]
        assert e2e["value"] > 0 and e2e["windows"] == 1 and e2e["raster"] == 320 and e2e["flip"] is True
        assert e2e["precision"] == share["precision"] and e2e["peak_gpu_memory_gib"] is None
        assert "target" not in e2e  # the H100 goal is judged only on a GPU
