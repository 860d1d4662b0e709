"""Certified Fukunaga-Olsen counts from a Rayleigh-Ritz projection instead of a full ``eigvalsh``.

A neighbourhood of ``m`` points has an ``m x m`` Gram matrix ``G``; the Fukunaga-Olsen rule
counts its eigenvalues above ``alpha`` times the largest. LAPACK's ``eigvalsh`` at ``m = 50``
costs ~90 us per matrix on an x86 core (the tridiagonal reduction dominates and grows as
``m^2`` at this size), while data with a spectral gap (a manifold of dimension well below
``m``) needs only the leading ``r ~ d + 2`` directions. :func:`ritz_counts` finds them by one
step of batched subspace iteration and proves the count with bounds that involve only
``r x r`` eigenvalues and Frobenius norms.

With ``Q`` an orthonormal ``m x r`` basis, ``H = Q^T G Q`` (Ritz values ``mu_1 >= ...``), ``B``
the coupling ``(I - QQ^T) G Q`` and ``C`` the compression of ``G`` to the complement, Sylvester's
law of inertia on the Schur complement of ``H - sI`` in ``G - sI`` gives: the number of
eigenvalues of ``G`` above ``s`` equals the number of ``mu_i > s`` whenever

    ``|C|_F + |B|_F^2 / (s - max{mu_i < s}) < s``

(the complement's largest eigenvalue is at most ``|C|_F``, and the coupling can raise it by at
most ``|B|^2`` over the distance to the nearest Ritz value below ``s``). The largest eigenvalue
lies in ``[mu_1, max(mu_1, |C|_F) + |B|_F]``. A count is certified when it is the same at both
ends of the threshold's uncertainty interval, widened by the caller's bound ``error`` on the
distance of every eigenvalue of ``G`` from the exact one; uncertified rows are left to a full
``eigvalsh``. ``|C|_F^2 = |G|_F^2 - 2 |GQ|_F^2 + |H|_F^2`` costs no ``m x m`` product. All of
it runs in float64 on the float32 ``G`` (exactly representable), and a slack of ``1e-12 |G|_F^2``
on ``|C|_F^2`` and ``1e-10 |G|_F`` on the other quantities covers float64 rounding and the
basis' departure from orthonormality (both ~``m eps64``, 1e-14, relative).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["RitzBounds", "ritz_bounds", "ritz_certify", "ritz_counts", "ritz_rank"]

_SLACK = 1e-10  # of |G|_F, on |B|_F, the error bound and the thresholds
_SLACK_C2 = 1e-12  # of |G|_F^2, on |C|_F^2 (it is a difference of squares)


class RitzBounds(NamedTuple):
    """What :func:`ritz_bounds` proves about each matrix of a batch (all float64, shape (b,)
    except ``ritz``)."""

    ritz: torch.Tensor  # (b, r) Ritz values, descending
    coupling: torch.Tensor  # >= |B|_2
    tail: torch.Tensor  # >= the complement's largest eigenvalue
    slack: torch.Tensor  # float64 rounding allowance
    top: torch.Tensor  # >= the largest eigenvalue of G


def ritz_bounds(G: torch.Tensor, rank: int) -> RitzBounds:
    """Ritz values of each ``G`` on a rank-``r`` subspace and the bounds that go with them.

    Parameters
    ----------
    G : tensor of shape (b, m, m), float32 or float64
        Symmetric matrices.
    rank : int
        ``r``, the dimension of the projection (``1 <= r < m``).
    """
    b, m, _ = G.shape
    if not 1 <= rank < m:
        raise ValueError(f"rank must be in [1, {m - 1}] for {m} x {m} matrices, got {rank}")
    gen = torch.Generator(device="cpu").manual_seed(0)
    omega = torch.randn(m, rank, generator=gen, dtype=G.dtype).to(G.device)
    Z = torch.bmm(G, (G.reshape(b * m, m) @ omega).view(b, m, rank))  # one power step
    Gd = G.double()
    Q = torch.linalg.qr(Z.double()).Q
    W = torch.bmm(Gd, Q)
    H = torch.bmm(Q.transpose(1, 2), W)
    H = (H + H.transpose(1, 2)) / 2
    mu = torch.linalg.eigvalsh(H).flip(-1)  # descending
    g2 = torch.linalg.vector_norm(Gd, dim=(1, 2)) ** 2
    w2 = torch.linalg.vector_norm(W, dim=(1, 2)) ** 2
    h2 = torch.linalg.vector_norm(H, dim=(1, 2)) ** 2
    slack = _SLACK * torch.sqrt(g2)
    coupling = torch.linalg.vector_norm(W - torch.bmm(Q, H), dim=(1, 2)) + slack
    tail = torch.sqrt((g2 - 2 * w2 + h2).clamp_min(0) + _SLACK_C2 * g2)
    top = torch.maximum(mu[:, 0], tail) + coupling
    return RitzBounds(mu, coupling, tail, slack, top)


def ritz_certify(
    bounds: RitzBounds, error: torch.Tensor, alpha: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fukunaga-Olsen counts from :func:`ritz_bounds`, and where they are proven.

    Parameters
    ----------
    bounds : RitzBounds
    error : tensor of shape (b,), float64
        Bound on the distance of each eigenvalue of ``G`` from the exact value the count is
        about (0 when ``G`` is itself exact).
    alpha : float
        The rule's fraction of the largest eigenvalue.

    Returns
    -------
    counts : tensor of shape (b,), float64
        The number of exact eigenvalues ``> alpha * largest`` where ``certified``.
    certified : bool tensor of shape (b,)
    """
    mu, coupling, tail = bounds.ritz, bounds.coupling, bounds.tail
    e = error.to(torch.float64) + bounds.slack
    s_lo = alpha * (mu[:, 0] - e) - e
    s_hi = alpha * (bounds.top + e) + e

    def count_at(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        col = s[:, None]
        below = torch.where(mu < col, mu, torch.full_like(mu, -torch.inf)).amax(1)
        push = torch.where(torch.isfinite(below), coupling**2 / (s - below), torch.zeros_like(s))
        ok = (tail + push < s) & (mu != col).all(1)
        return (mu > col).sum(1), ok

    k_lo, ok_lo = count_at(s_lo)
    k_hi, ok_hi = count_at(s_hi)
    return k_hi.to(torch.float64), ok_lo & ok_hi & (k_lo == k_hi)


def ritz_counts(
    G: torch.Tensor, error: torch.Tensor, alpha: float, rank: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`ritz_certify` of :func:`ritz_bounds`: certified counts of a batch of ``G``."""
    return ritz_certify(ritz_bounds(G, rank), error, alpha)


# Costs per matrix measured with one thread on an x86 core (MKL): eigvalsh of m x m about
# 0.04 m^2 us at m = 20-100, this certificate about 25 + 0.1 r^2 us at r = 8-30
_EIGVALSH_PER_M2 = 0.04
_RITZ_BASE, _RITZ_PER_R2 = 25.0, 0.1
_MIN_GAIN = 1.25  # predicted saving required to use the certificate at all


def ritz_rank(eigenvalues: torch.Tensor, error: torch.Tensor, alpha: float) -> int | None:
    """The projection rank predicted to be cheapest for rows like these, or None.

    ``eigenvalues`` (descending, shape (b, m)) and ``error`` are those of a trial batch from
    a full ``eigvalsh``. A row is predicted to certify at rank ``r`` when its count is below
    ``r`` and the Frobenius norm of its eigenvalues beyond ``r`` is under 0.8 of the lower
    threshold (the coupling of a converged basis is small). The cost of ``r`` is the
    certificate's plus a full ``eigvalsh`` for the predicted failures; None when no rank is
    predicted ``_MIN_GAIN`` times cheaper than ``eigvalsh`` alone.
    """
    lam = eigenvalues.clamp_min(0).double()
    b, m = lam.shape
    e = error.double()
    s_lo = alpha * (lam[:, 0] - e) - e
    count = (lam > alpha * lam[:, :1]).sum(1)
    sq = (lam * lam).flip(1).cumsum(1).flip(1)  # sq[:, r] = sum of lam_j^2 over j >= r
    tail = torch.sqrt(torch.cat([sq, torch.zeros(b, 1, dtype=sq.dtype)], 1))
    full = _EIGVALSH_PER_M2 * m * m
    best, best_cost = None, full / _MIN_GAIN
    for r in range(1, m):
        share = float(((count < r) & (tail[:, r] < 0.8 * s_lo)).double().mean())
        cost = _RITZ_BASE + _RITZ_PER_R2 * r * r + (1 - share) * full
        if cost < best_cost:
            best, best_cost = r, cost
    return best
