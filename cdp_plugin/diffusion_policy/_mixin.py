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
  runs **once**, the post-hook splits the output and hands the parent only its own rows. The rows and the
  penalty come from the core's two entry points, :func:`cdp_plugin.contraction.penalty_rows` and
  :func:`cdp_plugin.contraction.penalty_from_outputs` (the same calls as the LeRobot policy), on the
  *implied x0 Jacobian* for the scheduler's ``prediction_type`` (``epsilon`` or ``sample``), with
  ``alpha_t, sigma_t`` of the training scheduler.
* Networks with active dropout (the transformer policies) and the double-backward estimators
  (``hutchinson``, ``exact``, ``lanczos`` hinge) give ``penalty_from_outputs`` a denoiser callable on the
  captured inputs instead, with dropout disabled for the penalty's own forward passes (a finite difference
  across two different dropout masks would be meaningless).
* Only the **action** channels are perturbed and penalised. In upstream's inpainting mode the trajectory
  is ``cat([action, obs], -1)`` (B, T, Da + Do); the probe is zero on the obs channels and the residual is
  read on the action channels, i.e. the penalty acts on the action-action block of the Jacobian.
* Under ``torch.no_grad()`` (the workspaces' validation loop) the parent's loss is returned unchanged.
"""

from __future__ import annotations

import contextlib
import inspect
import warnings
from dataclasses import fields
from typing import Any

import torch
from torch import Tensor, nn

from cdp_plugin.contraction import (
    ContractionConfig,
    PenaltyRows,
    StepGrid,
    dual_ascent_weight,
    penalty_from_outputs,
    penalty_rows,
    steering_violation_share,
)
from cdp_plugin.samplers import SAMPLERS, alpha_sigma

# sampler=None deploys upstream's own noise_scheduler: the SAMPLERS name of the same update
_UPSTREAM_SAMPLER = {"DDPMScheduler": "ddpm", "DDIMScheduler": "ddim"}
SAMPLER_CHOICES = (None, *SAMPLERS)  # None: upstream's own noise_scheduler
UPSTREAM_PREDICTION_TYPES = ("epsilon", "sample")

# constructor keyword -> ContractionConfig field: every field, prefixed (ContractionConfig is the source)
CONTRACTION_KWARGS: dict[str, str] = {f"contraction_{f.name}": f.name for f in fields(ContractionConfig)}


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
        if (
            isinstance(m, nn.modules.dropout._DropoutNd)
            and m.p > 0
            or isinstance(m, nn.MultiheadAttention)
            and m.dropout > 0
        ):
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


# The adaptive gamma's buffer: the one key an adaptive policy's state_dict adds to upstream's (upstream's class
# loads such a state_dict with strict=False; a fixed gamma adds nothing).
ADAPTIVE_BUFFER = "cdp_contraction_weight"


class _Capture:
    """One-shot forward hooks on the denoiser: record (and for fd_probe, extend) one call's inputs."""

    def __init__(self, owner: ContractiveMixin, fused: bool, measure: bool = True):
        self.owner = owner
        self.fused = fused
        self.measure = measure  # the adaptive fd_probe measures its share at this step (its prepass cadence)
        self.calls = 0
        self.args: tuple = ()
        self.kwargs: dict = {}
        self.B = 0
        self.rows: PenaltyRows | None = None
        self.grid: StepGrid | None = None
        self.y: Tensor | None = None
        self.y_pert: Tensor | None = None
        self.t: Tensor | None = None
        self.alpha: Tensor | None = None  # alpha_t, sigma_t of the captured timesteps (one lookup per step)
        self.sigma: Tensor | None = None
        self.nested = False  # the core's own calls from inside ``pre`` (fd_ritz's Krylov steps)

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
        if self.nested:
            return None
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
        o = self.owner
        T = int(o.noise_scheduler.config.num_train_timesteps)
        sl = o._cdp_action_slice(x)
        self.grid = grid = o._cdp_step_grid()
        ccfg = o.contraction
        prepass = ccfg.active and ccfg.ritz_prepass
        alpha, sigma = alpha_sigma(o.noise_scheduler, self.t)
        self.alpha, self.sigma = alpha.to(x.dtype), sigma.to(x.dtype)
        self.nested = True
        try:
            self.rows = rows = penalty_rows(
                x[..., sl].detach(),
                ccfg,
                self.t.float() / T,
                timesteps=self.t,
                grid=grid,
                fn=self.denoiser(x, sl) if prepass else None,
                alpha=self.alpha if prepass else None,
                sigma=self.sigma if prepass else None,
                prediction_type=o.noise_scheduler.config.prediction_type,
                measure=self.measure,
            )
        finally:
            self.nested = False
        if not self.fused or not rows.extra:
            return None
        idx = rows.idx
        x_pert = x[idx].clone()
        x_pert[..., sl] = rows.x
        new_args = [torch.cat([x, x_pert], 0)]
        for a in args[1:]:
            new_args.append(self._cat(a, self._rows(a, idx)))
        new_kwargs = {k: self._cat(a, self._rows(a, idx)) for k, a in kwargs.items()}
        return tuple(new_args), new_kwargs

    def post(self, module, args, kwargs, out):
        if self.nested or self.calls > 1 or not self.fused or self.rows is None or not self.rows.extra:
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
    attributes: the state_dict, the optimiser's parameter list and EMA are those of the upstream class,
    except with ``contraction_adaptive_target`` set, whose dual variable gamma is the scalar buffer
    ``cdp_contraction_weight`` (in the state_dict, so a resumed workspace continues it).

    Keyword Args:
        contraction_<name>: every field of :class:`cdp_plugin.contraction.ContractionConfig`, with its
            default and meaning (the table in the README; ``contraction_weight=0`` gives upstream's loss).
        sampler: ``None`` (default: sample with the configured ``noise_scheduler``, as upstream),
            ``"ddpm"`` (the training schedule stepped stochastically), ``"ddim"`` or ``"dpmsolver++"``
            (DPM-Solver++(2M)); every sampler is built by
            :func:`cdp_plugin.samplers.make_scheduler` from the training scheduler's config and used by
            upstream's own ``conditional_sample`` loop with ``num_inference_steps`` steps (read at call
            time, so ``policy.num_inference_steps = 16`` after loading works as upstream).

    After each training ``compute_loss``, ``self.last_contraction`` holds floats ``loss``,
    ``diffusion_loss``, ``penalty``, ``weight`` and the estimator's diagnostics.
    """

    def __init__(self, *args, sampler: str | None = None, **kwargs):
        # validate before the (possibly heavy) upstream constructor runs
        mine = {CONTRACTION_KWARGS[k]: _plain(kwargs.pop(k)) for k in list(kwargs) if k in CONTRACTION_KWARGS}
        cfg = ContractionConfig(**mine)
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
        if cfg.adaptive:
            self.register_buffer(ADAPTIVE_BUFFER, torch.tensor(float(cfg.weight)))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
        """An upstream (or fixed-gamma) state_dict has no ``cdp_contraction_weight``: it loads strictly into
        the adaptive policy, whose gamma then starts at ``contraction_weight`` (0 with the default)."""
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing, unexpected, errors)
        key = prefix + ADAPTIVE_BUFFER
        if key in missing:
            missing.remove(key)

    def _cdp_weight(self) -> float:
        """gamma of the next training step: ``contraction_weight`` or the adaptive buffer's value."""
        return float(self.cdp_contraction_weight) if self.contraction.adaptive else self.contraction.weight

    # ------------------------------------------------------------------------------------------------
    # training
    # ------------------------------------------------------------------------------------------------
    def _cdp_action_slice(self, x: Tensor) -> slice:
        """Channels of the trajectory that are actions (upstream puts them first)."""
        da = int(getattr(self, "action_dim", x.shape[-1]))
        return slice(0, da) if x.shape[-1] > da else slice(0, None)

    def _cdp_step_grid(self) -> StepGrid | None:
        """The deployment sampler's grid at ``num_inference_steps`` (read now, as upstream's loop does), or
        ``None`` when the contraction settings need neither a step window nor per-step thresholds."""
        c = self.contraction
        if c.step_window == (0.0, 1.0) and c.threshold != "sampler":
            return None
        k = getattr(self, "num_inference_steps", None)
        key = (self.sampler, k, id(self.noise_scheduler))
        cache = getattr(self, "_cdp_grid_cache", None)
        if cache is None or cache[0] != key:
            name = self.sampler or _UPSTREAM_SAMPLER.get(type(self.noise_scheduler).__name__)
            if name is None:
                raise ValueError(
                    f"contraction_threshold='sampler' / contraction_step_window: no step formula for "
                    f"{type(self.noise_scheduler).__name__}; set sampler= or contraction_threshold=alpha"
                )
            cache = (key, StepGrid.from_sampler(self.noise_scheduler, name, k))
            self._cdp_grid_cache = cache
        return cache[1]

    def _cdp_fused(self) -> bool:
        """Probe rows ride in the parent's forward pass (not with active dropout: a finite difference
        across two dropout masks would be meaningless)."""
        return self.contraction.fused and not _active_dropout(self.model)

    def compute_loss(self, batch, *args, **kwargs):
        cfg = self.contraction
        if not torch.is_grad_enabled() or not cfg.active:
            return super().compute_loss(batch, *args, **kwargs)
        step = self._cdp_step
        self._cdp_step += 1
        if not cfg.applies_at_step(step):
            loss = super().compute_loss(batch, *args, **kwargs)
            self.last_contraction = {
                "loss": float(loss.detach()),
                "diffusion_loss": float(loss.detach()),
                "penalty": 0.0,
                "weight": self._cdp_weight(),
                "step": float(step),
            }
            return loss

        fused = self._cdp_fused()
        cap = _Capture(self, fused, measure=cfg.measures_share_at_step(step))
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
        y, y_rows = (cap.y[..., sl], cap.y_pert[..., sl]) if cap.y is not None else (None, None)
        penalty, diag = penalty_from_outputs(
            cap.rows,
            x[..., sl].detach(),
            cap.alpha,
            cap.sigma,
            pred,
            cfg,
            y=y,
            y_rows=y_rows,
            fn=cap.denoiser(x, sl),
            timesteps=cap.t,
            grid=cap.grid,
        )
        weight = self._cdp_weight()
        loss = diffusion_loss + weight * penalty
        if (
            cfg.adaptive and (v := steering_violation_share(diag)) is not None
        ):  # dual ascent: gamma of the next step
            self.cdp_contraction_weight.fill_(dual_ascent_weight(weight, v, cfg))
        self.last_contraction = {
            "loss": float(loss.detach()),
            "diffusion_loss": float(diffusion_loss.detach()),
            "penalty": float(penalty.detach()),
            "weight": weight,
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
        from cdp_plugin.samplers import make_scheduler

        key = (self.sampler, id(self.noise_scheduler))
        if self._cdp_sched_cache is None or self._cdp_sched_cache[0] != key:
            sched = make_scheduler(self.sampler, self.noise_scheduler)  # from the training scheduler's config
            self._cdp_sched_cache = (key, sched)
        return self._cdp_sched_cache[1]

    def conditional_sample(self, *args, **kwargs):
        if self.sampler is None:
            return super().conditional_sample(*args, **kwargs)
        orig = self.noise_scheduler
        self.noise_scheduler = _StepKwargFilter(
            self.sampling_scheduler(), self.sampler
        )  # upstream's loop reads it
        try:
            return super().conditional_sample(*args, **kwargs)
        finally:
            self.noise_scheduler = orig


def _mixin_signature() -> inspect.Signature:
    """``ContractiveMixin.__init__``'s signature: one keyword-only ``contraction_<name>`` per
    :class:`ContractionConfig` field with its default, then ``sampler`` (for ``inspect`` / hydra / docs)."""
    P = inspect.Parameter
    params = [P("self", P.POSITIONAL_OR_KEYWORD), P("args", P.VAR_POSITIONAL)]
    params += [
        P(k, P.KEYWORD_ONLY, default=f.default) for k, f in zip(CONTRACTION_KWARGS, fields(ContractionConfig))
    ]
    params += [P("sampler", P.KEYWORD_ONLY, default=None), P("kwargs", P.VAR_KEYWORD)]
    return inspect.Signature(params)


ContractiveMixin.__init__.__signature__ = _mixin_signature()  # type: ignore[attr-defined]


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
            warnings.warn(
                f"sampler={self._name!r}: scheduler.step does not take {loud}; ignored", stacklevel=2
            )
        kwargs = {k: v for k, v in kwargs.items() if k not in dropped}
        return self._sched.step(model_output, timestep, sample, *args, **kwargs)


def finalize_class(cls: type, upstream: type) -> type:
    """Give ``cls.__init__`` the upstream signature plus the new keyword-only arguments (for
    ``inspect.signature`` / docs) and record the upstream base."""
    up = inspect.signature(upstream.__init__)
    mine = inspect.signature(ContractiveMixin.__init__)
    params = [p for p in up.parameters.values() if p.kind != p.VAR_KEYWORD]
    extra = [
        p.replace(kind=p.KEYWORD_ONLY)
        for p in mine.parameters.values()
        if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name != "self"
    ]
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
