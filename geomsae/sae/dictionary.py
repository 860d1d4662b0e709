"""The one small interface every dictionary implements (SAEs now, PCA/ICA/... baselines later).

A dictionary maps a point ``x`` of shape ``(d_in,)`` to feature activations ``f(x)`` of shape
``(n_features,)`` (``encode``) and back (``decode``). Tangent Space Lasso needs the gradient of
each feature activation at given points; for piecewise-linear encoders (ReLU, TopK, BatchTopK,
JumpReLU, linear baselines) it has the closed form

    d f_j / d x (x) = gate_j(x) * s * w_j

where ``w_j`` is row ``j`` of :attr:`Dictionary.encoder_directions` (shape ``(n_features, d_in)``),
``s`` an input scaling folded into it, and ``gate_j(x)`` in {0, 1} says whether feature ``j`` is
on the linear piece at ``x`` (``jacobian_gate``). Subclasses provide ``encode``, ``decode``,
``feature_directions``, ``encoder_directions`` and ``jacobian_gate``; the Jacobian methods below
are then exact and never materialise more than a block of ``(n, f, d_in)`` at a time.
"""

from __future__ import annotations

import abc

import torch
from torch import Tensor, nn


class Dictionary(nn.Module, abc.ABC):
    """Base class of all geomsae dictionaries.

    Attributes
    ----------
    d_in : int
        Dimension of the input points (``d_model`` of the hooked activations).
    n_features : int
        Number of dictionary features (``d_sae`` for SAEs).
    """

    d_in: int
    n_features: int

    @abc.abstractmethod
    def encode(self, x: Tensor) -> Tensor:
        """Feature activations (n_samples, n_features) of x, shape (n_samples, d_in)."""

    @abc.abstractmethod
    def decode(self, codes: Tensor) -> Tensor:
        """Reconstruction of shape (n_samples, d_in) from codes of shape (n_samples, n_features)."""

    @property
    @abc.abstractmethod
    def feature_directions(self) -> Tensor:
        """Decoder directions, shape (n_features, d_in) (what a feature writes into the stream)."""

    @property
    @abc.abstractmethod
    def encoder_directions(self) -> Tensor:
        """Activation gradients on their linear piece, shape (n_features, d_in)."""

    @abc.abstractmethod
    def jacobian_gate(self, x: Tensor) -> Tensor:
        """Gate in {0, 1}, shape (n_samples, n_features): 1 where df_j/dx = w_j."""

    def forward(self, x: Tensor) -> Tensor:
        """Reconstruction ``decode(encode(x))``."""
        return self.decode(self.encode(x))

    def jacobian(self, x: Tensor, features: Tensor | None = None) -> Tensor:
        """Exact feature Jacobians at points ``x``.

        Parameters
        ----------
        x : Tensor of shape (n_samples, d_in)
        features : Tensor of int, optional
            Indices of the features wanted (all by default).

        Returns
        -------
        Tensor of shape (n_samples, n_selected, d_in)
            ``J[i, j] = d f_{features[j]} / d x`` at ``x[i]``.
        """
        gate = self.jacobian_gate(x)
        w = self.encoder_directions
        if features is not None:
            gate, w = gate[:, features], w[features]
        return gate.to(w.dtype)[:, :, None] * w[None, :, :]

    def projected_jacobian(
        self, x: Tensor, bases: Tensor, features: Tensor | None = None
    ) -> Tensor:
        """Feature gradients projected on local tangent bases, without the full Jacobian.

        Parameters
        ----------
        x : Tensor of shape (n_samples, d_in)
        bases : Tensor of shape (n_samples, d_in, d_intrinsic)
            Orthonormal tangent bases ``T_i``.
        features : Tensor of int, optional

        Returns
        -------
        Tensor of shape (n_samples, n_selected, d_intrinsic)
            ``T_i^T grad f_j(x_i)`` for every point ``i`` and selected feature ``j``.
        """
        gate = self.jacobian_gate(x)
        w = self.encoder_directions
        if features is not None:
            gate, w = gate[:, features], w[features]
        proj = torch.einsum("fD,nDd->nfd", w, bases.to(w.dtype))
        return gate.to(proj.dtype)[:, :, None] * proj
