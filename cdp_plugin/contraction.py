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

One step of a discrete sampler has its own exact condition: a DDIM step ``t -> s`` contracts iff every
eigenvalue of ``sym J_x0`` lies in ``(-(sigma_t + sigma_s)/q, (sigma_t - sigma_s)/q)`` with
``q = alpha_s sigma_t - sigma_s alpha_t`` (:func:`cdp_plugin.samplers.step_contraction_bounds`). With
``threshold="sampler"`` the hinge and the violation diagnostic use these per-step bounds of the deployed
grid; with ``threshold="alpha"`` the continuous-time ``alpha_t``.

All penalties below are formed on ``J_x0`` (inside the matvec), so they are correct for every
prediction type. Copying the official ``(sym J + beta I)^2`` onto an epsilon network instead pushes
``J_eps`` towards ``-beta I``: the expansive direction.

For epsilon prediction ``J_x0 = (I - sigma_t J_eps)/alpha_t`` blows up as ``alpha_t -> 0`` (pure noise).
With ``residual_weight="auto"`` (default) residuals and eigenvalues of epsilon networks are multiplied
by ``alpha_t`` before squaring, i.e. the penalty acts on ``alpha_t (J_x0 + beta I) = I - sigma_t J_eps +
alpha_t beta I``, which stays finite at every noise level; ``"none"`` uses the raw x0-Jacobian.

Normalisation of the Frobenius penalty (``normalization``):

* ``"per_dim"`` (default): ``||w_t (J_x0 + beta I)||_F^2 / D``, the *mean squared singular value*. For
  ``J_x0 = c I`` it is ``(c + beta)^2`` at every D, so one gamma means the same at D = 14, 32 or 224.
* ``"paper_d2"`` (legacy, the paper's code): the mean over the D^2 entries, ``||.||_F^2 / D^2``. The same
  loss as ``per_dim`` with ``gamma_per_dim = gamma_paper / D``: the paper's gamma 0.1 at D = 7 is 0.014
  here; this library's earlier default (0.1 at D = 32) is 0.0031.

Estimators (one small function per (loss, estimator) in :data:`ESTIMATOR_REGISTRY`; all matrix-free
except ``exact``; cost does not grow with D):

* ``fd_probe`` (default, ``fused``): first-order probe ``||(J_x0 + beta I) v||^2`` with one probe ``v``
  per sample and ``J_f v ~ (f(x_t + h v) - f(x_t)) / h``. The perturbed rows ride in the batch of the
  denoising forward pass (:func:`penalty_rows` then :func:`penalty_from_outputs`), so there is no double
  backward and no extra sequential pass. Penalises the *whole* Jacobian (a stronger, sufficient form of
  the symmetric condition, since ``||sym J||_F <= ||J||_F``).
* ``hutchinson``: the official code's symmetric form ``||sym J_x0 + beta I||_F^2`` estimated unbiasedly by
  probes through :func:`sym_jacobian_matvec` (double backward).
* ``exact``: the full Jacobian (``D <= 256``); the reference for tests.
* ``lanczos`` (hinge): extreme eigenvalues of ``sym J_x0`` by Lanczos with full re-orthogonalisation; the
  gradient flows through the Rayleigh quotient of the detached Ritz vectors (Hellmann-Feynman).
* ``fd_ritz`` (hinge, ``fused``): the hinge on one first-order Rayleigh quotient ``u^T J_x0 u / |u|^2``
  whose probe row rides in the denoising forward pass. The direction ``u`` is chosen beforehand, without a
  graph: the Ritz vector of sym J_x0 on the Krylov space ``span{v, J_x0 v, ...}`` of dimension
  ``krylov_dim`` (forward differences) whose Ritz value lies farthest outside the contraction interval.
  Since ``u^T J_x0 u = u^T sym(J_x0) u`` lies in ``[lambda_min, lambda_max]`` for every ``u``, the penalty
  is a lower bound of the exact hinge and is exactly 0 wherever the step already contracts: one-sided,
  unlike the Frobenius penalty, which shrinks every singular value. Cost: ``krylov_dim + 1`` no-grad
  forward passes on the penalised rows, no double backward.

Both front ends (LeRobot ``policy/``, ``diffusion_policy/``) call the same two entry points:
:func:`penalty_rows` (which batch rows are penalised, and the probe rows to append to the denoising
batch for fused estimators) and :func:`penalty_from_outputs` (the penalty and diagnostics from the
network outputs, or from a denoiser callable for double-backward estimators). :func:`contraction_penalty`
chains the two for a plain callable.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields

import torch
from torch import Tensor

__all__ = [
    "PREDICTION_TYPES",
    "ContractionConfig",
    "Estimator",
    "ESTIMATOR_REGISTRY",
    "PenaltyRows",
    "x0_jacobian_coeffs",
    "residual_scale",
    "sym_jacobian_matvec",
    "x0_sym_jacobian_matvec",
    "exact_jacobian",
    "lanczos_extreme_eigs",
    "sym_extreme_eigs",
    "hutchinson_frobenius",
    "fd_probe_penalty",
    "fd_probe_rayleigh",
    "fd_ritz_direction",
    "penalty_sample_mask",
    "penalty_rows",
    "penalty_from_outputs",
    "contraction_penalty",
    "dual_ascent_weight",
    "steering_violation_share",
]

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
LOSSES = ("frobenius", "hinge", "none")
NORMALIZATIONS = ("per_dim", "paper_d2")
THRESHOLDS = ("sampler", "alpha")
EXACT_MAX_DIM = 256
# Under autocast a forward difference with h = 1e-3 drowns in bf16/fp16 rounding: use at least this step.
AMP_MIN_FD_STEP = 5e-2

Denoiser = Callable[[Tensor], Tensor]


def _doc(text: str) -> dict:
    return {"doc": text}


@dataclass
class ContractionConfig:
    """Settings of the contraction penalty: the single source of the ``contraction_*`` fields.

    The LeRobot config (``--policy.contraction_<name>``) and the diffusion_policy adapter
    (``contraction_<name>=`` keyword) derive their fields, defaults and docs from this class; each field's
    meaning is in its ``metadata["doc"]`` (see :func:`field_docs`).
    """

    loss: str = field(
        default="frobenius",
        metadata=_doc(
            "`frobenius` (Frobenius norm of J_x0 + beta I), `hinge` (on the eigenvalues of sym J_x0) "
            "or `none`"
        ),
    )
    estimator: str | None = field(
        default=None,
        metadata=_doc(
            "unset: the loss's own (`fd_probe` for frobenius, `fd_ritz` for hinge); frobenius: `fd_probe` "
            "(first-order probe in the same forward pass), `hutchinson` (official symmetric form, double "
            "backward), `exact` (full Jacobian, D <= 256); hinge: `lanczos`, `fd_ritz` (one-sided, fused), "
            "`exact`"
        ),
    )
    weight: float | None = field(
        # each loss's pick from the penalty strength study (benchmarks/RESULTS.md): LOSS_DEFAULTS
        default=None,
        metadata=_doc(
            "gamma, weight of the penalty in the total loss (per-dimension units, see `normalization`); "
            "unset: the loss's own (frobenius: adaptive, from 0 towards `adaptive_target` 0.6, or 0.1 fixed "
            "with `hutchinson`; hinge 1 fixed); set with `adaptive_target` unset: fixed at this value"
        ),
    )
    adaptive_target: float | None = field(
        default=None,
        metadata=_doc(
            "set: gamma adapts by dual ascent towards this share v of penalised samples outside the step's "
            "contraction window, `gamma <- clip(gamma + adaptive_lr (v - target), 0, adaptive_max)` each "
            "penalised step, from `weight` (0 when unset; v from the estimator's eigenvalues, or the worst "
            "Ritz value of the `fd_ritz` Krylov prepass, which `fd_probe` then also runs); unset: 0.6 for "
            "frobenius when `weight` is unset too (the shipped default), else gamma is fixed"
        ),
    )
    adaptive_lr: float = field(
        default=0.05, metadata=_doc("dual-ascent step of the adaptive gamma (per penalised training step)")
    )
    adaptive_max: float = field(default=10.0, metadata=_doc("upper bound of the adaptive gamma"))
    adaptive_every: int | None = field(
        default=None,
        metadata=_doc(
            "the adaptive `fd_probe` penalty runs its prepass (to measure v) on every `adaptive_every`-th "
            "penalised step only, and gamma then takes one step of `adaptive_every * adaptive_lr`: the same "
            "mean rate at 1/k of the prepass's cost (the other estimators measure v every step anyway); "
            "unset: 10 with the shipped adaptive default, else 1"
        ),
    )
    margin: float = field(
        default=0.1,
        metadata=_doc("beta: Frobenius target `-beta I`; hinge threshold shrunk by beta (`margin_mode`)"),
    )
    margin_mode: str = field(
        default="relative",
        metadata=_doc("hinge threshold `(1-beta) thr` (`relative`) or `thr - beta` (`additive`)"),
    )
    normalization: str = field(
        default="per_dim",
        metadata=_doc(
            "squared Frobenius norm of `w_t (J_x0 + beta I)` over D (`per_dim`: the mean squared singular "
            "value, same gamma at every D) or over D^2 (`paper_d2`, the paper's mean over entries); "
            "gamma_per_dim = gamma_paper / D"
        ),
    )
    num_probes: int = field(default=1, metadata=_doc("Hutchinson probes per sample"))
    probe: str = field(default="rademacher", metadata=_doc("probe distribution (`rademacher`, `gaussian`)"))
    fd_step: float = field(
        default=1e-3,
        metadata=_doc("finite-difference step of `fd_probe` (raised to 0.05 under AMP autocast)"),
    )
    lanczos_iters: int = field(default=8, metadata=_doc("Lanczos steps (hinge and diagnostics)"))
    krylov_dim: int = field(
        default=3,
        metadata=_doc(
            "hinge `fd_ritz`: dimension k of the Krylov space its probe direction is chosen in (k + 1 no-grad "
            "forward passes on the penalised rows)"
        ),
    )
    batch_fraction: float = field(
        default=0.25,
        metadata=_doc(
            "share of the batch the penalty is computed on (its mean over these rows: changes the variance, "
            "not the strength)"
        ),
    )
    every: int = field(default=1, metadata=_doc("penalty every k-th training step"))
    noise_window: tuple[float, float] = field(
        default=(0.0, 1.0),
        metadata=_doc(
            "penalise only training noise levels `t/T` in `[lo, hi)`; `[0, 0.1]` is the paper's RL setting"
        ),
    )
    step_window: tuple[float, float] = field(
        default=(0.0, 1.0),
        metadata=_doc(
            "penalise only the deployed sampler's steps at positions `[lo, hi)` of its k steps counted from "
            "the last (lowest-noise) one, e.g. `[0, 0.2]` = the last 2 of 10; a training t counts for the "
            "grid step nearest to it"
        ),
    )
    threshold: str = field(
        default="sampler",
        metadata=_doc(
            "hinge threshold and violation diagnostic: the exact per-step bounds of the deployed sampler's "
            "grid on the eigenvalues of sym J_x0, both ends (`sampler`), or the continuous alpha_t (`alpha`)"
        ),
    )
    residual_weight: str = field(
        default="auto",
        metadata=_doc(
            "epsilon networks: residuals scaled by alpha_t so high-noise steps stay finite (`alpha`, `none`)"
        ),
    )

    def __post_init__(self) -> None:
        # front ends hand over yaml / json / hydra values: coerce to the annotated type, with the field's name
        cast = {
            "float": float,
            "int": int,
            "str": str,
            "tuple[float, float]": lambda v: tuple(float(x) for x in v),
        }
        for f in fields(self):
            v = getattr(self, f.name)
            base = f.type.removesuffix(" | None")
            if v is None and base != f.type:
                continue
            try:
                setattr(self, f.name, cast[base](v))
            except (TypeError, ValueError):
                raise ValueError(f"contraction {f.name} must be a {base}, got {v!r}") from None
        self._resolve_loss_defaults()
        self.validate()

    def _resolve_loss_defaults(self) -> None:
        """Fill the unset fields with the loss's own (:data:`LOSS_DEFAULTS`): the estimator; with neither gamma
        nor a target set, the loss's adaptive default where it has one and the estimator measures a share;
        then gamma (an adaptive one starts from 0) and the prepass cadence."""
        own = LOSS_DEFAULTS.get(self.loss, {})
        if self.estimator is None:
            self.estimator = own.get("estimator")
        auto = own.get("adaptive")
        est = ESTIMATOR_REGISTRY.get((self.loss, self.estimator))
        if auto and self.weight is None and self.adaptive_target is None and est and est.measures_violation:
            self.adaptive_target = auto["adaptive_target"]
            if self.adaptive_every is None:
                self.adaptive_every = auto["adaptive_every"]
        if self.weight is None:
            self.weight = 0.0 if self.adaptive else own.get("weight")
        if self.adaptive_every is None:
            self.adaptive_every = 1

    def validate(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"contraction loss must be one of {LOSSES}, got {self.loss!r}")
        names = estimator_names(self.loss)
        if self.loss != "none" and self.estimator not in names:
            raise ValueError(
                f"estimator {self.estimator!r} does not fit contraction loss {self.loss!r}; "
                f"choose one of {names}"
            )
        w, m = self.weight, self.margin
        checks = [
            (w >= 0 and math.isfinite(w), f"contraction weight must be finite and >= 0, got {w}"),
            (m >= 0 and math.isfinite(m), f"contraction margin must be finite and >= 0, got {m}"),
            (
                not self.adaptive
                or (
                    self.loss != "none" and ESTIMATOR_REGISTRY[(self.loss, self.estimator)].measures_violation
                ),
                f"contraction adaptive_target needs an estimator that measures violations (a share of samples "
                f"outside the window steers gamma): not loss {self.loss!r} with estimator {self.estimator!r}",
            ),
            (
                not self.adaptive or 0 <= self.adaptive_target < 1,
                f"contraction adaptive_target must be in [0, 1), got {self.adaptive_target}",
            ),
            (
                self.adaptive_lr > 0 and math.isfinite(self.adaptive_lr),
                f"contraction adaptive_lr must be finite and > 0, got {self.adaptive_lr}",
            ),
            (
                math.isfinite(self.adaptive_max) and self.adaptive_max >= (w if self.adaptive else 0),
                f"contraction adaptive_max must be finite and >= weight ({w}), got {self.adaptive_max}",
            ),
            (
                self.margin_mode in ("relative", "additive"),
                f"margin_mode must be 'relative' or 'additive', got {self.margin_mode!r}",
            ),
            (
                self.normalization in NORMALIZATIONS,
                f"normalization must be one of {NORMALIZATIONS}, got {self.normalization!r}",
            ),
            (self.num_probes >= 1, f"num_probes must be >= 1, got {self.num_probes}"),
            (
                self.probe in ("rademacher", "gaussian"),
                f"probe must be 'rademacher' or 'gaussian', got {self.probe!r}",
            ),
            (self.fd_step > 0, f"fd_step must be > 0, got {self.fd_step}"),
            (self.lanczos_iters >= 2, f"lanczos_iters must be >= 2, got {self.lanczos_iters}"),
            (self.krylov_dim >= 1, f"krylov_dim must be >= 1, got {self.krylov_dim}"),
            (0 < self.batch_fraction <= 1, f"batch_fraction must be in (0, 1], got {self.batch_fraction}"),
            (self.every >= 1, f"every must be >= 1, got {self.every}"),
            (self.adaptive_every >= 1, f"adaptive_every must be >= 1, got {self.adaptive_every}"),
            (
                len(self.noise_window) == 2 and 0 <= self.noise_window[0] < self.noise_window[1] <= 1,
                f"noise_window must be (lo, hi) with 0 <= lo < hi <= 1, got {self.noise_window}",
            ),
            (
                len(self.step_window) == 2 and 0 <= self.step_window[0] < self.step_window[1] <= 1,
                f"step_window must be (lo, hi) with 0 <= lo < hi <= 1, got {self.step_window}",
            ),
            (self.threshold in THRESHOLDS, f"threshold must be one of {THRESHOLDS}, got {self.threshold!r}"),
            (
                self.residual_weight in ("auto", "alpha", "none"),
                f"residual_weight must be 'auto', 'alpha' or 'none', got {self.residual_weight!r}",
            ),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)

    @property
    def adaptive(self) -> bool:
        """Whether gamma adapts by dual ascent (:func:`dual_ascent_weight`) rather than staying ``weight``."""
        return self.adaptive_target is not None

    @property
    def active(self) -> bool:
        return self.loss != "none" and (self.weight > 0 or self.adaptive)

    @property
    def fused(self) -> bool:
        """Whether the estimator's probe rows ride in the denoising forward pass."""
        return self.active and ESTIMATOR_REGISTRY[(self.loss, self.estimator)].fused

    @property
    def ritz_prepass(self) -> bool:
        """Whether :func:`penalty_rows` runs the no-grad Krylov prepass: the ``fd_ritz`` hinge chooses its probe
        with it, and the adaptive ``fd_probe`` Frobenius penalty measures its violation share with it."""
        return self.fused and (ESTIMATOR_REGISTRY[(self.loss, self.estimator)].prepass or self.adaptive)

    @property
    def share_every(self) -> int:
        """Penalised steps per measurement of the adaptive share v: ``adaptive_every`` for an estimator whose
        prepass runs only to measure it (the adaptive ``fd_probe``), else 1 (``fd_ritz`` chooses its probe
        with the prepass every step, the others read v off their eigenvalue estimates)."""
        measures_only = self.ritz_prepass and not ESTIMATOR_REGISTRY[(self.loss, self.estimator)].prepass
        return self.adaptive_every if measures_only else 1

    def applies_at_step(self, step: int) -> bool:
        """Whether the penalty is computed at training step ``step`` (``every``-th steps only)."""
        return self.active and step % self.every == 0

    def measures_share_at_step(self, step: int) -> bool:
        """Whether the penalised training step ``step`` measures the adaptive share (every ``share_every``-th
        penalised step; the step counter counts all training steps, as :meth:`applies_at_step`'s)."""
        return (step // self.every) % self.share_every == 0


# What a loss gets where its fields are unset (ContractionConfig._resolve_loss_defaults): each loss's pick of
# the penalty strength study (benchmarks/RESULTS.md). frobenius: the adaptive gamma (from 0, dual ascent
# towards a share of 0.6 of penalised samples outside their step's window, its prepass every 10th step), the
# setting that passed the rule of outputs/rule23.md on PointMaze, Lift and Push-T (RESULTS.md "Adaptive
# weight"); a fixed gamma of 0.1 where the estimator measures no share (hutchinson) or gamma is set. hinge 1
# fixed with the fused one-sided fd_ritz estimator (PointMaze's pick; it loses on Push-T at 8000 steps).
# ``none`` keeps frobenius' estimator and fixed weight (unused).
LOSS_DEFAULTS: dict[str, dict[str, object]] = {
    "frobenius": {
        "estimator": "fd_probe",
        "weight": 0.1,
        "adaptive": {"adaptive_target": 0.6, "adaptive_every": 10},
    },
    "hinge": {"estimator": "fd_ritz", "weight": 1.0},
    "none": {"estimator": "fd_probe", "weight": 0.1},
}

# Values a config saved before a field existed had (``normalization`` / ``threshold`` came with issue 13).
LEGACY_VALUES = {"normalization": "paper_d2", "threshold": "alpha"}


def steering_violation_share(diag: dict[str, float]) -> float | None:
    """The share of penalised samples outside their step's window that steers the adaptive gamma, from a
    penalty's diagnostics: from the estimated extreme eigenvalues where the estimator has them
    (``violation_frac``), else from the worst Ritz value of the no-grad Krylov prepass
    (``ritz_violation_frac``: ``fd_ritz``, and ``fd_probe`` with the adaptive weight). A random direction's
    Rayleigh quotient would not do: it tracks the mean eigenvalue, inside the window on PointMaze even where
    the largest one is outside for half the samples. ``None`` when no row was penalised."""
    return diag.get("violation_frac", diag.get("ritz_violation_frac"))


def dual_ascent_weight(weight: float, violation_frac: float, cfg: ContractionConfig) -> float:
    """One dual-ascent step of the adaptive gamma: ``clip(gamma + k lr (v - target), 0, adaptive_max)``.

    gamma is the Lagrange multiplier of the constraint "share ``v`` of penalised training samples outside
    their step's contraction window <= ``adaptive_target``" (``v``: the estimator's ``violation_frac`` at
    this step). It grows while more samples violate than the target allows and decays towards 0 where the
    sampler already contracts, so no penalty is bought there and rare violations get no full-size kick.
    ``k = cfg.share_every``: where v is measured every k-th penalised step only, one step covers k of them.
    """
    if not cfg.adaptive:
        raise ValueError("dual_ascent_weight: the contraction config has no adaptive_target")
    if not math.isfinite(violation_frac) or not 0 <= violation_frac <= 1:
        raise ValueError(f"dual_ascent_weight: violation_frac must be in [0, 1], got {violation_frac}")
    step = cfg.share_every * cfg.adaptive_lr * (violation_frac - cfg.adaptive_target)
    return min(max(float(weight) + step, 0.0), cfg.adaptive_max)


def field_docs() -> dict[str, tuple[object, str]]:
    """``{name: (default, doc)}`` of every :class:`ContractionConfig` field, for the front ends' docs."""
    out = {}
    for f in fields(ContractionConfig):
        out[f.name] = (f.default, f.metadata.get("doc", ""))
    return out


# --------------------------------------------------------------------------------------------------
# Checks and schedule algebra
# --------------------------------------------------------------------------------------------------


def _check_prediction_type(prediction_type: str) -> None:
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"unknown prediction_type {prediction_type!r}; expected one of {PREDICTION_TYPES}")


def _check_finite(**tensors: Tensor) -> None:
    for name, t in tensors.items():
        if t is not None and not torch.isfinite(t).all():
            raise ValueError(
                f"contraction: non-finite values in {name} ({(~torch.isfinite(t)).sum().item()} entries)"
            )


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
            raise ValueError(
                f"denoiser output shape {tuple(self.y.shape)} != input shape {tuple(self.x.shape)}"
            )
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
        raise ValueError(
            f"exact Jacobian refused for D={D} > {EXACT_MAX_DIM}: use 'hutchinson', 'fd_probe' or 'lanczos'"
        )
    xg = x.detach().requires_grad_(True)
    with torch.enable_grad():
        y = fn(xg).reshape(B, D)
        rows = []
        for i in range(D):
            e = torch.zeros_like(y)
            e[:, i] = 1.0
            rows.append(
                torch.autograd.grad(y, xg, e, retain_graph=True, create_graph=create_graph)[0].reshape(B, D)
            )
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
    q = (
        (v0 if v0 is not None else _probes(shape, x_like, "gaussian", generator))
        .detach()
        .reshape(B, D)
        .to(dt)
    )
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
        nxt = torch.where(
            broke,
            fresh / fresh.norm(dim=1, keepdim=True).clamp_min(1e-30),
            w / b.unsqueeze(1).clamp_min(1e-30),
        )
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
        v = (
            probes[k].to(x_like.dtype)
            if probes is not None
            else _probes(x_like.shape, x_like, probe, generator)
        )
        r = matvec(v, create_graph=create_graph) + shift * v
        total = total + r.flatten(1).pow(2).sum(1)
    return total / num_probes


def _norm_dim(D: int, normalization: str) -> float:
    """Divisor of the squared Frobenius residual: ``D`` (per_dim) or ``D^2`` (paper_d2)."""
    return float(D) if normalization == "per_dim" else float(D * D)


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
    normalization: str = "per_dim",
) -> Tensor:
    """Per-sample first-order Frobenius probe ``w_t^2 ||(J_x0 + margin I) v||^2 / N`` (B,), N = D or D^2.

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
    return (_bview(w, vf) * r).flatten(1).pow(2).sum(1) / _norm_dim(D, normalization)


def fd_probe_rayleigh(
    y: Tensor, y_pert: Tensor, v: Tensor, fd_step: float, alpha: Tensor, sigma: Tensor, prediction_type: str
) -> Tensor:
    """Per-sample ``v^T J_x0 v / |v|^2`` from a probe pair (B,), no gradient: a cheap diagnostic that tracks
    the mean eigenvalue of sym J_x0 (``E_v`` of it is ``trace(J_x0) / D``)."""
    a, c = x0_jacobian_coeffs(alpha, sigma, prediction_type)
    dt = torch.promote_types(y.dtype, torch.float32)
    jv = ((y_pert.to(dt) - y.to(dt)) / fd_step).detach().flatten(1)
    vf = v.to(dt).flatten(1)
    vv = vf.pow(2).sum(1)
    return (a * vv + c * (jv * vf).sum(1)) / vv


def _outside(ray: Tensor, lower: Tensor | None, upper: Tensor) -> float:
    """Share of rows whose Rayleigh quotient / Ritz value lies outside the step's (unshrunk) window."""
    ray = ray.double()
    bad = ray >= upper.double() if lower is None else (ray >= upper.double()) | (ray <= lower.double())
    return bad.float().mean().item()


def _violation_score(theta: Tensor, lower: Tensor | None, upper: Tensor) -> Tensor:
    """How far eigenvalue estimates ``theta`` (n, k) lie outside ``(lower, upper)`` (n,); larger is worse."""
    score = theta - upper[:, None]
    return score if lower is None else torch.maximum(score, lower[:, None] - theta)


@torch.no_grad()
def fd_ritz_direction(
    f: Denoiser,
    x: Tensor,
    v: Tensor,
    a: Tensor,
    c: Tensor,
    lower: Tensor | None,
    upper: Tensor,
    fd_step: float,
    krylov_dim: int,
) -> tuple[Tensor, Tensor]:
    """Probe direction of the ``fd_ritz`` hinge and its Ritz value: the Ritz vector of sym J_x0 on the Krylov
    space ``span{v, J_x0 v, ..., J_x0^(k-1) v}`` whose Ritz value lies farthest outside ``(lower, upper)``.

    ``J_f u = (f(x + h u) - f(x)) / h`` by forward differences: ``k + 1`` network passes on the rows of
    ``x`` (the first two in one call), no graph. The Krylov space of ``J_x0 = a I + c J_f`` is ``J_f``'s,
    built by Arnoldi (Gram-Schmidt in float64). With the basis ``U`` and ``J_f U`` known, the Rayleigh-Ritz
    step is small dense algebra: ``(a U^T U + c sym(U^T J_f U)) z = theta U^T U z``, solved through the
    Gram matrix's eigenvectors with vanished directions dropped (``J_f = c I`` gives a 1-D space).
    ``u^T J_x0 u = u^T sym(J_x0) u``, so the transpose is never needed. The result is scaled to
    ``|u| = |v|`` per sample, so the probe row ``x + h u`` moves as far as a plain probe.
    """
    n, k = x.shape[0], krylov_dim
    norm = v.flatten(1).norm(dim=1)
    y = f(torch.cat([x, x + fd_step * v]))
    if not torch.isfinite(y).all():  # say so here, not as a failed eigensolve below
        raise FloatingPointError("contraction: non-finite denoiser output in the Krylov prepass (fd_ritz)")
    y0, yu = y[:n], y[n:]
    U, JU = [], []  # Arnoldi basis of J_f's Krylov space (the same space as J_x0's) and J_f on it
    u = v.flatten(1).double()
    for i in range(k):
        ju = ((yu - y0) / fd_step).flatten(1).double()
        U.append(u)
        JU.append(ju)
        if i + 1 < k:
            w = ju
            for q in U:  # Gram-Schmidt against the basis so far, twice for round-off
                w = w - ((w * q).sum(1) / (q * q).sum(1).clamp_min(1e-300))[:, None] * q
            for q in U:
                w = w - ((w * q).sum(1) / (q * q).sum(1).clamp_min(1e-300))[:, None] * q
            wn = w.norm(dim=1)
            ok = (wn > 1e-9 * ju.norm(dim=1)) & torch.isfinite(wn)
            u = torch.where(
                ok[:, None], w * (norm.double() / wn.clamp_min(1e-300))[:, None], torch.zeros_like(w)
            )
            yu = f(x + fd_step * u.to(x.dtype).reshape(x.shape))
    Um = torch.stack(U, -1)  # (n, D, k); a column is 0 where the space closed early
    G = Um.transpose(1, 2) @ Um
    A = Um.transpose(1, 2) @ torch.stack(JU, -1)
    A = a.double()[:, None, None] * G + c.double()[:, None, None] * 0.5 * (A + A.transpose(1, 2))
    g, V = torch.linalg.eigh(G)
    keep = g > 1e-8 * g[:, -1:].clamp_min(1e-300)
    W = V * torch.where(keep, g.clamp_min(1e-300).rsqrt(), torch.zeros_like(g))[:, None, :]
    theta, Z = torch.linalg.eigh(W.transpose(1, 2) @ A @ W)
    dirs = Um @ (W @ Z)  # (n, D, k) Ritz vectors; zero where the Gram matrix dropped a direction
    valid = dirs.norm(dim=1) > 1e-8 * Um.norm(dim=(1, 2))[:, None]
    score = _violation_score(theta, None if lower is None else lower.double(), upper.double())
    score = torch.where(valid, score, torch.full_like(score, -math.inf))
    best = score.argmax(1)
    d = dirs[torch.arange(n), :, best]
    d = d * (norm.double() / d.norm(dim=1).clamp_min(1e-300))[:, None]
    return d.to(v.dtype).reshape(v.shape), theta[torch.arange(n), best]


# --------------------------------------------------------------------------------------------------
# The deployed sampler's steps on the training timestep axis
# --------------------------------------------------------------------------------------------------


@dataclass
class StepGrid:
    """The deployed sampler's k steps seen from training: for every training timestep ``t`` (0..T-1) the
    grid step whose timestep is nearest (``step``, 0 = first sampling step = highest noise) and that step's
    exact bounds ``(lower, upper)`` on the eigenvalues of sym J_x0 (contraction iff all lie inside)."""

    num_steps: int
    step: Tensor  # (T,) long
    lower: Tensor  # (T,)
    upper: Tensor  # (T,)

    @classmethod
    def from_bounds(cls, bounds, num_train_timesteps: int) -> StepGrid:
        """From per-step bounds in sampling order, each with ``.t``, ``.lower``, ``.upper`` (the
        :class:`cdp_plugin.samplers.StepBound` that :func:`cdp_plugin.samplers.step_contraction_bounds`
        returns)."""
        ts = torch.tensor([float(b.t) for b in bounds], dtype=torch.float64)
        lo = torch.tensor([float(b.lower) for b in bounds], dtype=torch.float64)
        hi = torch.tensor([float(b.upper) for b in bounds], dtype=torch.float64)
        t = torch.arange(num_train_timesteps, dtype=torch.float64)
        step = (t[:, None] - ts[None, :]).abs().argmin(1)  # ties: the earlier (noisier) step
        return cls(len(bounds), step, lo[step], hi[step])

    @classmethod
    def from_sampler(cls, training_scheduler, sampler: str, num_inference_steps: int | None) -> StepGrid:
        """The grid of the deployed ``sampler`` (a name of :data:`cdp_plugin.samplers.SAMPLERS`, built from
        the training scheduler as the front ends deploy it) at ``num_inference_steps`` (``None``: every
        training timestep), with its exact per-step bounds."""
        from cdp_plugin.samplers import step_contraction_bounds

        bounds = step_contraction_bounds(training_scheduler, sampler, num_inference_steps)
        return cls.from_bounds(bounds, int(training_scheduler.config.num_train_timesteps))

    def position(self, timesteps: Tensor) -> Tensor:
        """Per-sample position of the nearest grid step counted from the last one, in [0, 1): the last
        step is 0, the first (k-1)/k."""
        s = self.step.to(timesteps.device)[timesteps.long()]
        return (self.num_steps - 1 - s).double() / self.num_steps

    def bounds(self, timesteps: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
        """Per-sample ``(lower, upper)`` of the grid step nearest to each training timestep."""
        t = timesteps.long().cpu()
        return self.lower[t].to(like), self.upper[t].to(like)


# --------------------------------------------------------------------------------------------------
# Which rows: noise window, sampler-step window, batch fraction
# --------------------------------------------------------------------------------------------------


def penalty_sample_mask(
    batch: int,
    cfg: ContractionConfig,
    t_frac: Tensor | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    step_pos: Tensor | None = None,
) -> Tensor:
    """Indices of the samples the penalty is computed on: noise window (and, given the per-sample
    sampler-step positions ``step_pos``, the step window), then a random batch fraction."""
    keep = torch.ones(batch, dtype=torch.bool, device=device)
    for frac, (lo, hi) in ((t_frac, cfg.noise_window), (step_pos, cfg.step_window)):
        if frac is not None:
            frac = frac.to(keep.device)
            keep &= (frac >= lo) & (frac < hi) if hi < 1 else (frac >= lo)
    idx = keep.nonzero().flatten()
    if cfg.batch_fraction < 1 and idx.numel() > 0:
        n = max(1, int(round(cfg.batch_fraction * idx.numel())))
        perm = torch.randperm(idx.numel(), generator=generator, device="cpu")[:n].to(idx.device)
        idx = idx[perm]
    return idx


@dataclass
class PenaltyRows:
    """What :func:`penalty_rows` decided for one batch.

    ``idx``: the penalised rows of the batch. For fused estimators (``fd_probe``) ``x`` are the perturbed
    rows ``x_t[idx] + h v`` to append to the denoising batch (with the conditioning / timesteps of ``idx``),
    ``v`` the probes and ``fd_step`` the step ``h`` used; for the others ``x`` is ``None`` and ``probes``
    holds pinned probes (if any) for the selected rows. ``ritz_violation_frac``: from the no-grad Krylov
    prepass (``fd_ritz``, or ``fd_probe`` with the adaptive weight), the share of rows whose worst Ritz value
    lies outside their step's window.
    """

    idx: Tensor
    x: Tensor | None = None
    v: Tensor | None = None
    fd_step: float = 0.0
    probes: Tensor | None = None
    ritz_violation_frac: float | None = None  # share of rows whose prepass Ritz value is outside the window

    @property
    def extra(self) -> int:
        """Number of rows to append to the denoising batch."""
        return 0 if self.x is None else self.x.shape[0]


def _step_bounds(
    cfg: ContractionConfig, alpha_rows: Tensor, timesteps: Tensor | None, idx: Tensor, grid: StepGrid | None
) -> tuple[Tensor | None, Tensor]:
    """``(lower, upper)`` bounds on the eigenvalues of sym J_x0 for the rows ``idx``: the deployed grid's
    exact per-step bounds (``threshold="sampler"`` with a grid), else ``(None, alpha_t)``."""
    if cfg.threshold == "sampler" and grid is not None and timesteps is not None:
        return grid.bounds(timesteps[idx], alpha_rows)
    return None, alpha_rows


def _fd_step(cfg: ContractionConfig, x: Tensor) -> float:
    """``fd_step``, raised to :data:`AMP_MIN_FD_STEP` under autocast (bf16/fp16 rounding)."""
    amp = torch.is_autocast_enabled() or torch.is_autocast_enabled("cpu")
    if x.is_cuda:
        amp = amp or torch.is_autocast_enabled("cuda")
    return max(cfg.fd_step, AMP_MIN_FD_STEP) if amp else cfg.fd_step


def penalty_rows(
    x_t: Tensor,
    cfg: ContractionConfig,
    t_frac: Tensor | None = None,
    probes: Tensor | None = None,
    generator: torch.Generator | None = None,
    timesteps: Tensor | None = None,
    grid: StepGrid | None = None,
    fn: Callable[[Tensor, Tensor], Tensor] | None = None,
    alpha: Tensor | float | None = None,
    sigma: Tensor | float | None = None,
    prediction_type: str | None = None,
    measure: bool = True,
) -> PenaltyRows:
    """Entry point 1: which rows of the batch are penalised, and the rows to append to its forward pass.

    Args:
        x_t: noisy actions of the whole batch (B, ...), action channels only.
        t_frac: per-sample ``t / T`` (noise window). ``timesteps`` + ``grid``: the sampler-step window.
        probes: pinned probes over the full batch, (B, ...) or (K, B, ...) (tests, DDP checks).
        fn, alpha, sigma, prediction_type: the denoiser ``fn(x_rows, idx)`` and the per-sample schedule,
            needed only by estimators that choose their probe direction before the forward pass
            (``fd_ritz``: its no-grad Krylov steps); the same arguments as :func:`penalty_from_outputs`.
        measure: whether the adaptive ``fd_probe`` runs its measuring prepass at this step
            (:meth:`ContractionConfig.measures_share_at_step`); ``fd_ritz`` runs it regardless.
    """
    B = x_t.shape[0]
    _check_finite(x_t=x_t)
    if not cfg.active:  # nothing penalised, nothing drawn
        return PenaltyRows(torch.zeros(0, dtype=torch.long, device=x_t.device))
    step_pos = grid.position(timesteps) if (grid is not None and timesteps is not None) else None
    idx = penalty_sample_mask(B, cfg, t_frac, generator, x_t.device, step_pos=step_pos)
    pv = None if probes is None else probes.reshape(-1, *x_t.shape)[:, idx].to(x_t.dtype)
    if not cfg.fused:
        return PenaltyRows(idx, probes=pv)
    h = _fd_step(cfg, x_t)
    xs = x_t[idx]
    v = pv[0] if pv is not None else _probes(xs.shape, xs, cfg.probe, generator)
    ritz = None
    chooses_probe = ESTIMATOR_REGISTRY[(cfg.loss, cfg.estimator)].prepass
    if cfg.ritz_prepass and idx.numel() > 0 and (measure or chooses_probe):
        if fn is None or alpha is None or sigma is None or prediction_type is None:
            raise ValueError(
                f"estimator {cfg.estimator!r} (adaptive: {cfg.adaptive}) runs no-grad Krylov steps before the "
                "forward pass: pass fn, alpha, sigma and prediction_type to penalty_rows"
            )
        a_s = _per_sample(alpha, B, x_t, "alpha_t")[idx]
        s_s = _per_sample(sigma, B, x_t, "sigma_t")[idx]
        a, c = x0_jacobian_coeffs(a_s, s_s, prediction_type)
        lower, upper = _step_bounds(cfg, a_s, timesteps, idx, grid)
        f_rows = lambda x: fn(x, idx.repeat(x.shape[0] // idx.numel()))  # noqa: E731
        u, theta = fd_ritz_direction(f_rows, xs.detach(), v, a, c, lower, upper, h, cfg.krylov_dim)
        if chooses_probe:  # fd_ritz probes along it (and reports its
            v = u  # own share from that row); the adaptive fd_probe keeps its random v and measures here
        else:
            ritz = _outside(theta, lower, upper)
    return PenaltyRows(idx, xs + h * v, v, h, ritz_violation_frac=ritz)


# --------------------------------------------------------------------------------------------------
# Estimators: one small function per (loss, estimator), held in ESTIMATOR_REGISTRY
# --------------------------------------------------------------------------------------------------


@dataclass
class PenaltyInputs:
    """Everything an estimator sees, for the selected rows only (n = number of rows).

    ``f(x)``: the denoiser on rows shaped like ``x`` (double-backward estimators); ``y`` / ``y_rows``:
    the network outputs at ``x`` and at the fused probe rows; ``a, c``: ``J_x0 = a I + c J_f``; ``w``:
    the residual weight; ``lower, upper``: per-sample eigenvalue bounds of the contraction condition.
    """

    x: Tensor
    alpha: Tensor
    sigma: Tensor
    prediction_type: str
    cfg: ContractionConfig
    a: Tensor
    c: Tensor
    w: Tensor
    lower: Tensor | None
    upper: Tensor
    f: Callable[[Tensor], Tensor] | None = None
    y: Tensor | None = None
    y_rows: Tensor | None = None
    rows: PenaltyRows | None = None
    generator: torch.Generator | None = None


@dataclass(frozen=True)
class Estimator:
    """A registered estimator: ``fn(PenaltyInputs) -> (per-sample penalty (n,), diagnostics)``.

    ``fused``: its probe rows ride in the denoising forward pass (:func:`penalty_rows` makes them and
    :func:`penalty_from_outputs` reads ``y_rows``); otherwise ``fn`` calls the denoiser ``f`` itself.
    ``max_dim``: largest D it accepts (``None``: any). ``prepass``: it chooses its probe direction before
    the forward pass (:func:`penalty_rows` runs the denoiser without a graph). Diagnostics may hold
    ``lambda_min`` / ``lambda_max`` (per-sample tensors of sym J_x0) and float entries.
    """

    fn: Callable[[PenaltyInputs], tuple[Tensor, dict]]
    fused: bool = False
    max_dim: int | None = None
    prepass: bool = False
    measures_violation: bool = True  # its diagnostics give a violation share (the adaptive weight needs one)


def _sym_x0_exact(p: PenaltyInputs, create_graph: bool = True) -> Tensor:
    """sym J_x0 per sample (n, D, D) from the full Jacobian, differentiable w.r.t. the parameters."""
    J = exact_jacobian(p.f, p.x, create_graph=create_graph).to(p.x.dtype)
    D = J.shape[-1]
    eye = torch.eye(D, dtype=J.dtype, device=J.device)
    return p.a.view(-1, 1, 1) * eye + p.c.view(-1, 1, 1) * 0.5 * (J + J.transpose(1, 2))


def _hinge(p: PenaltyInputs, lmin: Tensor, lmax: Tensor) -> Tensor:
    """``relu(w (lambda_max - thr_hi))^2 (+ relu(w (thr_lo - lambda_min))^2 with a lower bound)``, the
    thresholds shrunk by beta (``margin_mode``) towards the inside of the contraction interval."""
    beta, rel = p.cfg.margin, p.cfg.margin_mode == "relative"
    hi = (1 - beta) * p.upper if rel else p.upper - beta
    per = torch.relu(p.w * (lmax - hi)).pow(2)
    if p.lower is not None:
        lo = (1 - beta) * p.lower if rel else p.lower + beta
        per = per + torch.relu(p.w * (lo - lmin)).pow(2)
    return per


def frobenius_fd_probe(p: PenaltyInputs) -> tuple[Tensor, dict]:
    """``w_t^2 ||(J_x0 + beta I) v||^2 / N`` from the fused probe rows (first order, no double backward)."""
    r, cfg = p.rows, p.cfg
    per = fd_probe_penalty(
        p.y,
        p.y_rows,
        r.v,
        r.fd_step,
        p.alpha,
        p.sigma,
        p.prediction_type,
        cfg.margin,
        cfg.residual_weight,
        cfg.normalization,
    )
    ray = fd_probe_rayleigh(p.y, p.y_rows, r.v, r.fd_step, p.alpha, p.sigma, p.prediction_type)
    diag = {"probe_rayleigh": ray.mean().item()}
    if r.ritz_violation_frac is not None:  # the adaptive weight's prepass
        diag["ritz_violation_frac"] = r.ritz_violation_frac
    return per, diag


def frobenius_hutchinson(p: PenaltyInputs) -> tuple[Tensor, dict]:
    """``w_t^2 ||sym J_x0 + beta I||_F^2 / N`` by Hutchinson probes through the double-VJP oracle."""
    cfg = p.cfg
    mv = _SymMatvec(p.f, p.x, p.a, p.c)
    pv = None if p.rows is None else p.rows.probes
    est = hutchinson_frobenius(mv, p.x, cfg.margin, cfg.num_probes, cfg.probe, p.generator, probes=pv)
    return p.w.pow(2) * est / _norm_dim(p.x[0].numel(), cfg.normalization), {}


def frobenius_exact(p: PenaltyInputs) -> tuple[Tensor, dict]:
    """``||w_t (sym J_x0 + beta I)||_F^2 / N`` from the full Jacobian (the reference)."""
    S = _sym_x0_exact(p)
    D = S.shape[-1]
    eye = torch.eye(D, dtype=S.dtype, device=S.device)
    per = (p.w.view(-1, 1, 1) * (S + p.cfg.margin * eye)).pow(2).flatten(1).sum(1) / _norm_dim(
        D, p.cfg.normalization
    )
    ev = torch.linalg.eigvalsh(S.detach())
    return per, {"lambda_min": ev[:, 0], "lambda_max": ev[:, -1]}


def hinge_lanczos(p: PenaltyInputs) -> tuple[Tensor, dict]:
    """Hinge on Lanczos extreme eigenvalues of sym J_x0 (gradient through the Ritz vectors' Rayleigh
    quotients; lambda_min carries a gradient only when the condition has a lower bound)."""
    mv = _SymMatvec(p.f, p.x, p.a, p.c)
    _, _, umin, umax = lanczos_extreme_eigs(mv, p.x, p.cfg.lanczos_iters, generator=p.generator)
    lmax = _rayleigh(mv, umax)
    lmin = _rayleigh(mv, umin) if p.lower is not None else _rayleigh(mv, umin).detach()
    return _hinge(p, lmin, lmax), {"lambda_min": lmin.detach(), "lambda_max": lmax.detach()}


def hinge_fd_ritz(p: PenaltyInputs) -> tuple[Tensor, dict]:
    """Hinge on the first-order Rayleigh quotient ``r = u^T J_x0 u / |u|^2`` along the Ritz direction of
    :func:`penalty_rows` (its row rode in the forward pass; the gradient flows through both outputs).
    ``r`` lies between lambda_min and lambda_max of sym J_x0, so the penalty is a lower bound of the exact
    hinge and vanishes where the step contracts. It stands in for both ends of the interval."""
    r = p.rows
    dt = torch.promote_types(p.y.dtype, torch.float32)
    u = r.v.to(dt).flatten(1)
    ju = ((p.y_rows.to(dt) - p.y.to(dt)) / r.fd_step).flatten(1)
    ray = p.a.to(dt) + p.c.to(dt) * (ju * u).sum(1) / u.pow(2).sum(1)
    r_ = ray.detach()
    return _hinge(p, ray, ray), {
        "probe_rayleigh": r_.mean().item(),
        "ritz_violation_frac": _outside(r_, p.lower, p.upper),
    }


def hinge_exact(p: PenaltyInputs) -> tuple[Tensor, dict]:
    """Hinge on the exact extreme eigenvalues of sym J_x0."""
    ev = torch.linalg.eigvalsh(_sym_x0_exact(p))
    lmin, lmax = ev[:, 0], ev[:, -1]
    return _hinge(p, lmin, lmax), {"lambda_min": lmin.detach(), "lambda_max": lmax.detach()}


ESTIMATOR_REGISTRY: dict[tuple[str, str], Estimator] = {
    ("frobenius", "fd_probe"): Estimator(frobenius_fd_probe, fused=True),
    ("frobenius", "hutchinson"): Estimator(frobenius_hutchinson, measures_violation=False),
    ("frobenius", "exact"): Estimator(frobenius_exact, max_dim=EXACT_MAX_DIM),
    ("hinge", "lanczos"): Estimator(hinge_lanczos),
    ("hinge", "fd_ritz"): Estimator(hinge_fd_ritz, fused=True, prepass=True),
    ("hinge", "exact"): Estimator(hinge_exact, max_dim=EXACT_MAX_DIM),
}


def estimator_names(loss: str) -> tuple[str, ...]:
    """Registered estimators of a loss, in registration order (the first is the loss's default)."""
    return tuple(e for (lo, e) in ESTIMATOR_REGISTRY if lo == loss)


# --------------------------------------------------------------------------------------------------
# Entry point 2: penalty from the outputs
# --------------------------------------------------------------------------------------------------


def penalty_from_outputs(
    rows: PenaltyRows,
    x_t: Tensor,
    alpha: Tensor | float,
    sigma: Tensor | float,
    prediction_type: str,
    cfg: ContractionConfig,
    y: Tensor | None = None,
    y_rows: Tensor | None = None,
    fn: Callable[[Tensor, Tensor], Tensor] | None = None,
    timesteps: Tensor | None = None,
    grid: StepGrid | None = None,
    generator: torch.Generator | None = None,
    eig_diagnostics: bool = False,
) -> tuple[Tensor, dict[str, float]]:
    """Entry point 2: the penalty (unweighted by gamma) and diagnostics for the rows of :func:`penalty_rows`.

    Args:
        rows: from :func:`penalty_rows` on the same ``x_t``.
        x_t: noisy actions of the whole batch (B, ...), action channels only.
        alpha, sigma: per-sample alpha_t, sigma_t (B,) or scalars.
        y: network output on the whole batch (B, ...), action channels (fused estimators; optional).
        y_rows: network output on ``rows.x`` (fused estimators, when the rows rode in the forward pass).
        fn: the denoiser ``fn(x_rows, idx)`` on rows ``idx`` of the batch (its conditioning / timesteps);
            needed by double-backward estimators and by fused ones when ``y_rows`` is not given.
        timesteps, grid: per-sample training timesteps and the deployed sampler's :class:`StepGrid`; with
            ``threshold="sampler"`` they give the per-step eigenvalue bounds (else ``alpha_t`` is the bound).
        eig_diagnostics: also estimate lambda_min / lambda_max of sym J_x0 by Lanczos where the estimator
            does not produce them (costs ``lanczos_iters`` matvecs through ``fn``).

    Returns:
        ``(loss, diagnostics)``: scalar mean penalty over the selected rows (0 with none) and floats:
        ``penalty_samples``, ``penalty``, ``lambda_max``/``lambda_min`` (means, where estimated),
        ``violation_frac`` (share outside the contraction condition), ``probe_rayleigh`` (fd_probe).
    Raises:
        ValueError on bad input; FloatingPointError on a non-finite penalty (never added to a loss).
    """
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
    idx = rows.idx
    diag: dict[str, float] = {"penalty_samples": float(idx.numel())}
    if idx.numel() == 0:
        return zero, diag
    est = ESTIMATOR_REGISTRY[(cfg.loss, cfg.estimator)]
    xs, a_s, s_s = x_t[idx], alpha[idx], sigma[idx]
    D = xs[0].numel()
    if est.max_dim is not None and est.max_dim < D:
        raise ValueError(
            f"estimator {cfg.estimator!r} refused for D={D} > {est.max_dim}: use a matrix-free one"
        )
    f = None if fn is None else (lambda x: fn(x, idx))  # noqa: E731
    if est.fused:
        if y_rows is None:  # the rows did not ride in a forward pass: run them now
            if f is None:
                raise ValueError(f"estimator {cfg.estimator!r}: pass y_rows (outputs on rows.x) or fn")
            y_rows = f(rows.x)
            y_sel = y[idx] if y is not None else f(xs)
        else:
            if y is None:
                raise ValueError(f"estimator {cfg.estimator!r}: y_rows given without y (outputs on x_t)")
            y_sel = y[idx]
    elif f is None:
        raise ValueError(f"estimator {cfg.estimator!r} needs the denoiser callable fn (double backward)")
    else:
        y_sel = None
    a, c = x0_jacobian_coeffs(a_s, s_s, prediction_type)
    lower, upper = _step_bounds(cfg, a_s, timesteps, idx, grid)
    p = PenaltyInputs(
        xs,
        a_s,
        s_s,
        prediction_type,
        cfg,
        a,
        c,
        residual_scale(a_s, prediction_type, cfg.residual_weight),
        lower,
        upper,
        f=f,
        y=y_sel,
        y_rows=y_rows,
        rows=rows,
        generator=generator,
    )
    per, ediag = est.fn(p)
    lmin, lmax = ediag.pop("lambda_min", None), ediag.pop("lambda_max", None)
    diag.update(ediag)
    if lmax is None and eig_diagnostics and f is not None:
        lmin, lmax = sym_extreme_eigs(
            f, xs.detach(), cfg.lanczos_iters, a_s, s_s, prediction_type, generator=generator
        )
    if lmax is not None:
        diag["lambda_min"], diag["lambda_max"] = lmin.mean().item(), lmax.mean().item()
        bad = lmax.detach() >= upper
        if lower is not None:
            bad |= lmin.detach() <= lower
        diag["violation_frac"] = bad.float().mean().item()
    loss = per.mean()
    if not torch.isfinite(loss):
        raise FloatingPointError(
            f"contraction penalty is non-finite ({loss.item()}); refusing to add it to the loss "
            f"(estimator={cfg.estimator}, prediction_type={prediction_type}, "
            f"min alpha_t={a_s.min().item():.3g})"
        )
    diag["penalty"] = loss.item()
    return loss, diag


def contraction_penalty(
    fn: Callable[[Tensor, Tensor], Tensor],
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
    timesteps: Tensor | None = None,
    grid: StepGrid | None = None,
    measure: bool = True,
) -> tuple[Tensor, dict[str, float]]:
    """Contraction penalty (unweighted by gamma) and diagnostics for a denoiser callable.

    ``fn(x_rows, idx)`` is the denoiser on noisy actions for the batch rows ``idx`` (so it can pick the
    matching conditioning and timesteps, e.g. ``lambda x, i: unet(x, t[i], global_cond=cond[i])``);
    ``y`` an optional precomputed output on the full batch. :func:`penalty_rows` then
    :func:`penalty_from_outputs` (see there for the arguments and the returned diagnostics).
    """
    cfg = cfg or ContractionConfig()
    _check_prediction_type(prediction_type)
    rows = penalty_rows(
        x_t,
        cfg,
        t_frac,
        probes=probes,
        generator=generator,
        timesteps=timesteps,
        grid=grid,
        fn=fn,
        alpha=alpha,
        sigma=sigma,
        prediction_type=prediction_type,
        measure=measure,
    )
    return penalty_from_outputs(
        rows,
        x_t,
        alpha,
        sigma,
        prediction_type,
        cfg,
        y=y,
        fn=fn,
        timesteps=timesteps,
        grid=grid,
        generator=generator,
        eig_diagnostics=eig_diagnostics,
    )
