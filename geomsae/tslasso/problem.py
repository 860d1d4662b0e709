"""The Tangent Space Lasso problem: normalised gradients projected on tangent spaces (one object).

Koelle, Zhang, Murad & Meila (AISTATS 2024). For points ``xi_1..xi_n`` on a d-dimensional manifold
in R^B and a dictionary of p functions ``g_j``, the problem is fixed by the projected, normalised
gradients

    X_i = T_i^T [grad g_1(xi_i) / gamma_1, ..., grad g_p(xi_i) / gamma_p]  in R^{d x p},
    gamma_j = sqrt((1/n) sum_i ||grad g_j(xi_i)||^2)    (ambient norms, before projection),

and the group-lasso objective (one group per function, across all points and outputs)

    J(beta) = 1/2 sum_i ||I_d - X_i beta_i||_F^2 + lam_paper / sqrt(d n) sum_j ||beta_{.j.}||_F.

**Lambda convention.** geomsae's ``lam`` is the per-group penalty weight ``lam = lam_paper /
sqrt(d n)`` (montlake's convention). Then ``lam_max = max_j sqrt(sum_i ||X_i[:, j]||^2)``, which is
at most ``sqrt(n)`` after the gamma normalisation and equals it for a gradient field tangent to
the manifold. ``lam_paper = lam * sqrt(d n)`` (:attr:`TSLassoProblem.penalty_scale`).

Storage: ``X`` has shape (n_samples, d_intrinsic, n_functions) so that ``X_i beta_i`` and
``X_i^T R_i`` are batched matrix products; coefficients ``beta`` have shape
(n_samples, n_selected, d_intrinsic) for a selected block of functions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass(frozen=True)
class TSLassoProblem:
    """Projected, normalised gradients of one sample of points.

    Attributes
    ----------
    X : Tensor of shape (n_samples, d_intrinsic, n_functions)
        ``X[i, :, j] = T_i^T grad g_j(xi_i) / gamma_j``.
    gamma : Tensor of shape (n_functions,)
        Normalisation constants (root-mean-square ambient gradient norms); 0 marks a function whose
        gradient vanishes at every sampled point (its column of ``X`` is 0; it is never selected).
    """

    X: Tensor
    gamma: Tensor
    _column_norms: Tensor = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.X.ndim != 3:
            raise ValueError(
                "X must have shape (n_samples, d_intrinsic, n_functions), "
                f"got {tuple(self.X.shape)}"
            )
        if self.gamma.shape != (self.X.shape[2],):
            raise ValueError(
                f"gamma must have shape ({self.X.shape[2]},), got {tuple(self.gamma.shape)}"
            )
        if not torch.isfinite(self.X).all():
            raise ValueError("X contains NaN or inf; check the gradients and tangent bases")
        # summing over d first keeps the reduction contiguous (much faster than dim=(0, 1))
        object.__setattr__(self, "_column_norms", self.X.square().sum(1).sum(0).sqrt())

    # ---- sizes -------------------------------------------------------------------------------
    @property
    def n_samples(self) -> int:
        return self.X.shape[0]

    @property
    def d(self) -> int:
        """Intrinsic dimension (columns of the tangent bases)."""
        return self.X.shape[1]

    @property
    def n_functions(self) -> int:
        return self.X.shape[2]

    @property
    def penalty_scale(self) -> float:
        """``sqrt(d n)``: ``lam_paper = lam * penalty_scale``."""
        return math.sqrt(self.d * self.n_samples)

    @property
    def device(self) -> torch.device:
        return self.X.device

    @property
    def dtype(self) -> torch.dtype:
        return self.X.dtype

    # ---- the smooth part -----------------------------------------------------------------------
    def columns(self, features: Tensor | None) -> Tensor:
        """``X`` restricted to some functions: shape (n_samples, d_intrinsic, n_selected)."""
        return self.X if features is None else self.X[:, :, features]

    def residual(self, coef: Tensor, features: Tensor | None = None) -> Tensor:
        """``R_i = I_d - X_i beta_i``, shape (n_samples, d, d); coef of shape (n, n_selected, d)."""
        eye = torch.eye(self.d, dtype=self.dtype, device=self.device)
        return eye - torch.bmm(self.columns(features), coef)

    def loss(self, coef: Tensor, features: Tensor | None = None) -> float:
        """The least-squares part ``1/2 sum_i ||I_d - X_i beta_i||_F^2``."""
        return 0.5 * float(self.residual(coef, features).square().sum())

    def objective(self, coef: Tensor, lam: float, features: Tensor | None = None) -> float:
        """``J`` at ``coef`` for the per-group weight ``lam`` (see the module docstring)."""
        return self.loss(coef, features) + lam * float(group_norms(coef).sum())

    def correlations(self, residual: Tensor) -> Tensor:
        """Group norms of the loss gradient, ``||(X_i[:, j]^T R_i)_i||_F`` for every function.

        At a solution these are ``== lam`` on the support and ``<= lam`` elsewhere (the KKT
        conditions). Shape (n_functions,). One pass over ``X``: ``n p d^2`` multiply-adds.
        """
        g = torch.bmm(self.X.transpose(1, 2), residual)  # (n, p, d)
        return torch.linalg.vector_norm(g, dim=(0, 2))

    def lambda_max(self) -> float:
        """Smallest ``lam`` with solution 0: ``max_j sqrt(sum_i ||X_i[:, j]||^2)``."""
        return float(self.column_norms().max())

    def column_norms(self) -> Tensor:
        """``sqrt(sum_i ||X_i[:, j]||^2)`` per function, shape (n_functions,); <= sqrt(n)."""
        return self._column_norms


def group_norms(coef: Tensor) -> Tensor:
    """Frobenius norm of each function's coefficients across points and outputs.

    coef : Tensor of shape (n_samples, n_selected, d) -> Tensor of shape (n_selected,).
    """
    return torch.linalg.vector_norm(coef, dim=(0, 2))


def _normalised(projected_ndp: Tensor, ambient_sq: Tensor | None) -> TSLassoProblem:
    """Divide by gamma_j computed from ambient squared norms (n, p) (projected ones if None)."""
    if ambient_sq is None:
        ambient_sq = projected_ndp.square().sum(dim=1)
    gamma = ambient_sq.mean(dim=0).sqrt()
    safe = torch.where(gamma > 0, gamma, torch.ones_like(gamma))
    return TSLassoProblem(X=projected_ndp / safe, gamma=gamma)


def _check_bases(bases: Tensor, n: int, ambient: int) -> None:
    if bases.ndim != 3 or bases.shape[0] != n or bases.shape[1] != ambient:
        raise ValueError(
            f"tangent bases must have shape (n_samples={n}, d_model={ambient}, d_intrinsic), "
            f"got {tuple(bases.shape)}"
        )
    if bases.shape[2] < 1 or bases.shape[2] > ambient:
        raise ValueError(f"d_intrinsic must be in [1, {ambient}], got {bases.shape[2]}")


def problem_from_gradients(
    gradients: Tensor, bases: Tensor, normalize: bool = True
) -> TSLassoProblem:
    """Build the problem from ambient gradients and tangent bases.

    Parameters
    ----------
    gradients : Tensor of shape (n_samples, n_functions, d_model)
        ``gradients[i, j] = grad g_j(xi_i)`` in the ambient space.
    bases : Tensor of shape (n_samples, d_model, d_intrinsic)
        Orthonormal tangent bases ``T_i``.
    normalize : bool
        Apply the gamma normalisation (the paper's step 2; on by default).
    """
    if gradients.ndim != 3:
        raise ValueError(
            "gradients must have shape (n_samples, n_functions, d_model), "
            f"got {tuple(gradients.shape)}"
        )
    _check_bases(bases, gradients.shape[0], gradients.shape[2])
    bases = bases.to(gradients.dtype)
    projected = torch.einsum("nBd,npB->ndp", bases, gradients).contiguous()
    if not normalize:
        return TSLassoProblem(X=projected, gamma=torch.ones_like(projected[0, 0]))
    return _normalised(projected, gradients.square().sum(dim=2))


def problem_from_projected(
    projected: Tensor, ambient_norms: Tensor | None, normalize: bool = True
) -> TSLassoProblem:
    """Build the problem from gradients already projected on the tangent spaces.

    Parameters
    ----------
    projected : Tensor of shape (n_samples, n_functions, d_intrinsic)
        ``T_i^T grad g_j(xi_i)`` (what :meth:`Dictionary.projected_jacobian` returns).
    ambient_norms : Tensor of shape (n_samples, n_functions) or None
        ``||grad g_j(xi_i)||`` in the ambient space, needed for the gamma normalisation (the paper
        normalises *before* projection, which favours tangent gradient fields). ``None`` uses the
        projected norms instead and logs nothing: only do so when the gradients are tangent.
    normalize : bool
        Apply the gamma normalisation.
    """
    if projected.ndim != 3:
        raise ValueError(
            "projected gradients must have shape (n_samples, n_functions, d_intrinsic), "
            f"got {tuple(projected.shape)}"
        )
    X = projected.transpose(1, 2).contiguous()
    if not normalize:
        return TSLassoProblem(X=X, gamma=torch.ones_like(X[0, 0]))
    if ambient_norms is not None:
        if ambient_norms.shape != projected.shape[:2]:
            raise ValueError(
                f"ambient_norms must have shape {tuple(projected.shape[:2])}, "
                f"got {tuple(ambient_norms.shape)}"
            )
        ambient_norms = ambient_norms.to(X.dtype).square()
    return _normalised(X, ambient_norms)
