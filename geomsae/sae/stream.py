"""Train straight from a model: activations streamed from its forward passes, no cache on disk.

:func:`stream_from_model` cuts the corpus into context windows (as the harvester does), groups
them into chunks of about ``chunk_tokens`` kept tokens, and returns a
:class:`~geomsae.sae.data.ChunkedSource` whose chunks *run the model* when loaded. The trainer's
streaming then gives a shuffle buffer for free: each pass shuffles the chunk order, runs the model
on ``buffer_chunks`` chunks at a time (one early-stopped forward per batch of windows, via
:func:`geomsae.activations.hooks.run_hooks`), drops excluded rows, shuffles the buffer and cuts it
into batches. Memory is bounded by ``buffer_chunks * chunk_tokens * d_in`` floats whatever the
number of tokens, and the stream is a pure function of the seeds, so checkpoints resume (skipped
batches are recomputed, which costs their forward passes).

>>> from geomsae.sae import SAEConfig, stream_from_model, train
>>> src = stream_from_model(200_000, hook="blocks.6.hook_resid_post")  # doctest: +SKIP
>>> sae = train(SAEConfig(arch="topk", d_in=src.d_in, k=32), src)      # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

from geomsae.activations.harvester import _special_ids
from geomsae.activations.hooks import hook_layer, run_hooks, stop_layer, validate_hooks
from geomsae.activations.windows import Window, document_order, iter_token_batches, iter_windows
from geomsae.sae.data import Chunk, ChunkedSource

logger = logging.getLogger(__name__)


def stream_from_model(
    n_tokens: int,
    *,
    model=None,
    corpus=None,
    hook: str = "blocks.6.hook_resid_post",
    context_length: int = 128,
    batch_tokens: int = 4096,
    exclude_special: bool = True,
    chunk_tokens: int = 16_384,
    buffer_chunks: int = 8,
    seed: int | None = 0,
    device: str | torch.device | None = None,
) -> ChunkedSource:
    """Activations of ``hook`` over ``n_tokens`` corpus tokens, computed on demand.

    Parameters
    ----------
    n_tokens : int
        Rows (tokens) in one pass; BOS/special tokens are not counted when excluded. Fewer if
        the corpus runs out. Training for more tokens than this runs further passes (the
        model runs again).
    model : str or TransformerBridge, optional
        A name for :func:`geomsae.models.load_model` (default: the embedded SmolLM2) or a
        loaded bridge.
    corpus : optional
        Anything :func:`geomsae.text.load_corpus` takes (default: the embedded corpus).
    hook : str
        TransformerLens hook name (one per-token hook, e.g. ``blocks.6.hook_resid_post``); the
        forward stops after its block.
    context_length, batch_tokens : int
        Tokens per window (BOS included) and at most this many (padded) tokens per forward.
    exclude_special : bool
        Drop BOS and other special tokens, as the harvester does. With ``False`` their rows are
        kept and marked with their position, so ``SAEConfig.exclude_bos`` can still drop
        position 0.
    chunk_tokens : int
        Kept tokens per chunk (the unit the model is run on and shuffled by).
    buffer_chunks : int
        Chunks held (and shuffled together) at a time: memory is about
        ``buffer_chunks * chunk_tokens * d_in * 4`` bytes.
    seed : int or None
        Seed of the document order (None keeps the corpus order), as in
        :func:`geomsae.activations.harvest`; the training seed shuffles the chunks and rows.
    device : optional
        Where to run a model loaded by name.

    Returns
    -------
    ChunkedSource
        Pass it to :func:`~geomsae.sae.train` / :func:`~geomsae.sae.train_many`; ``d_in`` is
        the hook's width.

    Raises
    ------
    ValueError
        Bad sizes, an unknown hook, or a corpus without tokens.
    """
    from geomsae.models import load_model
    from geomsae.text import load_corpus

    if n_tokens < 1 or chunk_tokens < 1 or buffer_chunks < 1:
        raise ValueError("n_tokens, chunk_tokens and buffer_chunks must be positive")
    if batch_tokens < context_length:
        raise ValueError(f"batch_tokens ({batch_tokens}) must be >= context_length")
    bridge = (
        model if model is not None and not isinstance(model, str) else load_model(model, device)
    )
    layer = hook_layer(hook)
    validate_hooks(bridge, [hook], [layer] if layer is not None and layer >= 0 else [])
    tok = bridge.tokenizer
    bos = tok.bos_token_id if getattr(bridge.cfg, "default_prepend_bos", True) else None
    specials = _special_ids(bridge).numpy() if exclude_special else np.zeros(0, np.int64)
    docs = load_corpus(corpus)
    order = document_order(len(docs), seed)
    windows = iter_windows([d.text for d in docs], order, tok, context_length, bos)
    runner = _ChunkRunner(bridge, hook, batch_tokens, tok.pad_token_id or 0, specials)

    chunks, group, in_group, total = [], [], 0, 0
    for w in windows:
        kept = ~np.isin(w.tokens, specials)
        need = n_tokens - total - in_group
        if int(kept.sum()) > need:  # the last window: cut its tail (causal, so the rest holds)
            w = Window(
                w.index, w.doc_index, w.tokens[: int(np.searchsorted(kept.cumsum(), need)) + 1]
            )
            kept = kept[: len(w.tokens)]
        group.append(w)
        in_group += int(kept.sum())
        if in_group >= chunk_tokens or total + in_group >= n_tokens:
            chunks.append(Chunk(in_group, runner.loader(group)))
            total += in_group
            group, in_group = [], 0
        if total >= n_tokens:
            break
    if in_group:
        chunks.append(Chunk(in_group, runner.loader(group)))
        total += in_group
    if total < n_tokens:
        logger.warning("the corpus ran out after %d of %d tokens", total, n_tokens)
    d_in = runner.width(chunks[0] if chunks else None)
    return ChunkedSource(chunks, d_in, buffer_chunks)


class _ChunkRunner:
    """Runs the model on a chunk's windows and keeps the rows of non-special tokens."""

    def __init__(self, bridge, hook: str, batch_tokens: int, pad_id: int, specials: np.ndarray):
        self.bridge = bridge
        self.hook = hook
        self.stop = stop_layer(bridge, [hook])
        self.batch_tokens = batch_tokens
        self.pad_id = pad_id
        self.specials = torch.from_numpy(specials)
        self.device = next(bridge.parameters()).device

    def loader(self, windows: Sequence[Window]):
        # longest first, so windows of similar length share a forward (little padding)
        windows = sorted(windows, key=lambda w: -len(w.tokens))

        def load() -> tuple[torch.Tensor, torch.Tensor]:
            return self.run(windows)

        return load

    def run(self, windows: Sequence[Window]) -> tuple[torch.Tensor, torch.Tensor]:
        """Activations (n_kept, d_in) on the CPU and the tokens' positions (n_kept,)."""
        acts, positions = [], []
        for batch in iter_token_batches(iter(windows), self.batch_tokens, self.pad_id):
            out = run_hooks(self.bridge, batch.tokens.to(self.device), [self.hook], self.stop)
            keep = batch.valid & ~torch.isin(batch.tokens, self.specials)
            pos = torch.arange(batch.tokens.shape[1]).expand_as(batch.tokens)
            acts.append(out[self.hook][keep.to(self.device)].float().cpu())
            positions.append(pos[keep])
        return torch.cat(acts), torch.cat(positions)

    def width(self, chunk: Chunk | None) -> int:
        """The hook's width, from a two-token forward."""
        if chunk is None:
            raise ValueError("the corpus gives no tokens to train on")
        tokens = self.bridge.to_tokens("a")[:, :2].to(self.device)
        return int(run_hooks(self.bridge, tokens, [self.hook], self.stop)[self.hook].shape[-1])
