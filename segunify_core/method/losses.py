"""The energy minimised in training: closeness and cross-image smoothness plus the data term."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from .. import settings


def feature_affinity(f1: torch.Tensor, f2: torch.Tensor, pointwise: bool = settings.POINTWISE) -> torch.Tensor:
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


def smoothness_dense(f1: torch.Tensor, f2: torch.Tensor, p1: torch.Tensor, p2: torch.Tensor,
                     shift: float, pointwise: bool = settings.POINTWISE) -> torch.Tensor:
    """Mean over all patch pairs of (F_ij - shift) * A_ij, with the N x N matrices formed."""
    return ((feature_affinity(f1, f2, pointwise) - shift) * assignment_disagreement(p1, p2)).mean()


def smoothness(f1: torch.Tensor, f2: torch.Tensor, p1: torch.Tensor, p2: torch.Tensor,
               shift: float, pointwise: bool = settings.POINTWISE) -> torch.Tensor:
    """The same value as `smoothness_dense`, without forming N x N matrices.

    With A, B the normalised features (N, C) and P, Q the normalised assignments (N, K), every
    pair sum factorises through the C x K products A^T P and B^T Q:
    sum F_ij P_ij = <A^T P, B^T Q>, row means r = A b_mean, sum_j P_ij = P q_sum. This costs
    O(N C K) instead of O(N^2 C) per image, which makes training steps cheap.
    """
    with torch.no_grad():
        a = F.normalize(f1.flatten(2), dim=1)  # (B, C, N1)
        b = F.normalize(f2.flatten(2), dim=1)  # (B, C, N2)
        b_mean = b.mean(2)  # (B, C)
        g = (a.mean(2) * b_mean).sum(1)  # mean of F per image, (B,)
        if pointwise:
            g = g.mean().expand_as(g)  # the reference adds back the mean over the whole batch
        r = torch.einsum("bci,bc->bi", a, b_mean)  # row means of F, (B, N1)
    pn = F.normalize(p1.flatten(2), dim=1)  # (B, K, N1)
    qn = F.normalize(p2.flatten(2), dim=1)  # (B, K, N2)
    n1, n2 = pn.shape[2], qn.shape[2]
    q_sum = qn.sum(2)  # (B, K)
    row_p = torch.einsum("bki,bk->bi", pn, q_sum)  # sum_j P_ij, (B, N1)
    sum_p = row_p.sum(1)  # (B,)
    sum_fp = (torch.einsum("bci,bki->bck", a, pn) * torch.einsum("bcj,bkj->bck", b, qn)).sum((1, 2))
    if pointwise:
        sum_fcp = sum_fp - (r * row_p).sum(1) + g * sum_p  # centred F against P
    else:
        sum_fcp = sum_fp
    sum_fc = g * n1 * n2  # total of F (centred or not): N1 N2 times its mean
    total = sum_fc - shift * n1 * n2 - sum_fcp + shift * sum_p
    return (total / (n1 * n2)).mean()


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


def move_fixed_points(perm: torch.Tensor) -> torch.Tensor:
    """The reference's pairing rule: every i with perm[i] == i gets partner (i + 1) mod n instead.
    No image is paired with itself, but a partner can repeat (not a derangement)."""
    n = perm.shape[0]
    index = torch.arange(n)
    fixed = perm == index
    return torch.where(fixed, (index + 1) % n, perm)


def reference_pairing(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """A random permutation with its fixed points moved to the next index (mod n), as the
    reference pairs images for the cross-image term."""
    if n < 2:
        raise ValueError("cross-image smoothness needs a batch of at least 2 images")
    return move_fixed_points(torch.randperm(n, generator=generator))


# How each image of a batch gets its partner for the cross-image term (names: settings.PAIRINGS).
PAIRINGS = {"reference": reference_pairing, "derangement": derangement}


def data_term(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the student logits (no temperature) against the teacher's argmax.

    Student logits of M local sets come stacked along the batch axis (M * B, K, h, w); every set is
    scored against the same argmax, and the mean over all of them is the mean over the sets."""
    target = teacher_logits.detach().argmax(dim=1)
    sets = student_logits.shape[0] // target.shape[0]
    if sets > 1:
        target = target.repeat(sets, *([1] * (target.dim() - 1)))
    return F.cross_entropy(student_logits, target)


@dataclasses.dataclass
class EnergyTerms:
    total: torch.Tensor
    closeness: torch.Tensor
    cross_image: torch.Tensor
    data: torch.Tensor


def energy(features: torch.Tensor, teacher_logits: torch.Tensor, student_logits: torch.Tensor,
           temperature: float = settings.TEMPERATURE, shift_intra: float = settings.SHIFT_INTRA,
           shift_inter: float = settings.SHIFT_INTER, pointwise: bool = settings.POINTWISE,
           generator: torch.Generator | None = None, pairing: str = settings.PAIRING) -> EnergyTerms:
    """features: the dropout-perturbed backbone features (B, C, h, w); logits (B, K, h, w);
    pairing: how cross-image partners are drawn (one of PAIRINGS)."""
    p = torch.softmax(teacher_logits / temperature, dim=1)
    close = smoothness(features, features, p, p, shift_intra, pointwise)
    if pairing not in PAIRINGS:
        raise ValueError(f"pairing must be one of {settings.PAIRINGS}, not {pairing!r}")
    perm = PAIRINGS[pairing](features.shape[0], generator).to(features.device)
    cross = smoothness(features, features[perm], p, p[perm], shift_inter, pointwise)
    data = data_term(student_logits, teacher_logits)
    return EnergyTerms(close + cross + data, close, cross, data)
