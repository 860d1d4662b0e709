"""Problems from the two kinds of dictionaries that are not plain gradient arrays.

* :func:`dictionary_problem` -- a geomsae :class:`~geomsae.sae.dictionary.Dictionary` (SAE): the
  closed-form Jacobians ``df_j/dx = gate_ij w_j`` projected on the tangent bases without building
  the (n, n_features, d_model) Jacobian; the ambient norms needed by the gamma normalisation are
  ``gate_ij ||w_j||``.
* :func:`function_jacobians` -- any differentiable row-wise callable, by ``torch.func`` autograd.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from geomsae.sae.dictionary import Dictionary
from geomsae.tslasso.problem import TSLassoProblem, problem_from_projected


def dictionary_problem(
    dictionary: Dictionary,
    x: Tensor,
    bases: Tensor,
    normalize: bool = True,
    dtype: torch.dtype | None = None,
) -> TSLassoProblem:
    """The TSLasso problem of a dictionary's features at points ``x``.

    Parameters
    ----------
    dictionary : Dictionary
    x : Tensor of shape (n_samples, d_in)
    bases : Tensor of shape (n_samples, d_in, d_intrinsic)
        Orthonormal tangent bases at ``x``.
    normalize : bool
        Gamma normalisation with the ambient norms ``gate_ij ||w_j||``.
    dtype : torch.dtype, optional
        Of the problem (default: the dictionary's). Features never on at any point get gamma 0.
    """
    if x.ndim != 2 or x.shape[1] != dictionary.d_in:
        raise ValueError(
            f"x must have shape (n_samples, d_in={dictionary.d_in}), got {tuple(x.shape)}"
        )
    w = dictionary.encoder_directions
    with torch.no_grad():
        x = x.to(device=w.device, dtype=w.dtype)
        bases = bases.to(device=w.device, dtype=w.dtype)
        gate = dictionary.jacobian_gate(x).to(w.dtype)  # (n, f)
        ambient = gate * w.norm(dim=1)[None, :]
        projected = dictionary.projected_jacobian(x, bases)  # (n, f, d)
    dtype = dtype or w.dtype
    return problem_from_projected(projected.to(dtype), ambient.to(dtype), normalize)


def function_jacobians(fn: Callable[[Tensor], Tensor], x: Tensor, chunk_size: int = 256) -> Tensor:
    """Per-point Jacobians of a row-wise differentiable function, by ``torch.func`` autograd.

    Parameters
    ----------
    fn : callable
        Maps a batch of shape (m, d_in) to (m, n_functions), each output row depending only on
        its input row (an encoder, a coordinate map). Must work under ``torch.func.vmap``.
    x : Tensor of shape (n_samples, d_in)
    chunk_size : int
        Points differentiated at once (memory ``chunk_size * n_functions * d_in``).

    Returns
    -------
    Tensor of shape (n_samples, n_functions, d_in)
    """
    from torch.func import jacrev, vmap

    if x.ndim != 2:
        raise ValueError(f"x must have shape (n_samples, d_in), got {tuple(x.shape)}")

    def one(xi: Tensor) -> Tensor:
        return fn(xi[None])[0]

    jac = vmap(jacrev(one))
    return torch.cat([jac(x[s : s + chunk_size]) for s in range(0, x.shape[0], chunk_size)])
