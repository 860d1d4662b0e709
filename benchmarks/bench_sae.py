"""SAE training speed and quality: geomsae against SAELens on the same real activations.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_sae.py [--only all|topk|l1] [--steps 40]
        [--threads 1] [--k 32] [--l1-geomsae 2,6,16,40] [--l1-saelens 4,8,16] [--l1-dense A]
        [--bf16]
        [--target-l0 L0] [--tokens 262144] [--eval-tokens 16384]
        [--saelens-python /work/saelens-venv/bin/python] [--out DIR]

Activations: SmolLM2-135M-Instruct (the embedded model), ``blocks.6.hook_resid_post``
(d_in = 576), from the harvester's cache (filled on first use). The last ``--eval-tokens`` rows
are held out; every SAE trains on the same batches (4096 tokens, ``--steps`` steps, same learning
rate, warm-up and decay) and all are scored by the same code (:func:`geomsae.sae.evaluate`, FVU
around the mean) on the held-out rows.

Settings (d_sae = 4608 = 8 x 576):

* TopK with k = 32 (equal L0 by construction). geomsae's TopK runs with its sparse CPU kernels
  (the default on CPU) and with the dense path, which is how the automatic choice was made.
* The standard ReLU SAE with the decoder-norm-weighted L1 penalty. Equal alpha does not give
  equal L0 (nor does it across libraries), so each library trains a sweep of alphas and the two
  are compared at equal L0: at the held-out L0 of every SAELens sweep point that lies inside
  geomsae's range (geomsae's FVU and tokens/s interpolated linearly in log L0 between its two
  neighbouring sweep points, tokens/s in log scale), and at the geometric mean of the range
  both cover (``--target-l0`` to choose it). geomsae runs with ``decode="auto"``, so each step
  picks the sparse kernels or the dense path from its density (early steps, with about half
  the codes on, are dense); ``--l1-dense A`` adds a dense-path run at alpha A for reference.
  ``--bf16`` adds geomsae runs under bf16 autocast (``train(..., amp=True)``; TopK and every
  alpha of the sweep), reported as separate rows and ratios (SAELens runs in float32).
  Tokens/s is reported over the whole run and over its last quarter (by then L0 has fallen,
  which is the regime of a long run).

Timing. The machine is shared, so its load drifts by several times within minutes; timing the
libraries one after the other measures the drift, not the code. Everything therefore runs in
ONE process that interleaves the SAEs step by step (alternating their order every step), and
each SAE's time is the sum of its own steps, on ``--threads`` torch threads. That process runs
in SAELens' virtual environment (``sae-lens`` 6.x needs transformer-lens < 4, which conflicts
with geomsae's transformer-lens 4; create it with ``python3 -m venv /work/saelens-venv &&
/work/saelens-venv/bin/pip install torch==2.13.0 sae-lens``, the CPU torch wheel) with geomsae
on ``PYTHONPATH`` (``geomsae.sae`` needs only torch, numpy, safetensors and tqdm). geomsae is
stepped through ``geomsae.sae.trainer._Run`` (the unit ``train_many`` loops over), SAELens
through ``SAETrainer.step`` (the unit its ``fit`` loops over); setup (initial sample, norm
estimation) is excluded for both.

Compute: the dense fp32 matmul rate of this machine is measured in the same run (an SAE-shaped
4096 x 576 x 4608 product, best of 7), and each SAE's rate is reported two ways:
*dense-equivalent* GFLOP/s (10 d p FLOPs per token: encoder and decoder forward, both weight
gradients and the code gradient) and *executed* GFLOP/s, counted step by step: 10 d p per token
on a dense step, 2 d p + 8 L0 d on a sparse one (L0 = k for TopK, the batch's L0 for ReLU; the
rest are O(n L0 d) gathers, scatters and a sampled dense-dense product).
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
from geomsae.sae.sparse import SPARSE_MAX_DENSITY, SPARSE_MAX_DENSITY_BF16
from geomsae.sae.trainer import _Run

args = json.loads(sys.argv[1])
torch.set_num_threads(args["threads"])
X = torch.from_numpy(np.load(args["train"]))
d_in, batch, steps, d_sae = X.shape[1], args["batch"], args["steps"], args["d_sae"]
torch.manual_seed(args["seed"])


def batches():
    g = torch.Generator().manual_seed(args["seed"])
    while True:
        perm = torch.randperm(len(X), generator=g)
        for i in range(0, len(X) - batch + 1, batch):
            yield X[perm[i:i + batch]]


def saelens_trainer(spec):
    if spec["arch"] == "topk":
        cfg = TopKTrainingSAEConfig(d_in=d_in, d_sae=d_sae, k=spec["k"],
                                    rescale_acts_by_decoder_norm=False,
                                    normalize_activations="expected_average_only_in")
        sae = TopKTrainingSAE(cfg)
    else:
        cfg = StandardTrainingSAEConfig(d_in=d_in, d_sae=d_sae, l1_coefficient=spec["l1"],
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


def geomsae_flops(run, l0, amp):
    # executed FLOPs per token of one geomsae step: the encoder's forward matmul, plus either
    # four dense (n, d_sae) x d_in products or four O(L0 d) sparse kernels
    c, dense = run.config, 10 * d_in * d_sae
    if run.sae.decode_impl == "dense":
        return dense
    if c.arch in ("topk", "batchtopk"):
        return 2 * d_in * d_sae + 8 * c.k * d_in
    limit = SPARSE_MAX_DENSITY_BF16 if amp else SPARSE_MAX_DENSITY
    if run.sae.decode_impl == "auto" and l0 > limit * d_sae:
        return dense
    return 2 * d_in * d_sae + 8 * l0 * d_in


sample = X[torch.randperm(len(X), generator=torch.Generator().manual_seed(1))[:65536]]
scale = d_in ** 0.5 / float(sample.norm(dim=1).mean())
runs = {}
for name, spec in args["geomsae"].items():
    run = _Run(SAEConfig(**spec["config"]), torch.device("cpu"), steps)
    run.sae.decode_impl = spec["decode"]
    run.init_from_sample(sample * scale)
    runs[name] = run
trainers = {name: saelens_trainer(spec) for name, spec in args["saelens"].items()}
order = list(runs) + list(trainers)
seconds = {name: [] for name in order}
l0s = {name: [] for name in runs}
flops = {name: 0.0 for name in order}
it = batches()
for step in range(steps):
    x = next(it)
    for name in (order if step % 2 == 0 else order[::-1]):
        t0 = time.perf_counter()
        if name in runs:
            amp = args["geomsae"][name]["amp"]
            stats = runs[name].step(x * scale, step, batch, amp)
            seconds[name].append(time.perf_counter() - t0)
            flops[name] += batch * geomsae_flops(runs[name], stats["l0"], amp)
            l0s[name].append(stats["l0"])
        else:
            tr = trainers[name]
            tr.maybe_reset_sparsity()
            tr.step(x)
            tr.n_training_steps += 1
            seconds[name].append(time.perf_counter() - t0)
            flops[name] += batch * 10 * d_in * d_sae
for name, run in runs.items():
    run.sae.set_input_scale(scale)
    run.sae.save(args["out"] + "/" + name)
for name, tr in trainers.items():
    tr.sae.fold_activation_norm_scaling_factor(tr.activation_scaler.scaling_factor)
    tr.sae.save_inference_model(args["out"] + "/" + name)
print("RESULT " + json.dumps({"seconds": seconds, "flops": flops, "l0s": l0s,
                              "threads": torch.get_num_threads()}))
"""


def matmul_gflops(
    m: int = 4096, k: int = 576, n: int = 4608, repeats: int = 7, dtype=torch.float32
) -> float:
    """Best-of-``repeats`` GFLOP/s of an (m, k) @ (k, n) product on this CPU."""
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * m * k * n / best / 1e9


def run_interleaved(python: str, spec: dict) -> dict:
    """Run the interleaved trainer in SAELens' venv: seconds and executed FLOPs per SAE."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    env.update(OMP_NUM_THREADS=str(spec["threads"]), MKL_NUM_THREADS=str(spec["threads"]))
    res = subprocess.run(
        [python, "-c", SAELENS_RUNNER, json.dumps(spec)], capture_output=True, text=True, env=env
    )
    if res.returncode != 0:
        raise RuntimeError(f"the interleaved run failed:\n{res.stderr[-4000:]}")
    line = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT ") :])


def floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def settings(args, common: dict) -> tuple[dict, dict, dict]:
    """The SAEs to train: geomsae specs, SAELens specs, and name -> (library, setting, family)."""
    geomsae, saelens, shown = {}, {}, {}
    if args.only in ("all", "topk"):
        topk = SAEConfig(arch="topk", k=args.k, **common).to_dict()
        for decode in ("sparse", "dense"):
            name = f"geomsae_topk_{decode}"
            geomsae[name] = {"config": topk, "decode": decode, "amp": False}
            what = "sparse kernels" if decode == "sparse" else "dense path"
            shown[name] = ("geomsae", f"topk k={args.k} ({what})", "topk")
        if args.bf16:
            name = "geomsae_topk_sparse_bf16"
            geomsae[name] = {"config": topk, "decode": "sparse", "amp": True}
            shown[name] = ("geomsae", f"topk k={args.k} (sparse kernels, bf16 autocast)", "topk")
        saelens["saelens_topk"] = {"arch": "topk", "k": args.k}
        shown["saelens_topk"] = ("SAELens", f"topk k={args.k}", "topk")
    if args.only in ("all", "l1"):
        for a in floats(args.l1_geomsae):
            relu = SAEConfig(arch="relu", l1_coefficient=a, l1_warmup_fraction=0.05, **common)
            for amp in (False, True) if args.bf16 else (False,):
                name = f"geomsae_relu_{a:g}" + ("_bf16" if amp else "")
                geomsae[name] = {"config": relu.to_dict(), "decode": "auto", "amp": amp}
                what, family = (
                    ("auto, bf16 autocast", "l1_geomsae_bf16") if amp else ("auto", "l1_geomsae")
                )
                shown[name] = ("geomsae", f"relu L1={a:g} ({what})", family)
        if args.l1_dense is not None:
            relu = SAEConfig(
                arch="relu", l1_coefficient=args.l1_dense, l1_warmup_fraction=0.05, **common
            )
            name = f"geomsae_relu_{args.l1_dense:g}_dense"
            geomsae[name] = {"config": relu.to_dict(), "decode": "dense", "amp": False}
            shown[name] = ("geomsae", f"relu L1={args.l1_dense:g} (dense path)", "l1_dense")
        for a in floats(args.l1_saelens):
            saelens[f"saelens_relu_{a:g}"] = {"arch": "relu", "l1": a}
            shown[f"saelens_relu_{a:g}"] = ("SAELens", f"standard L1={a:g}", "l1_saelens")
    return geomsae, saelens, shown


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=262_144, help="activation rows to harvest")
    p.add_argument("--eval-tokens", type=int, default=16_384, help="held-out rows")
    p.add_argument("--steps", type=int, default=40, help="training steps of 4096 tokens")
    p.add_argument("--only", choices=("all", "topk", "l1"), default="all")
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--l1-geomsae", default="2,6,16,40", help="L1 coefficients of geomsae's sweep")
    p.add_argument("--l1-saelens", default="4,8,16", help="L1 coefficients of SAELens' sweep")
    p.add_argument("--l1-dense", type=float, default=None,
                   help="also run geomsae's ReLU at this alpha on the dense path")  # fmt: skip
    p.add_argument("--target-l0", type=float, default=None,
                   help="L0 at which the L1 sweeps are compared (default: the geometric mean "
                        "of the L0 range both sweeps cover)")  # fmt: skip
    p.add_argument("--bf16", action="store_true",
                   help="also train geomsae under bf16 autocast (amp=True)")  # fmt: skip
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=1, help="torch threads of the training run")
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

    torch.set_num_threads(args.threads)
    store = harvest(args.tokens, None, layers=(6,), progress=False)
    X = store.to_tensor()
    X_train, X_eval = X[: -args.eval_tokens], X[-args.eval_tokens :]
    d_in = X.shape[1]
    d_sae = D_SAE_FACTOR * d_in
    rate = matmul_gflops(k=d_in, n=d_sae)
    rate_bf16 = matmul_gflops(k=d_in, n=d_sae, dtype=torch.bfloat16) if args.bf16 else None
    print(f"activations: {len(X)} x {d_in} ({store.hook}); dense fp32 matmul {rate:.1f} GFLOP/s "
          f"on {args.threads} thread(s)")  # fmt: skip
    if rate_bf16:
        print(f"dense bf16 matmul {rate_bf16:.1f} GFLOP/s")
    warmup, decay = max(1, args.steps // 10), args.steps // 5
    common = dict(d_in=d_in, n_features=d_sae, batch_size=BATCH, lr=args.lr, seed=args.seed,
                  train_tokens=args.steps * BATCH, lr_warmup_steps=warmup,
                  lr_decay_fraction=decay / args.steps, hook_name=store.hook)  # fmt: skip
    geomsae, saelens, shown = settings(args, common)
    tmp = Path(tempfile.mkdtemp(prefix="bench_sae_"))
    np.save(tmp / "train.npy", X_train.numpy())
    spec = {
        "train": str(tmp / "train.npy"), "out": str(tmp), "batch": BATCH, "steps": args.steps,
        "d_sae": d_sae, "lr": args.lr, "warmup": warmup, "decay": decay, "seed": args.seed,
        "threads": args.threads, "geomsae": geomsae, "saelens": saelens,
    }  # fmt: skip
    try:
        result = run_interleaved(args.saelens_python, spec)
        rows = _rows(args, tmp, result, shown, X_eval, rate, d_in * d_sae * 10)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _report(args, out, store, X, rate, rows, rate_bf16)


def _rows(args, tmp: Path, result: dict, shown: dict, X_eval, rate: float, dense_flops: int):
    """One row per SAE: speed, held-out quality and achieved compute."""
    tokens = args.steps * BATCH
    rows = []
    for name, (library, setting, family) in shown.items():
        m = evaluate(load(tmp / name), X_eval)
        per_step = result["seconds"][name]
        s = sum(per_step)
        late = per_step[-max(1, len(per_step) // 4) :]
        row = {
            "name": name,
            "library": library,
            "setting": setting,
            "family": family,
            "tokens_per_s": tokens / s,
            "last_quarter_tokens_per_s": BATCH * len(late) / sum(late),
            "step_seconds": s / args.steps,
            "l0": m.l0,
            "fvu": m.fvu,
            "dead_fraction": m.dead_fraction,
            "dense_equiv_gflops": dense_flops * tokens / s / 1e9,
            "executed_gflops": result["flops"][name] / s / 1e9,
            "per_step_seconds": per_step,
            "per_step_l0": result.get("l0s", {}).get(name),
        }
        row["executed_fraction_of_matmul"] = row["executed_gflops"] / rate
        rows.append(row)
    return rows


def _lerp(a: float, b: float, t: float, log: bool = False) -> float:
    if log:
        return float(np.exp((1 - t) * np.log(a) + t * np.log(b)))
    return float((1 - t) * a + t * b)


def at_l0(rows: list[dict], l0: float) -> dict | None:
    """FVU, tokens/s and executed share of the matmul rate of a sweep at ``l0``: linear in
    log L0 between the two sweep points around it (tokens/s in log scale); None outside."""
    pts = sorted(rows, key=lambda r: r["l0"])
    for a, b in zip(pts, pts[1:]):
        if a["l0"] <= l0 <= b["l0"]:
            la, lb = np.log(a["l0"]), np.log(b["l0"])
            t = 0.0 if lb == la else float((np.log(l0) - la) / (lb - la))
            share = "executed_fraction_of_matmul"
            return {
                "l0": l0,
                "fvu": _lerp(a["fvu"], b["fvu"], t),
                "tokens_per_s": _lerp(a["tokens_per_s"], b["tokens_per_s"], t, log=True),
                "last_quarter_tokens_per_s": _lerp(
                    a["last_quarter_tokens_per_s"], b["last_quarter_tokens_per_s"], t, log=True
                ),
                share: _lerp(a[share], b[share], t),
                "between": [a["setting"], b["setting"]],
            }
    return None


def equal_l0(rows: list[dict], target: float | None, family: str = "l1_geomsae") -> list[dict]:
    """geomsae's and SAELens' L1 sweeps compared at equal L0: at the L0 of every SAELens sweep
    point inside geomsae's range (geomsae interpolated), and at ``target`` or the geometric
    mean of the range both cover (both interpolated)."""
    ours = [r for r in rows if r["family"] == family]
    theirs = [r for r in rows if r["family"] == "l1_saelens"]
    if len(ours) < 2 or not theirs:
        return []
    lo = max(min(r["l0"] for r in ours), min(r["l0"] for r in theirs))
    hi = min(max(r["l0"] for r in ours), max(r["l0"] for r in theirs))
    if target is None and lo <= hi and len(theirs) >= 2:
        target = float(np.sqrt(lo * hi))
    keys = ("l0", "fvu", "tokens_per_s", "last_quarter_tokens_per_s",
            "executed_fraction_of_matmul", "dead_fraction")  # fmt: skip
    points = [(r["l0"], {k: r.get(k) for k in keys} | {"between": [r["setting"]]}) for r in theirs]
    if target is not None:
        points.append((target, at_l0(theirs, target)))
    out = []
    for l0, s in sorted(points, key=lambda p: p[0]):
        g = at_l0(ours, l0)
        if g is None or s is None:
            continue
        out.append({"l0": l0, "geomsae": g, "saelens": s,
                    "speedup": g["tokens_per_s"] / s["tokens_per_s"],
                    "last_quarter_speedup": g["last_quarter_tokens_per_s"]
                    / s["last_quarter_tokens_per_s"]})  # fmt: skip
    return out


def dominating(rows: list[dict]) -> list[dict]:
    """Pairs (geomsae, SAELens) of L1 SAEs where geomsae's is at least as sparse (L0) *and*
    at least as accurate (FVU): no interpolation needed to call it no worse."""
    ours = [r for r in rows if r["family"] in ("l1_geomsae", "l1_geomsae_bf16")]
    theirs = [r for r in rows if r["family"] == "l1_saelens"]
    return [
        {
            "geomsae": g["setting"],
            "saelens": s["setting"],
            "l0": [g["l0"], s["l0"]],
            "fvu": [g["fvu"], s["fvu"]],
            "speedup": g["tokens_per_s"] / s["tokens_per_s"],
            "last_quarter_speedup": g["last_quarter_tokens_per_s"] / s["last_quarter_tokens_per_s"],
        }
        for s in theirs
        for g in ours
        if g["l0"] <= s["l0"] and g["fvu"] <= s["fvu"]
    ]


def _report(args, out: Path, store, X, rate: float, rows: list[dict], rate_bf16=None) -> dict:
    """Ratios against SAELens, written to ``out/bench_sae.json`` and printed."""
    by_name = {r["name"]: r for r in rows}

    def ratio(a: str, b: str) -> dict | None:
        if a not in by_name or b not in by_name:
            return None
        ra, rb = by_name[a], by_name[b]
        return {"speedup": ra["tokens_per_s"] / rb["tokens_per_s"],
                "fvu_geomsae": ra["fvu"], "fvu_saelens": rb["fvu"],
                "l0_geomsae": ra["l0"], "l0_saelens": rb["l0"]}  # fmt: skip

    report = {
        "activations": {"hook": store.hook, "rows": len(X), "d_in": X.shape[1]},
        "matmul_gflops": rate,
        "matmul_gflops_bf16": rate_bf16,
        "torch_threads": args.threads,
        "load_average": os.getloadavg(),
        "steps": args.steps,
        "batch": BATCH,
        "rows": rows,
        "topk_vs_saelens": ratio("geomsae_topk_sparse", "saelens_topk"),
        "topk_dense_vs_saelens": ratio("geomsae_topk_dense", "saelens_topk"),
        "topk_bf16_vs_saelens": ratio("geomsae_topk_sparse_bf16", "saelens_topk"),
        "l1_at_equal_l0": equal_l0(rows, args.target_l0),
        "l1_bf16_at_equal_l0": equal_l0(rows, args.target_l0, "l1_geomsae_bf16"),
        "l1_dominating": dominating(rows),
    }
    (out / "bench_sae.json").write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(rows))
    print(f"dense fp32 matmul: {rate:.1f} GFLOP/s; load average {os.getloadavg()[0]:.1f}")
    for name in ("topk_vs_saelens", "topk_dense_vs_saelens", "topk_bf16_vs_saelens"):
        r = report[name]
        if r is not None:
            print(f"{name}: geomsae/SAELens tokens/s = {r['speedup']:.2f}x; FVU "
                  f"{r['fvu_geomsae']:.4f} vs {r['fvu_saelens']:.4f}; L0 {r['l0_geomsae']:.1f} "
                  f"vs {r['l0_saelens']:.1f}")  # fmt: skip
    share = "executed_fraction_of_matmul"
    if report["l1_at_equal_l0"] == [] and any(r["family"] == "l1_geomsae" for r in rows):
        print("l1_at_equal_l0: no L0 covered by both sweeps; widen --l1-geomsae / --l1-saelens")
    for d in report["l1_dominating"]:
        print(f"l1 dominance: geomsae {d['geomsae']} (L0 {d['l0'][0]:.0f}, FVU {d['fvu'][0]:.4f}) "
              f"vs SAELens {d['saelens']} (L0 {d['l0'][1]:.0f}, FVU {d['fvu'][1]:.4f}): "
              f"{d['speedup']:.2f}x tokens/s ({d['last_quarter_speedup']:.2f}x over the last "
              "quarter)")  # fmt: skip
    equal = [("", eq) for eq in report["l1_at_equal_l0"]]
    equal += [("bf16 autocast ", eq) for eq in report["l1_bf16_at_equal_l0"]]
    for tag, eq in equal:
        g, s = eq["geomsae"], eq["saelens"]
        print(f"{tag}l1 at L0 {eq['l0']:.0f} (SAELens {', '.join(s['between'])}): geomsae/SAELens "
              f"tokens/s = {eq['speedup']:.2f}x ({g['tokens_per_s']:.0f} vs "
              f"{s['tokens_per_s']:.0f}; last quarter of the steps "
              f"{eq['last_quarter_speedup']:.2f}x); FVU {g['fvu']:.4f} vs {s['fvu']:.4f}; "
              f"executed share of the matmul rate {g[share]:.0%} vs {s[share]:.0%}")  # fmt: skip
    return report


def markdown(rows: list[dict]) -> str:
    keys = ["library", "setting", "tokens_per_s", "last_quarter_tokens_per_s", "l0", "fvu",
            "dead_fraction", "dense_equiv_gflops", "executed_gflops",
            "executed_fraction_of_matmul"]  # fmt: skip
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        cells = [f"{r[k]:.4g}" if isinstance(r[k], float) else str(r[k]) for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
