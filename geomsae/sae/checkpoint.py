"""Training checkpoints: one safetensors file, written atomically (temporary file + rename).

It holds, for every SAE of a run, the module state, Adam's moments and step, the per-feature
samples-since-fired counters and the resampling generator state, and in its metadata the step,
the configs and the training history. A run killed at any moment (even SIGKILL) finds either the
previous or the new checkpoint intact, so it resumes having lost at most one interval.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save

from geomsae.atomic import write_bytes_atomic

FORMAT = "geomsae-sae-checkpoint-v1"
FILENAME = "checkpoint.safetensors"


def run_tensors(prefix: str, module, optimizer, counters, generator) -> dict[str, torch.Tensor]:
    """Flatten one SAE's training state into named tensors."""
    out = {f"{prefix}.module.{k}": v.detach().cpu() for k, v in module.state_dict().items()}
    for i, p in enumerate(optimizer.param_groups[0]["params"]):
        st = optimizer.state.get(p, {})
        for name, v in st.items():
            out[f"{prefix}.opt.{i}.{name}"] = torch.as_tensor(v).detach().cpu()
    out[f"{prefix}.counters"] = counters.detach().cpu()
    out[f"{prefix}.generator"] = generator.get_state()
    return out


def load_run(prefix: str, tensors: dict[str, torch.Tensor], module, optimizer, counters, generator):
    """Restore what :func:`run_tensors` saved (in place)."""
    mod = {k[len(prefix) + 8 :]: v for k, v in tensors.items() if k.startswith(f"{prefix}.module.")}
    module.load_state_dict(mod)
    params = optimizer.param_groups[0]["params"]
    for i, p in enumerate(params):
        st = {}
        head = f"{prefix}.opt.{i}."
        for k, v in tensors.items():
            if k.startswith(head):
                st[k[len(head) :]] = v.to(p.device) if v.ndim else v
        if st:
            optimizer.state[p] = st
    counters.copy_(tensors[f"{prefix}.counters"])
    generator.set_state(tensors[f"{prefix}.generator"])


def write_checkpoint(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Atomically write tensors and JSON metadata to ``path``."""
    meta = {"format": FORMAT, "meta": json.dumps(meta, allow_nan=True)}
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    write_bytes_atomic(path, save(tensors, metadata=meta))


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and metadata of a checkpoint; ValueError if it is not one."""
    with safe_open(str(path), framework="pt", device="cpu") as f:
        header = f.metadata() or {}
        if header.get("format") != FORMAT:
            raise ValueError(f"{path} is not a geomsae SAE checkpoint")
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    return tensors, json.loads(header["meta"])
