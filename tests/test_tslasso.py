"""TSLasso problem and solvers: lambda_max, KKT optimality, agreement with a plain reference
solver, screening = no screening, permutation invariance, the lambda search, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from geomsae.tslasso import (
    SolverConfig,
    TSLassoProblem,
    bisect_lambda,
    fista,
    group_norms,
    ista,
    kkt_violation,
    problem_from_gradients,
    problem_from_projected,
    regularization_path,
    solve,
    subset_scores,
    two_stage_support,
)
from geomsae.tslasso.solver import prox_group


def random_problem(n=12, D=6, d=2, p=9, seed=0, dtype=torch.float64) -> TSLassoProblem:
    g = torch.Generator().manual_seed(seed)
    grads = torch.randn(n, p, D, generator=g, dtype=dtype)
    bases = torch.linalg.qr(torch.randn(n, D, d, generator=g, dtype=dtype)).Q
    return problem_from_gradients(grads, bases)


def dense(sol, p):
    out = torch.zeros(sol.coef.shape[0], p, sol.coef.shape[2], dtype=sol.coef.dtype)
    out[:, sol.features] = sol.coef
    return out


def test_normalisation_is_ambient_and_before_projection():
    g = torch.Generator().manual_seed(1)
    n, D, d, p = 10, 5, 2, 4
    grads = torch.randn(n, p, D, generator=g, dtype=torch.float64)
    bases = torch.linalg.qr(torch.randn(n, D, d, generator=g, dtype=torch.float64)).Q
    prob = problem_from_gradients(grads, bases)
    gamma = grads.square().sum(2).mean(0).sqrt()
    torch.testing.assert_close(prob.gamma, gamma)
    expect = torch.einsum("nDd,npD->ndp", bases, grads) / gamma
    torch.testing.assert_close(prob.X, expect)
    # the same through the projected path with ambient norms
    proj = torch.einsum("nDd,npD->npd", bases, grads)
    prob2 = problem_from_projected(proj, grads.norm(dim=2))
    torch.testing.assert_close(prob2.X, prob.X)
    # lambda_max <= sqrt(n) after normalisation, equality for a tangent field
    assert prob.lambda_max() <= math.sqrt(n) + 1e-12
    tangent = torch.cat([bases[:, :, :1].transpose(1, 2), grads[:, 1:]], dim=1)
    assert problem_from_gradients(tangent, bases).lambda_max() == pytest.approx(math.sqrt(n))


def test_zero_solution_exactly_above_lambda_max():
    prob = random_problem()
    lam_max = prob.lambda_max()
    assert solve(prob, lam_max * 1.0001).features.numel() == 0
    below = solve(prob, lam_max * 0.99)
    assert below.features.numel() >= 1
    assert int(below.features[0]) == int(prob.column_norms().argmax())


def test_prox_group_is_the_group_soft_threshold():
    coef = torch.tensor([[[3.0, 4.0], [0.3, 0.4]]], dtype=torch.float64)  # norms 5 and 0.5
    out = prox_group(coef, 1.0)
    torch.testing.assert_close(out[0, 0], torch.tensor([2.4, 3.2], dtype=torch.float64))
    assert torch.all(out[0, 1] == 0)


@pytest.mark.parametrize("frac", [0.8, 0.5, 0.2, 0.05])
def test_kkt_and_agreement_with_reference_solver(frac):
    prob = random_problem(seed=2)
    lam = frac * prob.lambda_max()
    sol = solve(prob, lam, config=SolverConfig(tol=1e-12))
    assert sol.converged
    assert kkt_violation(prob, sol.features, sol.coef, lam) < 1e-5
    ref = ista(prob, lam, tol=1e-14)
    full = dense(sol, prob.n_functions)
    assert float((full - ref).norm()) <= 1e-5 * max(float(ref.norm()), 1.0)
    assert prob.objective(sol.coef, lam, sol.features) == pytest.approx(
        prob.objective(ref, lam), rel=1e-9
    )
    ref_support = torch.nonzero(group_norms(ref) > 1e-8).flatten()
    assert torch.equal(ref_support, sol.features)


def test_kkt_violation_detects_a_wrong_solution():
    prob = random_problem(seed=3)
    lam = 0.3 * prob.lambda_max()
    sol = solve(prob, lam)
    assert kkt_violation(prob, sol.features, 0.5 * sol.coef, lam) > 1e-2


def test_screening_matches_unscreened_fista():
    prob = random_problem(n=15, D=8, d=3, p=40, seed=4)
    for frac in (0.7, 0.3, 0.1):
        lam = frac * prob.lambda_max()
        a = solve(prob, lam, config=SolverConfig(tol=1e-11))
        b = solve(prob, lam, config=SolverConfig(tol=1e-11, screening=False))
        assert torch.equal(a.features, b.features)
        torch.testing.assert_close(a.coef, b.coef, atol=1e-6, rtol=1e-5)


def test_fista_backtracking_recovers_from_a_bad_step():
    prob = random_problem(seed=5)
    lam = 0.3 * prob.lambda_max()
    good = fista(prob.X, lam, tol=1e-12)
    bad = fista(prob.X, lam, tol=1e-12, lipschitz=1e-3)  # far too long a step at first
    assert bad.lipschitz > 1e-3
    torch.testing.assert_close(good.coef, bad.coef, atol=1e-7, rtol=1e-6)


def test_permuting_the_dictionary_permutes_the_solution():
    prob = random_problem(n=10, D=7, d=2, p=12, seed=6)
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(0))
    permuted = TSLassoProblem(prob.X[:, :, perm], prob.gamma[perm])
    lam = 0.25 * prob.lambda_max()
    a = dense(solve(prob, lam, config=SolverConfig(tol=1e-12)), 12)
    b = dense(solve(permuted, lam, config=SolverConfig(tol=1e-12)), 12)
    torch.testing.assert_close(a[:, perm], b, atol=1e-8, rtol=1e-7)
    bis_a, bis_b = bisect_lambda(prob, 2), bisect_lambda(permuted, 2)
    assert bis_a.lam == bis_b.lam
    assert sorted(perm[bis_b.support].tolist()) == bis_a.support.tolist()


def test_bisection_finds_exactly_d_and_probes_halve():
    prob = random_problem(n=20, D=10, d=3, p=30, seed=7)
    bis = bisect_lambda(prob, 3, max_probes=30)
    assert bis.found and bis.support.numel() == 3
    lam_max = prob.lambda_max()
    assert bis.probes[0].lam == lam_max and bis.probes[1].lam == pytest.approx(lam_max / 2)
    for sol in bis.probes[1:]:  # every probe is a bisection midpoint: lam_max * k / 2^m
        x = sol.lam / lam_max
        assert any(abs(x * 2**m - round(x * 2**m)) < 1e-9 for m in range(1, 31))
    final = next(s for s in bis.probes if s.lam == bis.lam)
    assert torch.equal(final.features, bis.support)


def test_regularization_path_is_monotone_in_lambda_and_optimal():
    prob = random_problem(n=15, D=8, d=2, p=25, seed=8)
    path = regularization_path(prob, n_lambdas=12, min_ratio=0.05)
    lams = [s.lam for s in path]
    assert lams == sorted(lams, reverse=True) and lams[0] == pytest.approx(prob.lambda_max())
    assert path[0].features.numel() == 0
    assert path[-1].features.numel() >= path[1].features.numel()
    for s in path[1:]:
        assert kkt_violation(prob, s.features, s.coef, s.lam) < 1e-3


def test_two_stage_prefers_exact_coordinates():
    # functions 0, 1 are tangent coordinate fields; 2..5 only partly tangent
    g = torch.Generator().manual_seed(9)
    n, D, d = 30, 6, 2
    bases = torch.linalg.qr(torch.randn(n, D, d, generator=g, dtype=torch.float64)).Q
    coords = bases.transpose(1, 2)  # grad theta_k = T_i e_k
    other = torch.randn(n, 4, D, generator=g, dtype=torch.float64)
    prob = problem_from_gradients(torch.cat([coords, other], 1), bases)
    assert two_stage_support(prob, torch.arange(6), 2).tolist() == [0, 1]
    scores = subset_scores(prob, torch.tensor([[0, 1], [0, 2]]))
    # for the exact pair beta_i = I: the score is 2 sqrt(n gamma^2 / ...) = sum of group norms
    beta = torch.linalg.pinv(prob.X[:, :, [0, 1]])
    assert float(scores[0]) == pytest.approx(float(beta.square().sum((0, 2)).sqrt().sum()))
    assert float(scores[0]) < float(scores[1])
    with pytest.raises(ValueError, match="max_subsets"):
        two_stage_support(prob, torch.arange(6), 2, max_subsets=3)


def test_float32_and_float64_agree():
    prob = random_problem(n=20, D=10, d=3, p=30, seed=10)
    p32 = TSLassoProblem(prob.X.float(), prob.gamma.float())
    a = bisect_lambda(prob, 3)
    b = bisect_lambda(p32, 3, config=SolverConfig(tol=1e-5))
    assert a.support.tolist() == b.support.tolist()


def test_bad_input_gives_one_clear_error():
    with pytest.raises(ValueError, match="n_samples, n_functions, d_model"):
        problem_from_gradients(torch.zeros(3, 4), torch.zeros(3, 4, 2))
    with pytest.raises(ValueError, match="tangent bases must have shape"):
        problem_from_gradients(torch.zeros(3, 5, 4), torch.zeros(3, 6, 2))
    with pytest.raises(ValueError, match="NaN"):
        TSLassoProblem(torch.full((2, 2, 3), float("nan")), torch.ones(3))
    with pytest.raises(ValueError, match="ambient_norms"):
        problem_from_projected(torch.zeros(3, 5, 2), torch.zeros(3, 4))
    prob = random_problem()
    with pytest.raises(ValueError, match="lam must be > 0"):
        solve(prob, 0.0)
    with pytest.raises(ValueError, match="d must be in"):
        bisect_lambda(prob, 0)
    with pytest.raises(ValueError, match="tol"):
        SolverConfig(tol=0)


def test_functions_with_zero_gradient_are_never_selected():
    prob = random_problem(p=6, seed=11)
    X = prob.X.clone()
    X[:, :, 2] = 0
    grads = X.transpose(1, 2)
    zero = problem_from_projected(grads, grads.norm(dim=2))
    assert float(zero.gamma[2]) == 0 and torch.isfinite(zero.X).all()
    path = regularization_path(zero, n_lambdas=8, min_ratio=0.01)
    assert all(2 not in s.features.tolist() for s in path)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_matches_cpu():
    prob = random_problem(n=20, D=10, d=3, p=50, seed=12)
    gpu = TSLassoProblem(prob.X.cuda(), prob.gamma.cuda())
    a, b = bisect_lambda(prob, 3), bisect_lambda(gpu, 3)
    assert a.support.tolist() == b.support.cpu().tolist()
    assert a.lam == pytest.approx(b.lam)
    np.testing.assert_allclose(
        a.probes[-1].coef.numpy(), b.probes[-1].coef.cpu().numpy(), atol=1e-6
    )
