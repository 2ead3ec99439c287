"""Resumable training state: a module's weights, its optimiser's state and JSON facts, in one
safetensors file (never pickled), written atomically. Training and distillation both use it."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from ..errors import SegUnifyError
from .model_file import read_json_metadata, write_safetensors

_WEIGHTS, _OPTIMIZER, _EXTRA = "model.", "optim.", "extra."


@dataclasses.dataclass(frozen=True)
class TrainingState:
    meta: dict[str, Any]  # holds at least "format" and "step"
    weights: dict[str, torch.Tensor]
    optimizer: dict[int, dict[str, torch.Tensor]]  # torch's optimiser "state", by parameter index
    extra: dict[str, torch.Tensor]

    @property
    def step(self) -> int:
        return int(self.meta["step"])

    def restore(self, module: torch.nn.Module, optimizer: torch.optim.Optimizer, strict: bool = True) -> None:
        """Puts the weights into `module` and the optimiser state into `optimizer` (its parameter
        groups and hyper-parameters stay those it was built with)."""
        module.load_state_dict(self.weights, strict=strict)
        state = optimizer.state_dict()
        state["state"] = self.optimizer
        optimizer.load_state_dict(state)


def write_training_state(path: Path, weights: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
                         meta: dict[str, Any], extra: dict[str, torch.Tensor] | None = None) -> None:
    """`meta` must hold "format" and "step"; `extra` tensors come back as `TrainingState.extra`."""
    tensors = {_WEIGHTS + k: v.detach().cpu().contiguous() for k, v in weights.items()}
    for index, state in optimizer.state_dict()["state"].items():
        for name, value in state.items():
            tensors[f"{_OPTIMIZER}{index}.{name}"] = torch.as_tensor(value).detach().cpu().clone().contiguous()
    for name, value in (extra or {}).items():
        tensors[_EXTRA + name] = value.detach().cpu().contiguous()
    write_safetensors(path, tensors, meta)


def read_training_state(path: Path, state_format: str, damaged: str) -> TrainingState:
    """The state at `path`; SegUnifyError(`damaged`) for an unreadable file or one of another format
    (checked without `assert`, so also under `python -O`)."""
    try:
        meta, tensors = read_json_metadata(path)
    except Exception:  # unreadable safetensors, no or broken JSON metadata
        raise SegUnifyError(damaged) from None
    if not isinstance(meta, dict) or meta.get("format") != state_format or not isinstance(meta.get("step"), int):
        raise SegUnifyError(damaged)
    optimizer: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith(_OPTIMIZER):
            index, name = key[len(_OPTIMIZER):].split(".", 1)
            optimizer.setdefault(int(index), {})[name] = value
    return TrainingState(meta, _strip(tensors, _WEIGHTS), optimizer, _strip(tensors, _EXTRA))


def _strip(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
