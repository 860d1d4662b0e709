"""Dictionaries behind one interface (:class:`Dictionary`), the SAE trainer and SAE files.

>>> from geomsae.sae import SAEConfig, train, load
>>> sae = train(SAEConfig(arch="topk", d_in=576, expansion=8, k=32), activations)  # doctest: +SKIP
>>> sae.save("runs/sae"); sae = load("runs/sae")                                 # doctest: +SKIP
"""

from geomsae.sae.architectures import (
    ARCHITECTURES,
    SAE,
    BatchTopKSAE,
    JumpReLUSAE,
    ReLUSAE,
    TiedReLUSAE,
    TopKSAE,
    build_sae,
)
from geomsae.sae.config import ARCHS, SAEConfig
from geomsae.sae.data import Chunk, ChunkedSource, as_source
from geomsae.sae.dictionary import Dictionary
from geomsae.sae.io import load_sae as load
from geomsae.sae.io import save_sae
from geomsae.sae.metrics import (
    SAEMetrics,
    SplicedMetrics,
    evaluate,
    plot_feature_density,
    spliced_metrics,
)
from geomsae.sae.stream import stream_from_model
from geomsae.sae.trainer import train, train_many

__all__ = [
    "ARCHITECTURES",
    "ARCHS",
    "BatchTopKSAE",
    "Chunk",
    "ChunkedSource",
    "Dictionary",
    "JumpReLUSAE",
    "ReLUSAE",
    "SAE",
    "SAEConfig",
    "SAEMetrics",
    "SplicedMetrics",
    "TiedReLUSAE",
    "TopKSAE",
    "as_source",
    "build_sae",
    "evaluate",
    "load",
    "plot_feature_density",
    "save_sae",
    "spliced_metrics",
    "stream_from_model",
    "train",
    "train_many",
]
