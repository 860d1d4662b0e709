"""SAE folders on disk: SAELens' format (written and read) and sparsify's (read). No pickles.

Written folder (SAELens reads it with ``SAE.load_from_disk``)::

    cfg.json                  architecture, d_in, d_sae, k, hook_name, model_name, ... plus a
                              "geomsae" block with the full SAEConfig and training state
    sae_weights.safetensors   W_enc (d_in, d_sae), b_enc (d_sae,), W_dec (d_sae, d_in), b_dec
                              (d_in,) and threshold (d_sae,) for jumprelu, all in raw units

Architecture names in SAELens: ``relu``/``tied_relu`` -> "standard", ``topk`` -> "topk",
``jumprelu`` -> "jumprelu", and ``batchtopk`` -> "jumprelu" with every threshold equal to the
BatchTopK inference threshold (what SAELens itself does). The "geomsae" block lets
:func:`load` rebuild the exact geomsae architecture.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

from geomsae.atomic import write_bytes_atomic
from geomsae.sae.architectures import SAE, build_sae
from geomsae.sae.config import SAEConfig

logger = logging.getLogger(__name__)

SAELENS_WEIGHTS = "sae_weights.safetensors"
SPARSIFY_WEIGHTS = "sae.safetensors"
CFG = "cfg.json"
_SAELENS_ARCH = {
    "relu": "standard",
    "tied_relu": "standard",
    "topk": "topk",
    "batchtopk": "jumprelu",
    "jumprelu": "jumprelu",
}


def saelens_tensors(sae: SAE) -> dict[str, torch.Tensor]:
    """The SAE's weights under SAELens' names and layouts, in raw input units."""
    s = sae.input_scale
    t = {
        "W_enc": sae.W_enc,
        "b_enc": sae.b_enc,
        "W_dec": sae.W_dec / s,
        "b_dec": sae.b_dec / s,
    }
    if sae.arch == "jumprelu":
        t["threshold"] = sae.threshold
    elif sae.arch == "batchtopk":
        t["threshold"] = sae.threshold.expand(sae.n_features)
    return {k: v.detach().float().contiguous().cpu() for k, v in t.items()}


def save_sae(sae: SAE, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``sae`` as a SAELens folder at ``path`` (created if needed); return the path.

    Parameters
    ----------
    extra : dict, optional
        JSON-able entries stored under ``cfg.json["geomsae"]`` (training state, metrics).
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    c = sae.config
    cfg: dict[str, Any] = {
        "architecture": _SAELENS_ARCH[sae.arch],
        "d_in": sae.d_in,
        "d_sae": sae.n_features,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "hook_name": c.hook_name,
        "model_name": c.model_name,
        "metadata": {"hook_name": c.hook_name, "model_name": c.model_name},
    }
    if sae.arch == "topk":
        cfg["k"] = c.k
        cfg["rescale_acts_by_decoder_norm"] = False
    geom: dict[str, Any] = {
        "arch": sae.arch,
        "config": c.to_dict(),
        "input_scale": float(sae.input_scale),
    }
    geom.update(extra or {})
    cfg["geomsae"] = geom
    write_bytes_atomic(path / SAELENS_WEIGHTS, save(saelens_tensors(sae)))
    write_bytes_atomic(path / CFG, (json.dumps(cfg, indent=2, allow_nan=False) + "\n").encode())
    return path


def read_cfg(path: str | Path) -> dict[str, Any]:
    """The ``cfg.json`` of an SAE folder."""
    f = Path(path) / CFG
    if not f.is_file():
        folder = Path(path)
        inner = sorted(p.parent.name for p in folder.glob(f"*/{CFG}")) if folder.is_dir() else []
        if inner:  # e.g. a sparsify run: one subfolder per hookpoint ("layers.6", ...)
            names = ", ".join(inner[:8]) + (", ..." if len(inner) > 8 else "")
            raise FileNotFoundError(
                f"{path} is a folder of SAE folders ({names}), not an SAE folder: load one, "
                f"e.g. load({str(Path(path) / inner[0])!r})"
            )
        raise FileNotFoundError(f"{path} is not an SAE folder: it has no {CFG}")
    return json.loads(f.read_text())


def load_sae(path: str | Path, device=None) -> SAE:
    """Load a geomsae, SAELens (``sae_weights.safetensors``) or sparsify (``sae.safetensors``) SAE.

    Raises
    ------
    FileNotFoundError
        If ``path`` holds neither format.
    ValueError
        For architectures or options geomsae cannot represent (named in the message).
    """
    path = Path(path)
    cfg = read_cfg(path)
    if (path / SAELENS_WEIGHTS).is_file():
        sae = _load_saelens(cfg, load_file(str(path / SAELENS_WEIGHTS)))
    elif (path / SPARSIFY_WEIGHTS).is_file():
        sae = _load_sparsify(cfg, load_file(str(path / SPARSIFY_WEIGHTS)))
    else:
        raise FileNotFoundError(
            f"{path} has {CFG} but neither {SAELENS_WEIGHTS} (SAELens) nor {SPARSIFY_WEIGHTS} "
            "(sparsify)"
        )
    return sae.to(device) if device is not None else sae


def _need(w: dict[str, torch.Tensor], names: tuple[str, ...], fmt: str) -> None:
    missing = [n for n in names if n not in w]
    if missing:
        raise ValueError(f"{fmt} weights lack {missing} (have {sorted(w)})")


def _load_saelens(cfg: dict[str, Any], w: dict[str, torch.Tensor]) -> SAE:
    _need(w, ("W_enc", "b_enc", "W_dec", "b_dec"), "SAELens")
    w = {k: v.float() for k, v in w.items()}
    geom = cfg.get("geomsae")
    if geom is not None:
        config = SAEConfig.from_dict(geom["config"])
        arch = geom["arch"]
    else:
        arch = {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu"}.get(
            cfg.get("architecture", "standard")
        )
        if arch is None:
            raise ValueError(
                f"SAELens architecture {cfg.get('architecture')!r} is not supported; geomsae "
                "loads 'standard', 'topk' and 'jumprelu' SAEs"
            )
        if cfg.get("normalize_activations", "none") not in ("none", None):
            raise ValueError(
                f"this SAE expects normalize_activations={cfg['normalize_activations']!r}; fold "
                "the scaling factor into its weights first (SAELens: "
                "fold_activation_norm_scaling_factor) and save it again"
            )
        if cfg.get("rescale_acts_by_decoder_norm"):
            raise ValueError("TopK SAEs with rescale_acts_by_decoder_norm are not supported")
        meta = cfg.get("metadata") or {}
        config = SAEConfig(
            arch=arch,
            d_in=int(cfg["d_in"]),
            n_features=int(cfg["d_sae"]),
            k=int(cfg["k"]) if arch == "topk" else None,
            hook_name=cfg.get("hook_name") or meta.get("hook_name") or "",
            model_name=cfg.get("model_name") or meta.get("model_name") or "",
        )
    sae = build_sae(config)
    W_enc, b_enc, W_dec, b_dec = w["W_enc"], w["b_enc"], w["W_dec"], w["b_dec"]
    if not cfg.get("apply_b_dec_to_input", True):
        b_enc = b_enc + b_dec @ W_enc  # pre = x W + b = (x - b_dec) W + (b + b_dec W)
    with torch.no_grad():
        if arch == "tied_relu":
            s = float(geom.get("input_scale", 1.0)) if geom else 1.0
            sae.W_dec.copy_(W_dec * s)
            sae.b_dec.copy_(b_dec * s)
            sae.input_scale.fill_(s)
        else:
            sae.enc_weight.copy_(W_enc.T)
            sae.W_dec.copy_(W_dec)
            sae.b_dec.copy_(b_dec)
        sae.b_enc.copy_(b_enc)
        if arch == "jumprelu":
            _need(w, ("threshold",), "SAELens jumprelu")
            sae.log_threshold.copy_(torch.log(w["threshold"].clamp_min(1e-30)))
        elif arch == "batchtopk":
            sae.threshold.fill_(float(w["threshold"].reshape(-1)[0]))
            sae.threshold_initialized.fill_(True)
    return sae


def _load_sparsify(cfg: dict[str, Any], w: dict[str, torch.Tensor]) -> SAE:
    _need(w, ("encoder.weight", "encoder.bias", "W_dec", "b_dec"), "sparsify")
    if cfg.get("transcode") or cfg.get("skip_connection") or "W_skip" in w:
        raise ValueError("sparsify transcoders and skip connections are not supported")
    if cfg.get("activation", "topk") != "topk":
        raise ValueError(f"sparsify activation {cfg.get('activation')!r} is not supported")
    enc = w["encoder.weight"].float()
    d_sae, d_in = enc.shape
    if int(cfg.get("d_in", d_in)) != d_in:
        raise ValueError(f"sparsify cfg says d_in={cfg['d_in']} but the encoder has {d_in}")
    config = SAEConfig(arch="topk", d_in=d_in, n_features=d_sae, k=int(cfg["k"]))
    sae = build_sae(config)
    with torch.no_grad():
        sae.enc_weight.copy_(enc)
        sae.b_enc.copy_(w["encoder.bias"].float())
        sae.W_dec.copy_(w["W_dec"].float())
        sae.b_dec.copy_(w["b_dec"].float())
    return sae


def is_finished(path: str | Path) -> bool:
    """Whether ``path`` holds an SAE whose training finished (written by :func:`train`)."""
    try:
        cfg = read_cfg(path)
    except (FileNotFoundError, json.JSONDecodeError):
        return False
    return bool((cfg.get("geomsae") or {}).get("finished"))
