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

from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping

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
    raise TypeError(f"make_scheduler: expected a diffusers scheduler, its config or a ScheduleConfig, got {type(source)}")


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
