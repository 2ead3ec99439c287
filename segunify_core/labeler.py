"""The Labeler: learned local (student) prototypes and EMA global (teacher) prototypes."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def cosine_logits(code: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every code vector (B, D, h, w) with every prototype (K, D): (B, K, h, w)."""
    return torch.einsum("bdhw,kd->bkhw", F.normalize(code, dim=1), F.normalize(prototypes, dim=1))


class Labeler(nn.Module):
    def __init__(self, code_dim: int, n_clusters: int):
        super().__init__()
        local = torch.empty(n_clusters, code_dim)
        nn.init.xavier_normal_(local)
        self.local_prototypes = nn.Parameter(F.normalize(local, dim=1))
        self.register_buffer("global_prototypes", self.local_prototypes.detach().clone())

    @property
    def n_clusters(self) -> int:
        return self.local_prototypes.shape[0]

    def student_logits(self, code: torch.Tensor) -> torch.Tensor:
        """Local prototypes against the detached code: only the prototypes learn from these."""
        return cosine_logits(code.detach(), self.local_prototypes)

    def teacher_logits(self, code: torch.Tensor) -> torch.Tensor:
        """Global prototypes (no gradient) against the code: the code learns from these."""
        return cosine_logits(code, self.global_prototypes.detach())

    @torch.no_grad()
    def ema_update(self, alpha: float) -> None:
        """global <- alpha * global + (1 - alpha) * local, after every optimiser step."""
        self.global_prototypes.mul_(alpha).add_(self.local_prototypes.detach(), alpha=1.0 - alpha)
