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

    def subset(self, features) -> FeatureSubset:
        """A view of this dictionary restricted to ``features`` (see :class:`FeatureSubset`)."""
        return FeatureSubset(self, features)


class FeatureSubset(Dictionary):
    """The features ``features`` of a parent dictionary, as a dictionary of their own.

    Activations and gates are computed by the parent on all its features, then restricted, so
    the restriction is exact for TopK-style encoders whose gate depends on every feature.
    ``decode`` reconstructs from the selected features only (the others set to zero).

    Parameters
    ----------
    parent : Dictionary
    features : sequence of int or Tensor of shape (n_selected,)
        Parent indices: ``self.features[j]`` is the parent index of feature ``j``.
    """

    def __init__(self, parent: Dictionary, features) -> None:
        super().__init__()
        idx = torch.as_tensor(features, dtype=torch.long).flatten().cpu()
        if idx.numel() == 0:
            raise ValueError("FeatureSubset needs at least one feature index")
        if int(idx.min()) < 0 or int(idx.max()) >= parent.n_features:
            raise ValueError(
                f"feature indices must lie in [0, {parent.n_features}), "
                f"got min {int(idx.min())}, max {int(idx.max())}"
            )
        self.parent = parent
        self.register_buffer("features", idx, persistent=False)
        self.d_in = parent.d_in
        self.n_features = int(idx.numel())

    def _idx(self, like: Tensor) -> Tensor:
        return self.features.to(like.device)

    def encode(self, x: Tensor) -> Tensor:
        codes = self.parent.encode(x)
        return codes[:, self._idx(codes)]

    def decode(self, codes: Tensor) -> Tensor:
        full = codes.new_zeros(codes.shape[0], self.parent.n_features)
        full[:, self._idx(codes)] = codes
        return self.parent.decode(full)

    @property
    def feature_directions(self) -> Tensor:
        w = self.parent.feature_directions
        return w[self._idx(w)]

    @property
    def encoder_directions(self) -> Tensor:
        w = self.parent.encoder_directions
        return w[self._idx(w)]

    def jacobian_gate(self, x: Tensor) -> Tensor:
        gate = self.parent.jacobian_gate(x)
        return gate[:, self._idx(gate)]
