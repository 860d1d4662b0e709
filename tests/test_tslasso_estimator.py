"""TSLasso end to end on synthetic manifolds with known coordinates (Koelle et al. 2024 checks),
SAE-feature Jacobians against autograd, results as JSON, plots and bad input."""

from __future__ import annotations

import math

import matplotlib
import numpy as np
import pytest
import torch
from sklearn.base import clone

from geomsae.sae import ARCHITECTURES
from geomsae.sae.architectures import build_sae
from geomsae.sae.config import SAEConfig
from geomsae.sae.dictionary import Dictionary
from geomsae.tslasso import (
    TSLasso,
    TSLassoResult,
    dictionary_problem,
    function_jacobians,
    problem_from_gradients,
)
from geomsae.tslasso.synthetic import swiss_roll_dictionary, torus_dictionary

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def swiss_roll():
    return swiss_roll_dictionary(n_samples=10_000, ambient_dim=49, random_state=0)


def test_swiss_roll_reference_check(swiss_roll):
    """REFERENCE section 5: lambda_max = sqrt(100) = 10 and the first probe selects {t, y}."""
    sr = swiss_roll
    assert sr.gradients.shape == (10_000, 51, 49)
    est = TSLasso(d=2, n_points=100, n_replicates=10, n_lambdas=10, random_state=0)
    est.fit(sr.X, sr.gradients, bases=sr.bases)
    assert est.support_.tolist() == [0, 1]
    assert est.result_.support_frequency == 1.0
    np.testing.assert_allclose(est.selection_frequency_[:2], 1.0)
    assert est.selection_frequency_[2:].sum() == 0
    for rep in est.replicates_:
        assert rep.lambda_max == pytest.approx(10.0, rel=1e-9)
        first = rep.probes.points[1]
        assert first.lam == pytest.approx(5.0) and first.features == (0, 1)
        assert rep.found and rep.support == (0, 1) and rep.two_stage_support == (0, 1)
    assert est.lambda_ == pytest.approx(5.0)
    assert est.result_.penalty_scale == pytest.approx(math.sqrt(200))
    assert est.path_.n_selected[0] == 0 and est.path_.n_selected[-1] >= 2


def test_swiss_roll_with_estimated_dimension_and_tangents():
    sr = swiss_roll_dictionary(n_samples=3000, random_state=1)
    est = TSLasso(d=None, n_points=100, n_replicates=10, n_lambdas=0, random_state=0)
    est.fit(sr.X, sr.gradients)  # d by TwoNN, tangent bases by weighted local PCA
    assert est.d_ == 2
    assert est.support_.tolist() == [0, 1]
    assert est.result_.support_frequency == 1.0
    assert "tangent" in est.result_.timings
    for rep in est.replicates_:
        assert rep.lambda_max == pytest.approx(10.0, rel=0.02)


@pytest.mark.parametrize("alpha", [0.2, 1.0])
def test_torus_with_distractors_exact_tangents(alpha):
    to = torus_dictionary(n_samples=2000, ambient_dim=48, n_distractors=36, alpha=alpha)
    assert to.gradients.shape == (2000, 38, 48)
    est = TSLasso(d=2, n_points=100, n_replicates=20, n_lambdas=0, random_state=0)
    est.fit(to.X, to.gradients, bases=to.bases)
    assert est.support_.tolist() == [0, 1]
    assert est.result_.support_frequency >= 0.9


def test_torus_with_distractors_low_noise_estimated_tangents():
    to = torus_dictionary(n_samples=1500, alpha=1.0, noise=0.01, random_state=3)
    est = TSLasso(d=2, n_points=100, n_replicates=20, n_lambdas=0, tangent_neighbors=20)
    est.set_params(random_state=0).fit(to.X, to.gradients)
    assert est.support_.tolist() == [0, 1]
    assert est.result_.support_frequency >= 0.9
    assert est.two_stage_support_.tolist() == [0, 1]


def test_wrong_dimension_is_not_silently_fine(swiss_roll):
    """With d=1 one coordinate alone is chosen; the bisection still hits exactly d."""
    sr = swiss_roll
    bases = sr.bases[:, :, :1]
    est = TSLasso(d=1, n_points=50, n_replicates=3, n_lambdas=0, random_state=0)
    est.fit(sr.X, sr.gradients, bases=bases)
    assert len(est.support_) == 1 and all(r.found for r in est.replicates_)


class ReLUDictionary(Dictionary):
    """A small ReLU SAE: f(x) = ReLU(W x + b), x_hat = f D."""

    def __init__(self, d_in: int, n_features: int, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.d_in, self.n_features = d_in, n_features
        self.W = torch.nn.Parameter(torch.randn(n_features, d_in, generator=g, dtype=torch.float64))
        self.b = torch.nn.Parameter(0.3 * torch.randn(n_features, generator=g, dtype=torch.float64))
        self.D = torch.nn.Parameter(torch.randn(n_features, d_in, generator=g, dtype=torch.float64))

    def encode(self, x):
        return torch.relu(x @ self.W.T + self.b)

    def decode(self, codes):
        return codes @ self.D

    @property
    def feature_directions(self):
        return self.D

    @property
    def encoder_directions(self):
        return self.W

    def jacobian_gate(self, x):
        return (x @ self.W.T + self.b > 0).to(x.dtype)


def test_dictionary_jacobians_match_autograd():
    to = torus_dictionary(n_samples=300, ambient_dim=12, random_state=4)
    sae = ReLUDictionary(12, 40)
    x = torch.as_tensor(to.X)
    bases = torch.as_tensor(to.bases)
    jac = function_jacobians(sae.encode, x, chunk_size=64)  # autograd, (n, f, D)
    torch.testing.assert_close(jac.detach(), sae.jacobian(x).detach())
    closed = dictionary_problem(sae, x, bases)
    auto = problem_from_gradients(jac.detach(), bases)
    torch.testing.assert_close(closed.gamma, auto.gamma)
    torch.testing.assert_close(closed.X, auto.X)
    # the estimator gives the same answer from the dictionary and from the plain callable
    kw = dict(d=2, n_points=60, n_replicates=2, n_lambdas=3, random_state=0)
    a = TSLasso(**kw).fit(to.X, bases=to.bases, dictionary=sae)
    b = TSLasso(**kw).fit(to.X, bases=to.bases, function=sae.encode)
    assert a.support_.tolist() == b.support_.tolist()
    assert a.lambda_ == pytest.approx(b.lambda_)
    np.testing.assert_allclose(a.selection_frequency_, b.selection_frequency_)


def test_coordinate_features_are_found_inside_a_dictionary():
    """A dictionary whose first two 'features' are the torus angles' gradient fields."""
    to = torus_dictionary(n_samples=1000, ambient_dim=10, n_distractors=8, random_state=5)
    extra = torch.randn(30, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    grads = np.concatenate([to.gradients, np.broadcast_to(extra.numpy(), (1000, 30, 10))], axis=1)
    est = TSLasso(d=2, n_points=80, n_replicates=10, n_lambdas=0, random_state=0)
    est.fit(to.X, torch.as_tensor(grads), bases=torch.as_tensor(to.bases))
    assert est.support_.tolist() == [0, 1]


def test_result_json_round_trip_and_plots(tmp_path, swiss_roll):
    from geomsae.tslasso.plots import plot_path, plot_selection_frequencies

    sr = swiss_roll
    est = TSLasso(d=2, n_points=40, n_replicates=4, n_lambdas=6, random_state=1)
    est.fit(sr.X[:500], sr.gradients[:500], bases=sr.bases[:500])
    path = tmp_path / "tslasso.json"
    est.to_json(path)
    back = TSLassoResult.from_json(path)
    assert back == est.result_
    assert TSLassoResult.from_json(est.result_.to_json()) == est.result_
    ax = plot_path(est.path_, support=est.support_.tolist(), names=sr.names)
    assert len(ax.lines) >= 2 and ax.get_legend() is not None
    ax = plot_selection_frequencies(est.result_, names=sr.names)
    assert len(ax.patches) >= 2
    ax = plot_selection_frequencies(est.result_, two_stage=True)
    assert ax.get_ylim() == (0, 1)


def test_estimator_contract_and_bad_input(swiss_roll):
    sr = swiss_roll
    X, G, B = sr.X[:200], sr.gradients[:200], sr.bases[:200]
    est = TSLasso(d=2, n_points=50, n_replicates=2, n_lambdas=0, random_state=0)
    assert clone(est).get_params() == est.get_params()
    with pytest.raises(ValueError, match="exactly one of"):
        est.fit(X)
    with pytest.raises(ValueError, match="exactly one of"):
        est.fit(X, G, function=lambda x: x)
    with pytest.raises(ValueError, match="gradients must have shape"):
        est.fit(X, G[:, :, :10], bases=B)
    with pytest.raises(ValueError, match="n_points=500 exceeds"):
        TSLasso(d=2, n_points=500).fit(X, G, bases=B)
    with pytest.raises(ValueError, match="make them agree"):
        TSLasso(d=3, n_points=50).fit(X, G, bases=B)
    with pytest.raises(ValueError, match="bases must have shape"):
        est.fit(X, G, bases=B[:100])
    with pytest.raises(ValueError, match="dtype"):
        TSLasso(dtype="half").fit(X, G, bases=B)
    # d from the bases when not given
    fitted = TSLasso(n_points=50, n_replicates=2, n_lambdas=0, random_state=0).fit(X, G, bases=B)
    assert fitted.d_ == 2 and fitted.support_.tolist() == [0, 1]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_fit_matches_cpu():
    to = torus_dictionary(n_samples=1000, random_state=6)
    sae = ReLUDictionary(48, 64).cuda()
    kw = dict(d=2, n_points=100, n_replicates=5, n_lambdas=5, random_state=0)
    cpu = TSLasso(device="cpu", **kw).fit(to.X, to.gradients, bases=to.bases)
    gpu = TSLasso(device="cuda", **kw).fit(to.X, to.gradients, bases=to.bases)
    assert cpu.support_.tolist() == gpu.support_.tolist()
    assert cpu.lambda_ == pytest.approx(gpu.lambda_)
    gpu_sae = TSLasso(device="cuda", **kw).fit(to.X, bases=to.bases, dictionary=sae)
    cpu_sae = TSLasso(device="cpu", **kw).fit(to.X, bases=to.bases, dictionary=sae.cpu())
    np.testing.assert_allclose(gpu_sae.selection_frequency_, cpu_sae.selection_frequency_)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_every_sae_architecture_jacobian_matches_autograd(arch):
    to = torus_dictionary(n_samples=150, ambient_dim=16, random_state=7)
    x, bases = torch.as_tensor(to.X), torch.as_tensor(to.bases)
    torch.manual_seed(0)
    sae = build_sae(SAEConfig(arch=arch, d_in=16, n_features=48, k=8), dtype=torch.float64)
    sae.eval()
    with torch.no_grad():  # a spread of biases so that features are on at some points only
        sae.b_enc.copy_(torch.linspace(-0.1, 0.2, 48, dtype=torch.float64))
    closed = dictionary_problem(sae, x, bases)
    auto = problem_from_gradients(function_jacobians(sae.encode, x).detach(), bases)
    assert int((closed.gamma > 0).sum()) > 0
    torch.testing.assert_close(closed.gamma, auto.gamma)
    torch.testing.assert_close(closed.X, auto.X)


def test_thread_setting_does_not_change_the_answer_and_is_restored(swiss_roll):
    sr = swiss_roll
    before = torch.get_num_threads()
    fits = []
    for n_threads in (None, 1, 2):
        est = TSLasso(d=2, n_points=60, n_replicates=3, n_lambdas=0, random_state=1,
                      n_threads=n_threads)  # fmt: skip
        est.fit(sr.X, sr.gradients, bases=sr.bases)
        assert torch.get_num_threads() == before
        fits.append(est)
    for est in fits[1:]:
        assert [r.support for r in est.replicates_] == [r.support for r in fits[0].replicates_]
        np.testing.assert_allclose(est.lambda_, fits[0].lambda_, rtol=1e-6)
