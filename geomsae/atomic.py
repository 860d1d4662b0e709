"""Atomic file writes: a temporary file in the target folder, fsync, then a rename.

A reader never sees a half-written file, and a crash leaves either the old file or the new one
(plus, at worst, a ``.geomsae-*.tmp`` file that the activation cache's resume logic removes).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

TEMP_PREFIX = ".geomsae-"
"""Name prefix of the temporary files (so interrupted writes can be found and removed)."""


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, creating the parent folder if needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=TEMP_PREFIX, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    write_bytes_atomic(path, text.encode())


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON (no NaN/Inf) to ``path`` atomically."""
    write_text_atomic(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")
