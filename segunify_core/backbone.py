"""Frozen ViT backbones: a small registry of DINO names over timm, and checkpoint loading.

The backbone maps ImageNet-normalised RGB (B, 3, H, W) to the last block's patch tokens after
the final norm, as a (B, C, H/p, W/p) grid. It is frozen and always in eval mode.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import dataclasses
import functools
import logging
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from . import settings
from .errors import SegUnifyError
from .manifest import file_sha256

if TYPE_CHECKING:
    from timm.models.vision_transformer import VisionTransformer

log = logging.getLogger("segunify")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FUSED_BATCH = 8  # windows per fused-graph call (flip averaging of the default batch of 4)
FUSED_WARMUP_RUNS = 3  # TorchScript profiles the first runs before it runs the fused graph
RUN_PRECISIONS = ("fp32", "bf16", "fp16")  # what settings.PRECISIONS resolve to; fp16 only on GPUs without bf16
FUSE_CHOICES = ("auto", True, False)


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    name: str
    timm_name: str
    patch_size: int
    feature_dim: int  # channels of the patch-token grid
    description: str


# Short names users know from the DINO papers, mapped to timm's published copies of the weights.
BACKBONES: dict[str, BackboneSpec] = {row[0]: BackboneSpec(*row) for row in settings.BACKBONES}
DEFAULT_BACKBONE = settings.BACKBONE


def resolve_backbone(name: str) -> BackboneSpec:
    """Return the spec of a registered short name or of any timm ViT model name."""
    if name in BACKBONES:
        return BACKBONES[name]
    import timm

    base = name.split(".")[0]
    if not timm.is_model(base):
        known = ", ".join(BACKBONES)
        raise SegUnifyError(
            f"Unknown backbone '{name}': choose one of {known} or a timm ViT model name "
            "(--backbone; `segunify backbones` lists them)."
        )
    model = _create_timm(name, pretrained=False)
    return BackboneSpec(name, name, _patch_size(model), int(model.num_features), "timm model")


def _create_timm(timm_name: str, pretrained: bool) -> VisionTransformer:
    import timm
    from timm.models.vision_transformer import VisionTransformer

    try:
        model = timm.create_model(timm_name, pretrained=pretrained, num_classes=0, dynamic_img_size=True)
    except TypeError:  # architectures without dynamic_img_size are not ViTs
        model = None
    if not isinstance(model, VisionTransformer):
        raise SegUnifyError(
            f"Backbone '{timm_name}' is not a Vision Transformer; choose a timm ViT model "
            "(--backbone, names starting with vit_)."
        )
    return model


def _patch_size(model: VisionTransformer) -> int:
    size = model.patch_embed.patch_size
    return int(size[0] if isinstance(size, tuple | list) else size)


@dataclasses.dataclass(frozen=True)
class WeightsFile:
    """A local backbone checkpoint: its absolute path and SHA-256 (recorded in the model file)."""

    path: str
    sha256: str

    @classmethod
    def of(cls, path: str | Path) -> WeightsFile:
        path = Path(path)
        if not path.is_file():
            raise SegUnifyError(f"Backbone weights file '{path}' does not exist; check the path given to the "
                                "backbone weights (--backbone-weights).")
        return cls(str(path.resolve()), file_sha256(path))

    def to_metadata(self) -> dict[str, str]:
        return {"path": self.path, "sha256": self.sha256}


def _unwrap_dino(state: dict) -> dict[str, torch.Tensor]:
    """The DINO-specific layer over timm's reading: training checkpoints keep the backbone under
    'teacher' (preferred) or 'student', with 'backbone.' prefixes and projection heads."""
    from timm.models import clean_state_dict

    for key in ("teacher", "student"):
        if isinstance(state.get(key), dict):
            state = clean_state_dict(state[key])
            break
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SegUnifyError("The backbone weights file holds no tensor state dict; pass an official "
                            "DINO/DINOv2 .pth or a timm .safetensors/.pth checkpoint (--backbone-weights).")
    out = {}
    for key, value in state.items():
        key = key.removeprefix("backbone.")
        if key.startswith("head.") or key.startswith("head_drop."):
            continue  # DINO projection heads and classifier heads are not part of the feature extractor
        out[key] = value
    return out


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint with timm's reader (safetensors, or torch.load with weights_only: never
    runs code) and unwrap DINO's layouts."""
    from timm.models import load_state_dict

    path = Path(path)
    if not path.is_file():
        raise SegUnifyError(f"Backbone weights file '{path}' does not exist; check the path given to the "
                            "backbone weights (--backbone-weights).")
    try:
        state = load_state_dict(str(path), use_ema=False, weights_only=True)
    except Exception as exc:  # corrupt or pickled-with-code files end here, nothing is executed
        raise SegUnifyError(
            f"Cannot read backbone weights '{path}' ({type(exc).__name__}); pass an official DINO "
            ".pth or a timm .safetensors/.pth checkpoint (--backbone-weights)."
        ) from None
    return _unwrap_dino(state)


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


@contextlib.contextmanager
def _onednn_fusion() -> Iterator[None]:
    """oneDNN fusion on for the enclosed tracing/runs only: TorchScript reads this process-wide
    flag whenever it (re)optimises a graph, so it is set around ours and then restored. Not for
    concurrent threads: a process runs one backbone call at a time (one part per Dask worker process)."""
    before = torch.jit.onednn_fusion_enabled()
    torch.jit.enable_onednn_fusion(True)
    try:
        yield
    finally:
        torch.jit.enable_onednn_fusion(before)


class Backbone(nn.Module):
    """A frozen ViT returning the last-block patch-token grid (B, C, H/p, W/p).

    precision: "fp32", "bf16" or "fp16" (autocast), or "auto" (the default, settings.PRECISION):
    whichever `choose_precision` picks for the device the backbone is on, decided again after each
    move (`.to(device)`). fuse (CPU execution, see `_fused`): "auto"
    fuses the bfloat16 graph and runs float32 eagerly; True/False force the fused graph on or off.
    weights: the local checkpoint the ViT was loaded from (None: hub or random weights).
    The settings are fixed at construction; `with_settings` gives a backbone with others.
    """

    mean: torch.Tensor  # buffers: ImageNet normalisation
    std: torch.Tensor

    def __init__(self, spec: BackboneSpec, model: VisionTransformer, precision: str = settings.PRECISION,
                 fuse: bool | str = "auto", weights: WeightsFile | None = None):
        super().__init__()
        if precision not in RUN_PRECISIONS and precision not in settings.PRECISIONS:
            choices = dict.fromkeys(settings.PRECISIONS + RUN_PRECISIONS)
            raise SegUnifyError(f"Unknown precision '{precision}'; use one of {', '.join(choices)} (--precision).")
        if fuse not in FUSE_CHOICES:
            raise ValueError(f"fuse must be one of {FUSE_CHOICES}, not {fuse!r}")
        self.spec = spec
        self.model = model
        self._precision, self._fuse, self._weights = precision, fuse, weights
        self.patch_size = _patch_size(model)
        self.feature_dim = int(model.num_features)
        self.num_prefix_tokens = int(getattr(model, "num_prefix_tokens", 1))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self._graphs: dict[tuple, _FusedGraph | None] = {}
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
        other = Backbone(self.spec, self.model, requested, self.fuse if fuse is None else fuse, self.weights)
        return other.to(self.mean.device)

    def train(self, mode: bool = True) -> Backbone:
        return super().train(False)  # frozen: dropout and stochastic depth stay off

    @property
    def runs_fused(self) -> bool:
        """Whether some input size has run through a fused graph (else all ran eagerly)."""
        return any(g is not None for g in self._graphs.values())

    def normalize(self, rgb: torch.Tensor) -> torch.Tensor:
        """uint8-range RGB (0..255, float or uint8) to ImageNet-normalised floats."""
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
        graph = self._fused(x)
        if graph is not None:
            tokens = graph(x)
        elif x.device.type == "cpu":
            # One window at a time: its activations (about 10 MB for ViT-S/8 at 320 px) stay in the
            # CPU's cache, where a batch of 8 streams from memory (float32, ViT-S/8: 0.80 against
            # 0.72 of the matrix-product rate; bench/run.py).
            with self.autocast(x.device):
                tokens = torch.cat([self.model.forward_features(x[i:i + 1]) for i in range(b)])
        else:
            with self.autocast(x.device):
                tokens = self.model.forward_features(x)
        grid = tokens[:, self.num_prefix_tokens:, :].float()
        return grid.transpose(1, 2).reshape(b, self.feature_dim, h // p, w // p).contiguous()

    def _fused(self, x: torch.Tensor) -> _FusedGraph | None:
        """The fused graph for this input size and precision (built on first use), or None.

        By default ("auto") only bfloat16 runs fused: there oneDNN's fused attention beats eager
        PyTorch (0.84-0.93 against about 0.47 of the matrix-product rate on AVX-512 BF16). In
        float32 eager PyTorch's flash attention, one window at a time, is faster (0.80 against
        0.61 for the fused graph on an AVX2 CPU, ViT-S/8, 320 px).
        """
        if self.fuse is False or x.device.type != "cpu" or self.precision not in ("fp32", "bf16"):
            return None
        if self.fuse == "auto" and self.precision != "bf16":
            return None
        key = (self.precision, *x.shape[-2:])
        if key not in self._graphs:
            dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
            if dtype not in self._graph_models:  # one converted copy per precision, for all sizes
                self._graph_models[dtype] = _FeatureGraph(copy.deepcopy(self.model).to(dtype)).eval()
            self._graphs[key] = _FusedGraph.build(self._graph_models[dtype], x[:1], dtype)
        return self._graphs[key]


class _FusedGraph:
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
    def build(graph_model: nn.Module, example: torch.Tensor, dtype: torch.dtype) -> _FusedGraph | None:
        try:
            for module in graph_model.modules():
                if hasattr(module, "fused_attn"):
                    # explicit q k^T, softmax, @ v: the pattern oneDNN fuses. (nn.Module types every
                    # attribute it does not declare as Tensor | Module, so this plain flag needs the ignore.)
                    module.fused_attn = False  # type: ignore[assignment]
            with _onednn_fusion(), warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
                warnings.simplefilter("ignore")
                example = example[:1].to(dtype).expand(FUSED_BATCH, *example.shape[1:]).contiguous()
                traced = torch.jit.trace(graph_model, example, check_trace=False)
                fused = _FusedGraph(torch.jit.freeze(traced), dtype)
            with _onednn_fusion(), torch.inference_mode():
                for _ in range(FUSED_WARMUP_RUNS):
                    fused.graph(example)
            return fused
        except Exception as exc:  # TorchScript is optional: eager PyTorch gives the same features
            log.debug("no fused backbone graph (%s: %s); running eager", type(exc).__name__, exc)
            return None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = []
        with _onednn_fusion(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for start in range(0, x.shape[0], FUSED_BATCH):
                chunk = x[start:start + FUSED_BATCH].to(self.dtype)
                n = chunk.shape[0]
                if n < FUSED_BATCH:
                    chunk = torch.cat([chunk, chunk.new_zeros((FUSED_BATCH - n, *chunk.shape[1:]))])
                out.append(self.graph(chunk)[:n])
        return torch.cat(out)


class _FeatureGraph(nn.Module):
    def __init__(self, model: VisionTransformer):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)


def create_backbone(name: str = DEFAULT_BACKBONE, weights: str | Path | WeightsFile | None = None,
                    pretrained: bool = True, precision: str = settings.PRECISION, fuse: bool | str = "auto") -> Backbone:
    """Build a frozen backbone by short name or timm name.

    weights: a local checkpoint (official DINO/DINOv2 layout or timm .safetensors/.pth), or its
    `WeightsFile` when already hashed. Without it and with pretrained=True the weights come from
    timm's hub download (cached). pretrained=False gives random weights (tests and benchmarks).
    precision and fuse: see `Backbone`.
    """
    spec = resolve_backbone(name)
    record = None
    if weights is not None:
        record = weights if isinstance(weights, WeightsFile) else WeightsFile.of(weights)
        model = _create_timm(spec.timm_name, pretrained=False)
        load_weights(model, Path(record.path))
    elif pretrained:
        try:
            model = _create_timm(spec.timm_name, pretrained=True)
        except SegUnifyError:
            raise
        except Exception as exc:
            raise SegUnifyError(
                f"Could not download the weights of backbone '{spec.name}' ({type(exc).__name__}); "
                "on a machine without internet give a local checkpoint as the backbone weights file (--backbone-weights) "
                "(official DINO .pth or timm .safetensors/.pth)."
            ) from None
    else:
        model = _create_timm(spec.timm_name, pretrained=False)
    return Backbone(spec, model, precision, fuse, record)


def load_weights(model: VisionTransformer, path: Path) -> None:
    """Load a local checkpoint into a timm ViT, converting official layouts via timm's filter."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    state = read_checkpoint(path)
    try:
        state = checkpoint_filter_fn(state, model)
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1][:200]
        raise SegUnifyError(
            f"Backbone weights '{path}' do not fit this backbone ({first}); choose the weights file "
            "(--backbone-weights) of the chosen backbone (--backbone)."
        ) from None
    missing = [k for k in missing if not k.startswith("head")]
    if missing or unexpected:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise SegUnifyError(
            f"Backbone weights '{path}' do not fit this backbone ({detail}); choose the weights file "
            "(--backbone-weights) of the chosen backbone (--backbone)."
        )


def weights_cached(name: str) -> bool:
    """True when timm's hub download of this backbone is already in the local cache."""
    try:
        from huggingface_hub import try_to_load_from_cache
        from timm.models import get_pretrained_cfg

        spec = resolve_backbone(name)
        cfg = get_pretrained_cfg(spec.timm_name)
        hub_id = getattr(cfg, "hf_hub_id", None) if cfg else None
        if not hub_id:
            return False
        hit = try_to_load_from_cache(hub_id, "model.safetensors")
        return isinstance(hit, str)
    except Exception:
        return False


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
