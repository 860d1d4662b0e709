"""Safetensors shards on disk: atomic writes, checksums and zero-copy memory maps.

A shard is a plain ``.safetensors`` file (readable by ``safetensors.torch.load_file``). Reading
goes through :func:`memmap_tensor`, which parses the safetensors header itself and returns a
read-only ``numpy.memmap`` of one tensor, so opening a cache of any size costs no memory.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import numpy as np
import torch

from geomsae.atomic import write_bytes_atomic

_NUMPY_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": np.uint16,  # reinterpreted as torch.bfloat16 by the store
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "U8": np.uint8,
}

STORAGE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
"""Activation dtypes a cache can be written in."""


class CacheError(RuntimeError):
    """An activation cache is missing, incomplete, corrupt or does not match the request."""


def write_shard(path: Path, tensors: dict[str, torch.Tensor]) -> str:
    """Atomically write ``tensors`` as a safetensors file; return its SHA-256 (hex)."""
    from safetensors.torch import save

    data = save({k: v.contiguous() for k, v in tensors.items()})
    write_bytes_atomic(path, data)
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path, chunk: int = 1 << 24) -> str:
    """SHA-256 (hex) of a file, read in 16 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_header(path: Path) -> tuple[dict, int]:
    """The safetensors header of ``path`` and the byte offset where the data starts.

    Raises
    ------
    CacheError
        If the file is missing, truncated or not a safetensors file.
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n <= 0 or 8 + n > size:
                raise ValueError("header length out of range")
            header = json.loads(f.read(n))
    except FileNotFoundError as exc:
        raise CacheError(f"shard {path} is missing") from exc
    except (OSError, ValueError, struct.error) as exc:
        raise CacheError(f"shard {path} is not a readable safetensors file ({exc})") from exc
    header.pop("__metadata__", None)
    data_start = 8 + n
    end = max((v["data_offsets"][1] for v in header.values()), default=0)
    if data_start + end != size:
        raise CacheError(
            f"shard {path} is truncated or padded: {size} bytes on disk, header says "
            f"{data_start + end}"
        )
    return header, data_start


def memmap_tensor(path: Path, name: str, header: dict, data_start: int) -> np.memmap:
    """A read-only memory map of tensor ``name`` in shard ``path`` (header from read_header)."""
    if name not in header:
        raise CacheError(f"shard {path} has no tensor {name!r} (it has {sorted(header)})")
    info = header[name]
    dtype = _NUMPY_DTYPES.get(info["dtype"])
    if dtype is None:
        raise CacheError(f"shard {path}: unsupported dtype {info['dtype']} for {name!r}")
    shape = tuple(info["shape"])
    begin = info["data_offsets"][0]
    if int(np.prod(shape)) == 0:
        return np.empty(shape, dtype=dtype)  # np.memmap cannot map zero bytes
    return np.memmap(path, dtype=dtype, mode="r", offset=data_start + begin, shape=shape)


def to_torch(array: np.ndarray, storage_dtype: str) -> torch.Tensor:
    """Copy rows read from a memory map into a torch tensor of the stored dtype."""
    t = torch.from_numpy(np.require(array, requirements=["C", "W"]))
    if storage_dtype == "bfloat16":
        t = t.view(torch.bfloat16)
    return t
