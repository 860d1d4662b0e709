"""Toy Models of Superposition (Elhage et al. 2022), many instances trained in one tensor.

Each instance ``k`` has ``W_k`` of shape ``(d_hidden, n_features)`` and a bias ``b_k``; its
output is ``x' = ReLU(W_k^T W_k x + b_k)`` (the ReLU output model) or ``W_k^T W_k x + b_k``
(the linear baseline). Inputs are sparse: feature ``i`` is present with probability ``1 - S``
(``feature_probability``, one value per instance) with a ``U[0, 1]`` value. The loss is the
importance-weighted squared error ``sum_i I_i (x_i - x'_i)^2``, averaged over the batch and summed
over instances, so all instances train independently in one AdamW step.

Sweeps are just instance axes: repeat a feature probability over seeds, give each instance its own
importance vector, and read off the geometry (columns of ``W``) and feature dimensionalities.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from geomsae.superposition.dimensionality import feature_dimensionality

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ToyTrainConfig:
    """Optimisation settings of the toy models (Elhage et al.'s defaults)."""

    steps: int = 10_000
    """AdamW steps."""
    batch_size: int = 1024
    """Samples per step (per instance)."""
    lr: float = 1e-3
    """Learning rate (constant)."""
    weight_decay: float = 1e-2
    """AdamW weight decay."""

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(
                f"steps and batch_size must be >= 1, got {self.steps}, {self.batch_size}"
            )
        if self.lr <= 0 or self.weight_decay < 0:
            raise ValueError(
                f"need lr > 0 and weight_decay >= 0, got {self.lr}, {self.weight_decay}"
            )


class ToyModel(nn.Module):
    """``n_instances`` independent toy models held in one tensor.

    Parameters
    ----------
    n_instances, n_features, d_hidden : int
    activation : {"relu", "linear"}
        ReLU output model or its linear baseline.
    generator : torch.Generator, optional
        For the Xavier-normal initialisation of ``W``.
    """

    def __init__(
        self,
        n_instances: int,
        n_features: int,
        d_hidden: int,
        activation: str = "relu",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if activation not in ("relu", "linear"):
            raise ValueError(f"activation must be 'relu' or 'linear', got {activation!r}")
        self.activation = activation
        std = (2.0 / (n_features + d_hidden)) ** 0.5
        W = torch.randn(n_instances, d_hidden, n_features, generator=generator) * std
        self.W = nn.Parameter(W)  # (n_instances, d_hidden, n_features)
        self.b = nn.Parameter(torch.zeros(n_instances, n_features))

    def forward(self, x: Tensor) -> Tensor:
        """Reconstruction of x, shape (batch, n_instances, n_features)."""
        h = torch.einsum("bif,ihf->bih", x, self.W)
        out = torch.einsum("bih,ihf->bif", h, self.W) + self.b
        return torch.relu(out) if self.activation == "relu" else out


def sample_sparse(
    batch_size: int, feature_probability: Tensor, n_features: int, generator: torch.Generator
) -> Tensor:
    """Inputs of shape (batch, n_instances, n_features): U[0, 1] values, present w.p. 1 - S."""
    shape = (batch_size, feature_probability.shape[0], n_features)
    dev = feature_probability.device
    values = torch.rand(shape, generator=generator, device=dev)
    present = (
        torch.rand(shape, generator=generator, device=dev) < feature_probability[None, :, None]
    )
    return values * present


@dataclasses.dataclass(frozen=True)
class ToyModelResult:
    """Trained toy models.

    Attributes
    ----------
    W : ndarray of shape (n_instances, d_hidden, n_features)
        Column ``i`` of ``W[k]`` is where instance ``k`` puts feature ``i``.
    b : ndarray of shape (n_instances, n_features)
    feature_probability : ndarray of shape (n_instances,)
        ``1 - S`` of each instance.
    importance : ndarray of shape (n_instances, n_features)
    loss : ndarray of shape (n_instances,)
        Importance-weighted MSE per sample over the last 1% of steps.
    dimensionality : ndarray of shape (n_instances, n_features)
        ``D_i`` of every feature of every instance.
    activation : str
    """

    W: np.ndarray
    b: np.ndarray
    feature_probability: np.ndarray
    importance: np.ndarray
    loss: np.ndarray
    dimensionality: np.ndarray
    activation: str

    @property
    def norms(self) -> np.ndarray:
        """``||W_i||`` per instance and feature, shape (n_instances, n_features)."""
        return np.linalg.norm(self.W, axis=1)


def importance_decay(n_features: int, base: float = 0.9) -> np.ndarray:
    """Importance ``base^i`` (Elhage et al.'s 0.9^i for the 5-in-2 demonstrations)."""
    return base ** np.arange(n_features, dtype=float)


def train_toy_models(
    n_features: int,
    d_hidden: int,
    feature_probability: np.ndarray | list[float],
    importance: np.ndarray | None = None,
    activation: str = "relu",
    config: ToyTrainConfig | None = None,
    random_state: int = 0,
    device: str | torch.device = "cpu",
) -> ToyModelResult:
    """Train one toy model per entry of ``feature_probability``, all at once.

    Parameters
    ----------
    n_features, d_hidden : int
        ``n`` and ``m`` (5 and 2 for the pentagon).
    feature_probability : array of shape (n_instances,)
        ``1 - S`` per instance; repeat a value to train several seeds of it.
    importance : array of shape (n_features,) or (n_instances, n_features), optional
        Per-feature loss weights (all ones by default).
    activation : {"relu", "linear"}
    config : ToyTrainConfig, optional
    random_state : int
    device : str or torch.device

    Returns
    -------
    ToyModelResult
    """
    config = config or ToyTrainConfig()
    dev = torch.device(device)
    prob = torch.as_tensor(np.asarray(feature_probability, dtype=np.float32), device=dev)
    if prob.ndim != 1 or prob.numel() == 0:
        raise ValueError("feature_probability must be a non-empty 1-D array (one per instance)")
    if bool(((prob <= 0) | (prob > 1)).any()):
        raise ValueError("feature_probability (1 - S) must lie in (0, 1]")
    if n_features < 1 or d_hidden < 1:
        raise ValueError(f"need n_features >= 1 and d_hidden >= 1, got {n_features}, {d_hidden}")
    n_inst = prob.shape[0]
    imp = np.ones(n_features) if importance is None else np.asarray(importance, dtype=float)
    imp = np.broadcast_to(imp, (n_inst, n_features)) if imp.ndim == 1 else imp
    if imp.shape != (n_inst, n_features) or (imp < 0).any():
        raise ValueError(
            f"importance must be non-negative with shape ({n_features},) or ({n_inst}, "
            f"{n_features}), got {np.shape(importance)}"
        )
    imp_t = torch.tensor(np.array(imp), dtype=torch.float32, device=dev)

    gen_init = torch.Generator().manual_seed(int(random_state))
    model = ToyModel(n_inst, n_features, d_hidden, activation, gen_init).to(dev)
    gen = torch.Generator(device=dev).manual_seed(int(random_state) + 1)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    tail = max(1, config.steps // 100)
    tail_loss = torch.zeros(n_inst, device=dev)
    for step in tqdm(range(config.steps), desc="toy models", leave=False, mininterval=2):
        x = sample_sparse(config.batch_size, prob, n_features, gen)
        per_inst = (imp_t * (x - model(x)) ** 2).sum(dim=2).mean(dim=0)  # (n_instances,)
        opt.zero_grad(set_to_none=True)
        per_inst.sum().backward()
        opt.step()
        if step >= config.steps - tail:
            tail_loss += per_inst.detach()
    W = model.W.detach().cpu().double().numpy()
    dims = np.stack([feature_dimensionality(Wk.T) for Wk in W])  # instances, not points
    logger.info("trained %d toy models (%s), mean loss %.4g", n_inst, activation, tail_loss.mean())
    return ToyModelResult(
        W=W,
        b=model.b.detach().cpu().double().numpy(),
        feature_probability=prob.cpu().double().numpy(),
        importance=np.array(imp, dtype=float),
        loss=(tail_loss / tail).cpu().double().numpy(),
        dimensionality=dims,
        activation=activation,
    )


def is_regular_polygon(W: np.ndarray, k: int, tol: float = 0.05, min_norm: float = 0.5) -> bool:
    """Whether ``k`` columns of a 2-D ``W`` (d_hidden=2) form a regular ``k``-gon around 0.

    Checks that exactly ``k`` features are represented (norm ``>= min_norm``), each with
    ``|D_i - 2/k| <= tol``, and that their angles are spaced ``2 pi / k`` apart within ``tol``
    radians.
    """
    W = np.asarray(W, dtype=float)
    if W.ndim != 2 or W.shape[0] != 2:
        raise ValueError(f"W must have shape (2, n_features), got {W.shape}")
    norms = np.linalg.norm(W, axis=0)
    kept = norms >= min_norm
    if kept.sum() != k:
        return False
    D = feature_dimensionality(W[:, kept].T)
    angles = np.sort(np.arctan2(W[1, kept], W[0, kept]))
    gaps = np.diff(np.concatenate([angles, angles[:1] + 2 * np.pi]))
    return bool(np.all(np.abs(D - 2 / k) <= tol) and np.all(np.abs(gaps - 2 * np.pi / k) <= tol))
