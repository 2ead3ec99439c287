"""Model files: reading and writing them, their format checks, and rewriting a model file's legend.

A model file is one safetensors file: the Compressor and Labeler tensors, and JSON metadata
(format version, backbone, hyper-parameters, bands, GSD, training data summary). The backbone is
not stored: it is frozen and named, and comes from timm's hub or a local checkpoint. A model
trained on a local checkpoint records its path and SHA-256 ("backbone_weights"); loading uses
that file when no other is given, and refuses weights with another hash. It also records the
input normalisation the backbone applied ("normalization": mean and std; files without it were
trained with ImageNet's), and a model refuses a backbone whose normalisation, patch size or
channels differ from those it was trained with. The training state
(`training.trainer`) uses the same container (`write_safetensors` / `read_safetensors`).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from .. import settings
from ..errors import SegUnifyError, write_failure
from ..method.backbone import Backbone, create_backbone
from ..method.checkpoints import WeightsFile
from ..method.legend import Legend
from ..method.model import ModelConfig, SegUnifyModel
from ..method.registry import IMAGENET, Normalization
from ..method.student import FAST_KIND, fast_model_from_file
from .atomic import atomic_path

FORMAT_NAME = "segunify-model"
FORMAT_VERSION = 1
WEIGHTS_KEY = "backbone_weights"  # metadata: {"path", "sha256"} of the local backbone checkpoint
NORMALIZATION_KEY = "normalization"  # metadata: {"mean", "std"} the backbone's input was normalised with
META_KEY = "segunify"  # the safetensors header entry holding the JSON metadata
# Config keys renamed since files were first written: old key -> current field (read, never written).
RENAMED_CONFIG_KEYS = {"feature_width": "feature_dim"}


def save_model(model: SegUnifyModel, path: str | Path, extra: dict[str, Any] | None = None) -> None:
    """Write the model atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    meta = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "config": dataclasses.asdict(model.config),
        **model.metadata,
        **(extra or {}),
    }
    if model.backbone is not None and model.backbone.weights is not None:
        meta[WEIGHTS_KEY] = model.backbone.weights.to_metadata()
    if model.backbone is not None:
        meta[NORMALIZATION_KEY] = model.backbone.normalization.to_metadata()
    if model.legend.to_metadata() is not None:
        meta["legend"] = model.legend.to_metadata()
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.head_state().items()}
    write_safetensors(path, tensors, meta)


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Tensors + JSON metadata, written atomically: a crash, a full disk or Ctrl-C never leaves a
    half-written file at `path`."""
    from safetensors.torch import save_file

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SegUnifyError(f"Cannot write '{path.name}' to '{path.parent}' ({exc.strerror}); choose a writable "
                            "folder.") from None
    with atomic_path(path) as tmp:
        try:
            save_file(tensors, str(tmp), metadata={META_KEY: json.dumps(meta)})
        except Exception as exc:  # safetensors reports a full disk in its own error type
            raise write_failure(path, exc) from None


def read_safetensors(path: str | Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """The raw header metadata and tensors of a safetensors file (never unpickles); raises what
    safetensors raises on an unreadable file. Callers check the format and word the error."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as handle:
        header = handle.metadata() or {}
    return header, load_file(str(path))


def read_json_metadata(path: str | Path) -> tuple[Any, dict[str, torch.Tensor]]:
    """The JSON metadata (under META_KEY) and tensors of a file this module wrote; raises on an
    unreadable file or missing/broken metadata."""
    header, tensors = read_safetensors(path)
    return json.loads(header[META_KEY]), tensors


def read_model_file(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Metadata and tensors of a model file; never unpickles."""
    path = Path(path)
    if not path.is_file():
        raise SegUnifyError(f"Model file '{path}' does not exist; check the model file (--model).")
    try:
        header, tensors = read_safetensors(path)
    except Exception:
        raise SegUnifyError(f"'{path}' is not a SegUnify model file (not a readable safetensors "
                            "file, or truncated); pass a model written by `segunify train`.") from None
    not_a_model = SegUnifyError(f"'{path}' is a safetensors file but not a SegUnify model; pass a model "
                                "written by `segunify train`.")
    try:
        meta = json.loads(header[META_KEY])
        version = int(meta["format_version"])
    except (KeyError, TypeError, ValueError):
        raise not_a_model from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME or not isinstance(meta.get("config"), dict):
        raise not_a_model
    recorded = meta.get(WEIGHTS_KEY)
    if recorded is not None and not (isinstance(recorded, dict) and isinstance(recorded.get("path"), str)
                                     and isinstance(recorded.get("sha256"), str)):
        raise SegUnifyError(f"Model file '{path}' has a damaged backbone weights record; retrain or copy it again.")
    try:
        recorded_normalization(meta)
    except ValueError:
        raise SegUnifyError(f"Model file '{path}' has a damaged normalisation record; retrain or copy it again.") from None
    if version > FORMAT_VERSION:
        raise SegUnifyError(f"Model file '{path}' has format version {version}, newer than this "
                            f"SegUnify reads ({FORMAT_VERSION}); upgrade SegUnify.")
    return meta, tensors


def recorded_weights(meta: dict[str, Any]) -> WeightsFile | None:
    """The local backbone checkpoint a model file records (None: hub or unrecorded weights)."""
    record = meta.get(WEIGHTS_KEY)
    return WeightsFile(record["path"], record["sha256"]) if record else None


def recorded_normalization(meta: dict[str, Any]) -> Normalization:
    """The input normalisation a model file records; files written before it was recorded were
    all trained with ImageNet's mean and std."""
    record = meta.get(NORMALIZATION_KEY)
    return IMAGENET if record is None else Normalization.from_metadata(record)


def check_backbone(path: str | Path, config: ModelConfig, normalization: Normalization, backbone: Backbone) -> None:
    """Refuse a backbone whose input normalisation, patch size or channels differ from the model's."""
    trained = (normalization, config.patch_size, config.feature_dim)
    given = (backbone.normalization, backbone.patch_size, backbone.feature_dim)
    if trained != given:
        raise SegUnifyError(
            f"Model '{path}' was trained on backbone '{config.backbone}' (patch {config.patch_size}, "
            f"{config.feature_dim} channels, {normalization.describe()}) but the backbone given "
            f"('{backbone.spec.name}') has patch {backbone.patch_size}, {backbone.feature_dim} channels, "
            f"{backbone.normalization.describe()}; give the backbone and weights file the model was trained "
            "with (--backbone-weights).")


def _backbone_weights(path: Path, recorded: WeightsFile | None, given: str | Path | None,
                      pretrained: bool) -> str | Path | None:
    """The checkpoint to load: the one given, else (pretrained) the one the model records."""
    if given is not None or recorded is None or not pretrained:
        return given
    if not Path(recorded.path).is_file():
        raise SegUnifyError(f"Model '{path}' was trained with the backbone weights '{recorded.path}', which are not "
                            "there; point the backbone weights (--backbone-weights) to a copy of that file.")
    return recorded.path


def check_weights(path: str | Path, recorded: WeightsFile | None, used: WeightsFile | None) -> None:
    """Refuse a local checkpoint other than the one the model was trained with (by SHA-256)."""
    if recorded is not None and used is not None and used.sha256 != recorded.sha256:
        raise SegUnifyError(
            f"The backbone weights (--backbone-weights) '{used.path}' are not the file model '{path}' was trained "
            f"with (SHA-256 {used.sha256[:12]}… instead of {recorded.sha256[:12]}…); pass that file "
            f"('{recorded.path}') or a copy of it.")


def model_config(stored: dict[str, Any]) -> ModelConfig:
    """The ModelConfig of a model file's "config" metadata, older key names included."""
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    renamed = {RENAMED_CONFIG_KEYS.get(k, k): v for k, v in stored.items()}
    return ModelConfig(**{k: v for k, v in renamed.items() if k in fields})


def load_model(path: str | Path, backbone_weights: str | Path | None = None,
               backbone: Backbone | None = None, pretrained: bool = True, precision: str = settings.PRECISION,
               fuse: bool | str = "auto") -> SegUnifyModel:
    """Load a model file and attach its backbone: the one given, or one built (with `precision`
    and `fuse`) from `backbone_weights`, else from the checkpoint the model records, else the hub.
    Weights whose SHA-256 differs from the recorded checkpoint's are refused, and so is a backbone
    whose normalisation, patch size or channels differ from the model's. A backbone built here
    normalises as the model records (ImageNet for files without the record, as they were trained)."""
    meta, tensors = read_model_file(path)
    if meta.get("kind") == FAST_KIND:  # a distilled fast model: the whole network is in the file
        return fast_model_from_file(path, meta, tensors)  # type: ignore[return-value]  # same job interface
    config = model_config(meta["config"])
    recorded = recorded_weights(meta)
    normalization = recorded_normalization(meta)
    if backbone is None:
        weights = _backbone_weights(Path(path), recorded, backbone_weights, pretrained)
        backbone = create_backbone(config.backbone, weights, pretrained=pretrained, precision=precision, fuse=fuse,
                                   normalization=normalization)
    check_weights(path, recorded, backbone.weights)  # after loading: weights of another shape say so first
    check_backbone(path, config, normalization, backbone)
    model = SegUnifyModel(config, backbone)
    try:
        model.load_state_dict({f"{k}": v for k, v in tensors.items()}, strict=False)
        missing = [k for k in model.head_state() if k not in tensors]
        if missing:
            raise RuntimeError(f"missing {missing[:3]}")
    except RuntimeError:
        raise SegUnifyError(f"Model file '{path}' is damaged (its tensors do not match its "
                            "configuration); retrain or copy it again.") from None
    model.metadata = {k: v for k, v in meta.items()
                      if k not in ("format", "format_version", "config", "legend", WEIGHTS_KEY, NORMALIZATION_KEY)}
    model.legend = Legend.from_metadata(meta.get("legend"), config.n_clusters)
    return model.eval()


def rewrite_model_legend(source: str | Path, target: str | Path, edit: dict[str, Any],
                         overwrite: bool = False) -> Legend:
    """Write a copy of model file `source` to `target` with its legend edited (`Legend.edit`
    arguments); `source` is never modified. Returns the new legend."""
    source, target = Path(source), Path(target)
    if target.exists() and target.resolve() == source.resolve():
        raise SegUnifyError("The new model would replace the original; models are never modified in place, "
                            "give another file name (-o).")
    if target.exists() and not overwrite:
        raise SegUnifyError(f"Output '{target}' already exists; choose another output or allow replacing it (--overwrite).")
    meta, tensors = read_model_file(source)
    legend = Legend.of_model_file(meta).edit(**edit)
    meta = {k: v for k, v in meta.items() if k != "legend"}
    stored = legend.to_metadata()
    if stored is not None:
        meta["legend"] = stored
    write_safetensors(target, tensors, meta)
    return legend
