"""Harvest throughput: geomsae's harvester vs a naive full-forward ``run_with_cache``.

    .venv/bin/python benchmarks/bench_harvest.py [--layer 6] [--tokens 8192] [--model NAME]
        [--batch-tokens 4096] [--context-length 128] [--group-windows 512] [--device auto]
        [--repeats 1]

Same model, same corpus windows, same batches, same run. Three ways to get the activations of
``blocks.{layer}.hook_resid_post`` for ``--tokens`` tokens (BOS excluded):

* **naive**: ``model.run_with_cache(tokens)`` on each batch (every hook cached, all layers run),
  then the hook's rows picked out: what a first script does;
* **full forward, one hook**: ``run_with_hooks`` capturing only that hook, without stopping;
* **geomsae**: ``geomsae.activations.harvest`` end to end: tokenization, early-stopped forward,
  metadata and safetensors shards written to a temporary folder.

Prints tokens/s of each and the ratio geomsae / naive (target >= 3x at layer 6 of 30).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch

from geomsae.activations import harvest
from geomsae.activations.hooks import run_hooks
from geomsae.activations.windows import document_order, iter_token_batches, iter_windows
from geomsae.models import load_model, resolve_device
from geomsae.text import default_corpus


def _batches(model, corpus, n_tokens, context_length, batch_tokens, group_windows, seed):
    """The batches the harvester sees, cut after ``n_tokens`` non-BOS tokens."""
    tok = model.tokenizer
    order = document_order(len(corpus), seed)
    windows = iter_windows([d.text for d in corpus], order, tok, context_length, tok.bos_token_id)
    out, total = [], 0
    pad = tok.pad_token_id or 0
    for batch in iter_token_batches(windows, batch_tokens, pad, group_windows):
        out.append(batch)
        total += int(batch.valid.sum()) - len(batch.windows)
        if total >= n_tokens:
            break
    return out, total


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time_naive(model, batches, hook, device) -> float:
    t0 = time.perf_counter()
    with torch.inference_mode():
        for b in batches:
            _, cache = model.run_with_cache(b.tokens.to(device))
            keep = b.valid.clone()
            keep[:, 0] = False
            cache[hook][keep.to(device)].cpu()
            del cache
    _sync(device)
    return time.perf_counter() - t0


def _time_one_hook(model, batches, hook, device) -> float:
    t0 = time.perf_counter()
    for b in batches:
        act = run_hooks(model, b.tokens.to(device), [hook], stop=None)[hook]
        keep = b.valid.clone()
        keep[:, 0] = False
        act[keep.to(device)].cpu()
    _sync(device)
    return time.perf_counter() - t0


def _time_geomsae(model, corpus, n_tokens, args) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        store = harvest(
            n_tokens, tmp, model=model, corpus=corpus, layers=args.layer,
            context_length=args.context_length, batch_tokens=args.batch_tokens,
            group_windows=args.group_windows, seed=args.seed, progress=False, verify=False,
        )  # fmt: skip
        _sync(resolve_device(args.device))
        elapsed = time.perf_counter() - t0
        assert len(store) == n_tokens
    return elapsed


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layer", type=int, default=6)
    p.add_argument("--tokens", type=int, default=8192)
    p.add_argument("--model", default=None)
    p.add_argument("--batch-tokens", type=int, default=4096)
    p.add_argument("--context-length", type=int, default=128)
    p.add_argument("--group-windows", type=int, default=512, help="0: no length sorting")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=1, help="best of this many runs each")
    args = p.parse_args(argv)

    device = resolve_device(args.device)
    model = load_model(args.model, device=device)
    corpus = default_corpus()
    hook = f"blocks.{args.layer}.hook_resid_post"
    args.group_windows = args.group_windows or None
    batches, n_tokens = _batches(
        model, corpus, args.tokens, args.context_length, args.batch_tokens, args.group_windows,
        args.seed,
    )  # fmt: skip
    print(f"model {args.model or 'embedded SmolLM2-135M'} ({model.cfg.n_layers} layers) on "
          f"{device}, {torch.get_num_threads()} threads; hook {hook}; {n_tokens} tokens in "
          f"{len(batches)} batches of <= {args.batch_tokens} tokens")  # fmt: skip
    run_hooks(model, batches[0].tokens[:1, :8].to(device), [hook], stop=None)  # warm-up

    times = {"naive run_with_cache": [], "full forward, one hook": [], "geomsae harvest": []}
    for _ in range(args.repeats):  # interleaved, so background load hits all three alike
        times["naive run_with_cache"].append(_time_naive(model, batches, hook, device))
        times["full forward, one hook"].append(_time_one_hook(model, batches, hook, device))
        times["geomsae harvest"].append(_time_geomsae(model, corpus, n_tokens, args))
    best = {k: min(v) for k, v in times.items()}
    real = sum(int(b.valid.sum()) for b in batches)
    print(f"padding: {1 - real / sum(b.tokens.numel() for b in batches):.1%} of batch positions")
    print(f"{'method':<26}{'seconds':>10}{'tokens/s':>12}")
    for k, t in best.items():
        print(f"{k:<26}{t:>10.2f}{n_tokens / t:>12.1f}")
    ratio = best["naive run_with_cache"] / best["geomsae harvest"]
    print(f"ratio geomsae / naive run_with_cache: {ratio:.2f}x "
          f"(ideal from depth alone: {model.cfg.n_layers / (args.layer + 1):.2f}x)")  # fmt: skip
    print("all runs (s):", {k: np.round(v, 2).tolist() for k, v in times.items()})


if __name__ == "__main__":
    main()
