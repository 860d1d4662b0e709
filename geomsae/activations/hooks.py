"""Hook names, their validation, and one early-stopped forward pass that captures them."""

from __future__ import annotations

import difflib
import hashlib
import re
from collections.abc import Sequence

import torch

DEFAULT_HOOK = "blocks.{layer}.hook_resid_post"
"""Default hook template: the residual stream after block ``layer``."""

_BLOCK = re.compile(r"^blocks\.(\d+)\.")
_EMBEDDING = ("hook_embed", "hook_pos_embed", "embed.", "pos_embed.")


def hook_names(hook: str | Sequence[str], layers: Sequence[int]) -> list[str]:
    """Concrete hook names: every template containing ``{layer}`` is expanded for each layer.

    >>> hook_names("blocks.{layer}.hook_resid_post", [2, 4])
    ['blocks.2.hook_resid_post', 'blocks.4.hook_resid_post']
    """
    templates = [hook] if isinstance(hook, str) else list(hook)
    names: list[str] = []
    for t in templates:
        expanded = [t.format(layer=layer) for layer in layers] if "{layer}" in t else [t]
        names += [n for n in expanded if n not in names]
    return names


def hook_layer(name: str) -> int | None:
    """The block index a hook belongs to, -1 for embedding hooks, None for later hooks."""
    m = _BLOCK.match(name)
    if m:
        return int(m.group(1))
    if name.startswith(_EMBEDDING):
        return -1
    return None


def validate_hooks(model, hooks: Sequence[str], layers: Sequence[int]) -> None:
    """Raise one clear ValueError for a layer outside the model or an unknown hook name."""
    n_layers = int(model.cfg.n_layers)
    for layer in layers:
        if not 0 <= layer < n_layers:
            raise ValueError(
                f"layer {layer} is outside the model: it has {n_layers} layers, 0..{n_layers - 1}"
            )
    known = model.hook_dict
    for name in hooks:
        if name not in known:
            close = difflib.get_close_matches(name, list(known), n=3)
            hint = f"; did you mean {close}?" if close else ""
            raise ValueError(
                f"unknown hook {name!r} for this model{hint} (hook names follow TransformerLens, "
                f"e.g. {DEFAULT_HOOK!r}; list them with model.hook_dict)"
            )


def stop_layer(model, hooks: Sequence[str]) -> int | None:
    """The ``stop_at_layer`` that still fires every hook: one past the deepest block used.

    ``None`` (full forward) when a hook lies after the blocks or the deepest block is the last.
    """
    layers = [hook_layer(h) for h in hooks]
    if any(layer is None for layer in layers):
        return None
    stop = max(layers) + 1  # type: ignore[type-var]
    return None if stop >= int(model.cfg.n_layers) else stop


def run_hooks(
    model, tokens: torch.Tensor, hooks: Sequence[str], stop: int | None
) -> dict[str, torch.Tensor]:
    """One forward pass (stopped before block ``stop``) capturing ``hooks``.

    Returns
    -------
    dict of str to Tensor of shape (batch, seq_len, d)
        Per-head hooks (batch, seq_len, n_heads, d_head) are flattened to d = n_heads * d_head.
    """
    captured: dict[str, torch.Tensor] = {}

    def capture(name):
        def fn(act, hook):
            captured[name] = act.detach()

        return fn

    with torch.inference_mode():
        model.run_with_hooks(
            tokens, fwd_hooks=[(h, capture(h)) for h in hooks], stop_at_layer=stop,
            return_type=None,
        )  # fmt: skip
    missing = [h for h in hooks if h not in captured]
    if missing:
        raise ValueError(f"hook(s) {missing} did not fire in the forward pass")
    for h, a in captured.items():
        if a.ndim < 3 or tuple(a.shape[:2]) != tuple(tokens.shape):
            raise ValueError(
                f"hook {h!r} gives shape {tuple(a.shape)}, not one vector per token "
                f"(batch, seq_len, ...) = {tuple(tokens.shape)} + (...); harvest per-token hooks "
                "such as hook_resid_post, hook_mlp_out or attn.hook_z"
            )
    return {h: a.flatten(2) if a.ndim > 3 else a for h, a in captured.items()}


def model_key(model) -> str:
    """Identity of a model in a cache key.

    A name, or a model from :func:`geomsae.models.load_model` (which records its name in
    ``geomsae_name``), is keyed by the name; any other model object by its class name plus a
    fingerprint of its weights.
    """
    if isinstance(model, str):
        return model
    if isinstance(getattr(model, "geomsae_name", None), str):
        return model.geomsae_name
    name = getattr(model.cfg, "model_name", type(model).__name__)
    h = hashlib.sha256()
    with torch.no_grad():
        for pname, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            flat = p.detach().reshape(-1)
            step = max(1, flat.numel() // 4096)  # a strided sample is enough to tell models apart
            h.update(pname.encode())
            h.update(flat[::step].float().cpu().numpy().tobytes())
    return f"{name}@{h.hexdigest()[:16]}"
