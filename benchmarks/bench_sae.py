"""SAE training speed and quality: geomsae against SAELens on the same real activations.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_sae.py [--tokens 262144] [--steps 40]
        [--eval-tokens 16384] [--saelens-python /work/saelens-venv/bin/python] [--out DIR]

Activations: SmolLM2-135M-Instruct (the embedded model), ``blocks.6.hook_resid_post``
(d_in = 576), from the harvester's cache (filled on first use). The last ``--eval-tokens`` rows
are held out; every SAE trains on the same batches (4096 tokens, ``--steps`` steps, same learning
rate, warm-up and decay) and all are scored by the same code (:func:`geomsae.sae.evaluate`, FVU
around the mean) on the held-out rows.

Settings (d_sae = 4608 = 8 x 576): TopK with k = 32, and the standard ReLU SAE with the
decoder-norm-weighted L1 penalty (same alpha; L0 is reported, since equal alpha need not give
equal L0). geomsae's TopK runs with its sparse CPU kernels (the default on CPU) and with the
dense path, which is how the automatic choice was made.

Timing. The machine is shared, so its load drifts by several times within minutes; timing the
libraries one after the other measures the drift, not the code. Everything therefore runs in
ONE process that interleaves the SAEs step by step (alternating their order every step), and
each SAE's time is the sum of its own steps. That process runs in SAELens' virtual environment
(``sae-lens`` 6.x needs transformer-lens < 4, which conflicts with geomsae's transformer-lens 4;
create it with ``python3 -m venv /work/saelens-venv && /work/saelens-venv/bin/pip install
sae-lens torch``) with geomsae on ``PYTHONPATH`` (``geomsae.sae`` needs only torch, numpy,
safetensors and tqdm). geomsae is stepped through ``geomsae.sae.trainer._Run`` (the unit
``train_many`` loops over), SAELens through ``SAETrainer.step`` (the unit its ``fit`` loops
over); setup (initial sample, norm estimation) is excluded for both.

Compute: the dense fp32 matmul rate of this machine is measured in the same run (an SAE-shaped
4096 x 576 x 4608 product, best of 7), and each SAE's rate is reported two ways:
*dense-equivalent* GFLOP/s (10 d p FLOPs per token: encoder and decoder forward, both weight
gradients and the code gradient) and *executed* GFLOP/s (for geomsae's sparse TopK path,
2 d p + 8 k d per token, the rest being O(n k d) gathers).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from geomsae.activations import harvest
from geomsae.sae import SAEConfig, evaluate, load

BATCH = 4096
D_SAE_FACTOR = 8

SAELENS_RUNNER = r"""
import json, sys, time
import numpy as np, torch
from sae_lens.config import SAETrainerConfig
from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig
from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
from sae_lens.training.sae_trainer import SAETrainer
from geomsae.sae import SAEConfig
from geomsae.sae.trainer import _Run

args = json.loads(sys.argv[1])
X = torch.from_numpy(np.load(args["train"]))
d_in, batch, steps = X.shape[1], args["batch"], args["steps"]
torch.manual_seed(args["seed"])


def batches():
    g = torch.Generator().manual_seed(args["seed"])
    while True:
        perm = torch.randperm(len(X), generator=g)
        for i in range(0, len(X) - batch + 1, batch):
            yield X[perm[i:i + batch]]


def saelens_trainer(arch):
    if arch == "topk":
        cfg = TopKTrainingSAEConfig(d_in=d_in, d_sae=args["d_sae"], k=args["k"],
                                    rescale_acts_by_decoder_norm=False,
                                    normalize_activations="expected_average_only_in")
        sae = TopKTrainingSAE(cfg)
    else:
        cfg = StandardTrainingSAEConfig(d_in=d_in, d_sae=args["d_sae"], l1_coefficient=args["l1"],
                                        l1_warm_up_steps=max(1, steps // 20),
                                        normalize_activations="expected_average_only_in")
        sae = StandardTrainingSAE(cfg)
    tcfg = SAETrainerConfig(total_training_samples=steps * batch, train_batch_size_samples=batch,
                            lr=args["lr"], lr_end=0.0, lr_warm_up_steps=args["warmup"],
                            lr_decay_steps=args["decay"], n_batches_for_norm_estimate=8,
                            dead_feature_window=1000, feature_sampling_window=2000)
    trainer = SAETrainer(cfg=tcfg, sae=sae, data_provider=batches())
    trainer.activation_scaler.estimate_scaling_factor(d_in, batches(), 8)
    return trainer


sample = X[torch.randperm(len(X), generator=torch.Generator().manual_seed(1))[:65536]]
scale = d_in ** 0.5 / float(sample.norm(dim=1).mean())
runs = {}
for name, cfg in args["geomsae"].items():
    run = _Run(SAEConfig(**cfg), torch.device("cpu"), steps)
    run.sae.decode_impl = args["decode"][name]
    run.init_from_sample(sample * scale)
    runs[name] = run
trainers = {name: saelens_trainer(arch) for name, arch in args["saelens"].items()}
seconds = {name: 0.0 for name in list(runs) + list(trainers)}
it = batches()
for step in range(steps):
    x = next(it)
    order = list(runs) + list(trainers)
    for name in (order if step % 2 == 0 else order[::-1]):
        t0 = time.perf_counter()
        if name in runs:
            runs[name].step(x * scale, step, batch, False)
        else:
            tr = trainers[name]
            tr.maybe_reset_sparsity()
            tr.step(x)
            tr.n_training_steps += 1
        seconds[name] += time.perf_counter() - t0
for name, run in runs.items():
    run.sae.set_input_scale(scale)
    run.sae.save(args["out"] + "/" + name)
for name, tr in trainers.items():
    tr.sae.fold_activation_norm_scaling_factor(tr.activation_scaler.scaling_factor)
    tr.sae.save_inference_model(args["out"] + "/" + name)
print("RESULT " + json.dumps({"seconds": seconds, "threads": torch.get_num_threads()}))
"""

# name -> (library, setting shown, executed FLOPs per token as a function of d, p, k)
SETTINGS = {
    "geomsae_topk_sparse": ("geomsae", "topk k={k} (sparse kernels)", "sparse"),
    "geomsae_topk_dense": ("geomsae", "topk k={k} (dense path)", "dense"),
    "saelens_topk": ("SAELens", "topk k={k}", "dense"),
    "geomsae_relu": ("geomsae", "relu L1={l1}", "dense"),
    "saelens_relu": ("SAELens", "standard L1={l1}", "dense"),
}


def matmul_gflops(m: int = 4096, k: int = 576, n: int = 4608, repeats: int = 7) -> float:
    """Best-of-``repeats`` fp32 GFLOP/s of an (m, k) @ (k, n) product on this CPU."""
    a, b = torch.randn(m, k), torch.randn(k, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * m * k * n / best / 1e9


def run_interleaved(python: str, spec: dict) -> dict[str, float]:
    """Run the interleaved trainer in SAELens' venv; seconds of training steps per SAE."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    res = subprocess.run(
        [python, "-c", SAELENS_RUNNER, json.dumps(spec)], capture_output=True, text=True, env=env
    )
    if res.returncode != 0:
        raise RuntimeError(f"the interleaved run failed:\n{res.stderr[-4000:]}")
    line = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT ") :])["seconds"]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=262_144, help="activation rows to harvest")
    p.add_argument("--eval-tokens", type=int, default=16_384, help="held-out rows")
    p.add_argument("--steps", type=int, default=40, help="training steps of 4096 tokens")
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--l1", type=float, default=5.0, help="L1 coefficient of the ReLU SAEs")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--saelens-python", default="/work/saelens-venv/bin/python")
    p.add_argument("--out", default="runs/bench_sae")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not Path(args.saelens_python).exists():
        raise SystemExit(
            f"{args.saelens_python} not found: SAELens needs its own venv (see the docstring)"
        )

    store = harvest(args.tokens, None, layers=(6,), progress=False)
    X = store.to_tensor()
    X_train, X_eval = X[: -args.eval_tokens], X[-args.eval_tokens :]
    d_in = X.shape[1]
    d_sae = D_SAE_FACTOR * d_in
    rate = matmul_gflops(k=d_in, n=d_sae)
    print(f"activations: {len(X)} x {d_in} ({store.hook}); dense fp32 matmul {rate:.1f} GFLOP/s")
    warmup, decay = max(1, args.steps // 10), args.steps // 5
    common = dict(d_in=d_in, n_features=d_sae, batch_size=BATCH, lr=args.lr, seed=args.seed,
                  train_tokens=args.steps * BATCH, lr_warmup_steps=warmup,
                  lr_decay_fraction=decay / args.steps, hook_name=store.hook)  # fmt: skip
    topk = SAEConfig(arch="topk", k=args.k, **common)
    relu = SAEConfig(arch="relu", l1_coefficient=args.l1, l1_warmup_fraction=0.05, **common)
    tmp = Path(tempfile.mkdtemp(prefix="bench_sae_"))
    np.save(tmp / "train.npy", X_train.numpy())
    spec = {
        "train": str(tmp / "train.npy"), "out": str(tmp), "batch": BATCH, "steps": args.steps,
        "d_sae": d_sae, "k": args.k, "l1": args.l1, "lr": args.lr, "warmup": warmup,
        "decay": decay, "seed": args.seed,
        "geomsae": {"geomsae_topk_sparse": topk.to_dict(), "geomsae_topk_dense": topk.to_dict(),
                    "geomsae_relu": relu.to_dict()},
        "decode": {"geomsae_topk_sparse": "sparse", "geomsae_topk_dense": "dense",
                   "geomsae_relu": "auto"},
        "saelens": {"saelens_topk": "topk", "saelens_relu": "relu"},
    }  # fmt: skip
    try:
        seconds = run_interleaved(args.saelens_python, spec)
        tokens = args.steps * BATCH
        rows = _rows(args, tmp, seconds, X_eval, rate, d_in, d_sae, tokens)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _report(args, out, store, X, rate, rows)


def _rows(args, tmp: Path, seconds: dict, X_eval, rate: float, d_in: int, d_sae: int, tokens: int):
    """One row per SAE: speed, held-out quality and achieved compute."""
    flops = {"sparse": 2 * d_in * d_sae + 8 * args.k * d_in, "dense": 10 * d_in * d_sae}
    rows = []
    for name, (library, setting, path) in SETTINGS.items():
        m = evaluate(load(tmp / name), X_eval)
        s = seconds[name]
        row = {
            "library": library,
            "setting": setting.format(k=args.k, l1=args.l1),
            "tokens_per_s": tokens / s,
            "step_seconds": s / args.steps,
            "l0": m.l0,
            "fvu": m.fvu,
            "dead_fraction": m.dead_fraction,
            "dense_equiv_gflops": flops["dense"] * tokens / s / 1e9,
            "executed_gflops": flops[path] * tokens / s / 1e9,
        }
        row["executed_fraction_of_matmul"] = row["executed_gflops"] / rate
        rows.append(row)
    return rows


def _report(args, out: Path, store, X, rate: float, rows: list[dict]) -> dict:
    """Ratios against SAELens, written to ``out/bench_sae.json`` and printed."""

    def ratio(a: str, b: str) -> dict:
        ra, rb = rows[list(SETTINGS).index(a)], rows[list(SETTINGS).index(b)]
        return {"speedup": ra["tokens_per_s"] / rb["tokens_per_s"],
                "fvu_geomsae": ra["fvu"], "fvu_saelens": rb["fvu"],
                "l0_geomsae": ra["l0"], "l0_saelens": rb["l0"]}  # fmt: skip

    report = {
        "activations": {"hook": store.hook, "rows": len(X), "d_in": X.shape[1]},
        "matmul_gflops": rate,
        "torch_threads": torch.get_num_threads(),
        "load_average": os.getloadavg(),
        "steps": args.steps,
        "batch": BATCH,
        "rows": rows,
        "topk_vs_saelens": ratio("geomsae_topk_sparse", "saelens_topk"),
        "topk_dense_vs_saelens": ratio("geomsae_topk_dense", "saelens_topk"),
        "l1_vs_saelens": ratio("geomsae_relu", "saelens_relu"),
    }
    (out / "bench_sae.json").write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(rows))
    print(f"dense fp32 matmul: {rate:.1f} GFLOP/s; load average {os.getloadavg()[0]:.1f}")
    for name in ("topk_vs_saelens", "topk_dense_vs_saelens", "l1_vs_saelens"):
        r = report[name]
        print(f"{name}: geomsae/SAELens tokens/s = {r['speedup']:.2f}x; FVU "
              f"{r['fvu_geomsae']:.4f} vs {r['fvu_saelens']:.4f}; L0 {r['l0_geomsae']:.1f} "
              f"vs {r['l0_saelens']:.1f}")  # fmt: skip
    return report


def markdown(rows: list[dict]) -> str:
    keys = ["library", "setting", "tokens_per_s", "l0", "fvu", "dead_fraction",
            "dense_equiv_gflops", "executed_gflops", "executed_fraction_of_matmul"]  # fmt: skip
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        cells = [f"{r[k]:.4g}" if isinstance(r[k], float) else str(r[k]) for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
