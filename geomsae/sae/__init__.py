"""Dictionaries behind one interface (:class:`Dictionary`), the SAE trainer and SAE files."""

from geomsae.sae.dictionary import Dictionary

__all__ = ["Dictionary"]
