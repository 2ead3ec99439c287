"""The Labeler: learned local (student) prototypes and EMA global (teacher) prototypes.

With M > 1 local sets ("multiple local cluster architecture"), every set is initialised on its
own and learns from the data term against the same teacher argmax; the global prototypes follow
the EMA of the sets' mean. Set 0 is `local_prototypes`, sets 1..M-1 `extra_local_prototypes`, so
M = 1 is the single-set Labeler, tensor for tensor.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import settings


def cosine_logits(code: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every code vector (B, D, h, w) with every prototype (K, D): (B, K, h, w)."""
    return torch.einsum("bdhw,kd->bkhw", F.normalize(code, dim=1), F.normalize(prototypes, dim=1))


class Labeler(nn.Module):
    global_prototypes: torch.Tensor  # a buffer (EMA, not trained)
    extra_local_prototypes: nn.Parameter | None

    def __init__(self, code_dim: int, n_clusters: int, local_sets: int = settings.LOCAL_SETS):
        super().__init__()
        if local_sets < 1:
            raise ValueError("local_sets must be at least 1")
        local = torch.empty(n_clusters, code_dim)
        nn.init.xavier_normal_(local)
        self.local_prototypes = nn.Parameter(F.normalize(local, dim=1))
        self.extra_local_prototypes = None
        if local_sets > 1:
            extra = torch.empty(local_sets - 1, n_clusters, code_dim)
            for one in extra:
                nn.init.xavier_normal_(one)
            self.extra_local_prototypes = nn.Parameter(F.normalize(extra, dim=2))
        self.register_buffer("global_prototypes", self.mean_local().detach().clone())

    @property
    def n_clusters(self) -> int:
        return self.local_prototypes.shape[0]

    @property
    def local_sets(self) -> int:
        return 1 + (0 if self.extra_local_prototypes is None else self.extra_local_prototypes.shape[0])

    def mean_local(self) -> torch.Tensor:
        """The mean of the local sets (the single set itself when M = 1)."""
        if self.extra_local_prototypes is None:
            return self.local_prototypes
        return torch.cat([self.local_prototypes[None], self.extra_local_prototypes]).mean(0)

    def student_logits(self, code: torch.Tensor) -> torch.Tensor:
        """Local prototypes against the detached code: only the prototypes learn from these.
        With M sets, the M sets' logits stacked along the batch axis: (M * B, K, h, w)."""
        code = code.detach()
        logits = cosine_logits(code, self.local_prototypes)
        if self.extra_local_prototypes is None:
            return logits
        return torch.cat([logits, *(cosine_logits(code, p) for p in self.extra_local_prototypes)])

    def teacher_logits(self, code: torch.Tensor) -> torch.Tensor:
        """Global prototypes (no gradient) against the code: the code learns from these."""
        return cosine_logits(code, self.global_prototypes.detach())

    @torch.no_grad()
    def ema_update(self, alpha: float) -> None:
        """global <- alpha * global + (1 - alpha) * mean of the local sets, after every optimiser step."""
        self.global_prototypes.mul_(alpha).add_(self.mean_local().detach(), alpha=1.0 - alpha)
