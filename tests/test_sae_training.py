"""SAE training loop: determinism, several SAEs per pass, data streaming, resampling,
checkpoint/resume after SIGKILL, refusing to overwrite, and data parallel (2 gloo processes)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from geomsae.sae import Chunk, ChunkedSource, SAEConfig, as_source, load, train, train_many
from geomsae.sae.trainer import _keep_fn, _Run, geometric_median, lr_factor

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def data(n=4096, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(48, d, generator=g)
    coef = torch.rand(n, 48, generator=g) * (torch.rand(n, 48, generator=g) < 0.06)
    return coef @ feats + 0.01 * torch.randn(n, d, generator=g)


def cfg(**kw):
    base = dict(arch="topk", d_in=16, n_features=48, k=3, batch_size=128, lr=3e-3, seed=1)
    base.update(kw)
    return SAEConfig(**base)


def weights(sae):
    return {k: v.detach().clone() for k, v in sae.state_dict().items()}


def assert_same(a, b, atol=0.0):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=atol, rtol=atol, msg=k)


# ----- schedule and initialisation -------------------------------------------------------------
def test_lr_schedule_warms_up_and_decays():
    f = [lr_factor(s, 100, 10, 0.2) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == 1.0 and f[50] == 1.0
    assert f[99] < 0.06 and all(a >= b for a, b in zip(f[80:], f[81:]))


def test_geometric_median_resists_outliers():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 3, generator=g) * 0.1
    x[:40] += 100.0  # 8% far outliers pull the mean, not the median
    gm = geometric_median(x)
    assert gm.norm() < 0.1 < x.mean(0).norm()


@pytest.mark.parametrize("arch", ["relu", "jumprelu"])
def test_sparsity_coefficient_warms_up_linearly(arch):
    """The L1 (JumpReLU: L0) coefficient rises linearly over the first l1_warmup_fraction of
    the steps, reaching the configured value at the end of the warm-up."""
    target = 4.0
    used, unused = ("l1_coefficient", "l0_coefficient")[:: 1 if arch == "relu" else -1]
    c = cfg(arch=arch, l1_warmup_fraction=0.1, **{used: target, unused: 99.0})
    run = _Run(c, torch.device("cpu"), total_steps=200)  # warm-up over 20 steps
    coef = [run.context(s).sparsity_coefficient for s in range(200)]
    np.testing.assert_allclose(coef[:20], target * np.arange(1, 21) / 20)
    assert coef[19] == target and all(v == target for v in coef[20:])
    no_warmup = _Run(
        cfg(arch=arch, l1_warmup_fraction=0.0, **{used: target}), torch.device("cpu"), 200
    )
    assert no_warmup.context(0).sparsity_coefficient == target


@pytest.mark.parametrize("init", ["mean", "zeros", "geometric_median"])
def test_b_dec_initialisation(init):
    X = data(n=512) + 3.0  # far from the origin, so "zeros" differs from the mean
    run = _Run(cfg(b_dec_init=init), torch.device("cpu"), total_steps=4)
    run.init_from_sample(X)
    expected = {"mean": X.mean(0), "zeros": torch.zeros(16), "geometric_median": None}[init]
    if expected is None:
        expected = geometric_median(X)
    torch.testing.assert_close(run.sae.b_dec.detach(), expected)
    # through train: the initial sample in training units, folded back to raw units at the end
    c = cfg(b_dec_init=init, train_tokens=128, lr=1e-12, lr_warmup_steps=0, init_samples=512)
    sae = train(c, X, progress=False)
    atol = 1e-4 if init != "geometric_median" else 1e-3
    torch.testing.assert_close(sae.b_dec.detach(), expected, atol=atol, rtol=1e-4)


# ----- dead features and BatchTopK's threshold -------------------------------------------------
def test_auxk_revives_dead_topk_features():
    """Features made dead by construction (tiny encoder rows: they never reach the top k) are
    trained by AuxK and fire again; without AuxK they get no gradient and stay dead."""
    X = data(n=8192)
    result = {}
    for coef in (1 / 32, 0.0):
        run = _Run(cfg(aux_k_coefficient=coef, dead_tokens=256, aux_k=8), torch.device("cpu"), 150)
        run.init_from_sample(X[:1024])
        with torch.no_grad():
            run.sae.enc_weight[:8] *= 0.01
            run.sae.b_enc[:8] = 0.05  # positive but far below the k-th pre-activation
        run.since_fired[:8] = 10**6
        w0 = run.sae.W_dec[:8].clone()
        fired, aux = torch.zeros(8, dtype=torch.bool), 0.0
        for step in range(150):
            i = (step * 128) % 8192
            aux = max(aux, run.step(X[i : i + 128], step, 128, amp=False)["aux"])
            fired |= run.since_fired[:8] < 10**6
        result[coef] = (fired, (run.sae.W_dec[:8] - w0).abs().max().item(), aux)
    fired, moved, aux = result[1 / 32]
    assert bool(fired.all()) and moved > 0.1 and aux > 0
    fired, moved, aux = result[0.0]
    assert not bool(fired.any()) and moved < 1e-6 and aux == 0.0


def test_batchtopk_inference_threshold_gives_l0_near_k():
    """Encoding held-out rows of the training distribution with the learned threshold (no batch
    selection) gives a mean L0 within 15% of k. The threshold is an EMA of the batches' k-th
    largest activation, so it lags by about 1/batchtopk_threshold_lr steps: this 128-step run
    uses 0.1 (at the default 0.01 the L0 here is about 1.6 for k = 3)."""
    X = data(n=8192)
    c = cfg(arch="batchtopk", k=3, train_tokens=4096 * 4, batchtopk_threshold_lr=0.1)
    sae = train(c, X[:6144], progress=False)
    with torch.no_grad():
        l0 = (sae.encode(X[6144:]) > 0).sum(1).float().mean().item()
    assert abs(l0 - 3) / 3 < 0.15, l0
    assert bool(sae.threshold_initialized) and float(sae.threshold) > 0


def test_progress_bar_shows_live_l0_and_fvu(monkeypatch):
    import geomsae.sae.trainer as trainer

    bars = []

    class Bar:
        def __init__(self, **kw):
            self.kw, self.postfix, self.n, self.closed = kw, [], kw.get("initial", 0), False
            bars.append(self)

        def set_postfix(self, **kw):
            self.postfix.append(kw)

        def update(self, n):
            self.n += n

        def close(self):
            self.closed = True

    monkeypatch.setattr(trainer, "tqdm", Bar)
    X = data(n=1024)
    sae = train(cfg(train_tokens=1024), X, log_every=1)
    (bar,) = bars
    assert bar.kw["total"] == 8 and bar.kw["disable"] is False and bar.n == 8 and bar.closed
    assert len(bar.postfix) == 8
    for post, row in zip(bar.postfix, sae.history_):
        assert float(post["l0"]) == pytest.approx(row["l0"], abs=0.05)
        assert float(post["fvu"]) == pytest.approx(row["fvu"], abs=5e-4)
    train(cfg(train_tokens=1024), X, progress=False)
    assert bars[-1].kw["disable"] is True


# ----- determinism and sweeps ------------------------------------------------------------------
def test_training_is_deterministic_and_history_is_logged():
    X = data()
    c = cfg(train_tokens=4096 * 2)
    a = train(c, X, progress=False, log_every=8)
    b = train(c, X, progress=False, log_every=8)
    assert_same(a, b)
    assert [h["step"] for h in a.history_] == [8, 16, 24, 32, 40, 48, 56, 64]
    assert a.history_[-1]["fvu"] < a.history_[0]["fvu"]
    assert all(h["l0"] == pytest.approx(3.0) for h in a.history_)


def test_train_many_equals_separate_runs():
    X = data()
    # different init seeds: the batches follow data_seed only, which they share
    configs = [cfg(), cfg(arch="relu", l1_coefficient=2.0, seed=7), cfg(k=5, n_features=64, seed=3)]
    many = train_many(configs, X, progress=False)
    for c, sae in zip(configs, many):
        assert_same(sae, train(c, X, progress=False))
    # ... so the order of the configs does not matter either
    for sae, again in zip(many, reversed(train_many(configs[::-1], X, progress=False))):
        assert_same(sae, again)


def test_data_seed_sets_the_data_order_and_must_be_shared(monkeypatch):
    X = data()
    seen = []
    real = _Run.step
    monkeypatch.setattr(
        _Run, "step", lambda self, x, *a: seen.append(x.clone()) or real(self, x, *a)
    )

    def batches(**kw):
        seen.clear()
        train(cfg(train_tokens=512, **kw), X, progress=False)
        return torch.stack(seen)

    base = batches()
    assert torch.equal(base, batches(seed=5, arch="relu"))  # the init seed leaves the data alone
    assert not torch.equal(base, batches(data_seed=1))
    with pytest.raises(ValueError, match="data_seed"):
        train_many([cfg(), cfg(data_seed=1)], X, progress=False)


@pytest.mark.parametrize("arch", ["relu", "tied_relu", "topk", "jumprelu"])
def test_sparse_and_dense_paths_train_to_the_same_weights(arch):
    """Whole runs (Adam, L1 warm-up, unit-norm constraint) through either path agree; the
    sparse kernels change only the floating-point summation order."""
    X = data(n=2048).double()
    c = cfg(arch=arch, l1_coefficient=0.5, train_tokens=1024, lr_warmup_steps=2)
    runs = {}
    for impl in ("sparse", "dense"):
        run = _Run(c, torch.device("cpu"), total_steps=8)
        run.sae.double()
        run.opt = torch.optim.Adam(run.sae.parameters(), lr=c.resolved_lr)
        run.sae.decode_impl = impl
        run.init_from_sample(X[:512])
        for step in range(8):
            run.step(X[step * 128 : (step + 1) * 128], step, 128, amp=False)
        runs[impl] = run
    assert runs["sparse"].window[-1]["l0"] == runs["dense"].window[-1]["l0"]
    assert_same(runs["sparse"].sae, runs["dense"].sae, atol=1e-9)
    moved = (runs["dense"].sae.W_dec - _Run(c, torch.device("cpu"), 8).sae.W_dec.double()).abs()
    assert moved.max() > 1e-3  # the runs did train


@pytest.mark.parametrize("arch", ["relu", "topk"])
def test_gradient_norm_is_clipped_before_the_adam_step(arch, monkeypatch):
    """With ``max_grad_norm`` the gradient Adam sees has exactly that global norm when the raw
    one is larger; ``None`` leaves the raw gradient, whose norm here is far above the limit."""
    X = data(n=256) * 10.0
    seen = {}
    real = torch.optim.Adam.step

    def spy(self, *a, **kw):
        seen["norm"] = float(torch.cat([p.grad.reshape(-1) for p in self.param_groups[0]["params"]
                                        if p.grad is not None]).norm())  # fmt: skip
        return real(self, *a, **kw)

    monkeypatch.setattr(torch.optim.Adam, "step", spy)
    norms = {}
    for limit in (None, 0.5):
        c = cfg(arch=arch, l1_coefficient=2.0, max_grad_norm=limit, lr_warmup_steps=1)
        run = _Run(c, torch.device("cpu"), total_steps=4)
        run.opt = torch.optim.Adam(run.sae.parameters(), lr=c.resolved_lr)
        run.init_from_sample(X)
        run.step(X[:128], 0, 128, amp=False)
        norms[limit] = seen["norm"]
    assert norms[None] > 10 * 0.5
    assert norms[0.5] == pytest.approx(0.5, rel=1e-5)
    with pytest.raises(ValueError, match="max_grad_norm"):
        cfg(max_grad_norm=0.0)


# ----- data ------------------------------------------------------------------------------------
def test_streaming_covers_every_row_once_per_epoch_and_resumes():
    X = torch.arange(600, dtype=torch.float32)[:, None].repeat(1, 2)
    chunks = [Chunk(100, lambda i=i: (X[100 * i : 100 * (i + 1)], None)) for i in range(6)]
    src = ChunkedSource(chunks, d_in=2, buffer_chunks=2)
    it = src.batches(50, seed=3)
    first = torch.cat([next(it) for _ in range(12)])  # one epoch
    assert sorted(first[:, 0].tolist()) == list(range(600))
    assert not torch.equal(first[:, 0], X[:, 0])  # shuffled
    more = [next(it) for _ in range(5)]
    resumed = src.batches(50, seed=3, start=12)
    for b in more:
        assert torch.equal(next(resumed), b)


def test_exclusions_drop_high_norm_rows_and_bos():
    X = torch.randn(1000, 4)
    X[::100] *= 1000.0
    pos = torch.arange(1000) % 10
    src = ChunkedSource([Chunk(1000, lambda: (X, pos))], d_in=4)
    keep = _keep_fn(cfg(d_in=4, exclude_high_norm=10.0, exclude_bos=True), src)
    batch = torch.cat([next(src.batches(100, 0, keep)) for _ in range(1)])
    assert batch.norm(dim=1).max() < 100
    assert int(keep(X, pos).sum()) == 900  # the outliers sit at position 0 too
    keep_norm = _keep_fn(cfg(d_in=4, exclude_high_norm=10.0, exclude_bos=False), src)
    assert int(keep_norm(X, pos).sum()) == 990


def test_trains_from_an_activation_store():
    from geomsae.activations import ArrayStore

    X = data(n=2048)
    store = ArrayStore(X.numpy())
    sae = train(cfg(train_tokens=2048), store, progress=False)
    direct = train(cfg(train_tokens=2048), as_source(X), progress=False)
    assert sae.history_[-1]["fvu"] == pytest.approx(direct.history_[-1]["fvu"], rel=0.3)
    assert as_source(store).n_rows == 2048


def test_resampling_revives_dead_l1_features():
    X = data()
    c = cfg(arch="relu", resample_every=10, dead_tokens=1000)
    run = _Run(c, torch.device("cpu"), total_steps=100)
    run.init_from_sample(X[:512])
    for step in range(3):
        run.step(X[step * 128 : (step + 1) * 128], step, 128, amp=False)
    run.since_fired[:5] = 10**6
    old = run.sae.W_dec[5:].clone()
    n = run.resample(X[:256])
    assert n == 5 and int((run.since_fired[:5] == 0).sum()) == 5
    torch.testing.assert_close(run.sae.W_dec[5:], old)
    # each new decoder row points along some centred input
    dirs = X[:256] - run.sae.b_dec
    cos = (
        torch.nn.functional.normalize(run.sae.W_dec[:5], dim=1)
        @ torch.nn.functional.normalize(dirs, dim=1).T
    )
    assert torch.allclose(cos.max(1).values, torch.ones(5), atol=1e-5)
    assert torch.all(run.opt.state[run.sae.W_dec]["exp_avg"][:5] == 0)


# ----- checkpoints -----------------------------------------------------------------------------
SCRIPT = """
import sys, numpy as np, torch
torch.set_num_threads(1)
from geomsae.sae import SAEConfig, train
X = torch.from_numpy(np.load(sys.argv[1]))
c = SAEConfig(arch="topk", d_in=16, n_features=48, k=3, batch_size=64, lr=3e-3, seed=1,
              train_tokens=int(sys.argv[3]))
train(c, X, out_dir=sys.argv[2], checkpoint_every=int(sys.argv[4]), progress=False)
"""


def _script(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "run.py"
    path.write_text(textwrap.dedent(body))
    return path


@pytest.mark.slow
def test_resume_after_sigkill_continues_the_same_run(tmp_path):
    X = data()
    np.save(tmp_path / "x.npy", X.numpy())
    out = tmp_path / "out"
    total = 4096 * 25  # 1600 steps: long enough to be killed midway
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, str(_script(tmp_path, SCRIPT)), str(tmp_path / "x.npy"), str(out)]
    proc = subprocess.Popen(cmd + [str(total), "100"], env=env)
    ckpt = out / "checkpoint.safetensors"
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert ckpt.exists(), "the run never wrote a checkpoint"
    from geomsae.sae.checkpoint import read_checkpoint

    _, meta = read_checkpoint(ckpt)
    killed_at = meta["step"]
    assert 0 < killed_at < total // 64 and killed_at % 100 == 0
    assert not (out / "cfg.json").exists()

    c = SAEConfig(arch="topk", d_in=16, n_features=48, k=3, batch_size=64, lr=3e-3, seed=1,
                  train_tokens=total)  # fmt: skip
    resumed = train(c, X, out_dir=out, checkpoint_every=100, progress=False)
    assert not ckpt.exists() and (out / "cfg.json").exists()
    steps = [h["step"] for h in resumed.history_]
    assert steps == sorted(set(steps)) and steps[-1] == total // 64
    straight = train(c, X, progress=False)
    assert_same(resumed, straight, atol=1e-6)
    torch.testing.assert_close(load(out)(X[:50]), straight(X[:50]), atol=1e-5, rtol=1e-5)


def test_finished_runs_are_not_overwritten_and_configs_must_match(tmp_path):
    X = data(n=1024)
    c = cfg(train_tokens=1024)
    train(c, X, out_dir=tmp_path / "a", progress=False)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        train(c, X, out_dir=tmp_path / "a", progress=False)
    train(c, X, out_dir=tmp_path / "a", progress=False, overwrite=True)
    # an unfinished checkpoint written for another config is not silently reused
    c_long = cfg(train_tokens=1024 * 4)
    with pytest.raises(ValueError, match="different configs"):
        from geomsae.sae import checkpoint as ck

        run = _Run(c_long, torch.device("cpu"), 32)
        tensors = ck.run_tensors("0", run.sae, run.opt, run.since_fired, run.gen)
        meta = {"configs": [c_long.to_dict()], "n_rows": 1024, "step": 3, "history": [[]]}
        ck.write_checkpoint(tmp_path / "b" / ck.FILENAME, tensors, meta)
        train(c, X, out_dir=tmp_path / "b", progress=False)


# ----- data parallel ---------------------------------------------------------------------------
DDP_CONFIGS = [  # wide TopK dictionaries: many features dead at a time, AuxK active
    dict(arch="topk", n_features=512, k=1, seed=1, dead_tokens=128),
    dict(arch="batchtopk", n_features=256, k=3, seed=3, dead_tokens=256),
    dict(arch="relu", l1_coefficient=2.0, seed=2),
    dict(arch="jumprelu", l0_coefficient=0.05, seed=4),
]
DDP_SCRIPT = """
import json, sys, numpy as np, torch
torch.set_num_threads(1)
from geomsae.sae import SAEConfig, train_many
X = torch.from_numpy(np.load(sys.argv[1]))
configs = [SAEConfig(**c) for c in json.loads(sys.argv[3])]
train_many(configs, X, out_dir=sys.argv[2], progress=False, checkpoint_every=16)
assert torch.distributed.get_world_size() == 2
open(f"{sys.argv[2]}/rank{torch.distributed.get_rank()}.done", "w").close()
"""


def _ddp_configs() -> list[SAEConfig]:
    shared = dict(d_in=16, n_features=48, batch_size=128, lr=3e-3, train_tokens=4096 * 2)
    return [SAEConfig(**{**shared, **c}) for c in DDP_CONFIGS]


@pytest.mark.slow
def test_two_gloo_processes_match_one(tmp_path):
    """Each architecture trained by 2 gloo processes on halves of every batch equals the
    1-process run: gradients are averaged, and the batch statistics (BatchTopK's selection over
    the global batch and its inference threshold, AuxK's variance, fired features) are global."""
    import json

    X = data()
    np.save(tmp_path / "x.npy", X.numpy())
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    script = str(_script(tmp_path, DDP_SCRIPT))
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    configs = _ddp_configs()
    arg = json.dumps([c.to_dict() for c in configs])
    cmd = launcher + [script, str(tmp_path / "x.npy"), str(tmp_path / "ddp"), arg]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / "ddp" / "rank0.done").exists() and (tmp_path / "ddp" / "rank1.done").exists()
    single = train_many(configs, X, progress=False)
    for i, sae in enumerate(single):
        dist_sae = load(tmp_path / "ddp" / f"sae_{i}")
        x = X[:200]
        arch = configs[i].arch
        torch.testing.assert_close(dist_sae(x), sae(x), atol=2e-4, rtol=2e-4, msg=arch)
        torch.testing.assert_close(dist_sae.W_dec, sae.W_dec, atol=2e-4, rtol=2e-4, msg=arch)
        if arch in ("batchtopk", "jumprelu"):
            torch.testing.assert_close(
                dist_sae.threshold, sae.threshold, atol=2e-4, rtol=2e-4, msg=arch
            )
        # dead features are counted over the global batch: the same history as one process
        hist = json.loads((tmp_path / "ddp" / f"sae_{i}" / "history.json").read_text())
        assert [h["dead_fraction"] for h in hist] == [h["dead_fraction"] for h in sae.history_]
    assert single[0].history_[-1]["dead_fraction"] > 0.1  # ... and there are dead ones
    assert single[1].history_[-1]["aux"] > 0 and single[1].threshold > 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("arch", ["topk", "batchtopk", "relu", "jumprelu"])
@pytest.mark.parametrize("decode", ["dense", "sparse"])
def test_cuda_bf16_training_matches_cpu_quality(arch, decode):
    X = data(n=8192)
    c = cfg(arch=arch, train_tokens=8192 * 3, l1_coefficient=2.0)
    cpu = train(c, X, progress=False, device="cpu")
    gpu = train(c, X, progress=False, device="cuda", amp=True, decode=decode)
    assert gpu.W_dec.is_cuda
    fvu_cpu, fvu_gpu = cpu.history_[-1]["fvu"], gpu.history_[-1]["fvu"]
    assert fvu_gpu < 1.2 * fvu_cpu + 0.02
    from geomsae.sae import evaluate

    assert evaluate(gpu, X).fvu < 1.2 * evaluate(cpu, X).fvu + 0.02


@pytest.mark.slow
@pytest.mark.skipif(
    not any(shutil.which(cxx) for cxx in ("g++", "clang++", "c++")),
    reason="torch.compile's inductor backend needs a C++ compiler on CPU",
)
@pytest.mark.parametrize(("arch", "decode"), [("topk", "dense"), ("relu", "auto")])
def test_compiled_training_steps_match_eager(arch, decode):
    """``compile=True`` (inductor on CPU here) trains to the eager weights; the dense TopK path
    is the one used on CUDA, ReLU "auto" takes the sparse kernels on CPU."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    X = data(n=1024)
    c = cfg(arch=arch, train_tokens=128 * 6, l1_coefficient=0.5)
    compiled = train(c, X, progress=False, compile=True, decode=decode)
    assert counters["stats"]["unique_graphs"] > 0  # dynamo did capture and compile graphs
    eager = train(c, X, progress=False, decode=decode)
    assert_same(compiled, eager, atol=1e-5)
    torch._dynamo.reset()
