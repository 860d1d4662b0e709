"""Harvest transformer activations into a memory-mapped on-disk cache, and read them back.

>>> from geomsae.activations import harvest, open_cache
>>> store = harvest(20_000, "runs/harvest", layers=6)          # doctest: +SKIP
>>> store = open_cache("runs/harvest")                          # doctest: +SKIP
>>> for x in store.iter_batches(4096, shuffle=True, seed=0):   # doctest: +SKIP
...     ...                                                     # x: (4096, d_in) float32

Anything that takes activations accepts an :class:`ActivationSource`: an
:class:`ActivationStore` (a cache folder), an :class:`ArrayStore` (an in-memory array), or use
:func:`as_activation_store` to accept either plus plain arrays and paths.
"""

from geomsae.activations.harvester import HarvestConfig, default_cache_dir, harvest
from geomsae.activations.hooks import DEFAULT_HOOK, hook_names, stop_layer
from geomsae.activations.metadata import TokenMetadata
from geomsae.activations.shards import CacheError
from geomsae.activations.store import (
    ActivationSource,
    ActivationStore,
    ArrayStore,
    as_activation_store,
    open_cache,
)

__all__ = [
    "DEFAULT_HOOK",
    "ActivationSource",
    "ActivationStore",
    "ArrayStore",
    "CacheError",
    "HarvestConfig",
    "TokenMetadata",
    "as_activation_store",
    "default_cache_dir",
    "harvest",
    "hook_names",
    "open_cache",
    "stop_layer",
]
