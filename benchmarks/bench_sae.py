"""SAE training speed and quality: geomsae against SAELens on the same real activations.

    python benchmarks/bench_sae.py [--tokens 262144] [--eval-tokens 16384] [--steps 100]
        [--saelens-python /work/saelens-venv/bin/python] [--out runs/bench_sae]

Activations: SmolLM2-135M-Instruct (the embedded model), ``blocks.6.hook_resid_post``
(d_in = 576), from the harvester's cache (filled on first use). The last ``--eval-tokens`` rows
are held out; both libraries train on the rest with the same batch size (4096), number of steps,
learning rate and warm-up, and both SAEs are scored by the same code
(:func:`geomsae.sae.evaluate`, FVU around the mean) on the held-out rows.

Settings (d_sae = 4608 = 8 x 576): TopK with k = 32, and the standard ReLU SAE with the
decoder-norm-weighted L1 penalty (same alpha; L0 reported, since equal alpha need not give
equal L0). geomsae's TopK is run with its sparse CPU kernels (the default on CPU) and with the
dense path, which is how the automatic choice was made.

SAELens (``sae-lens`` 6.x needs transformer-lens < 4, which conflicts with geomsae's
transformer-lens 4) runs in its own virtual environment through a subprocess: create it with
``python3 -m venv /work/saelens-venv && /work/saelens-venv/bin/pip install sae-lens torch``.
SAELens' wall time covers only its ``SAETrainer.fit`` (norm estimation on 8 batches included);
geomsae's covers ``geomsae.sae.train`` (initial sample, b_dec and scaling included).

Compute: the dense fp32 matmul rate of this machine is measured in the same run (an SAE-shaped
4096 x 576 x 4608 product), and each run's rate is reported two ways: *dense-equivalent*
GFLOP/s (10 d p FLOPs per token: encoder and decoder forward, both weight gradients and the
code gradient) and *executed* GFLOP/s (for geomsae's sparse TopK path, 2 d p + 8 k d per token).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from geomsae.activations import harvest
from geomsae.sae import SAEConfig, evaluate, load, train

BATCH = 4096
D_SAE_FACTOR = 8

SAELENS_RUNNER = r"""
import json, sys, time
import numpy as np, torch
from sae_lens.config import SAETrainerConfig
from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig
from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
from sae_lens.training.sae_trainer import SAETrainer

args = json.loads(sys.argv[1])
X = torch.from_numpy(np.load(args["train"]))
d_in, batch, steps = X.shape[1], args["batch"], args["steps"]
torch.manual_seed(args["seed"])
if args["arch"] == "topk":
    cfg = TopKTrainingSAEConfig(d_in=d_in, d_sae=args["d_sae"], k=args["k"],
                                rescale_acts_by_decoder_norm=False,
                                normalize_activations="expected_average_only_in")
    sae = TopKTrainingSAE(cfg)
else:
    cfg = StandardTrainingSAEConfig(d_in=d_in, d_sae=args["d_sae"],
                                    l1_coefficient=args["l1"],
                                    l1_warm_up_steps=max(1, steps // 20),
                                    normalize_activations="expected_average_only_in")
    sae = StandardTrainingSAE(cfg)

def provider():
    g = torch.Generator().manual_seed(args["seed"])
    while True:
        perm = torch.randperm(len(X), generator=g)
        for i in range(0, len(X) - batch + 1, batch):
            yield X[perm[i:i + batch]]

tcfg = SAETrainerConfig(total_training_samples=steps * batch, train_batch_size_samples=batch,
                        lr=args["lr"], lr_end=0.0, lr_warm_up_steps=args["warmup"],
                        lr_decay_steps=args["decay"], n_batches_for_norm_estimate=8,
                        dead_feature_window=1000, feature_sampling_window=2000)
trainer = SAETrainer(cfg=tcfg, sae=sae, data_provider=provider())
t0 = time.perf_counter()
trainer.fit()
seconds = time.perf_counter() - t0
sae.save_inference_model(args["save"])
print("RESULT " + json.dumps({"seconds": seconds, "threads": torch.get_num_threads()}))
"""


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


def run_geomsae(cfg: SAEConfig, X: torch.Tensor, decode: str) -> tuple[object, float]:
    t0 = time.perf_counter()
    sae = train(cfg, X, progress=False, decode=decode)
    return sae, time.perf_counter() - t0


def run_saelens(python: str, spec: dict) -> tuple[object, float]:
    res = subprocess.run(
        [python, "-c", SAELENS_RUNNER, json.dumps(spec)], capture_output=True, text=True
    )
    if res.returncode != 0:
        raise RuntimeError(f"SAELens run failed:\n{res.stderr[-4000:]}")
    line = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    out = json.loads(line[len("RESULT ") :])
    return load(spec["save"]), out["seconds"]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=262_144, help="activation rows to harvest")
    p.add_argument("--eval-tokens", type=int, default=16_384, help="held-out rows")
    p.add_argument("--steps", type=int, default=100, help="training steps of 4096 tokens")
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--l1", type=float, default=5.0, help="L1 coefficient of the ReLU SAEs")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--saelens-python", default="/work/saelens-venv/bin/python")
    p.add_argument("--out", default="runs/bench_sae")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

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
    tmp = Path(tempfile.mkdtemp(prefix="bench_sae_"))
    np.save(tmp / "train.npy", X_train.numpy())
    spec = dict(train=str(tmp / "train.npy"), batch=BATCH, steps=args.steps, d_sae=d_sae,
                k=args.k, l1=args.l1, lr=args.lr, warmup=warmup, decay=decay,
                seed=args.seed)  # fmt: skip
    tokens = args.steps * BATCH
    rows = []

    def record(library: str, setting: str, sae, seconds: float, executed_per_token: float):
        m = evaluate(sae, X_eval)
        row = {
            "library": library,
            "setting": setting,
            "tokens_per_s": tokens / seconds,
            "seconds": seconds,
            "l0": m.l0,
            "fvu": m.fvu,
            "dead_fraction": m.dead_fraction,
            "dense_equiv_gflops": 10 * d_in * d_sae * tokens / seconds / 1e9,
            "executed_gflops": executed_per_token * tokens / seconds / 1e9,
        }
        row["executed_fraction_of_matmul"] = row["executed_gflops"] / rate
        rows.append(row)
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}))

    topk = SAEConfig(arch="topk", k=args.k, **common)
    relu = SAEConfig(arch="relu", l1_coefficient=args.l1, l1_warmup_fraction=0.05, **common)
    sparse_flops = 2 * d_in * d_sae + 8 * args.k * d_in
    dense_flops = 10 * d_in * d_sae

    sae, s = run_geomsae(topk, X_train, "sparse")
    record("geomsae", f"topk k={args.k} (sparse kernels)", sae, s, sparse_flops)
    sae, s = run_geomsae(topk, X_train, "dense")
    record("geomsae", f"topk k={args.k} (dense path)", sae, s, dense_flops)
    saelens_error = None
    try:
        sae, s = run_saelens(args.saelens_python, dict(spec, arch="topk", save=str(tmp / "sl_t")))
        record("SAELens", f"topk k={args.k}", sae, s, dense_flops)
    except (RuntimeError, FileNotFoundError) as exc:
        saelens_error = str(exc)
        print(f"SAELens unavailable: {exc}")
    sae, s = run_geomsae(relu, X_train, "auto")
    record("geomsae", f"relu L1={args.l1}", sae, s, dense_flops)
    if saelens_error is None:
        sae, s = run_saelens(args.saelens_python, dict(spec, arch="relu", save=str(tmp / "sl_r")))
        record("SAELens", f"standard L1={args.l1}", sae, s, dense_flops)

    def find(library: str, prefix: str) -> dict | None:
        hits = [r for r in rows if r["library"] == library and r["setting"].startswith(prefix)]
        return hits[0] if hits else None

    def ratio(a: str, b: str) -> dict | None:
        ra, rb = find("geomsae", a), find("SAELens", b)
        if ra is None or rb is None:
            return None
        return {"speedup": ra["tokens_per_s"] / rb["tokens_per_s"],
                "fvu_geomsae": ra["fvu"], "fvu_saelens": rb["fvu"],
                "l0_geomsae": ra["l0"], "l0_saelens": rb["l0"]}  # fmt: skip

    report = {
        "activations": {"hook": store.hook, "rows": len(X), "d_in": d_in, "model": "SmolLM2-135M"},
        "matmul_gflops": rate,
        "torch_threads": torch.get_num_threads(),
        "steps": args.steps,
        "batch": BATCH,
        "rows": rows,
        "topk_vs_saelens": ratio("topk k=", "topk"),
        "l1_vs_saelens": ratio("relu", "standard"),
        "saelens_error": saelens_error,
    }
    (out / "bench_sae.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"\ndense fp32 matmul: {rate:.1f} GFLOP/s")
    for name in ("topk_vs_saelens", "l1_vs_saelens"):
        r = report[name]
        if r:
            print(f"{name}: geomsae/SAELens tokens/s = {r['speedup']:.2f}x; FVU "
                  f"{r['fvu_geomsae']:.4f} vs {r['fvu_saelens']:.4f}; L0 {r['l0_geomsae']:.1f} "
                  f"vs {r['l0_saelens']:.1f}")  # fmt: skip
    return report


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
