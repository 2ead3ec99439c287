"""The backbone's fused CPU graph: the ViT traced to TorchScript and frozen, so that oneDNN runs it
as fused partitions (used by `Backbone` for bfloat16 on CPU by default)."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator

import torch
from torch import nn

from .registry import TimmViT

log = logging.getLogger("segunify")

FUSED_BATCH = 8  # most windows per fused-graph call (flip averaging of the default batch of 4)
FUSED_WARMUP_RUNS = 3  # TorchScript profiles the first runs before it runs the fused graph


@contextlib.contextmanager
def onednn_fusion() -> Iterator[None]:
    """oneDNN fusion on for the enclosed tracing/runs only: TorchScript reads this process-wide
    flag whenever it (re)optimises a graph, so it is set around ours and then restored. Not for
    concurrent threads: a process runs one backbone call at a time (one part per Dask worker process)."""
    before = torch.jit.onednn_fusion_enabled()
    torch.jit.enable_onednn_fusion(True)
    try:
        yield
    finally:
        torch.jit.enable_onednn_fusion(before)


class FusedGraph:
    """The ViT traced to TorchScript for one input shape and frozen, so that oneDNN fuses it
    (attention with its softmax, linear layers with their bias and GELU) into graph partitions of
    its own kernels.

    Eager PyTorch reaches about half the matrix-product rate on CPU: its attention writes the
    (tokens x tokens) score matrix to fresh memory and runs a separate softmax. The fused graph
    reaches 0.84-0.93 of that rate (ViT-S/8, ViT-B/8; bench/run.py). In bfloat16 the weights are
    cast once (no autocast at run time).

    oneDNN compiles its partitions per input shape, and TorchScript re-profiles (running the
    unfused graph, with other rounding) whenever a graph meets a new shape. So each graph is
    traced for one shape, (windows, 3, height, width), warmed up at build time (TorchScript's
    first runs profile the unfused graph) and only ever run on that shape: the backbone keeps
    one graph per window size and number of windows in a chunk (1 to `FUSED_BATCH`), built on
    first use. A call's features therefore depend only on its input, never on which calls or
    graphs came before (padding to the largest batch seen so far made them depend on the
    process's history, and so a part's labels on the order parts ran in), and no padding is
    computed. `rows` counts the windows fed to the graph.
    """

    def __init__(self, graph: torch.jit.ScriptModule, dtype: torch.dtype):
        self.graph, self.dtype = graph, dtype
        self.rows = 0

    @staticmethod
    def build(graph_model: nn.Module, example: torch.Tensor, dtype: torch.dtype) -> FusedGraph | None:
        """Trace, freeze and warm up a graph for inputs of `example`'s shape."""
        try:
            for module in graph_model.modules():
                if hasattr(module, "fused_attn"):
                    # explicit q k^T, softmax, @ v: the pattern oneDNN fuses. (nn.Module types every
                    # attribute it does not declare as Tensor | Module, so this plain flag needs the ignore.)
                    module.fused_attn = False  # type: ignore[assignment]
            with onednn_fusion(), warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
                warnings.simplefilter("ignore")
                example = example[:1].to(dtype).expand(*example.shape).contiguous()
                traced = torch.jit.trace(graph_model, example, check_trace=False)
                fused = FusedGraph(torch.jit.freeze(traced), dtype)
            with onednn_fusion(), torch.inference_mode():
                for _ in range(FUSED_WARMUP_RUNS):
                    fused.graph(example)
            return fused
        except Exception as exc:  # TorchScript is optional: eager PyTorch gives the same features
            log.debug("no fused backbone graph (%s: %s); running eager", type(exc).__name__, exc)
            return None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with onednn_fusion(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            x = x.to(self.dtype)
            self.rows += x.shape[0]
            return self.graph(x)


class FeatureGraph(nn.Module):
    """The graph's own copy of the ViT, in `dtype`, with its layer scales folded into the linear
    layer before them (see `fold_layer_scales`)."""

    def __init__(self, model: TimmViT, dtype: torch.dtype = torch.float32):
        super().__init__()
        fold_layer_scales(model)
        self.model = model.to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)


@torch.no_grad()
def fold_layer_scales(model: TimmViT) -> None:
    """Fold each block's layer scale (x * gamma after attention and MLP: DINOv2, DINOv3) into the
    rows of the linear layer that ends the branch (attn.proj, mlp.fc2), in place, on the graph's
    own copy: the same function, and the oneDNN fused graph fails to run on the separate
    multiplication (RuntimeError vector::_M_range_check, torch 2.9), which left DINOv2 and DINOv3
    eager. Blocks of other shapes are left as they are."""
    for block in getattr(model, "blocks", []):
        attn_proj = getattr(getattr(block, "attn", None), "proj", None)
        mlp_fc2 = getattr(getattr(block, "mlp", None), "fc2", None)
        for scale_name, linear in (("1", attn_proj), ("2", mlp_fc2)):
            if not isinstance(linear, nn.Linear):
                continue
            eva_gamma = getattr(block, f"gamma_{scale_name}", None)  # Eva: a parameter of the block
            vit_scale = getattr(block, f"ls{scale_name}", None)  # VisionTransformer: a LayerScale module
            gamma = eva_gamma if isinstance(eva_gamma, torch.Tensor) else getattr(vit_scale, "gamma", None)
            if not isinstance(gamma, torch.Tensor) or gamma.shape != (linear.out_features,):
                continue
            linear.weight.mul_(gamma[:, None])
            if linear.bias is not None:
                linear.bias.mul_(gamma)
            if isinstance(eva_gamma, torch.Tensor):
                setattr(block, f"gamma_{scale_name}", None)
            else:
                setattr(block, f"ls{scale_name}", nn.Identity())
