"""The backbone's fused CPU graph: the ViT traced to TorchScript and frozen, so that oneDNN runs it
as fused partitions (used by `Backbone` for bfloat16 on CPU by default)."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from timm.models.vision_transformer import VisionTransformer

log = logging.getLogger("segunify")

FUSED_BATCH = 8  # windows per fused-graph call (flip averaging of the default batch of 4)
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
    """The ViT traced to TorchScript and frozen, so that oneDNN fuses it (attention with its
    softmax, linear layers with their bias and GELU) into graph partitions of its own kernels.

    Eager PyTorch reaches about half the matrix-product rate on CPU: its attention writes the
    (tokens x tokens) score matrix to fresh memory and runs a separate softmax. The fused graph
    reaches 0.84-0.93 of that rate (ViT-S/8, ViT-B/8; bench/run.py). In bfloat16 the weights are
    cast once (no autocast at run time).
    oneDNN compiles its partitions per input shape, so windows always run in chunks of
    `FUSED_BATCH` (the last one padded): one shape per window size, and no result depends on
    which batches ran before (padding to the largest batch seen so far made a window's features
    depend on the process's history, and so a part's labels on the order parts ran in). The
    graph is warmed up at build time: TorchScript's first runs profile the unfused graph.
    """

    def __init__(self, graph: torch.jit.ScriptModule, dtype: torch.dtype):
        self.graph, self.dtype = graph, dtype

    @staticmethod
    def build(graph_model: nn.Module, example: torch.Tensor, dtype: torch.dtype) -> FusedGraph | None:
        try:
            for module in graph_model.modules():
                if hasattr(module, "fused_attn"):
                    # explicit q k^T, softmax, @ v: the pattern oneDNN fuses. (nn.Module types every
                    # attribute it does not declare as Tensor | Module, so this plain flag needs the ignore.)
                    module.fused_attn = False  # type: ignore[assignment]
            with onednn_fusion(), warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
                warnings.simplefilter("ignore")
                example = example[:1].to(dtype).expand(FUSED_BATCH, *example.shape[1:]).contiguous()
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
        out = []
        with onednn_fusion(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for start in range(0, x.shape[0], FUSED_BATCH):
                chunk = x[start:start + FUSED_BATCH].to(self.dtype)
                n = chunk.shape[0]
                if n < FUSED_BATCH:
                    chunk = torch.cat([chunk, chunk.new_zeros((FUSED_BATCH - n, *chunk.shape[1:]))])
                out.append(self.graph(chunk)[:n])
        return torch.cat(out)


class FeatureGraph(nn.Module):
    def __init__(self, model: VisionTransformer):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)
