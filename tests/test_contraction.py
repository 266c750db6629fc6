"""Contraction core: matvec oracle, estimators, gradients, sign, bad input (issue 3)."""

from __future__ import annotations

import math

import pytest
import torch

from cdp_plugin.contraction import (
    ContractionConfig,
    contraction_penalty,
    exact_jacobian,
    fd_probe_penalty,
    hutchinson_frobenius,
    lanczos_extreme_eigs,
    penalty_sample_mask,
    sym_extreme_eigs,
    sym_jacobian_matvec,
    x0_jacobian_coeffs,
    x0_sym_jacobian_matvec,
)

DT = torch.float64


def spectrum_matrices(B, D, g, outliers=(2.0, -3.0), bulk=0.5, skew=0.7):
    """Per-sample A_b = Q diag(spec) Q^T + K with a bulk in [-bulk, bulk], a few outliers, and a skew part."""
    mats, specs = [], []
    for _ in range(B):
        q, _ = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=DT))
        spec = (torch.rand(D, generator=g, dtype=DT) * 2 - 1) * bulk
        k = min(len(outliers), D)
        spec[:k] = torch.tensor(outliers[:k], dtype=DT)
        S = q @ torch.diag(spec) @ q.T
        R = torch.randn(D, D, generator=g, dtype=DT)
        mats.append(S + skew * (R - R.T) / math.sqrt(D))
        specs.append(spec.sort().values)
    return torch.stack(mats), torch.stack(specs)


def linear_fn(A, shape):
    """Denoiser x -> A_b x on inputs of shape (B, *shape) (per-sample, no batch mixing)."""

    def fn(x):
        B = x.shape[0]
        return torch.einsum("bij,bj->bi", A, x.reshape(B, -1)).reshape(B, *shape)

    return fn


@pytest.mark.parametrize("shape", [(2,), (4, 3), (16, 7)])
def test_sym_matvec_matches_symmetric_part(shape):
    g = torch.Generator().manual_seed(0)
    D = math.prod(shape)
    A, _ = spectrum_matrices(3, D, g)
    x = torch.randn(3, *shape, generator=g, dtype=DT)
    mv = sym_jacobian_matvec(linear_fn(A, shape), x)
    v = torch.randn(3, *shape, generator=g, dtype=DT)
    want = torch.einsum("bij,bj->bi", 0.5 * (A + A.transpose(1, 2)), v.reshape(3, -1)).reshape(v.shape)
    torch.testing.assert_close(mv(v), want)
    torch.testing.assert_close(exact_jacobian(linear_fn(A, shape), x), A)


def test_matvec_is_per_sample_on_a_nonlinear_net():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 32), torch.nn.Tanh(), torch.nn.Linear(32, 6)).double()
    fn = lambda x: net(x.reshape(x.shape[0], -1)).reshape(x.shape)  # noqa: E731
    x = torch.randn(4, 2, 3, dtype=DT)
    J = exact_jacobian(fn, x)
    v = torch.randn(4, 2, 3, dtype=DT)
    got = sym_jacobian_matvec(fn, x)(v)
    want = torch.einsum("bij,bj->bi", 0.5 * (J + J.transpose(1, 2)), v.reshape(4, -1)).reshape(v.shape)
    torch.testing.assert_close(got, want)
    # changing one sample's input does not change another sample's product
    x2 = x.clone()
    x2[0] += 1.0
    got2 = sym_jacobian_matvec(fn, x2)(v)
    torch.testing.assert_close(got2[1:], got[1:])


@pytest.mark.parametrize("D", [2, 8, 32, 112, 224])
@pytest.mark.parametrize("outliers", [(2.0, -3.0), (1.5, 1.2, -2.0), (-4.0, -2.5, 2.0)])
def test_lanczos_extremes_within_2pct_of_spread(D, outliers):
    g = torch.Generator().manual_seed(D)
    A, spec = spectrum_matrices(4, D, g, outliers=outliers)
    x = torch.randn(4, D, generator=g, dtype=DT)
    lmin, lmax = sym_extreme_eigs(linear_fn(A, (D,)), x, num_iters=8, generator=g)
    spread = spec[:, -1] - spec[:, 0]
    assert ((lmax - spec[:, -1]).abs() <= 0.02 * spread).all(), (lmax, spec[:, -1])
    assert ((lmin - spec[:, 0]).abs() <= 0.02 * spread).all(), (lmin, spec[:, 0])


def test_lanczos_finds_positive_top_when_largest_magnitude_is_negative():
    """The official power iteration returns ~ -3 here; Lanczos returns the true lambda_max = 0.4."""
    g = torch.Generator().manual_seed(1)
    D = 64
    q, _ = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=DT))
    spec = torch.linspace(-3.0, 0.4, D, dtype=DT)
    A = (q @ torch.diag(spec) @ q.T).expand(2, D, D)
    x = torch.randn(2, D, generator=g, dtype=DT)
    lmin, lmax = sym_extreme_eigs(linear_fn(A, (D,)), x, num_iters=8, generator=g)
    assert (lmax > 0.3).all() and (lmax <= 0.4 + 1e-9).all()
    assert ((lmin + 3.0).abs() < 0.07).all()
    # plain power iteration on the same operator converges to the largest-magnitude (negative) end
    mv = sym_jacobian_matvec(linear_fn(A, (D,)), x)
    v = torch.randn(2, D, generator=g, dtype=DT)
    for _ in range(10):
        v = mv(v, create_graph=False)
        v = v / v.norm(dim=1, keepdim=True)
    assert ((mv(v, create_graph=False) * v).sum(1) < -2.5).all()


def test_lanczos_warm_start_converges_in_fewer_steps():
    g = torch.Generator().manual_seed(3)
    D = 100
    A, spec = spectrum_matrices(2, D, g, outliers=(1.0, 0.9, -2.0))
    x = torch.randn(2, D, generator=g, dtype=DT)
    mv = sym_jacobian_matvec(linear_fn(A, (D,)), x)
    _, lmax8, _, umax = lanczos_extreme_eigs(mv, x, 8, generator=g)
    _, lmax_warm, _, _ = lanczos_extreme_eigs(mv, x, 3, v0=umax, generator=g)
    _, lmax_cold, _, _ = lanczos_extreme_eigs(mv, x, 3, generator=g)
    err_warm = (lmax_warm - spec[:, -1]).abs()
    err_cold = (lmax_cold - spec[:, -1]).abs()
    assert (err_warm <= 0.25 * err_cold).all() and (err_warm < 0.05).all(), (err_warm, err_cold)


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased(probe):
    g = torch.Generator().manual_seed(4)
    D, beta, n = 24, 0.1, 4000
    A, _ = spectrum_matrices(1, D, g)
    x = torch.randn(1, D, generator=g, dtype=DT)
    S = 0.5 * (A + A.transpose(1, 2))
    exact = (S + beta * torch.eye(D, dtype=DT)).pow(2).sum().item()
    mv = sym_jacobian_matvec(linear_fn(A, (D,)), x)
    xs = x.expand(n, D)
    mvn = sym_jacobian_matvec(linear_fn(A.expand(n, D, D), (D,)), xs)
    est = hutchinson_frobenius(mvn, xs, beta, num_probes=1, probe=probe, generator=g, create_graph=False)
    se = est.std().item() / math.sqrt(n)
    assert abs(est.mean().item() - exact) < 3 * se, (est.mean().item(), exact, se)
    # and a K-probe estimate averages K single-probe estimates
    k4 = hutchinson_frobenius(mv, x, beta, num_probes=4, probe=probe, generator=g, create_graph=False)
    assert k4.shape == (1,) and torch.isfinite(k4).all()


# ---------------------------------------------------------------------------------- gradients


class LinearDenoiser(torch.nn.Module):
    """x -> W x + tanh(U x) per sample, a small nonlinear net with an explicit Jacobian."""

    def __init__(self, D, g):
        super().__init__()
        self.W = torch.nn.Parameter(torch.randn(D, D, generator=g, dtype=DT) / math.sqrt(D))
        self.U = torch.nn.Parameter(torch.randn(D, D, generator=g, dtype=DT) / math.sqrt(D))

    def forward(self, x, idx=None):
        return x @ self.W.T + torch.tanh(x @ self.U.T)


def _explicit_x0_sym(net, x, alpha, sigma, pt):
    """sym J_x0 built from the exact Jacobian, differentiable w.r.t. the parameters."""
    J = exact_jacobian(net, x, create_graph=True)
    a, c = x0_jacobian_coeffs(alpha, sigma, pt)
    D = x.shape[1]
    return (
        a.view(-1, 1, 1) * torch.eye(D, dtype=DT) + c.view(-1, 1, 1) * 0.5 * (J + J.transpose(1, 2)),
        J,
        a,
        c,
    )


def _grads(loss, net):
    return torch.autograd.grad(loss, list(net.parameters()), retain_graph=True)


@pytest.mark.parametrize("pt", ["sample", "epsilon", "v_prediction"])
def test_penalty_gradients_match_exact_jacobian_penalty(pt):
    g = torch.Generator().manual_seed(5)
    D, B, beta = 6, 3, 0.1
    net = LinearDenoiser(D, g)
    x = torch.randn(B, D, generator=g, dtype=DT)
    alpha = torch.tensor([0.9, 0.6, 0.3], dtype=DT)
    sigma = (1 - alpha**2).sqrt()
    w = alpha if pt == "epsilon" else torch.ones_like(alpha)
    S, J, a, c = _explicit_x0_sym(net, x, alpha, sigma, pt)
    eye = torch.eye(D, dtype=DT)

    # exact estimator == the official form, per dimension (||.||_F^2 / D; the official mean of entries
    # is ``normalization="paper_d2"``, checked below)
    cfg = ContractionConfig(loss="frobenius", estimator="exact", batch_fraction=1.0)
    loss, _ = contraction_penalty(net, x, alpha, sigma, pt, cfg)
    ref = ((w.view(-1, 1, 1) * (S + beta * eye)).pow(2).flatten(1).sum(1) / D).mean()
    torch.testing.assert_close(loss, ref)
    for g1, g2 in zip(_grads(loss, net), _grads(ref, net)):
        torch.testing.assert_close(g1, g2)

    # hutchinson through the double-VJP oracle == the same probes applied to the explicit matrix
    seed = 11
    cfg = ContractionConfig(loss="frobenius", estimator="hutchinson", num_probes=3, batch_fraction=1.0)
    loss, _ = contraction_penalty(
        net, x, alpha, sigma, pt, cfg, generator=torch.Generator().manual_seed(seed)
    )
    gp = torch.Generator().manual_seed(seed)  # batch_fraction 1 draws nothing: the probe streams align
    ref = 0
    for _ in range(3):
        v = torch.randint(0, 2, (B, D), generator=gp).to(DT) * 2 - 1
        r = torch.einsum("bij,bj->bi", S + beta * eye, v)
        ref = ref + (w.view(-1, 1) * r).pow(2).sum(1)
    ref = (ref / 3 / D).mean()
    torch.testing.assert_close(loss, ref)
    for g1, g2 in zip(_grads(loss, net), _grads(ref, net)):
        torch.testing.assert_close(g1, g2)

    # fd_probe (float64, small h) == first-order full-Jacobian form with the same probes
    v = torch.randint(0, 2, (B, D), generator=g).to(DT) * 2 - 1
    h = 1e-6
    y = net(x)
    per = fd_probe_penalty(y, net(x + h * v), v, h, alpha, sigma, pt, beta)
    ref = (
        w.view(-1, 1)
        * (torch.einsum("bij,bj->bi", a.view(-1, 1, 1) * eye + c.view(-1, 1, 1) * J, v) + beta * v)
    ).pow(2).sum(1) / D
    torch.testing.assert_close(per.to(DT), ref, rtol=1e-4, atol=1e-8)
    for g1, g2 in zip(_grads(per.sum(), net), _grads(ref.sum(), net)):
        torch.testing.assert_close(g1.to(DT), g2, rtol=1e-3, atol=1e-6)

    # hinge through Lanczos (Hellmann-Feynman) == hinge on the exact top eigenvalue
    cfg = ContractionConfig(
        loss="hinge", estimator="lanczos", lanczos_iters=D, margin=0.5, batch_fraction=1.0
    )
    loss, diag = contraction_penalty(
        net, x, alpha, sigma, pt, cfg, generator=torch.Generator().manual_seed(0)
    )
    lmax = torch.linalg.eigvalsh(S)[:, -1]
    ref = torch.relu(w * (lmax - 0.5 * alpha)).pow(2).mean()
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-9)
    assert ref.item() > 0, "choose a margin that makes the hinge active so the gradient check means something"
    for g1, g2 in zip(_grads(loss, net), _grads(ref, net)):
        torch.testing.assert_close(g1, g2, rtol=1e-5, atol=1e-8)

    # one-sided fused hinge: on the full Krylov space (krylov_dim = D) its Ritz direction is the top
    # eigenvector, so value and gradient are the exact hinge's (forward differences: h small, float64)
    cfg = ContractionConfig(
        loss="hinge", estimator="fd_ritz", krylov_dim=D, margin=0.5, batch_fraction=1.0, fd_step=1e-7
    )
    loss, diag = contraction_penalty(net, x, alpha, sigma, pt, cfg)
    torch.testing.assert_close(loss, ref, rtol=1e-4, atol=1e-9)
    for g1, g2 in zip(_grads(loss, net), _grads(ref, net)):
        torch.testing.assert_close(g1, g2, rtol=1e-3, atol=1e-6)


def test_gradcheck_hutchinson_oracle():
    """torch.autograd.gradcheck of the double-VJP penalty w.r.t. the network parameters (float64)."""
    g = torch.Generator().manual_seed(6)
    D = 4
    net = LinearDenoiser(D, g)
    x = torch.randn(2, D, generator=g, dtype=DT)
    v = torch.randn(2, D, generator=g, dtype=DT)

    def f(W, U):
        fn = lambda z: z @ W.T + torch.tanh(z @ U.T)  # noqa: E731
        mv = sym_jacobian_matvec(fn, x)
        return (mv(v) + 0.1 * v).pow(2).sum()

    assert torch.autograd.gradcheck(
        f, (net.W.detach().clone().requires_grad_(), net.U.detach().clone().requires_grad_())
    )


# ------------------------------------------------------------------------------ noise levels, cost controls


def test_epsilon_penalty_stays_finite_at_high_noise():
    g = torch.Generator().manual_seed(7)
    D = 8
    net = LinearDenoiser(D, g)
    x = torch.randn(4, D, generator=g, dtype=DT)
    alpha = torch.tensor([1e-6, 1e-4, 1e-2, 0.5], dtype=DT)
    sigma = (1 - alpha**2).sqrt()
    for est in ("fd_probe", "hutchinson", "exact"):
        loss, _ = contraction_penalty(
            net, x, alpha, sigma, "epsilon", ContractionConfig(loss="frobenius", estimator=est)
        )
        assert torch.isfinite(loss) and loss.item() < 1e3, (est, loss)
        grads = _grads(loss, net)
        assert all(torch.isfinite(gr).all() for gr in grads)
    # without the alpha weight the raw x0-Jacobian residual explodes as alpha -> 0
    raw, _ = contraction_penalty(
        net,
        x,
        alpha,
        sigma,
        "epsilon",
        ContractionConfig(loss="frobenius", estimator="exact", residual_weight="none", batch_fraction=1.0),
    )
    assert raw.item() > 1e6


def test_cost_controls_select_samples():
    cfg = ContractionConfig(loss="frobenius", batch_fraction=0.25, noise_window=(0.0, 0.1))
    t_frac = torch.arange(100) / 100.0  # t/T for T = 100: ten samples have t < 0.1 T
    idx = penalty_sample_mask(100, cfg, t_frac, generator=torch.Generator().manual_seed(0))
    assert idx.numel() == 2 and (t_frac[idx] < 0.1).all()  # 10 in the window, a quarter of them
    assert penalty_sample_mask(8, ContractionConfig(loss="frobenius", batch_fraction=0.5)).numel() == 4
    every3 = ContractionConfig(loss="frobenius", every=3)
    assert [every3.applies_at_step(s) for s in range(6)] == [True, False, False, True, False, False]
    assert not ContractionConfig(loss="none").applies_at_step(0)
    # no selected sample: zero penalty, nothing computed
    g = torch.Generator().manual_seed(0)
    net = LinearDenoiser(3, g)
    x = torch.randn(4, 3, generator=g, dtype=DT)
    loss, diag = contraction_penalty(
        net,
        x,
        0.5,
        0.8,
        "sample",
        ContractionConfig(loss="frobenius", noise_window=(0.0, 0.1)),
        t_frac=torch.full((4,), 0.5),
    )
    assert loss.item() == 0 and diag["penalty_samples"] == 0


def test_chunks_are_flattened_per_sample():
    """(B, horizon, action_dim) chunks: D = horizon * action_dim, matches the flat computation."""
    g = torch.Generator().manual_seed(8)
    H, A = 4, 3
    net = LinearDenoiser(H * A, g)
    chunk_fn = lambda z, i=None: net(z.reshape(z.shape[0], -1)).reshape(z.shape)  # noqa: E731
    x = torch.randn(2, H, A, generator=g, dtype=DT)
    # both calls on the same rows
    cfg = ContractionConfig(loss="frobenius", estimator="exact", batch_fraction=1.0)
    l_chunk, _ = contraction_penalty(chunk_fn, x, 0.7, 0.71, "sample", cfg)
    l_flat, _ = contraction_penalty(net, x.reshape(2, -1), 0.7, 0.71, "sample", cfg)
    torch.testing.assert_close(l_chunk, l_flat)
    lmin, lmax = sym_extreme_eigs(chunk_fn, x, num_iters=12)
    assert lmin.shape == (2,) and lmax.shape == (2,)


# ---------------------------------------------------------------------------------- bad input


def test_bad_input_errors():
    g = torch.Generator().manual_seed(9)
    net = LinearDenoiser(3, g)
    x = torch.randn(2, 3, generator=g, dtype=DT)
    with pytest.raises(ValueError, match="prediction_type"):
        contraction_penalty(net, x, 0.5, 0.8, "score", ContractionConfig(loss="frobenius"))
    with pytest.raises(ValueError, match="estimator"):
        ContractionConfig(loss="frobenius", estimator="power")
    with pytest.raises(ValueError, match="estimator 'lanczos' does not fit"):
        ContractionConfig(loss="frobenius", estimator="lanczos")
    with pytest.raises(ValueError, match=">= 0"):
        ContractionConfig(loss="frobenius", weight=-1)
    with pytest.raises(ValueError, match="x_t"):
        contraction_penalty(net, x * float("nan"), 0.5, 0.8, "sample", ContractionConfig(loss="frobenius"))
    with pytest.raises(ValueError, match="sigma_t"):
        contraction_penalty(net, x, 0.5, float("inf"), "sample", ContractionConfig(loss="frobenius"))
    with pytest.raises(ValueError, match="alpha_t must be > 0"):
        contraction_penalty(
            net, x, torch.tensor([0.5, 0.0], dtype=DT), 0.8, "sample", ContractionConfig(loss="frobenius")
        )
    with pytest.raises(ValueError, match="D=300 > 256"):
        exact_jacobian(lambda z: z, torch.zeros(1, 300))
    with pytest.raises(ValueError, match="shape"):
        contraction_penalty(
            net, x, torch.ones(3, dtype=DT) * 0.5, 0.8, "sample", ContractionConfig(loss="frobenius")
        )

    class Exploding(torch.nn.Module):
        def forward(self, z, idx=None):
            return z * float("inf")

    with pytest.raises(FloatingPointError, match="non-finite"):
        contraction_penalty(
            Exploding(), x, 0.5, 0.8, "sample", ContractionConfig(loss="frobenius", estimator="fd_probe")
        )


def test_x0_matvec_affine_forms():
    """sym J_x0 for each prediction type equals a I + c sym J_f."""
    g = torch.Generator().manual_seed(10)
    D = 5
    A, _ = spectrum_matrices(2, D, g)
    x = torch.randn(2, D, generator=g, dtype=DT)
    alpha = torch.tensor([0.8, 0.3], dtype=DT)
    sigma = (1 - alpha**2).sqrt()
    S = 0.5 * (A + A.transpose(1, 2))
    v = torch.randn(2, D, generator=g, dtype=DT)
    for pt, a, c in [
        ("sample", 0 * alpha, 1 + 0 * alpha),
        ("epsilon", 1 / alpha, -sigma / alpha),
        ("v_prediction", alpha, -sigma),
    ]:
        got = x0_sym_jacobian_matvec(linear_fn(A, (D,)), x, alpha, sigma, pt)(v)
        want = a[:, None] * v + c[:, None] * torch.einsum("bij,bj->bi", S, v)
        torch.testing.assert_close(got, want)


def test_diagnostics_report_eigenvalues_and_violations():
    """lambda_max / lambda_min estimates and the violation share, for every estimator."""
    g = torch.Generator().manual_seed(12)
    D = 6
    A, spec = spectrum_matrices(2, D, g, outliers=(2.0, -1.5), skew=0.0)  # symmetric: J_x0 = A for "sample"
    x = torch.randn(2, D, generator=g, dtype=DT)
    fn = lambda z, i: linear_fn(A[i], (D,))(z)  # noqa: E731
    alpha = torch.tensor([0.9, 0.5], dtype=DT)
    for cfg in (
        ContractionConfig(loss="frobenius"),
        ContractionConfig(loss="frobenius", estimator="hutchinson"),
        ContractionConfig(loss="frobenius", estimator="exact"),
        ContractionConfig(loss="hinge", estimator="lanczos", lanczos_iters=D),
    ):
        cfg.lanczos_iters = D
        _, diag = contraction_penalty(
            fn, x, alpha, (1 - alpha**2).sqrt(), "sample", cfg, eig_diagnostics=True
        )
        assert abs(diag["lambda_max"] - 2.0) < 1e-6 and abs(diag["lambda_min"] + 1.5) < 1e-6, (
            cfg.estimator,
            diag,
        )
        assert diag["violation_frac"] == 1.0  # lambda_max = 2 >= alpha_t: the sampler expands here


# ---------------------------------------------------------------------------------- registry, normalisation


class ScaledIdentity(torch.nn.Module):
    """x -> c x on any shape: J_x0 = c I for an x0 ("sample") network, a closed form at every D."""

    def __init__(self, c):
        super().__init__()
        self.c = torch.nn.Parameter(torch.tensor(c, dtype=DT))

    def forward(self, x, idx=None):
        return self.c * x


@pytest.mark.parametrize("estimator", ["fd_probe", "hutchinson", "exact"])
def test_default_penalty_and_gradient_are_dimension_free(estimator):
    """J_x0 = c I: the shipped default (per-dimension) penalty is (c + beta)^2 and its gradient 2 (c + beta)
    at D = 14, 32 and 224 (chunks (7, 2), (16, 2), (16, 14)); the paper's /D^2 mean is D times smaller."""
    c, beta = 0.3, ContractionConfig().margin
    vals = []
    for shape in [(7, 2), (16, 2), (16, 14)]:
        D = math.prod(shape)
        if estimator == "exact" and D > 64:
            continue  # the full Jacobian costs D VJPs; exact agrees with fd_probe/hutchinson at D <= 32
        net = ScaledIdentity(c)
        x = torch.randn(8, *shape, generator=torch.Generator().manual_seed(D), dtype=DT)
        cfg = ContractionConfig(loss="frobenius", estimator=estimator)
        loss, _ = contraction_penalty(
            net, x, 0.7, 0.71, "sample", cfg, generator=torch.Generator().manual_seed(0)
        )
        (grad,) = torch.autograd.grad(loss, [net.c])
        vals.append((loss.item(), grad.item()))
        legacy, _ = contraction_penalty(
            net,
            x,
            0.7,
            0.71,
            "sample",
            ContractionConfig(loss="frobenius", estimator=estimator, normalization="paper_d2"),
            generator=torch.Generator().manual_seed(0),
        )
        assert legacy.item() == pytest.approx(loss.item() / D, rel=1e-9)  # gamma_per_dim = gamma_paper / D
    for loss, grad in vals:  # fd_probe: forward difference of a linear map, exact up to rounding / h
        assert loss == pytest.approx((c + beta) ** 2, rel=1e-6) and grad == pytest.approx(
            2 * (c + beta), rel=1e-6
        )


def test_adding_an_estimator_is_one_function_and_one_registry_entry(monkeypatch):
    """A new (loss, estimator) pair works through the config check and both entry points once registered."""
    from cdp_plugin.contraction import ESTIMATOR_REGISTRY, Estimator, PenaltyInputs

    def frobenius_diagonal(p: PenaltyInputs):  # ||diag(J_x0) + beta||^2 / D from the exact Jacobian
        J = exact_jacobian(p.f, p.x)
        d = p.a[:, None] + p.c[:, None] * torch.diagonal(J, dim1=1, dim2=2) + p.cfg.margin
        return (p.w[:, None] * d).pow(2).mean(1), {"note": 1.0}

    with pytest.raises(ValueError, match="does not fit"):
        ContractionConfig(loss="frobenius", estimator="diagonal")
    monkeypatch.setitem(ESTIMATOR_REGISTRY, ("frobenius", "diagonal"), Estimator(frobenius_diagonal))
    cfg = ContractionConfig(loss="frobenius", estimator="diagonal", batch_fraction=1.0)
    assert not cfg.fused
    loss, diag = contraction_penalty(
        ScaledIdentity(0.5), torch.ones(3, 4, dtype=DT), 0.7, 0.71, "sample", cfg
    )
    assert loss.item() == pytest.approx(0.36) and diag["note"] == 1.0 and diag["penalty_samples"] == 3


def test_entry_points_match_the_callable_path_and_guard_the_fd_step_under_amp():
    """penalty_rows + penalty_from_outputs with the rows riding in one forward pass == contraction_penalty;
    under autocast the probe step is raised to AMP_MIN_FD_STEP once, in the core."""
    from cdp_plugin.contraction import AMP_MIN_FD_STEP, penalty_from_outputs, penalty_rows

    g = torch.Generator().manual_seed(13)
    net = LinearDenoiser(6, g)
    x = torch.randn(8, 6, generator=g, dtype=DT)
    alpha = torch.rand(8, generator=g, dtype=DT) * 0.9 + 0.05
    sigma = (1 - alpha**2).sqrt()
    cfg = ContractionConfig(loss="frobenius", batch_fraction=0.5, weight=0.1)  # fixed: no prepass, no fn
    ref, rdiag = contraction_penalty(
        net, x, alpha, sigma, "epsilon", cfg, generator=torch.Generator().manual_seed(1)
    )
    rows = penalty_rows(x, cfg, generator=torch.Generator().manual_seed(1))
    assert rows.extra == 4 and rows.fd_step == cfg.fd_step
    out = net(torch.cat([x, rows.x]))
    got, diag = penalty_from_outputs(rows, x, alpha, sigma, "epsilon", cfg, y=out[:8], y_rows=out[8:])
    torch.testing.assert_close(got, ref)
    assert diag == rdiag
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert penalty_rows(x.float(), cfg).fd_step == AMP_MIN_FD_STEP


def test_readme_field_table_is_the_config():
    """README's contraction_* rows are ContractionConfig's fields, defaults and docs (one source)."""
    import pathlib

    from cdp_plugin.contraction import field_docs

    def fmt(v):
        return "[" + ", ".join(str(x) for x in v) + "]" if isinstance(v, tuple) else str(v)

    readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    for name, (default, doc) in field_docs().items():
        row = f"| `contraction_{name}` | `{fmt(default)}` | {doc} |"
        assert row in readme, f"README field table: regenerate the row of contraction_{name}:\n{row}"


# ------------------------------------------------------------------------------ the deployed sampler's steps


def _ddim_like_grid(k=10, T=100):
    """Grid timesteps 90, 80, ..., 0 (sampling order) with per-step bounds (-(2 + i), 1 + i / 10)."""
    from cdp_plugin.contraction import StepGrid
    from cdp_plugin.samplers import StepBound

    bounds = [
        StepBound(T - (i + 1) * T // k, T - (i + 2) * T // k, -(2.0 + i), 1.0 + i / 10) for i in range(k)
    ]
    return StepGrid.from_bounds(bounds, T), bounds


def test_step_window_selects_the_last_sampler_steps():
    """step_window (0, 0.2) of a 10-step grid = its last two steps (timesteps 10 and 0): the training
    timesteps nearest to them, 0..14 (15 is as near to 20 as to 10: ties go to the earlier, noisier step)."""
    grid, _ = _ddim_like_grid()
    t = torch.arange(100)
    pos = grid.position(t)
    assert pos[0] == 0 and pos[10] == pytest.approx(0.1) and pos[90] == pytest.approx(0.9)
    idx = penalty_sample_mask(
        100, ContractionConfig(loss="frobenius", step_window=(0.0, 0.2), batch_fraction=1.0), step_pos=pos
    )
    assert sorted(idx.tolist()) == list(range(0, 15))
    # and through the callable path
    x = torch.zeros(100, 3, dtype=DT)
    _, diag = contraction_penalty(
        ScaledIdentity(0.2),
        x,
        0.5,
        0.8,
        "sample",
        ContractionConfig(loss="frobenius", step_window=(0.0, 0.2), batch_fraction=1.0),
        timesteps=t,
        grid=grid,
    )
    assert diag["penalty_samples"] == 15


def test_hinge_uses_both_per_step_bounds():
    """threshold='sampler': relu(lambda_max - (1-beta) upper)^2 + relu((1-beta) lower - lambda_min)^2 with the
    grid step's bounds; a strongly negative eigenvalue is penalised too (it overshoots)."""
    grid, bounds = _ddim_like_grid()
    g = torch.Generator().manual_seed(14)
    D = 5
    A, spec = spectrum_matrices(3, D, g, outliers=(3.0, -6.0), skew=0.0)  # sym J_x0 = A (sample network)
    fn = lambda z, i: linear_fn(A[i], (D,))(z)  # noqa: E731
    x = torch.randn(3, D, generator=g, dtype=DT)
    t = torch.tensor([90, 50, 0])
    beta = 0.1
    cfg = ContractionConfig(loss="hinge", estimator="exact", margin=beta, batch_fraction=1.0)
    loss, diag = contraction_penalty(fn, x, 0.5, 0.8, "sample", cfg, timesteps=t, grid=grid)
    lo = torch.tensor([bounds[0].lower, bounds[4].lower, bounds[9].lower], dtype=DT)
    hi = torch.tensor([bounds[0].upper, bounds[4].upper, bounds[9].upper], dtype=DT)
    lmin, lmax = spec[:, 0], spec[:, -1]
    want = (torch.relu(lmax - (1 - beta) * hi).pow(2) + torch.relu((1 - beta) * lo - lmin).pow(2)).mean()
    torch.testing.assert_close(loss, want)
    assert torch.relu((1 - beta) * lo - lmin).sum() > 0  # the lower end is active here
    assert diag["violation_frac"] == 1.0
    # threshold='alpha' (legacy): only lambda_max against alpha_t
    legacy, _ = contraction_penalty(
        fn,
        x,
        0.5,
        0.8,
        "sample",
        ContractionConfig(
            loss="hinge", estimator="exact", margin=beta, batch_fraction=1.0, threshold="alpha"
        ),
        timesteps=t,
        grid=grid,
    )
    torch.testing.assert_close(legacy, torch.relu(lmax - (1 - beta) * 0.5).pow(2).mean())


def test_fd_ritz_hinge_is_one_sided_and_a_lower_bound_of_the_exact_hinge():
    """The fused one-sided hinge: 0 (value and gradient) where every eigenvalue of sym J_x0 lies inside the
    step's bounds, where the Frobenius penalty still pulls; never above the exact hinge; with a few Krylov
    steps it finds an outlier a plain random probe's Rayleigh quotient misses."""
    grid, _ = _ddim_like_grid()  # bounds (-(2 + i), 1 + i / 10)
    g = torch.Generator().manual_seed(21)
    D, B = 32, 4
    t = torch.tensor([90, 60, 30, 0])

    def run(A, cfg):
        M = torch.nn.Parameter(A.clone())
        fn = lambda z, i: torch.einsum("bij,bj->bi", M[i], z)  # noqa: E731
        x = torch.randn(B, D, generator=g, dtype=DT)
        loss, diag = contraction_penalty(fn, x, 0.5, 0.8, "sample", cfg, timesteps=t, grid=grid)
        (grad,) = torch.autograd.grad(loss, [M], allow_unused=True)
        return loss, diag, grad

    # inside the interval: the hinge is inert, the Frobenius probe is not
    inside, _ = spectrum_matrices(B, D, g, outliers=(0.8, -1.5), bulk=0.5)
    ritz = ContractionConfig(loss="hinge", estimator="fd_ritz", batch_fraction=1.0)
    loss, _, grad = run(inside, ritz)
    assert loss.item() == 0 and (grad is None or grad.abs().max() == 0)
    frob, _, _ = run(inside, ContractionConfig(loss="frobenius", batch_fraction=1.0))
    assert frob.item() > 0.1

    # one outlier above the upper bound: never above the exact hinge, equal to it on the full space
    outlier, _ = spectrum_matrices(B, D, g, outliers=(4.0,), bulk=0.5, skew=0.3)
    exact, _, _ = run(outlier, ContractionConfig(loss="hinge", estimator="exact", batch_fraction=1.0))
    assert exact.item() > 0
    for k in (1, 2, 3, 6):
        loss, diag, _ = run(
            outlier, ContractionConfig(loss="hinge", estimator="fd_ritz", krylov_dim=k, batch_fraction=1.0)
        )
        assert loss.item() <= exact.item() * (1 + 1e-6), k
        if k == 1:  # a random probe's Rayleigh quotient: about the mean eigenvalue
            assert diag["probe_rayleigh"] < 1.0
        if k >= 3:  # a 3-D Krylov space already holds most of the outlier's eigenvector
            assert diag["probe_rayleigh"] > 0.75 * 4.0, (k, diag)
    full, _, _ = run(
        outlier, ContractionConfig(loss="hinge", estimator="fd_ritz", krylov_dim=D, batch_fraction=1.0)
    )
    assert full.item() == pytest.approx(exact.item(), rel=1e-5)


@pytest.mark.parametrize(
    "loss, estimator, weight, target",
    [("frobenius", "fd_probe", 0.0, 0.6), ("hinge", "fd_ritz", 1.0, None), ("none", "fd_probe", 0.1, None)],
)
def test_unset_estimator_and_weight_take_the_losss_own(loss, estimator, weight, target):
    """Unset fields take the loss's own: frobenius trains with the adaptive gamma (from 0 towards a share of
    0.6, its prepass every 10th step); a gamma set by the user is fixed, as is the default gamma 0.1 of an
    estimator that measures no share (hutchinson); a target set alone starts gamma at 0, prepass every step."""
    from cdp_plugin.contraction import LOSS_DEFAULTS

    cfg = ContractionConfig(loss=loss)
    assert (cfg.estimator, cfg.weight, cfg.adaptive_target) == (estimator, weight, target)
    assert cfg.estimator == LOSS_DEFAULTS[loss]["estimator"]
    assert cfg.adaptive_every == (10 if target is not None else 1)
    fixed = ContractionConfig(loss=loss, weight=0.5)
    assert fixed.weight == 0.5 and not fixed.adaptive and fixed.adaptive_every == 1  # set: kept, fixed
    if loss == "frobenius":
        assert cfg.adaptive and cfg.share_every == 10 and cfg.active
        hutch = ContractionConfig(loss=loss, estimator="hutchinson")
        assert (hutch.weight, hutch.adaptive) == (LOSS_DEFAULTS[loss]["weight"], False)
        own = ContractionConfig(loss=loss, adaptive_target=0.3)
        assert (own.weight, own.adaptive_target, own.adaptive_every) == (0.0, 0.3, 1)
    assert ContractionConfig(loss=loss, estimator=None, weight=None) == cfg
    with pytest.raises(ValueError, match="contraction weight must be a float"):
        ContractionConfig(loss=loss, weight="strong")
