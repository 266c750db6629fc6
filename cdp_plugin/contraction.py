"""Contraction estimators and losses for diffusion denoisers (framework-agnostic torch).

Notation
--------
A denoiser ``f(x_t) -> y`` acts on a noisy action ``x_t`` of shape ``(B, ...)`` (LeRobot and
diffusion_policy use action chunks ``(B, horizon, action_dim)``); every sample is flattened to
``D = prod(shape[1:])`` and treated independently (no mixing across the batch). ``J_f = dy/dx_t`` is the
per-sample ``D x D`` Jacobian and ``sym(J) = (J + J^T) / 2`` its symmetric part.

Variance-preserving schedule: ``x_t = alpha_t x_0 + sigma_t eps`` with ``alpha_t^2 + sigma_t^2 = 1``.
The network's output ``y`` is turned into an x0 ("denoised action") prediction ``D(x_t)`` by the
prediction type, so its Jacobian is an affine function of ``J_f``:

=================  =========================  ==================================
prediction_type    x0 prediction D(x_t)        J_x0 = a I + c J_f
=================  =========================  ==================================
``sample``         y                           a = 0,            c = 1
``epsilon``        (x_t - sigma_t y)/alpha_t   a = 1/alpha_t,    c = -sigma_t/alpha_t
``v_prediction``   alpha_t x_t - sigma_t y     a = alpha_t,      c = -sigma_t
=================  =========================  ==================================

Sign convention (the one that decides whether a penalty helps): in the sampling direction
(noise -> action) the VP probability-flow ODE reads ``dx/ds = k_s (D(x) - alpha_s x)`` with ``k_s > 0``,
so the deterministic sampler (DDIM, DPM-Solver++) is *contractive* iff

    lambda_max(sym J_x0) < alpha_t        (x0 / "sample" network)
    lambda_min(sym J_eps) > sigma_t       (epsilon network)
    lambda_min(sym J_v)   > 0             (v-prediction network)

All penalties below are formed on ``J_x0`` (inside the matvec), so they are correct for every
prediction type. Copying the official ``(sym J + beta I)^2`` onto an epsilon network instead pushes
``J_eps`` towards ``-beta I``: the expansive direction.

For epsilon prediction ``J_x0 = (I - sigma_t J_eps)/alpha_t`` blows up as ``alpha_t -> 0`` (pure noise).
With ``residual_weight="auto"`` (default) residuals and eigenvalues of epsilon networks are multiplied
by ``alpha_t`` before squaring, i.e. the penalty acts on ``alpha_t (J_x0 + beta I) = I - sigma_t J_eps +
alpha_t beta I``, which stays finite at every noise level; ``"none"`` uses the raw x0-Jacobian.

Estimators (all matrix-free except ``exact``; cost does not grow with D):

* ``fd_probe`` (default): first-order probe ``E ||(J_x0 + beta I) v||^2 / D^2`` with one probe ``v``
  per sample and ``J_f v ~ (f(x_t + h v) - f(x_t)) / h``. The perturbed rows can be concatenated to the
  batch of the denoising forward pass (see :func:`fd_probe_rows` / :func:`fd_probe_penalty`), so there is
  no double backward and no extra sequential pass. Penalises the *whole* Jacobian (a stronger,
  sufficient form of the symmetric condition, since ``||sym J||_F <= ||J||_F``).
* ``hutchinson``: the official code's form ``mean_ij (sym J_x0 + beta I)_ij^2`` estimated unbiasedly by
  probes through :func:`sym_jacobian_matvec` (double backward).
* ``exact``: the full Jacobian (``D <= 256``); the reference for tests.
* ``lanczos``: extreme eigenvalues of ``sym J_x0`` by Lanczos with full re-orthogonalisation; the
  gradient flows through the Rayleigh quotient of the detached Ritz vectors (Hellmann-Feynman).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

__all__ = [
    "PREDICTION_TYPES",
    "ContractionConfig",
    "x0_jacobian_coeffs",
    "residual_scale",
    "sym_jacobian_matvec",
    "x0_sym_jacobian_matvec",
    "exact_jacobian",
    "lanczos_extreme_eigs",
    "sym_extreme_eigs",
    "hutchinson_frobenius",
    "fd_probe_rows",
    "fd_probe_penalty",
    "fd_probe_rayleigh",
    "penalty_sample_mask",
    "contraction_penalty",
]

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
LOSSES = ("frobenius", "hinge", "none")
ESTIMATORS = {"frobenius": ("fd_probe", "hutchinson", "exact"), "hinge": ("lanczos", "exact"), "none": ()}
EXACT_MAX_DIM = 256

Denoiser = Callable[[Tensor], Tensor]


@dataclass
class ContractionConfig:
    """Settings of the contraction penalty (shared by the LeRobot and diffusion_policy front ends).

    Attributes:
        loss: ``"frobenius"`` (default), ``"hinge"`` or ``"none"``.
        estimator: for frobenius ``"fd_probe"`` (default) | ``"hutchinson"`` | ``"exact"``;
            for hinge ``"lanczos"`` (default) | ``"exact"``.
        weight: gamma, the weight of the penalty in the total loss (paper: 0.1).
        margin: beta. Frobenius target ``-beta I``; hinge threshold ``(1 - beta) alpha_t``
            (``margin_mode="relative"``) or ``alpha_t - beta`` (``"additive"``).
        num_probes: probes per sample for ``hutchinson`` (``fd_probe`` uses one probe per sample row).
        probe: ``"rademacher"`` or ``"gaussian"``.
        fd_step: finite-difference step ``h`` of ``fd_probe`` (in units of the normalised action).
        lanczos_iters: Lanczos steps for ``lanczos`` and for diagnostics.
        batch_fraction: fraction of the batch (random subset) the penalty is computed on.
        every: compute the penalty every k-th training step only (others add 0).
        noise_window: ``(lo, hi)`` fractions of the training noise levels ``t / T`` on which the
            penalty applies (``(0, 0.1)`` reproduces the paper's RL runs); default all.
        residual_weight: ``"auto"`` (alpha_t for epsilon networks, 1 otherwise), ``"alpha"`` or ``"none"``.
    """

    loss: str = "frobenius"
    estimator: str = "fd_probe"
    weight: float = 0.1
    margin: float = 0.1
    margin_mode: str = "relative"
    num_probes: int = 1
    probe: str = "rademacher"
    fd_step: float = 1e-3
    lanczos_iters: int = 8
    batch_fraction: float = 1.0
    every: int = 1
    noise_window: tuple[float, float] = field(default=(0.0, 1.0))
    residual_weight: str = "auto"

    def __post_init__(self) -> None:
        self.noise_window = tuple(float(v) for v in self.noise_window)  # type: ignore[assignment]
        self.validate()

    def validate(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"contraction loss must be one of {LOSSES}, got {self.loss!r}")
        if self.loss != "none" and self.estimator not in ESTIMATORS[self.loss]:
            raise ValueError(
                f"estimator {self.estimator!r} does not fit contraction loss {self.loss!r}; "
                f"choose one of {ESTIMATORS[self.loss]}"
            )
        checks = [
            (self.weight >= 0 and math.isfinite(self.weight), f"contraction weight must be finite and >= 0, got {self.weight}"),
            (self.margin >= 0 and math.isfinite(self.margin), f"contraction margin must be finite and >= 0, got {self.margin}"),
            (self.margin_mode in ("relative", "additive"), f"margin_mode must be 'relative' or 'additive', got {self.margin_mode!r}"),
            (self.num_probes >= 1, f"num_probes must be >= 1, got {self.num_probes}"),
            (self.probe in ("rademacher", "gaussian"), f"probe must be 'rademacher' or 'gaussian', got {self.probe!r}"),
            (self.fd_step > 0, f"fd_step must be > 0, got {self.fd_step}"),
            (self.lanczos_iters >= 2, f"lanczos_iters must be >= 2, got {self.lanczos_iters}"),
            (0 < self.batch_fraction <= 1, f"batch_fraction must be in (0, 1], got {self.batch_fraction}"),
            (self.every >= 1, f"every must be >= 1, got {self.every}"),
            (len(self.noise_window) == 2 and 0 <= self.noise_window[0] < self.noise_window[1] <= 1,
             f"noise_window must be (lo, hi) with 0 <= lo < hi <= 1, got {self.noise_window}"),
            (self.residual_weight in ("auto", "alpha", "none"), f"residual_weight must be 'auto', 'alpha' or 'none', got {self.residual_weight!r}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)

    @property
    def active(self) -> bool:
        return self.loss != "none" and self.weight > 0

    def applies_at_step(self, step: int) -> bool:
        """Whether the penalty is computed at training step ``step`` (``every``-th steps only)."""
        return self.active and step % self.every == 0


# --------------------------------------------------------------------------------------------------
# Checks and schedule algebra
# --------------------------------------------------------------------------------------------------


def _check_prediction_type(prediction_type: str) -> None:
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"unknown prediction_type {prediction_type!r}; expected one of {PREDICTION_TYPES}")


def _check_finite(**tensors: Tensor) -> None:
    for name, t in tensors.items():
        if t is not None and not torch.isfinite(t).all():
            raise ValueError(f"contraction: non-finite values in {name} ({(~torch.isfinite(t)).sum().item()} entries)")


def _per_sample(v: Tensor | float, batch: int, like: Tensor, name: str) -> Tensor:
    v = torch.as_tensor(v, dtype=like.dtype, device=like.device).reshape(-1)
    if v.numel() == 1:
        v = v.expand(batch)
    if v.shape != (batch,):
        raise ValueError(f"{name} must be a scalar or have shape ({batch},), got {tuple(v.shape)}")
    return v


def x0_jacobian_coeffs(alpha: Tensor, sigma: Tensor, prediction_type: str) -> tuple[Tensor, Tensor]:
    """Per-sample ``(a, c)`` with ``J_x0 = a I + c J_f`` for the given prediction type (see module doc)."""
    _check_prediction_type(prediction_type)
    if (alpha <= 0).any():
        raise ValueError("alpha_t must be > 0 for every sample (alpha_t = 0 is pure noise: no x0 Jacobian)")
    if prediction_type == "sample":
        return torch.zeros_like(alpha), torch.ones_like(alpha)
    if prediction_type == "epsilon":
        return 1.0 / alpha, -sigma / alpha
    return alpha.clone(), -sigma


def residual_scale(alpha: Tensor, prediction_type: str, mode: str = "auto") -> Tensor:
    """Per-sample weight ``w_t`` applied to x0-Jacobian residuals / eigenvalues (module doc)."""
    if mode == "alpha" or (mode == "auto" and prediction_type == "epsilon"):
        return alpha
    return torch.ones_like(alpha)


def _bview(v: Tensor, x: Tensor) -> Tensor:
    """Reshape a per-sample (B,) tensor to broadcast against x of shape (B, ...)."""
    return v.reshape(v.shape[0], *([1] * (x.dim() - 1)))


# --------------------------------------------------------------------------------------------------
# Matrix-free oracles
# --------------------------------------------------------------------------------------------------


class _SymMatvec:
    """``v -> sym(J_f) v`` (or of ``a I + c J_f``) through one retained forward pass.

    ``J^T v`` is one VJP; ``J v`` uses the double-VJP trick: ``g(u) = J^T u`` is linear in ``u``, so
    ``d<g(u), v>/du = J v``. Both stay differentiable w.r.t. the network parameters when
    ``create_graph=True``.
    """

    def __init__(self, fn: Denoiser, x: Tensor, a: Tensor | None = None, c: Tensor | None = None):
        self.x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            self.y = fn(self.x)
        if self.y.shape != self.x.shape:
            raise ValueError(f"denoiser output shape {tuple(self.y.shape)} != input shape {tuple(self.x.shape)}")
        self.u = torch.zeros_like(self.y, requires_grad=True)
        self._g = None
        self.a = None if a is None else _bview(a, x)
        self.c = None if c is None else _bview(c, x)

    def _jt(self, v: Tensor, create_graph: bool) -> Tensor:
        return torch.autograd.grad(self.y, self.x, v, retain_graph=True, create_graph=create_graph)[0]

    def _j(self, v: Tensor, create_graph: bool) -> Tensor:
        if self._g is None:
            with torch.enable_grad():
                self._g = torch.autograd.grad(self.y, self.x, self.u, retain_graph=True, create_graph=True)[0]
        return torch.autograd.grad(self._g, self.u, v, retain_graph=True, create_graph=create_graph)[0]

    def __call__(self, v: Tensor, create_graph: bool = True) -> Tensor:
        with torch.enable_grad():
            s = 0.5 * (self._j(v, create_graph) + self._jt(v, create_graph))
        if self.c is not None:
            s = self.a * v + self.c * s
        return s


def sym_jacobian_matvec(fn: Denoiser, x: Tensor) -> Callable[..., Tensor]:
    """Return the oracle ``v -> 0.5 (J v + J^T v)`` of ``J = d fn(x) / dx`` (per sample, any shape).

    One forward pass of ``fn`` is made and kept; each call costs two backward passes and is
    differentiable w.r.t. the parameters of ``fn`` (``create_graph=True``, the default of the returned
    callable; pass ``create_graph=False`` for cheap diagnostics). ``fn`` must not mix samples
    (no BatchNorm in train mode). The oracle exposes ``.y`` (the forward output).
    """
    return _SymMatvec(fn, x)


def x0_sym_jacobian_matvec(fn: Denoiser, x: Tensor, alpha: Tensor, sigma: Tensor, prediction_type: str):
    """Oracle ``v -> sym(J_x0) v`` of the implied x0 prediction (see the table in the module doc)."""
    B = x.shape[0]
    alpha, sigma = _per_sample(alpha, B, x, "alpha_t"), _per_sample(sigma, B, x, "sigma_t")
    a, c = x0_jacobian_coeffs(alpha, sigma, prediction_type)
    return _SymMatvec(fn, x, a, c)


def exact_jacobian(fn: Denoiser, x: Tensor, create_graph: bool = True) -> Tensor:
    """Full per-sample Jacobian ``(B, D, D)`` by D VJPs (the official construction). D <= 256 only."""
    B = x.shape[0]
    D = x[0].numel()
    if D > EXACT_MAX_DIM:
        raise ValueError(f"exact Jacobian refused for D={D} > {EXACT_MAX_DIM}: use 'hutchinson', 'fd_probe' or 'lanczos'")
    xg = x.detach().requires_grad_(True)
    with torch.enable_grad():
        y = fn(xg).reshape(B, D)
        rows = []
        for i in range(D):
            e = torch.zeros_like(y)
            e[:, i] = 1.0
            rows.append(torch.autograd.grad(y, xg, e, retain_graph=True, create_graph=create_graph)[0].reshape(B, D))
    return torch.stack(rows, dim=1)  # J[b, i, j] = d y_i / d x_j


# --------------------------------------------------------------------------------------------------
# Estimators
# --------------------------------------------------------------------------------------------------


def _probes(shape, like: Tensor, kind: str, generator: torch.Generator | None) -> Tensor:
    if kind == "gaussian":
        return torch.randn(shape, dtype=like.dtype, device=like.device, generator=generator)
    return torch.randint(0, 2, shape, device=like.device, generator=generator).to(like.dtype) * 2 - 1


def lanczos_extreme_eigs(
    matvec: Callable[..., Tensor],
    x_like: Tensor,
    num_iters: int = 8,
    v0: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Extreme eigenvalues of a per-sample symmetric operator by Lanczos (full re-orthogonalisation).

    Args:
        matvec: ``(v, create_graph) -> S v`` on tensors shaped like ``x_like`` (B, ...).
        num_iters: Krylov dimension k (clipped to D).
        v0: optional warm start (B, ...), e.g. last step's Ritz vector.

    Returns ``(lam_min, lam_max, u_min, u_max)``: Ritz values (B,) without gradient and the unit Ritz
    vectors (B, ...) (detached). Differentiate through :func:`_rayleigh` of the Ritz vectors
    (Hellmann-Feynman: ``d lambda = u^T dS u``). Unlike power iteration, Lanczos finds both ends of the
    spectrum, not just the largest-magnitude eigenvalue.
    """
    B = x_like.shape[0]
    shape = x_like.shape
    D = x_like[0].numel()
    k = max(1, min(num_iters, D))
    dt = torch.float64 if x_like.dtype == torch.float64 else torch.float32
    q = (v0 if v0 is not None else _probes(shape, x_like, "gaussian", generator)).detach().reshape(B, D).to(dt)
    q = q / q.norm(dim=1, keepdim=True).clamp_min(1e-30)
    Q = [q]
    alphas, betas = [], []
    for j in range(k):
        w = matvec(Q[j].reshape(shape).to(x_like.dtype), create_graph=False).detach().reshape(B, D).to(dt)
        a = (w * Q[j]).sum(1)
        alphas.append(a)
        # full re-orthogonalisation (twice is enough)
        Qm = torch.stack(Q, dim=1)  # (B, j+1, D)
        for _ in range(2):
            w = w - torch.einsum("bj,bjd->bd", torch.einsum("bjd,bd->bj", Qm, w), Qm)
        if j == k - 1:
            break
        b = w.norm(dim=1)
        betas.append(b)
        # breakdown: invariant subspace found; continue with a fresh orthogonal direction (beta=0)
        fresh = _probes((B, D), w, "gaussian", generator)
        for _ in range(2):
            fresh = fresh - torch.einsum("bj,bjd->bd", torch.einsum("bjd,bd->bj", Qm, fresh), Qm)
        broke = (b <= 1e-7 * torch.stack(alphas, 1).abs().amax(1).clamp_min(1e-12)).unsqueeze(1)
        nxt = torch.where(broke, fresh / fresh.norm(dim=1, keepdim=True).clamp_min(1e-30), w / b.unsqueeze(1).clamp_min(1e-30))
        betas[-1] = torch.where(broke.squeeze(1), torch.zeros_like(b), b)
        Q.append(nxt)
    m = len(alphas)
    T = torch.diag_embed(torch.stack(alphas, 1))
    if m > 1:
        off = torch.stack(betas[: m - 1], 1)
        T = T + torch.diag_embed(off, 1) + torch.diag_embed(off, -1)
    evals, evecs = torch.linalg.eigh(T)
    Qm = torch.stack(Q[:m], dim=1)  # (B, m, D)
    u_min = torch.einsum("bm,bmd->bd", evecs[:, :, 0], Qm)
    u_max = torch.einsum("bm,bmd->bd", evecs[:, :, -1], Qm)
    u_min = u_min / u_min.norm(dim=1, keepdim=True)
    u_max = u_max / u_max.norm(dim=1, keepdim=True)
    to = x_like.dtype
    return evals[:, 0].to(to), evals[:, -1].to(to), u_min.reshape(shape).to(to), u_max.reshape(shape).to(to)


def _rayleigh(matvec: Callable[..., Tensor], u: Tensor) -> Tensor:
    """Differentiable per-sample Rayleigh quotient ``u^T S u`` for unit ``u`` (B, ...)."""
    Su = matvec(u, create_graph=True)
    return (Su * u).flatten(1).sum(1)


def sym_extreme_eigs(
    fn: Denoiser,
    x: Tensor,
    num_iters: int = 8,
    alpha: Tensor | float | None = None,
    sigma: Tensor | float | None = None,
    prediction_type: str | None = None,
    differentiable: bool = False,
    v0: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """``(lam_min, lam_max)`` of ``sym J`` per sample, each (B,), by ``num_iters`` Lanczos steps.

    With ``prediction_type`` (and per-sample ``alpha``, ``sigma``) the operator is ``sym J_x0``;
    otherwise the raw network Jacobian. ``differentiable=True`` returns Rayleigh quotients of the
    detached Ritz vectors, with gradients w.r.t. the parameters of ``fn`` (Hellmann-Feynman).
    """
    if prediction_type is None:
        mv = _SymMatvec(fn, x)
    else:
        mv = x0_sym_jacobian_matvec(fn, x, alpha, sigma, prediction_type)
    lmin, lmax, umin, umax = lanczos_extreme_eigs(mv, x, num_iters, v0=v0, generator=generator)
    if differentiable:
        return _rayleigh(mv, umin), _rayleigh(mv, umax)
    return lmin, lmax


def hutchinson_frobenius(
    matvec: Callable[..., Tensor],
    x_like: Tensor,
    shift: Tensor | float = 0.0,
    num_probes: int = 1,
    probe: str = "rademacher",
    generator: torch.Generator | None = None,
    create_graph: bool = True,
    probes: Tensor | None = None,
) -> Tensor:
    """Unbiased per-sample estimate of ``||S + shift I||_F^2`` from ``num_probes`` probes (B,).

    ``E_v ||(S + shift I) v||^2 = ||S + shift I||_F^2`` for any probe with ``E[v v^T] = I``
    (Rademacher or Gaussian). ``probes`` (K, B, ...) pins the probe vectors (reproducibility, DDP checks).
    """
    B = x_like.shape[0]
    shift = _bview(_per_sample(shift, B, x_like, "shift"), x_like)
    if probes is not None:
        probes = probes.reshape(-1, *x_like.shape)
        num_probes = probes.shape[0]
    total = 0.0
    for k in range(num_probes):
        v = probes[k].to(x_like.dtype) if probes is not None else _probes(x_like.shape, x_like, probe, generator)
        r = matvec(v, create_graph=create_graph) + shift * v
        total = total + r.flatten(1).pow(2).sum(1)
    return total / num_probes


def fd_probe_rows(x_t: Tensor, fd_step: float, probe: str = "rademacher", generator: torch.Generator | None = None):
    """Perturbed rows ``x_t + h v`` to append to the denoising batch, and the probes ``v``.

    Returns ``(x_pert, v)`` shaped like ``x_t``. Run the network once on ``cat([x_t_all, x_pert])`` with
    the matching conditioning, split the output, and call :func:`fd_probe_penalty`.
    """
    v = _probes(x_t.shape, x_t, probe, generator)
    return x_t + fd_step * v, v


def fd_probe_penalty(
    y: Tensor,
    y_pert: Tensor,
    v: Tensor,
    fd_step: float,
    alpha: Tensor,
    sigma: Tensor,
    prediction_type: str,
    margin: float,
    residual_weight: str = "auto",
) -> Tensor:
    """Per-sample first-order Frobenius probe ``w_t^2 ||(J_x0 + margin I) v||^2 / D^2`` (B,).

    ``J_f v`` is the forward difference ``(y_pert - y) / h``; ``J_x0 v = a v + c J_f v``. Gradients flow
    through both network outputs (an ordinary backward, no double backward).
    """
    B = y.shape[0]
    D = y[0].numel()
    alpha, sigma = _per_sample(alpha, B, y, "alpha_t"), _per_sample(sigma, B, y, "sigma_t")
    a, c = x0_jacobian_coeffs(alpha, sigma, prediction_type)
    w = residual_scale(alpha, prediction_type, residual_weight)
    dt = torch.promote_types(y.dtype, torch.float32)  # never difference in half precision
    jv = (y_pert.to(dt) - y.to(dt)) / fd_step
    vf = v.to(dt)
    r = _bview(a + margin, vf) * vf + _bview(c, vf) * jv
    return (_bview(w, vf) * r).flatten(1).pow(2).sum(1) / (D * D)


def fd_probe_rayleigh(y: Tensor, y_pert: Tensor, v: Tensor, fd_step: float, alpha: Tensor, sigma: Tensor,
                      prediction_type: str) -> Tensor:
    """Per-sample ``v^T J_x0 v / |v|^2`` from a probe pair (B,), no gradient: a cheap diagnostic that tracks
    the mean eigenvalue of sym J_x0 (``E_v`` of it is ``trace(J_x0) / D``)."""
    a, c = x0_jacobian_coeffs(alpha, sigma, prediction_type)
    dt = torch.promote_types(y.dtype, torch.float32)
    jv = ((y_pert.to(dt) - y.to(dt)) / fd_step).detach().flatten(1)
    vf = v.to(dt).flatten(1)
    vv = vf.pow(2).sum(1)
    return (a * vv + c * (jv * vf).sum(1)) / vv


def penalty_sample_mask(
    batch: int,
    cfg: ContractionConfig,
    t_frac: Tensor | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Indices of the samples the penalty is computed on: noise window, then a random batch fraction."""
    keep = torch.ones(batch, dtype=torch.bool, device=device)
    if t_frac is not None:
        lo, hi = cfg.noise_window
        keep = (t_frac >= lo) & (t_frac < hi) if hi < 1 else (t_frac >= lo)
    idx = keep.nonzero().flatten()
    if cfg.batch_fraction < 1 and idx.numel() > 0:
        n = max(1, int(round(cfg.batch_fraction * idx.numel())))
        perm = torch.randperm(idx.numel(), generator=generator, device="cpu")[:n].to(idx.device)
        idx = idx[perm]
    return idx


def _hinge_threshold(alpha: Tensor, cfg: ContractionConfig) -> Tensor:
    return (1 - cfg.margin) * alpha if cfg.margin_mode == "relative" else alpha - cfg.margin


def contraction_penalty(
    fn: Denoiser,
    x_t: Tensor,
    alpha: Tensor | float,
    sigma: Tensor | float,
    prediction_type: str,
    cfg: ContractionConfig | None = None,
    t_frac: Tensor | None = None,
    generator: torch.Generator | None = None,
    y: Tensor | None = None,
    probes: Tensor | None = None,
    eig_diagnostics: bool = False,
) -> tuple[Tensor, dict[str, float]]:
    """Contraction penalty (unweighted by gamma) and diagnostics for a batch of noisy actions.

    Args:
        fn: the denoiser as a function of the noisy action, called as ``fn(x_rows, idx)``: ``x_rows`` are
            noisy actions for the batch rows ``idx`` (a LongTensor), so the callable can pick the matching
            conditioning and timesteps, e.g. ``lambda x, i: unet(x, t[i], global_cond=cond[i])``.
        x_t: noisy actions (B, ...), e.g. (B, horizon, action_dim).
        alpha, sigma: per-sample schedule values alpha_t, sigma_t (B,) or scalars.
        prediction_type: ``"epsilon"``, ``"sample"`` or ``"v_prediction"``.
        cfg: :class:`ContractionConfig` (default: frobenius / fd_probe).
        t_frac: per-sample ``t / T`` for the noise window.
        y: optional precomputed ``fn`` output on the full batch (saves the base forward for fd_probe).
        probes: optional pinned probe vectors for ``fd_probe`` / ``hutchinson``, shape (B, ...) or
            (K, B, ...) over the full batch (rows are selected like the samples).
        eig_diagnostics: also estimate lambda_min / lambda_max of ``sym J_x0`` by Lanczos for estimators
            that do not produce them (fd_probe, hutchinson); costs ``lanczos_iters`` extra matvecs.

    Returns:
        ``(loss, diagnostics)``: scalar penalty (mean over the selected samples; 0 with no selected
        sample) and floats: ``lambda_max``/``lambda_min`` (mean estimates of ``sym J_x0`` where the
        estimator gives them), ``violation_frac`` (share of samples with lambda_max >= alpha_t),
        ``probe_rayleigh`` (fd_probe: mean ``v^T J_x0 v / |v|^2``), ``penalty_samples``.
    Raises:
        ValueError on unknown prediction type / estimator, non-finite inputs, alpha_t <= 0, or a
        non-finite penalty (never silently added to a loss).
    """
    cfg = cfg or ContractionConfig()
    _check_prediction_type(prediction_type)
    B = x_t.shape[0]
    alpha = _per_sample(alpha, B, x_t, "alpha_t")
    sigma = _per_sample(sigma, B, x_t, "sigma_t")
    _check_finite(x_t=x_t, alpha_t=alpha, sigma_t=sigma)
    if (alpha <= 0).any():
        raise ValueError("alpha_t must be > 0 for every sample")
    zero = x_t.new_zeros(())
    if not cfg.active:
        return zero, {}
    idx = penalty_sample_mask(B, cfg, t_frac, generator, x_t.device)
    diag: dict[str, float] = {"penalty_samples": float(idx.numel())}
    if idx.numel() == 0:
        return zero, diag
    xs, a_s, s_s = x_t[idx], alpha[idx], sigma[idx]
    f = lambda x: fn(x, idx)  # noqa: E731

    if cfg.loss == "frobenius" and cfg.estimator == "fd_probe":
        if probes is not None:
            v = probes.reshape(-1, *x_t.shape)[0][idx].to(xs.dtype)
            x_pert = xs + cfg.fd_step * v
        else:
            x_pert, v = fd_probe_rows(xs, cfg.fd_step, cfg.probe, generator)
        y_base = y[idx] if y is not None else f(xs)
        y_pert = f(x_pert)
        per = fd_probe_penalty(y_base, y_pert, v, cfg.fd_step, a_s, s_s, prediction_type, cfg.margin, cfg.residual_weight)
        diag["probe_rayleigh"] = fd_probe_rayleigh(y_base, y_pert, v, cfg.fd_step, a_s, s_s, prediction_type).mean().item()
    elif cfg.loss == "frobenius":
        D = xs[0].numel()
        w = residual_scale(a_s, prediction_type, cfg.residual_weight)
        if cfg.estimator == "exact":
            J = exact_jacobian(f, xs).to(xs.dtype)
            a, c = x0_jacobian_coeffs(a_s, s_s, prediction_type)
            eye = torch.eye(D, dtype=J.dtype, device=J.device)
            S = a.view(-1, 1, 1) * eye + c.view(-1, 1, 1) * 0.5 * (J + J.transpose(1, 2))
            per = (w.view(-1, 1, 1) * (S + cfg.margin * eye)).pow(2).flatten(1).sum(1) / (D * D)
            ev = torch.linalg.eigvalsh(S.detach())
            diag["lambda_min"], diag["lambda_max"] = ev[:, 0].mean().item(), ev[:, -1].mean().item()
            diag["violation_frac"] = (ev[:, -1] >= a_s).float().mean().item()
        else:
            mv = x0_sym_jacobian_matvec(f, xs, a_s, s_s, prediction_type)
            pv = None if probes is None else probes.reshape(-1, *x_t.shape)[:, idx]
            per = w.pow(2) * hutchinson_frobenius(mv, xs, cfg.margin, cfg.num_probes, cfg.probe, generator, probes=pv) / (D * D)
    else:  # hinge on lambda_max(sym J_x0)
        thr = _hinge_threshold(a_s, cfg)
        w = residual_scale(a_s, prediction_type, cfg.residual_weight)
        if cfg.estimator == "exact":
            J = exact_jacobian(f, xs)
            D = xs[0].numel()
            a, c = x0_jacobian_coeffs(a_s, s_s, prediction_type)
            eye = torch.eye(D, dtype=J.dtype, device=J.device)
            S = a.view(-1, 1, 1) * eye + c.view(-1, 1, 1) * 0.5 * (J + J.transpose(1, 2))
            ev = torch.linalg.eigvalsh(S)
            lmin, lmax = ev[:, 0], ev[:, -1]
        else:
            mv = x0_sym_jacobian_matvec(f, xs, a_s, s_s, prediction_type)
            _, _, umin, umax = lanczos_extreme_eigs(mv, xs, cfg.lanczos_iters, generator=generator)
            lmax = _rayleigh(mv, umax)
            lmin = _rayleigh(mv, umin).detach()
        per = torch.relu(w * (lmax - thr)).pow(2)
        diag["lambda_min"], diag["lambda_max"] = lmin.mean().item(), lmax.mean().item()
        diag["violation_frac"] = (lmax.detach() >= a_s).float().mean().item()

    if eig_diagnostics and "lambda_max" not in diag:
        lmin, lmax = sym_extreme_eigs(f, xs.detach(), cfg.lanczos_iters,
                                      a_s, s_s, prediction_type, generator=generator)
        diag["lambda_min"], diag["lambda_max"] = lmin.mean().item(), lmax.mean().item()
        diag["violation_frac"] = (lmax >= a_s).float().mean().item()
    loss = per.mean()
    if not torch.isfinite(loss):
        raise FloatingPointError(
            f"contraction penalty is non-finite ({loss.item()}); refusing to add it to the loss "
            f"(estimator={cfg.estimator}, prediction_type={prediction_type}, min alpha_t={a_s.min().item():.3g})"
        )
    diag["penalty"] = loss.item()
    return loss, diag
