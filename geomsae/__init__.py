"""geomsae: manifold learning for sparse-autoencoder interpretability.

Layers, bottom to top (a module imports only from layers below it):

0-1  ``models``, ``text``, ``activations``      model loading, corpus, harvest + cache
2    ``sae``                                    dictionaries behind one interface, trainer, io
3    ``neighbors``, ``tangent``, ``dimension``,  geometry on arrays (scikit-learn style)
     ``graph``, ``manifolds``
4    ``tslasso``, ``superposition``             methods

Submodules are imported lazily, so ``import geomsae`` is cheap.
"""

from __future__ import annotations

import importlib
import logging

__version__ = "0.1.0.dev0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

_SUBMODULES = {
    "models",
    "text",
    "activations",
    "sae",
    "neighbors",
    "tangent",
    "dimension",
    "graph",
    "manifolds",
    "tslasso",
    "superposition",
    "baselines",
}


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_SUBMODULES) + ["__version__"]
