"""Harvest residual-stream activations into the on-disk cache and summarise them.

    python -m studies.harvest --layer 6 --tokens 20000 [--out runs/harvest] [--model NAME]
        [--corpus PATH_OR_DATASET] [--device auto] [--seed 0]
        [--hook blocks.{layer}.hook_resid_post] [--context-length 128] [--batch-tokens 4096]
        [--dtype float32] [--overwrite] [--smoke]

``--out`` is the cache folder itself (shards + manifest.json); the report (report.json,
report.md, norms.png) is written next to them. Running the same command again reuses the cache;
asking for more tokens extends it; an interrupted run resumes. Several layers share one forward
pass (``--layer 2 6 10``). Under ``torchrun --nproc-per-node N -m studies.harvest ...`` every
process harvests a disjoint slice of the corpus into the same folder (gloo on CPU, nccl on GPU).

Reported per hook: the rows, the distribution of activation norms (mean, median, 99th
percentile, max), the mean norm by position in the context window, and the contexts of the
highest-norm tokens; plus the corpus provenance and the throughput.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import torch

from geomsae.activations import DEFAULT_HOOK, CacheError, harvest
from geomsae.models import TINY_MODEL, ModelUnavailableError
from studies.common import (
    Timer,
    base_parser,
    markdown_table,
    save_figure,
    seed_everything,
    setup_logging,
    write_atomic,
    write_json,
)


@dataclasses.dataclass(frozen=True)
class HarvestStudyConfig:
    """Settings of the harvest study."""

    out: Path = Path("runs/harvest")
    """Cache folder (shards + manifest.json); the report goes there too."""
    model: str | None = None
    """Model name (None: the embedded SmolLM2-135M-Instruct)."""
    corpus: str | None = None
    """Text file, folder or dataset name (None: the embedded default corpus)."""
    device: str = "auto"
    """Torch device."""
    seed: int = 0
    """Seed of the document order."""
    layers: tuple[int, ...] = (6,)
    """Layers to harvest (one forward pass serves all)."""
    hook: str = DEFAULT_HOOK
    """Hook name template."""
    tokens: int = 20_000
    """Activation rows to collect."""
    context_length: int = 128
    """Tokens per context window, BOS included."""
    batch_tokens: int = 4096
    """Tokens per forward pass."""
    dtype: str = "float32"
    """Storage dtype."""
    overwrite: bool = False
    """Replace a mismatched or corrupt cache instead of stopping with an error."""
    top_contexts: int = 8
    """Highest-norm tokens whose contexts are shown."""


SMOKE = HarvestStudyConfig(
    out=Path("runs/harvest_smoke"), model=TINY_MODEL, corpus="embedded:python-docs", tokens=600
)


def _norm_stats(store, hook: str) -> tuple[dict, np.ndarray, np.ndarray]:
    """Norm statistics of one hook, computed batch by batch (memory-bounded)."""
    norms = np.concatenate(
        [b.norm(dim=1).numpy() for b in store.iter_batches(8192, shuffle=False, hook=hook)]
    )
    position = store.metadata.position
    by_pos = np.bincount(position, weights=norms) / np.maximum(np.bincount(position), 1)
    stats = {
        "hook": hook,
        "rows": len(norms),
        "norm_mean": float(norms.mean()),
        "norm_median": float(np.median(norms)),
        "norm_p99": float(np.quantile(norms, 0.99)),
        "norm_max": float(norms.max()),
    }
    return stats, norms, by_pos


def _figure(per_hook: dict[str, tuple[np.ndarray, np.ndarray]]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    for hook, (norms, by_pos) in per_hook.items():
        a.hist(norms, bins=80, histtype="step", label=hook)
        positions = np.flatnonzero(by_pos)
        b.plot(positions, by_pos[positions], label=hook)
    a.set(xlabel="activation norm", ylabel="tokens", title="Norm distribution")
    b.set(xlabel="position in context window", ylabel="mean norm", title="Norm by position")
    a.legend(fontsize=7)
    fig.tight_layout()
    return fig


def run(config: HarvestStudyConfig) -> dict:
    """Fill (or reuse) the cache in ``config.out``, write the report, return it as a dict."""
    seed_everything(config.seed)
    timer = Timer()
    with timer("harvest"):
        store = harvest(
            config.tokens, config.out, model=config.model, corpus=config.corpus,
            layers=config.layers, hook=config.hook, context_length=config.context_length,
            batch_tokens=config.batch_tokens, dtype=config.dtype, seed=config.seed,
            device=None if config.device == "auto" else config.device,
            overwrite=config.overwrite,
        )  # fmt: skip
    if torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
        return {}
    meta = store.metadata
    rows, per_hook = [], {}
    for hook in store.hooks:
        stats, norms, by_pos = _norm_stats(store, hook)
        rows.append(stats)
        per_hook[hook] = (norms, by_pos)
    norms0 = per_hook[store.hook][0]
    top = np.argsort(norms0)[::-1][: config.top_contexts]
    contexts = [
        {"row": int(i), "norm": float(norms0[i]), "doc": meta.doc_id(int(i)),
         "context": meta.context(int(i)).replace("\n", "\\n")}
        for i in top
    ]  # fmt: skip
    m = store.manifest
    elapsed = timer.timings["harvest"]
    report = {
        "config": config,
        "cache": store.summary(),
        "corpus": m.get("corpus", {}),
        "hooks": rows,
        "top_norm_contexts": contexts,
        "bytes_on_disk": sum((store.path / s["file"]).stat().st_size for s in m["shards"]),
        "timings": timer.timings,
        "tokens_per_second": len(store) / elapsed if elapsed > 0 else None,
    }
    out = Path(config.out)
    write_json(out / "report.json", report)
    save_figure(_figure(per_hook), out / "norms.png")
    corpus = report["corpus"]
    md = [
        "# Activation harvest\n\n",
        f"Model `{m['key']['model']}`, corpus `{corpus.get('name')}` "
        f"({corpus.get('n_documents')} documents, "
        f"fingerprint `{corpus.get('fingerprint', '')[:12]}`), "
        f"{len(store)} tokens, context {config.context_length}, d_in {store.d_in}, "
        f"{len(m['shards'])} shards, {report['bytes_on_disk'] / 2**20:.1f} MiB.\n\n",
        markdown_table(rows),
        "\n![norms](norms.png)\n\n## Highest-norm tokens\n\n",
        markdown_table(contexts),
        "\n## Timings (s)\n\n",
        markdown_table([{k: round(v, 1) for k, v in timer.timings.items()}]),
    ]  # fmt: skip
    write_atomic(out / "report.md", "".join(md))
    print(f"cache {store.path}: {len(store)} tokens x {store.d_in} for {list(store.hooks)}")
    print(markdown_table(rows))
    print(f"harvest took {elapsed:.1f} s; report in {out / 'report.md'}")
    return report


def _init_distributed() -> None:
    """Join the process group when started by torchrun (WORLD_SIZE > 1)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))


def main(argv: list[str] | None = None) -> dict:
    p = base_parser(__doc__.splitlines()[0], "runs/harvest")
    p.add_argument("--layer", type=int, nargs="+", default=[6], help="layer(s) to harvest")
    p.add_argument("--tokens", type=int, default=20_000, help="activation rows to collect")
    p.add_argument(
        "--corpus",
        default=None,
        help="text file, folder, HF dataset name or embedded:SOURCE,... (default: embedded)",
    )
    p.add_argument("--hook", default=DEFAULT_HOOK, help="hook name; {layer} is substituted")
    p.add_argument("--context-length", type=int, default=128, help="tokens per window")
    p.add_argument("--batch-tokens", type=int, default=4096, help="tokens per forward pass")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--overwrite", action="store_true", help="replace a mismatched cache")
    p.add_argument(
        "--smoke", action="store_true", help="tiny random model, Python docs only, 600 tokens"
    )
    args = p.parse_args(argv)
    setup_logging(args.verbose)
    _init_distributed()
    base = SMOKE if args.smoke else HarvestStudyConfig()
    config = dataclasses.replace(
        base,
        out=Path(args.out) if not args.smoke or args.out != "runs/harvest" else base.out,
        model=args.model or base.model,
        corpus=args.corpus or base.corpus,
        device=args.device,
        seed=args.seed,
        layers=tuple(args.layer),
        hook=args.hook,
        tokens=base.tokens if args.smoke else args.tokens,
        context_length=args.context_length,
        batch_tokens=args.batch_tokens,
        dtype=args.dtype,
        overwrite=args.overwrite,
    )
    try:
        return run(config)
    except (ValueError, CacheError, ModelUnavailableError) as exc:  # bad input: one clear line
        p.error(str(exc))
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
