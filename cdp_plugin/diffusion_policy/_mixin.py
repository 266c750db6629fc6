"""``ContractiveMixin``: the contraction penalty and ODE sampling for diffusion_policy's policies.

This module never imports diffusion_policy: it only relies on the attributes every upstream diffusion
policy sets (``model``, ``noise_scheduler``, ``action_dim``, ``compute_loss``, ``conditional_sample``), so
it is shared by the UNet and transformer, lowdim and image adapters.

How the penalty is wired (``compute_loss``):

* The parent's own ``compute_loss`` runs unchanged (same loss code, same RNG order of its ``randn`` /
  ``randint`` draws). Around it, two hooks sit on ``self.model`` for exactly one call and are removed
  afterwards (nothing stays registered: ``deepcopy`` for EMA and dill snapshots are unaffected).
* Default estimator ``fd_probe`` (deterministic network): the pre-hook appends ``x_t[idx] + h v`` rows to
  the batch of the denoising forward pass, with the matching timesteps and conditioning (``global_cond``,
  ``local_cond``, transformer ``cond``; image-policy features keep the obs-encoder graph). The network
  runs **once**, the post-hook splits the output and hands the parent only its own rows. The penalty
  ``w_t^2 ||(J_x0 + beta I) v||^2 / D^2`` is then formed by
  :func:`cdp_plugin.contraction.fd_probe_penalty` on the *implied x0 Jacobian* for the scheduler's
  ``prediction_type`` (``epsilon`` or ``sample``), with ``alpha_t, sigma_t`` of the training scheduler.
* Networks with active dropout (the transformer policies) and the other estimators (``hutchinson``,
  ``exact``, ``lanczos`` hinge) use :func:`cdp_plugin.contraction.contraction_penalty` on the captured
  inputs instead, with dropout disabled for the penalty's own forward passes (a finite difference across
  two different dropout masks would be meaningless).
* Only the **action** channels are perturbed and penalised. In upstream's inpainting mode the trajectory
  is ``cat([action, obs], -1)`` (B, T, Da + Do); the probe is zero on the obs channels and the residual is
  read on the action channels, i.e. the penalty acts on the action-action block of the Jacobian.
* Under ``torch.no_grad()`` (the workspaces' validation loop) the parent's loss is returned unchanged.
"""

from __future__ import annotations

import contextlib
import inspect
import warnings
from typing import Any

import torch
from torch import Tensor, nn

from cdp_plugin.contraction import (
    ContractionConfig,
    contraction_penalty,
    fd_probe_penalty,
    fd_probe_rows,
    penalty_sample_mask,
    x0_jacobian_coeffs,
)

SAMPLER_CHOICES = (None, "ddpm", "ddim", "dpmsolver++")
UPSTREAM_PREDICTION_TYPES = ("epsilon", "sample")

# constructor keyword -> ContractionConfig field
CONTRACTION_KWARGS: dict[str, str] = {
    "contraction_weight": "weight",
    "contraction_margin": "margin",
    "contraction_loss": "loss",
    "contraction_estimator": "estimator",
    "contraction_margin_mode": "margin_mode",
    "contraction_num_probes": "num_probes",
    "contraction_probe": "probe",
    "contraction_fd_step": "fd_step",
    "contraction_lanczos_iters": "lanczos_iters",
    "contraction_batch_fraction": "batch_fraction",
    "contraction_every": "every",
    "contraction_noise_window": "noise_window",
    "contraction_residual_weight": "residual_weight",
}
_DEFAULTS = ContractionConfig()


def _plain(v: Any) -> Any:
    """hydra hands lists as ListConfig (``_convert_: none``): turn them into plain tuples."""
    if isinstance(v, (str, bytes)) or v is None:
        return v
    try:
        from omegaconf import ListConfig  # hydra is installed wherever diffusion_policy runs

        if isinstance(v, ListConfig):
            return tuple(v)
    except ImportError:  # pragma: no cover
        pass
    if isinstance(v, list):
        return tuple(v)
    return v


def _active_dropout(model: nn.Module) -> list[nn.Module]:
    mods = []
    for m in model.modules():
        if not m.training:
            continue
        if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0:
            mods.append(m)
        elif isinstance(m, nn.MultiheadAttention) and m.dropout > 0:
            mods.append(m)
    return mods


@contextlib.contextmanager
def _dropout_off(model: nn.Module):
    mods = _active_dropout(model)
    for m in mods:
        m.train(False)
    try:
        yield
    finally:
        for m in mods:
            m.train(True)


class _Capture:
    """One-shot forward hooks on the denoiser: record (and for fd_probe, extend) one call's inputs."""

    def __init__(self, owner: "ContractiveMixin", fused: bool):
        self.owner = owner
        self.fused = fused
        self.calls = 0
        self.args: tuple = ()
        self.kwargs: dict = {}
        self.B = 0
        self.idx: Tensor | None = None
        self.v: Tensor | None = None
        self.y: Tensor | None = None
        self.y_pert: Tensor | None = None
        self.t: Tensor | None = None

    # --- helpers ---------------------------------------------------------------------------------
    def _rows(self, a: Any, idx: Tensor) -> Any:
        """Rows ``idx`` of a per-sample tensor argument; anything else passes unchanged."""
        if isinstance(a, Tensor) and a.dim() > 0 and a.shape[0] == self.B:
            return a[idx]
        return a

    def _cat(self, a: Any, extra: Any) -> Any:
        if isinstance(a, Tensor) and a.dim() > 0 and a.shape[0] == self.B:
            return torch.cat([a, extra], dim=0)
        return a

    # --- hooks -----------------------------------------------------------------------------------
    def pre(self, module, args, kwargs):
        self.calls += 1
        if self.calls > 1:  # only the parent's denoising call is touched
            return None
        x = args[0]
        t = args[1] if len(args) > 1 else kwargs.get("timestep", kwargs.get("t"))
        self.B = B = x.shape[0]
        if not isinstance(t, Tensor):
            t = torch.tensor(t, device=x.device)
        t = t.to(x.device).long()
        self.t = t.expand(B) if t.dim() == 0 else t
        self.args, self.kwargs = args, kwargs
        if not self.fused:
            return None
        o = self.owner
        cfg = o.contraction
        T = int(o.noise_scheduler.config.num_train_timesteps)
        self.idx = idx = penalty_sample_mask(B, cfg, self.t.float() / T, device=x.device)
        if idx.numel() == 0:
            return None
        sl = o._cdp_action_slice(x)
        xa = x[idx][..., sl]
        xa_pert, v = fd_probe_rows(xa, cfg.fd_step, cfg.probe)
        x_pert = x[idx].clone()
        x_pert[..., sl] = xa_pert
        self.v = v
        new_args = [torch.cat([x, x_pert], 0)]
        for a in args[1:]:
            new_args.append(self._cat(a, self._rows(a, idx)))
        new_kwargs = {k: self._cat(a, self._rows(a, idx)) for k, a in kwargs.items()}
        return tuple(new_args), new_kwargs

    def post(self, module, args, kwargs, out):
        if self.calls > 1 or not self.fused or self.idx is None or self.idx.numel() == 0:
            return None
        B = self.B
        self.y, self.y_pert = out[:B], out[B:]
        return out[:B]

    # --- generic denoiser for the core (non-fused path) ------------------------------------------
    def denoiser(self, x_full: Tensor, sl: slice):
        """``fn(x_action_rows, idx)`` for :func:`contraction_penalty`: re-run the model on rows ``idx``
        with the captured timesteps / conditioning, the action channels replaced by ``x_action_rows``."""
        model = self.owner.model

        def fn(xa: Tensor, idx: Tensor) -> Tensor:
            x = x_full[idx].detach().clone()
            x = x.to(xa.dtype)
            x = torch.cat([xa, x[..., sl.stop :]], dim=-1) if sl.stop is not None else xa
            args = [x] + [self._rows(a, idx) for a in self.args[1:]]
            kwargs = {k: self._rows(a, idx) for k, a in self.kwargs.items()}
            with _dropout_off(model):
                y = model(*args, **kwargs)
            return y[..., sl]

        return fn


class ContractiveMixin:
    """Adds the contraction penalty and a deterministic sampler to an upstream diffusion policy.

    Put it **first** in the bases. All arguments of the upstream constructor are accepted unchanged; the
    keyword arguments below are new, have defaults, and are removed before the upstream constructor runs
    (upstream forwards unknown keyword arguments to ``scheduler.step``). They are stored as plain Python
    attributes: the state_dict, the optimiser's parameter list and EMA are those of the upstream class.

    Keyword Args:
        contraction_weight: gamma (paper: 0.1). ``0`` disables the penalty (loss identical to upstream).
        contraction_margin: beta, Frobenius target ``-beta I`` on the implied x0 Jacobian (0.1).
        contraction_loss: ``"frobenius"`` | ``"hinge"`` | ``"none"``.
        contraction_estimator: ``"fd_probe"`` (default, one fused forward pass) | ``"hutchinson"`` |
            ``"exact"`` (frobenius) ; ``"lanczos"`` | ``"exact"`` (hinge).
        contraction_margin_mode, contraction_num_probes, contraction_probe, contraction_fd_step,
        contraction_lanczos_iters, contraction_batch_fraction, contraction_every,
        contraction_noise_window, contraction_residual_weight: the other
            :class:`cdp_plugin.contraction.ContractionConfig` fields.
        sampler: ``None`` (default: sample with the configured ``noise_scheduler``, as upstream),
            ``"ddpm"``, ``"ddim"`` or ``"dpmsolver++"`` (DPM-Solver++(2M)); the ODE samplers are built by
            :func:`cdp_plugin.samplers.make_scheduler` from the training scheduler's config and used by
            upstream's own ``conditional_sample`` loop with ``num_inference_steps`` steps (read at call
            time, so ``policy.num_inference_steps = 16`` after loading works as upstream).

    After each training ``compute_loss``, ``self.last_contraction`` holds floats ``loss``,
    ``diffusion_loss``, ``penalty``, ``weight`` and the estimator's diagnostics.
    """

    def __init__(
        self,
        *args,
        contraction_weight: float = _DEFAULTS.weight,
        contraction_margin: float = _DEFAULTS.margin,
        contraction_loss: str = _DEFAULTS.loss,
        contraction_estimator: str = _DEFAULTS.estimator,
        contraction_margin_mode: str = _DEFAULTS.margin_mode,
        contraction_num_probes: int = _DEFAULTS.num_probes,
        contraction_probe: str = _DEFAULTS.probe,
        contraction_fd_step: float = _DEFAULTS.fd_step,
        contraction_lanczos_iters: int = _DEFAULTS.lanczos_iters,
        contraction_batch_fraction: float = _DEFAULTS.batch_fraction,
        contraction_every: int = _DEFAULTS.every,
        contraction_noise_window: tuple[float, float] = _DEFAULTS.noise_window,
        contraction_residual_weight: str = _DEFAULTS.residual_weight,
        sampler: str | None = None,
        **kwargs,
    ):
        # validate before the (possibly heavy) upstream constructor runs
        cfg = ContractionConfig(
            weight=float(contraction_weight),
            margin=float(contraction_margin),
            loss=str(contraction_loss),
            estimator=str(contraction_estimator),
            margin_mode=str(contraction_margin_mode),
            num_probes=int(contraction_num_probes),
            probe=str(contraction_probe),
            fd_step=float(contraction_fd_step),
            lanczos_iters=int(contraction_lanczos_iters),
            batch_fraction=float(contraction_batch_fraction),
            every=int(contraction_every),
            noise_window=tuple(float(v) for v in _plain(contraction_noise_window)),
            residual_weight=str(contraction_residual_weight),
        )
        if sampler not in SAMPLER_CHOICES:
            raise ValueError(f"sampler must be one of {SAMPLER_CHOICES}, got {sampler!r}")
        super().__init__(*args, **kwargs)
        pred = self.noise_scheduler.config.prediction_type
        if cfg.active and pred not in UPSTREAM_PREDICTION_TYPES:
            raise ValueError(
                f"noise_scheduler.prediction_type={pred!r}: diffusion_policy trains 'epsilon' or 'sample' "
                "networks only"
            )
        self.contraction = cfg  # a dataclass: a plain attribute, not a parameter or buffer
        self.sampler = sampler
        self.last_contraction: dict[str, float] = {}
        self._cdp_step = 0
        self._cdp_sched_cache: tuple | None = None

    # ------------------------------------------------------------------------------------------------
    # training
    # ------------------------------------------------------------------------------------------------
    def _cdp_action_slice(self, x: Tensor) -> slice:
        """Channels of the trajectory that are actions (upstream puts them first)."""
        da = int(getattr(self, "action_dim", x.shape[-1]))
        return slice(0, da) if x.shape[-1] > da else slice(0, None)

    def _cdp_fused(self) -> bool:
        cfg = self.contraction
        return cfg.loss == "frobenius" and cfg.estimator == "fd_probe" and not _active_dropout(self.model)

    def compute_loss(self, batch, *args, **kwargs):
        cfg = self.contraction
        if not torch.is_grad_enabled() or not cfg.active:
            return super().compute_loss(batch, *args, **kwargs)
        step = self._cdp_step
        self._cdp_step += 1
        if not cfg.applies_at_step(step):
            loss = super().compute_loss(batch, *args, **kwargs)
            self.last_contraction = {"loss": float(loss.detach()), "diffusion_loss": float(loss.detach()),
                                     "penalty": 0.0, "weight": cfg.weight, "step": float(step)}
            return loss

        fused = self._cdp_fused()
        cap = _Capture(self, fused)
        h_pre = self.model.register_forward_pre_hook(cap.pre, with_kwargs=True)
        h_post = self.model.register_forward_hook(cap.post, with_kwargs=True)
        try:
            diffusion_loss = super().compute_loss(batch, *args, **kwargs)
        finally:
            h_pre.remove()
            h_post.remove()
        if cap.calls == 0:
            raise RuntimeError("contraction: the upstream compute_loss did not call self.model")

        pred = self.noise_scheduler.config.prediction_type
        x = cap.args[0]
        sl = self._cdp_action_slice(x)
        diag: dict[str, float] = {}
        if fused:
            idx = cap.idx
            diag["penalty_samples"] = float(idx.numel())
            if idx.numel() == 0:
                penalty = diffusion_loss.new_zeros(())
            else:
                from cdp_plugin.samplers import alpha_sigma

                alpha, sigma = alpha_sigma(self.noise_scheduler, cap.t[idx])
                alpha, sigma = alpha.to(x.dtype), sigma.to(x.dtype)
                yb, yp = cap.y[idx][..., sl], cap.y_pert[..., sl]
                per = fd_probe_penalty(yb, yp, cap.v, cfg.fd_step, alpha, sigma, pred, cfg.margin,
                                       cfg.residual_weight)
                penalty = per.mean()
                with torch.no_grad():
                    a, c = x0_jacobian_coeffs(alpha.float(), sigma.float(), pred)
                    v = cap.v.float().flatten(1)
                    jv = ((yp.float() - yb.float()) / cfg.fd_step).flatten(1)
                    vv = v.pow(2).sum(1)
                    diag["probe_rayleigh"] = ((a * vv + c * (jv * v).sum(1)) / vv).mean().item()
                if not torch.isfinite(penalty):
                    raise FloatingPointError(
                        f"contraction penalty is non-finite ({penalty.item()}); refusing to add it to the loss "
                        f"(prediction_type={pred}, min alpha_t={alpha.min().item():.3g})"
                    )
        else:
            from cdp_plugin.samplers import alpha_sigma

            T = int(self.noise_scheduler.config.num_train_timesteps)
            alpha, sigma = alpha_sigma(self.noise_scheduler, cap.t)
            fn = cap.denoiser(x, sl)
            penalty, diag = contraction_penalty(
                fn, x[..., sl].detach(), alpha.to(x.dtype), sigma.to(x.dtype), pred, cfg,
                t_frac=cap.t.float() / T,
            )
        loss = diffusion_loss + cfg.weight * penalty
        self.last_contraction = {
            "loss": float(loss.detach()),
            "diffusion_loss": float(diffusion_loss.detach()),
            "penalty": float(penalty.detach()),
            "weight": cfg.weight,
            "step": float(step),
            **{k: float(v) for k, v in diag.items()},
        }
        return loss

    # ------------------------------------------------------------------------------------------------
    # sampling
    # ------------------------------------------------------------------------------------------------
    def sampling_scheduler(self):
        """The scheduler used by ``conditional_sample``: ``noise_scheduler`` or the chosen ODE sampler."""
        if self.sampler is None:
            return self.noise_scheduler
        from cdp_plugin.samplers import ScheduleConfig, make_scheduler

        c = self.noise_scheduler.config
        key = (self.sampler, id(self.noise_scheduler))
        if self._cdp_sched_cache is None or self._cdp_sched_cache[0] != key:
            if getattr(c, "trained_betas", None) is not None:
                raise ValueError("sampler: noise_scheduler with trained_betas is not supported; use sampler=None")
            sched = make_scheduler(
                self.sampler,
                ScheduleConfig(
                    num_train_timesteps=int(c.num_train_timesteps),
                    beta_schedule=str(c.beta_schedule),
                    beta_start=float(c.beta_start),
                    beta_end=float(c.beta_end),
                    prediction_type=str(c.prediction_type),
                    clip_sample=bool(getattr(c, "clip_sample", True)),
                    clip_sample_range=float(getattr(c, "clip_sample_range", 1.0)),
                ),
            )
            self._cdp_sched_cache = (key, sched)
        return self._cdp_sched_cache[1]

    def conditional_sample(self, *args, **kwargs):
        if self.sampler is None:
            return super().conditional_sample(*args, **kwargs)
        orig = self.noise_scheduler
        self.noise_scheduler = _StepKwargFilter(self.sampling_scheduler(), self.sampler)  # upstream's loop reads it
        try:
            return super().conditional_sample(*args, **kwargs)
        finally:
            self.noise_scheduler = orig


class _StepKwargFilter:
    """The sampling scheduler as upstream's loop sees it: ``step(..., generator=g, **self.kwargs)`` keeps
    only the keyword arguments the solver's ``step`` accepts. ``generator`` is dropped silently when the
    solver has none (the ODE solvers are deterministic); other dropped keys (a DDPM/DDIM ``eta`` left in a
    config) are reported once. Everything else is the wrapped scheduler."""

    def __init__(self, sched, name: str):
        self._sched = sched
        self._name = name
        self._accepted = set(inspect.signature(sched.step).parameters)

    def __getattr__(self, item):
        return getattr(self._sched, item)

    def step(self, model_output, timestep, sample, *args, **kwargs):
        dropped = [k for k in kwargs if k not in self._accepted]
        loud = [k for k in dropped if k != "generator"]
        if loud:
            warnings.warn(f"sampler={self._name!r}: scheduler.step does not take {loud}; ignored", stacklevel=2)
        kwargs = {k: v for k, v in kwargs.items() if k not in dropped}
        return self._sched.step(model_output, timestep, sample, *args, **kwargs)


def finalize_class(cls: type, upstream: type) -> type:
    """Give ``cls.__init__`` the upstream signature plus the new keyword-only arguments (for
    ``inspect.signature`` / docs) and record the upstream base."""
    up = inspect.signature(upstream.__init__)
    mine = inspect.signature(ContractiveMixin.__init__)
    params = [p for p in up.parameters.values() if p.kind != p.VAR_KEYWORD]
    extra = [p.replace(kind=p.KEYWORD_ONLY) for p in mine.parameters.values()
             if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name != "self"]
    var_kw = [p for p in up.parameters.values() if p.kind == p.VAR_KEYWORD]
    sig = up.replace(parameters=params + extra + var_kw)

    def __init__(self, *args, **kwargs):
        ContractiveMixin.__init__(self, *args, **kwargs)

    __init__.__signature__ = sig  # type: ignore[attr-defined]
    __init__.__doc__ = ContractiveMixin.__doc__
    __init__.__qualname__ = f"{cls.__qualname__}.__init__"
    cls.__init__ = __init__
    cls.upstream_class = upstream
    return cls
