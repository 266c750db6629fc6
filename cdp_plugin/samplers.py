"""Samplers for diffusion policies, built on diffusers' schedulers from the training scheduler's own config.

Contraction is a property of the probability-flow ODE, so CDP deploys with a deterministic sampler. The names
in :data:`SAMPLERS` are the only sampler names of the project (both front ends and the converter read them);
each has one meaning, in every front end:

* ``"ddpm"``: the training schedule stepped stochastically (``DDPMScheduler.from_config`` of the training
  scheduler's config; with LeRobot's default ``noise_scheduler_type="DDPM"`` this is LeRobot's own loop),
* ``"ddim"``: ``DDIMScheduler`` with ``eta = 0`` (first-order, a discretised PF-ODE),
* ``"dpmsolver++"``: ``DPMSolverMultistepScheduler`` with ``algorithm_type="dpmsolver++"``, ``solver_order=2``
  (the paper's DPM-Solver++(2M)), ``"trailing"`` timestep spacing and a zero final sigma.

:func:`make_scheduler` is the one builder. All helpers are small pure functions: no global state.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

SAMPLERS = ("ddpm", "ddim", "dpmsolver++")

# model_fn(x_t, t) -> network output, t a (B,) long tensor of scheduler timesteps
ModelFn = Callable[[Tensor, Tensor], Tensor]


@dataclass
class ScheduleConfig:
    """A training noise schedule, for code that has no training scheduler yet (toys, tests).

    :func:`training_scheduler` turns it into the ``DDPMScheduler`` a model is trained with; everything that
    samples builds from that scheduler's config with :func:`make_scheduler`.
    """

    num_train_timesteps: int = 100
    beta_schedule: str = "squaredcos_cap_v2"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    prediction_type: str = "epsilon"
    clip_sample: bool = True
    clip_sample_range: float = 1.0


def training_scheduler(schedule: ScheduleConfig):
    """The ``DDPMScheduler`` a model with this schedule trains with (``add_noise``, ``alphas_cumprod``)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(**asdict(schedule))


def _config_of(source) -> Mapping[str, Any]:
    if isinstance(source, ScheduleConfig):
        return training_scheduler(source).config
    if hasattr(source, "config") and hasattr(source, "step"):
        return source.config
    if isinstance(source, Mapping):
        return source
    raise TypeError(
        f"make_scheduler: expected a diffusers scheduler, its config or a ScheduleConfig, got {type(source)}"
    )


def make_scheduler(sampler: str, source):
    """The deployment scheduler ``sampler`` on the training schedule of ``source``.

    ``source`` is the training scheduler (LeRobot's / diffusion_policy's ``noise_scheduler``), its ``config``,
    or a :class:`ScheduleConfig`. The new scheduler is ``<Class>.from_config(source_config, ...)``: every
    schedule setting (betas, ``num_train_timesteps``, ``prediction_type``, clipping, ``trained_betas``, ...)
    comes from the training config; only the solver's own options are set here. Every
    ``num_inference_steps`` in ``[1, num_train_timesteps]`` gives finite steps for every sampler (the
    DPM-Solver++ options below were chosen for that: issue 12).
    """
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

    cfg = _config_of(source)
    if sampler == "ddpm":
        return DDPMScheduler.from_config(cfg)
    if sampler == "ddim":
        return DDIMScheduler.from_config(cfg)
    if sampler == "dpmsolver++":
        clip = bool(cfg.get("clip_sample", False))
        return DPMSolverMultistepScheduler.from_config(
            cfg,
            algorithm_type="dpmsolver++",
            solver_order=2,
            # first-order last step, landing on sigma = 0 (x0 itself)
            lower_order_final=True,
            final_sigmas_type="zero",
            # "linspace" (diffusers' default) repeats timesteps when num_inference_steps is close to
            # num_train_timesteps (h = 0 in the 2M update: NaN); "leading" (a DDPM config's spacing) collapses
            # them to 0. "trailing" keeps them distinct for every num_inference_steps <= num_train_timesteps.
            timestep_spacing="trailing",
            # dpmsolver++ thresholding clips x0 like clip_sample does for DDPM/DDIM
            thresholding=clip,
            sample_max_value=float(cfg.get("clip_sample_range", 1.0)),
            dynamic_thresholding_ratio=1.0,
        )
    raise ValueError(f"unknown sampler {sampler!r}; expected one of {list(SAMPLERS)}")


def alpha_sigma(scheduler, timesteps: Tensor) -> tuple[Tensor, Tensor]:
    """``alpha_t = sqrt(alphas_cumprod[t])`` and ``sigma_t = sqrt(1 - alphas_cumprod[t])`` (VP)."""
    ac = scheduler.alphas_cumprod.to(timesteps.device)[timesteps.long()]
    return ac.sqrt(), (1 - ac).sqrt()


def sample(
    model_fn: ModelFn,
    noise: Tensor,
    scheduler,
    num_inference_steps: int,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Run the reverse process from ``noise`` (B, ...) with ``scheduler``; returns the final sample."""
    scheduler.set_timesteps(num_inference_steps, device=noise.device)
    x = noise
    if hasattr(scheduler, "init_noise_sigma"):
        x = x * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        tt = torch.full((x.shape[0],), int(t), dtype=torch.long, device=x.device)
        out = model_fn(x, tt)
        kw = {"generator": generator} if generator is not None else {}
        x = scheduler.step(out, t, x, **kw).prev_sample
    return x


def separation_ratio(
    sample_fn: Callable[[Tensor], Tensor],
    noise: Tensor,
    delta: float = 1e-3,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Empirical contraction of a deterministic sampler, per sample (B,).

    Sends ``noise`` and ``noise + delta * u`` (``u`` a random unit direction per sample) through
    ``sample_fn`` and returns ``|final difference| / |initial difference|``. Below 1: nearby noise seeds
    converge (contractive); above 1: they separate.
    """
    u = torch.randn(noise.shape, generator=generator, dtype=noise.dtype, device=noise.device)
    u = u / u.flatten(1).norm(dim=1).reshape(-1, *([1] * (noise.dim() - 1)))
    a = sample_fn(noise)
    b = sample_fn(noise + delta * u)
    return (a - b).flatten(1).norm(dim=1) / delta


class StepBound(NamedTuple):
    """The exact contraction window of one sampler step ``t -> s`` (see :func:`step_contraction_bounds`)."""

    t: int  # training timestep the step starts from
    s: int  # timestep it lands on; -1: the clean end (alpha = 1, sigma = 0)
    lower: float  # the step contracts iff every eigenvalue of sym J_x0 at (x_t, t) lies in (lower, upper)
    upper: float


class StepCoefficients(NamedTuple):
    """One sampler step written as ``x_s = a x_t + b x0(x_t) + (terms that do not depend on x_t)``."""

    t: int
    s: int
    a: float
    b: float


def _alpha_sigma_of(alpha_bar) -> tuple[float, float]:
    ab = float(alpha_bar)
    return math.sqrt(ab), math.sqrt(max(1.0 - ab, 0.0))


def step_coefficients(
    scheduler_or_config, sampler: str, num_inference_steps: int | None
) -> list[StepCoefficients]:
    """The linear coefficients ``(a, b)`` of every step of ``sampler`` on the configured grid.

    ``scheduler_or_config`` is anything :func:`make_scheduler` takes (the training scheduler, its config,
    a :class:`ScheduleConfig`); ``num_inference_steps=None`` means every training timestep. The grid is
    the one the deployed scheduler's own ``set_timesteps`` builds, so the steps are exactly the ones it runs.

    * ``ddim`` (eta = 0), ``t -> s`` with ``s = t - T // n`` (``alpha_s = 1`` past the end)::

          x_s = alpha_s x0 + sigma_s (x_t - alpha_t x0) / sigma_t
          a = sigma_s / sigma_t,   b = alpha_s - sigma_s alpha_t / sigma_t = q / sigma_t,
          q = alpha_s sigma_t - sigma_s alpha_t.

    * ``ddpm``: the posterior mean (the added noise does not depend on ``x_t``)::

          a = sqrt(alpha_bar_t / alpha_bar_s) (1 - alpha_bar_s) / (1 - alpha_bar_t),
          b = sqrt(alpha_bar_s) (1 - alpha_bar_t / alpha_bar_s) / (1 - alpha_bar_t).

    * ``dpmsolver++`` (2M, data prediction, diffusers' ``midpoint`` form). With ``lambda = log(alpha / sigma)``,
      ``h = lambda_s - lambda_t``, a first-order step (the first one, and the last one, which lands on
      ``sigma = 0``) is DDIM: ``a = sigma_s / sigma_t``, ``b = alpha_s (1 - e^{-h})`` (the same ``b`` as above).
      A second-order step uses the previous step's prediction ``m1 = x0(x_prev)`` with
      ``r0 = (lambda_t - lambda_prev) / h``::

          x_s = (sigma_s / sigma_t) x_t + alpha_s (1 - e^{-h}) (m0 + (m0 - m1) / (2 r0)),  m0 = x0(x_t)
          a = sigma_s / sigma_t,   b = alpha_s (1 - e^{-h}) (1 + 1 / (2 r0)).

      Approximation (stated): ``m1`` is held fixed, i.e. ``b`` is the coefficient of the *current* prediction
      in this step's map ``x_t -> x_s``. The full two-step map ``(x_prev) -> x_s`` also carries
      ``-alpha_s (1 - e^{-h}) / (2 r0) J_x0(x_prev)`` through ``m1``, which couples two steps' Jacobians and has
      no per-step eigenvalue window; the per-step window is what a penalty at one noise level can control.
      The order of each step follows diffusers' ``step`` (``lower_order_final``, ``final_sigmas_type``).
    """
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

    sched = make_scheduler(sampler, scheduler_or_config)
    n = int(sched.config.num_train_timesteps) if num_inference_steps is None else int(num_inference_steps)
    sched.set_timesteps(n)
    ts = [int(t) for t in sched.timesteps]
    ac = sched.alphas_cumprod.double()
    out: list[StepCoefficients] = []
    if isinstance(sched, (DDIMScheduler, DDPMScheduler)):
        for t in ts:
            s = (
                int(sched.previous_timestep(t))
                if isinstance(sched, DDPMScheduler)
                else t - sched.config.num_train_timesteps // n
            )
            ab_t = float(ac[t])
            if isinstance(sched, DDIMScheduler):
                ab_s = float(ac[s]) if s >= 0 else float(sched.final_alpha_cumprod)
                (al_t, sg_t), (al_s, sg_s) = _alpha_sigma_of(ab_t), _alpha_sigma_of(ab_s)
                a, b = sg_s / sg_t, al_s - sg_s * al_t / sg_t
            else:
                ab_s = float(ac[s]) if s >= 0 else 1.0
                a = math.sqrt(ab_t / ab_s) * (1 - ab_s) / (1 - ab_t)
                b = math.sqrt(ab_s) * (1 - ab_t / ab_s) / (1 - ab_t)
            out.append(StepCoefficients(t, max(s, -1), a, b))
        return out
    if not isinstance(sched, DPMSolverMultistepScheduler) or sched.config.solver_order != 2:
        raise ValueError(f"step_coefficients: no step formula for {type(sched).__name__}")
    c = sched.config
    sig = [sched._sigma_to_alpha_sigma_t(sched.sigmas[i].double()) for i in range(n + 1)]
    alpha = [float(al) for al, _ in sig]
    sigma = [float(sg) for _, sg in sig]
    lam = [math.log(al) - math.log(sg) if sg > 0 else math.inf for al, sg in zip(alpha, sigma)]
    for i, t in enumerate(ts):
        final = i == n - 1 and (
            c.euler_at_final or (c.lower_order_final and n < 15) or c.final_sigmas_type == "zero"
        )
        a = sigma[i + 1] / sigma[i]
        b = alpha[i + 1] * (1 - math.exp(-(lam[i + 1] - lam[i])))
        if not (i == 0 or final):  # second order (midpoint), previous prediction held fixed
            r0 = (lam[i] - lam[i - 1]) / (lam[i + 1] - lam[i])
            b = b * (1 + 1 / (2 * r0))
        out.append(StepCoefficients(t, ts[i + 1] if i + 1 < n else -1, a, b))
    return out


def step_contraction_bounds(
    scheduler_or_config, sampler: str, num_inference_steps: int | None
) -> list[StepBound]:
    """Exact per-step contraction thresholds of the deployed sampler grid, one :class:`StepBound` per step.

    Every step below is ``x_s = a x_t + b x0(x_t) + const`` (:func:`step_coefficients`), so its Jacobian is
    ``a I + b J_x0`` and the symmetric part of it has eigenvalues ``a + b lambda`` for the eigenvalues
    ``lambda`` of ``sym J_x0``. The step contracts (every eigenvalue of the symmetric part in ``(-1, 1)``) iff
    (``b > 0`` on every VP grid)::

        (-1 - a) / b  <  lambda  <  (1 - a) / b        for every eigenvalue lambda of sym J_x0 at (x_t, t).

    For DDIM this is ``(-(sigma_t + sigma_s) / q, (sigma_t - sigma_s) / q)``, ``q = alpha_s sigma_t - sigma_s
    alpha_t``; the continuous-time threshold ``alpha_t`` (``lambda_max < alpha_t``) is its ``s -> t`` limit of
    the upper end. Both ends matter: an eigenvalue below ``lower`` overshoots (the step flips and expands).
    For DPM-Solver++(2M) the window is that of the step's map with the previous x0 prediction held fixed
    (see :func:`step_coefficients`). With ``clip_sample`` / thresholding on, clipped coordinates have zero
    Jacobian; the window is that of the unclipped map. Used by the contraction hinge (``upper`` as its
    threshold), the sampler-step noise window and the bench's per-step lambda-viol.
    """
    out = []
    for t, s, a, b in step_coefficients(scheduler_or_config, sampler, num_inference_steps):
        if not b > 0:
            raise ValueError(
                f"step_contraction_bounds: step {t} -> {s} of {sampler} has x0 coefficient {b} <= 0"
            )
        out.append(StepBound(t, s, (-1.0 - a) / b, (1.0 - a) / b))
    return out
