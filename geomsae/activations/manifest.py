"""The cache folder's layout and ``manifest.json``: names, schema and integrity checks.

A complete cache folder holds::

    manifest.json                 what was harvested (see below) and the list of shards
    shard-r{rank}-{k:05d}.safetensors   one tensor per hook (n_rows, d_in) + metadata columns
    vocab.json                    decoded string of every token id (for contexts)
    documents.json                document ids of the corpus, by index

``manifest.json`` records ``key`` (model, hooks, corpus fingerprint, context length,
special-token policy, dtype, seed, window grouping: everything that changes the rows), its hash
``key_hash``, ``shapes`` per hook, ``d_in``, ``n_tokens``, ``world_size`` and, per shard, its
file, rank, rows, window range and SHA-256; ``content_hash`` hashes the shard checksums in
order. While a harvest runs, each rank keeps its progress in ``progress-rank{r}.json``
instead; the manifest appears when every rank is done.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from geomsae.activations.metadata import COLUMNS
from geomsae.activations.shards import STORAGE_DTYPES, CacheError, file_sha256, read_header

FORMAT = "geomsae-activations"
VERSION = 1
MANIFEST = "manifest.json"
VOCAB = "vocab.json"
DOCUMENTS = "documents.json"


def shard_name(rank: int, index: int) -> str:
    """File name of shard ``index`` of ``rank``."""
    return f"shard-r{rank}-{index:05d}.safetensors"


def progress_path(folder: Path, rank: int) -> Path:
    """Path of the progress file of ``rank`` during a harvest."""
    return folder / f"progress-rank{rank}.json"


def key_hash(key: dict) -> str:
    """SHA-256 (hex) of the canonical JSON of a cache key."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def content_hash(shards: list[dict]) -> str:
    """SHA-256 (hex) over the shards' checksums, in order."""
    return hashlib.sha256("".join(s["sha256"] for s in shards).encode()).hexdigest()


def key_differences(found: dict, wanted: dict) -> list[str]:
    """Human-readable list of the fields where two cache keys differ."""
    diffs = []
    for k in sorted(set(found) | set(wanted)):
        if found.get(k) != wanted.get(k):
            diffs.append(f"{k}: cache has {found.get(k)!r}, requested {wanted.get(k)!r}")
    return diffs


def read_json(path: Path, what: str) -> dict:
    """Read a JSON object, turning any failure into one clear :class:`CacheError`."""
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise CacheError(f"{what} {path} is missing") from exc
    except (OSError, ValueError) as exc:
        raise CacheError(
            f"{what} {path} is corrupt ({exc}); delete the folder and harvest again"
        ) from exc
    if not isinstance(obj, dict):
        raise CacheError(f"{what} {path} is corrupt (not a JSON object)")
    return obj


def read_manifest(folder: Path) -> dict:
    """Load and schema-check ``folder/manifest.json``.

    Raises
    ------
    CacheError
        Missing (with a hint when an interrupted harvest left progress files), corrupt, or
        written by another format or version.
    """
    path = folder / MANIFEST
    if not path.exists():
        if not folder.is_dir():
            raise CacheError(f"activation cache {folder} does not exist")
        if list(folder.glob("progress-rank*.json")):
            raise CacheError(
                f"activation cache {folder} is incomplete (an interrupted harvest); run the same "
                "harvest again to resume it"
            )
        raise CacheError(f"{folder} is not an activation cache (no {MANIFEST})")
    manifest = read_json(path, "manifest")
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise CacheError(
            f"{path} is not a {FORMAT} v{VERSION} manifest (format={manifest.get('format')!r}, "
            f"version={manifest.get('version')!r})"
        )
    needed = ("key", "key_hash", "hooks", "d_in", "dtype", "n_tokens", "shards", "content_hash")
    missing = [k for k in needed if k not in manifest]
    if missing:
        raise CacheError(f"manifest {path} is corrupt: missing fields {missing}")
    if key_hash(manifest["key"]) != manifest["key_hash"]:
        raise CacheError(f"manifest {path} is corrupt: its key does not match key_hash")
    if content_hash(manifest["shards"]) != manifest["content_hash"]:
        raise CacheError(f"manifest {path} is corrupt: shard list does not match content_hash")
    if sum(s["rows"] for s in manifest["shards"]) != manifest["n_tokens"]:
        raise CacheError(f"manifest {path} is corrupt: shard rows do not add up to n_tokens")
    if manifest["dtype"] not in STORAGE_DTYPES:
        raise CacheError(f"manifest {path}: unknown dtype {manifest['dtype']!r}")
    return manifest


_SAFETENSORS_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}


def check_shard(
    folder: Path, entry: dict, hooks: list[str], d_in: int, dtype: str, verify: bool
) -> tuple[dict, int]:
    """Check one shard against its manifest entry; return its header and data offset.

    Always checks the file size, tensor names, shapes and dtypes (cheap); with ``verify`` also
    the SHA-256 of the whole file.
    """
    path = folder / entry["file"]
    header, start = read_header(path)
    rows = entry["rows"]
    for hook in hooks:
        info = header.get(hook)
        if info is None or info["shape"] != [rows, d_in]:
            got = None if info is None else info["shape"]
            raise CacheError(
                f"shard {path} does not match the manifest: {hook!r} has shape {got}, "
                f"expected {[rows, d_in]}"
            )
        if info["dtype"] != _SAFETENSORS_DTYPES[dtype]:
            raise CacheError(f"shard {path}: {hook!r} is {info['dtype']}, manifest says {dtype}")
    for col in COLUMNS:
        if col not in header or header[col]["shape"] != [rows]:
            raise CacheError(f"shard {path} lacks the metadata column {col!r} of {rows} rows")
    if verify and file_sha256(path) != entry["sha256"]:
        raise CacheError(
            f"shard {path} is corrupt (SHA-256 differs from the manifest); delete the cache "
            "folder (or pass overwrite=True / --overwrite) and harvest again"
        )
    return header, start
