"""The energy minimised in training: closeness and cross-image smoothness plus the data term."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F


def feature_affinity(f1: torch.Tensor, f2: torch.Tensor, pointwise: bool = True) -> torch.Tensor:
    """F_ij = cosine(f1_i, f2_j) for every patch pair, (B, N1, N2), with pointwise centring:
    subtract each row's mean over j, then add back the global mean."""
    with torch.no_grad():
        a = F.normalize(f1.flatten(2), dim=1)
        b = F.normalize(f2.flatten(2), dim=1)
        aff = torch.einsum("bci,bcj->bij", a, b)
        if pointwise:
            aff = aff - aff.mean(dim=2, keepdim=True) + aff.mean()
    return aff


def assignment_disagreement(p1: torch.Tensor, p2: torch.Tensor) -> torch.Tensor:
    """A_ij = 1 - cosine(p1_i, p2_j) between soft assignments (B, K, h, w): (B, N1, N2)."""
    a = F.normalize(p1.flatten(2), dim=1)
    b = F.normalize(p2.flatten(2), dim=1)
    return 1.0 - torch.einsum("bki,bkj->bij", a, b)


def smoothness(f1: torch.Tensor, f2: torch.Tensor, p1: torch.Tensor, p2: torch.Tensor,
               shift: float, pointwise: bool = True) -> torch.Tensor:
    """Mean over all patch pairs of (F_ij - shift) * A_ij."""
    return ((feature_affinity(f1, f2, pointwise) - shift) * assignment_disagreement(p1, p2)).mean()


def derangement(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """A random permutation with no fixed point (every image is paired with a different one)."""
    if n < 2:
        raise ValueError("cross-image smoothness needs a batch of at least 2 images")
    # A random cyclic shift of a random order is a derangement and uniform enough for pairing.
    order = torch.randperm(n, generator=generator)
    shift = int(torch.randint(1, n, (1,), generator=generator))
    perm = torch.empty(n, dtype=torch.long)
    perm[order] = order.roll(-shift)
    return perm


def data_term(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the student logits (no temperature) against the teacher's argmax."""
    target = teacher_logits.detach().argmax(dim=1)
    return F.cross_entropy(student_logits, target)


@dataclasses.dataclass
class EnergyTerms:
    total: torch.Tensor
    closeness: torch.Tensor
    cross_image: torch.Tensor
    data: torch.Tensor


def energy(features: torch.Tensor, teacher_logits: torch.Tensor, student_logits: torch.Tensor,
           temperature: float = 0.1, shift_intra: float = 0.1, shift_inter: float = 0.5,
           pointwise: bool = True, generator: torch.Generator | None = None) -> EnergyTerms:
    """features: the dropout-perturbed backbone features (B, C, h, w); logits (B, K, h, w)."""
    p = torch.softmax(teacher_logits / temperature, dim=1)
    close = smoothness(features, features, p, p, shift_intra, pointwise)
    perm = derangement(features.shape[0], generator).to(features.device)
    cross = smoothness(features, features[perm], p, p[perm], shift_inter, pointwise)
    data = data_term(student_logits, teacher_logits)
    return EnergyTerms(close + cross + data, close, cross, data)
