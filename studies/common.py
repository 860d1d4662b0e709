"""Shared plumbing of the studies: common CLI flags, seeding, logging and the report folder."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from geomsae.activations.hooks import DEFAULT_HOOK
from geomsae.atomic import write_text_atomic

logger = logging.getLogger("studies")


@dataclasses.dataclass(frozen=True)
class LayerStudyConfig:
    """Fields shared by the studies of one layer's residual stream (subclasses add their own)."""

    out: Path = Path("runs/study")
    """Output folder of the report (subclasses set their own default)."""
    model: str | None = None
    """Model name (None: the embedded SmolLM2-135M-Instruct)."""
    device: str = "auto"
    """Torch device."""
    seed: int = 0
    """Seed of every random choice of the study (harvest order, SAE init, data order, samples)."""
    layer: int = 6
    """Layer whose residual stream is hooked."""
    hook: str = DEFAULT_HOOK
    """Hook name template ({layer} is substituted)."""


def base_parser(description: str, default_out: str) -> argparse.ArgumentParser:
    """An argument parser with the flags every study takes (--out, --model, --device, --seed)."""
    p = argparse.ArgumentParser(
        description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--out", default=default_out, help="output folder for the report")
    p.add_argument(
        "--model", default=None, help="model name (default: the embedded SmolLM2-135M-Instruct)"
    )
    p.add_argument("--device", default="auto", help="'auto', 'cpu', 'cuda', 'cuda:1', ...")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def setup_logging(verbose: bool = False) -> None:
    """Log to stderr at INFO (DEBUG with --verbose) for the geomsae and studies loggers."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("matplotlib", "PIL", "urllib3", "filelock", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (studies only; the library takes explicit random_state)."""
    import torch

    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - third-party code may use the global RNG
    torch.manual_seed(seed)


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _jsonable(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if hasattr(obj, "tolist"):  # torch tensors
        return obj.tolist()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    write_text_atomic(path, text)


def write_json(path: Path, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON (dataclasses, arrays and tensors converted)."""
    write_atomic(path, json.dumps(_jsonable(obj), indent=2, allow_nan=False) + "\n")


def save_figure(fig, path: Path) -> Path:
    """Save a matplotlib figure as PNG (150 dpi, tight) and close it."""
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(fig)
    return path


def markdown_table(rows: list[dict[str, Any]], floatfmt: str = ".4g") -> str:
    """A GitHub Markdown table from a list of dicts with the same keys."""
    if not rows:
        return "(none)\n"
    keys = list(rows[0])

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return format(v, floatfmt)
        return str(v)

    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(fmt(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines) + "\n"


class Timer:
    """Collects named wall-clock timings: ``with timer("harvest"): ...``; ``timer.timings``."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t0
            logger.info("%s: %.1f s", name, self.timings[name])
