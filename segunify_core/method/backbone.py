"""The frozen ViT backbone: RGB (B, 3, H, W), normalised as its weights were trained (`Normalization`:
ImageNet's mean and std for DINO/DINOv2, the satellite statistics for DINOv3 SAT-493M), to the last
block's patch tokens after the final norm, without the class and register tokens, as a
(B, C, H/p, W/p) grid, in the chosen precision. timm's VisionTransformer (DINO, DINOv2) and Eva
(DINOv3: RoPE positions computed for each window's grid) run alike. It is frozen and always in eval
mode. Names come from `registry`, local weights files from `checkpoints`, the fused CPU graph from
`fused`.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import functools
import sys
from pathlib import Path

import torch
from torch import nn

from .. import settings
from ..errors import SegUnifyError
from . import registry
from .checkpoints import WeightsFile, load_weights
from .fused import FUSED_BATCH, FeatureGraph, FusedGraph
from .registry import DEFAULT_BACKBONE, BackboneSpec, Normalization, TimmViT, normalization_of, patch_size

RUN_PRECISIONS = ("fp32", "bf16", "fp16")  # what settings.PRECISIONS resolve to; fp16 only on GPUs without bf16
FUSE_CHOICES = ("auto", True, False)


@functools.cache
def reuse_freed_memory() -> None:
    """Let glibc keep freed blocks of up to 32 MB for reuse instead of handing them back to the
    system: otherwise every layer's activations are page-faulted in afresh (ViT-S/8, one 320 px
    window on CPU: 56,000 page faults and about a fifth of the time). A process-wide setting, so
    only the processes SegUnify owns call it (the CLI's entry point, the Dask worker setup); the
    library never does. Once per process; Linux."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD: blocks below it come from the reusable heap
        libc.mallopt(-1, 512 << 20)  # M_TRIM_THRESHOLD: free heap kept before it is given back
    except (OSError, AttributeError):  # not glibc: its allocator's defaults stand
        pass


class Backbone(nn.Module):
    """A frozen ViT returning the last-block patch-token grid (B, C, H/p, W/p).

    precision: "fp32", "bf16" or "fp16" (autocast), or "auto" (the default, settings.PRECISION):
    whichever `choose_precision` picks for the device the backbone is on, decided again after each
    move (`.to(device)`). fuse (CPU execution, see `_fused`): "auto"
    fuses the bfloat16 graph and runs float32 eagerly; True/False force the fused graph on or off.
    weights: the local checkpoint the ViT was loaded from (None: hub or random weights).
    normalization: the input's mean and std (None: those of the weights' pretrained config).
    The settings are fixed at construction; `with_settings` gives a backbone with others.
    """

    mean: torch.Tensor  # buffers: the normalisation's mean and std
    std: torch.Tensor

    def __init__(self, spec: BackboneSpec, model: TimmViT, precision: str = settings.PRECISION,
                 fuse: bool | str = "auto", weights: WeightsFile | None = None,
                 normalization: Normalization | None = None):
        super().__init__()
        if precision not in RUN_PRECISIONS and precision not in settings.PRECISIONS:
            choices = dict.fromkeys(settings.PRECISIONS + RUN_PRECISIONS)
            raise SegUnifyError(f"Unknown precision '{precision}'; use one of {', '.join(choices)} (--precision).")
        if fuse not in FUSE_CHOICES:
            raise ValueError(f"fuse must be one of {FUSE_CHOICES}, not {fuse!r}")
        self.spec = spec
        self.model = model
        self._precision, self._fuse, self._weights = precision, fuse, weights
        self.patch_size = patch_size(model)
        self.feature_dim = int(model.num_features)
        self.num_prefix_tokens = int(getattr(model, "num_prefix_tokens", 1))  # class + register tokens
        self.rotary = registry.is_eva(model)  # rotary position embedding (DINOv3): see _fusable
        self.normalization = normalization or normalization_of(model)
        self.register_buffer("mean", torch.tensor(self.normalization.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self.normalization.std).view(1, 3, 1, 1), persistent=False)
        self._graphs: dict[tuple[str, int, int, int], FusedGraph | None] = {}
        self._graph_models: dict[torch.dtype, nn.Module] = {}
        for param in self.model.parameters():
            param.requires_grad_(False)
        self.eval()

    @property
    def precision(self) -> str:
        """The precision the backbone runs in on its current device (one of RUN_PRECISIONS)."""
        return choose_precision(self._precision, self.mean.device) if self._precision == "auto" else self._precision

    @property
    def requested_precision(self) -> str:
        """The precision asked for: one of RUN_PRECISIONS, or "auto"."""
        return self._precision

    @property
    def fuse(self) -> bool | str:
        return self._fuse

    @property
    def weights(self) -> WeightsFile | None:
        return self._weights

    def with_settings(self, precision: str | None = None, fuse: bool | str | None = None) -> Backbone:
        """A backbone sharing this one's frozen ViT, with another precision and/or fusion."""
        requested = precision or self._precision
        if requested == self._precision and (self.fuse if fuse is None else fuse) == self.fuse:
            return self
        other = Backbone(self.spec, self.model, requested, self.fuse if fuse is None else fuse, self.weights,
                         self.normalization)
        return other.to(self.mean.device)

    def train(self, mode: bool = True) -> Backbone:
        return super().train(False)  # frozen: dropout and stochastic depth stay off

    @property
    def runs_fused(self) -> bool:
        """Whether some input size has run through a fused graph (else all ran eagerly)."""
        return any(g is not None for g in self._graphs.values())

    @property
    def fused_graphs(self) -> list[tuple[int, int, int]]:
        """(height, width, windows) of each fused graph built so far, in the order they were built."""
        return [(h, w, n) for (_, h, w, n), g in self._graphs.items() if g is not None]

    @property
    def fused_rows(self) -> int:
        """Windows (batch rows) fed to this backbone's fused graphs so far: the work they did, as
        each graph computes exactly the rows it is given (no padding)."""
        return sum(g.rows for g in self._graphs.values() if g is not None)

    def normalize(self, rgb: torch.Tensor) -> torch.Tensor:
        """uint8-range RGB (0..255, float or uint8) to floats normalised as the weights expect."""
        return (rgb.float() / 255.0 - self.mean) / self.std

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        if self.precision == "bf16":
            return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        if self.precision == "fp16":
            return torch.autocast(device_type=device.type, dtype=torch.float16)
        return contextlib.nullcontext()

    @torch.inference_mode()
    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        """rgb: (B, 3, H, W) in 0..255, H and W multiples of the patch size."""
        b, _, h, w = rgb.shape
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(f"input size {h}x{w} is not a multiple of the patch size {p}")
        x = self.normalize(rgb)
        if self._fusable(x):
            tokens = self._run_fused(x)
        else:
            tokens = self._run_eager(x)
        grid = tokens[:, self.num_prefix_tokens:, :].float()
        return grid.transpose(1, 2).reshape(b, self.feature_dim, h // p, w // p).contiguous()

    def _run_eager(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu":
            # One window at a time: its activations (about 10 MB for ViT-S/8 at 320 px) stay in the
            # CPU's cache, where a batch of 8 streams from memory (float32, ViT-S/8: 0.80 against
            # 0.72 of the matrix-product rate; bench/run.py).
            with self.autocast(x.device):
                return torch.cat([self.model.forward_features(x[i:i + 1]) for i in range(x.shape[0])])
        with self.autocast(x.device):
            return self.model.forward_features(x)

    def _run_fused(self, x: torch.Tensor) -> torch.Tensor:
        """Chunks of `FUSED_BATCH` windows, the last one shorter, each through the fused graph of
        exactly its size (see `FusedGraph`); eager where TorchScript cannot build one."""
        out = []
        for start in range(0, x.shape[0], FUSED_BATCH):
            chunk = x[start:start + FUSED_BATCH]
            graph = self._fused(chunk)
            out.append(graph(chunk) if graph is not None else self._run_eager(chunk))
        return torch.cat(out)

    def _fusable(self, x: torch.Tensor) -> bool:
        """Whether this input runs through fused graphs.

        By default ("auto") only bfloat16 runs fused: there oneDNN's fused attention beats eager
        PyTorch (0.84-0.93 against about 0.47 of the matrix-product rate on AVX-512 BF16). In
        float32 eager PyTorch's flash attention, one window at a time, is faster (0.80 against
        0.61 for the fused graph on an AVX2 CPU, ViT-S/8, 320 px). DINOv3 (timm's Eva) runs eager
        under "auto": its rotary position embedding splits the attention oneDNN would fuse, and the
        graph took twice eager's time (4 windows of 320 px, ViT-S/16, bf16 on AMX: 3.6 s against 1.8 s).
        """
        if self.fuse is False or x.device.type != "cpu" or self.precision not in ("fp32", "bf16"):
            return False
        return self.fuse is True or (self.precision == "bf16" and not self.rotary)

    def _fused(self, chunk: torch.Tensor) -> FusedGraph | None:
        """The fused graph for this chunk's window size and number of windows (built on first
        use), or None where TorchScript cannot build it."""
        key = (self.precision, chunk.shape[-2], chunk.shape[-1], chunk.shape[0])
        if key not in self._graphs:
            dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
            if dtype not in self._graph_models:  # one converted copy per precision, for all sizes
                self._graph_models[dtype] = FeatureGraph(copy.deepcopy(self.model), dtype).eval()
            self._graphs[key] = FusedGraph.build(self._graph_models[dtype], chunk, dtype)
        return self._graphs[key]


def create_backbone(name: str = DEFAULT_BACKBONE, weights: str | Path | WeightsFile | None = None,
                    pretrained: bool = True, precision: str = settings.PRECISION, fuse: bool | str = "auto",
                    normalization: Normalization | None = None) -> Backbone:
    """Build a frozen backbone by short name or timm name.

    weights: a local checkpoint (official DINO/DINOv2/DINOv3 layout or timm .safetensors/.pth), or its
    `WeightsFile` when already hashed. Without it and with pretrained=True the weights come from
    timm's hub download (cached). pretrained=False gives random weights (tests and benchmarks).
    The input is normalised with the pretrained config of the named weights (a local file is taken
    to be those weights), or with `normalization` when given. precision and fuse: see `Backbone`.
    """
    spec = registry.resolve_backbone(name)
    record = None
    if weights is not None:
        record = weights if isinstance(weights, WeightsFile) else WeightsFile.of(weights)
        model = registry.create_timm(spec.timm_name, pretrained=False)
        load_weights(model, Path(record.path))
    elif pretrained:
        try:
            model = registry.create_timm(spec.timm_name, pretrained=True)
        except SegUnifyError:
            raise
        except Exception as exc:
            raise SegUnifyError(
                f"Could not download the weights of backbone '{spec.name}' ({type(exc).__name__}); "
                "on a machine without internet give a local checkpoint as the backbone weights file (--backbone-weights) "
                "(official DINO/DINOv2/DINOv3 .pth or timm .safetensors/.pth)."
            ) from None
    else:
        model = registry.create_timm(spec.timm_name, pretrained=False)
    return Backbone(spec, model, precision, fuse, record, normalization)


@functools.cache
def cpu_has_native_bf16() -> bool:
    """True on CPUs with AVX-512 BF16 or AMX, where bfloat16 matrix products run natively."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def choose_precision(requested: str, device: torch.device) -> str:
    """The precision to run (one of RUN_PRECISIONS) for the precision setting (or a precision already
    chosen). auto: bf16 on CUDA GPUs that support it (fp16 on older ones) and on CPUs with native
    bfloat16, else fp32."""
    if requested in RUN_PRECISIONS:
        return requested
    if requested not in settings.PRECISIONS:
        raise SegUnifyError(f"Unknown precision '{requested}'; use one of {', '.join(settings.PRECISIONS)} "
                            "(--precision).")
    if requested != "auto":
        return requested
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_native_bf16() else "fp32"
