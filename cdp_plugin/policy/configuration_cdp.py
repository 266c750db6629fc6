"""Configuration of the Contractive Diffusion Policy (LeRobot policy type ``cdp``)."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, fields

from lerobot.configs.policies import PreTrainedConfig
from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
from lerobot.utils.constants import ACTION, OBS_STATE

from cdp_plugin.contraction import EXACT_MAX_DIM, PREDICTION_TYPES, ContractionConfig
from cdp_plugin.samplers import SAMPLERS, ScheduleConfig


@PreTrainedConfig.register_subclass("cdp")
@dataclass
class ContractiveDiffusionConfig(DiffusionConfig):
    """LeRobot's ``DiffusionConfig`` plus the contraction penalty and a deterministic ODE sampler.

    Everything ``diffusion`` accepts works unchanged (``--policy.horizon``, ``--policy.down_dims``, ...).
    Defaults that differ from ``diffusion`` follow the paper where LeRobot allows:

    * ``prediction_type="sample"`` (x0 prediction, as the official code); ``"epsilon"`` and
      ``"v_prediction"`` are supported too — the penalty is always formed on the implied x0-Jacobian.
    * ``sampler="dpmsolver++"`` with ``num_inference_steps=10`` (deterministic DPM-Solver++(2M));
      ``"ddim"`` (eta = 0) and ``"ddpm"`` (LeRobot's stochastic loop over ``noise_scheduler_type``) are
      selectable.
    * the cosine (``squaredcos_cap_v2``) schedule LeRobot already uses.

    Contraction fields (``--policy.contraction_*``), see :class:`cdp_plugin.contraction.ContractionConfig`:

    * ``contraction_loss``: ``frobenius`` (default) | ``hinge`` | ``none``.
    * ``contraction_estimator``: ``fd_probe`` (default: first-order probe riding in the denoising forward
      pass) | ``hutchinson`` (official symmetric form, double backward) | ``exact`` (D <= 256) for
      frobenius; ``lanczos`` | ``exact`` for hinge.
    * ``contraction_weight`` gamma (0.1), ``contraction_margin`` beta (0.1), ``contraction_margin_mode``.
    * ``contraction_num_probes``, ``contraction_probe``, ``contraction_fd_step``, ``contraction_lanczos_iters``.
    * cost controls: ``contraction_batch_fraction``, ``contraction_every``, ``contraction_noise_window``.
    * ``contraction_diag_every``: every N training steps, log Lanczos estimates of lambda_max / lambda_min of
      sym J_x0 on ``contraction_diag_samples`` samples (0 disables).
    """

    prediction_type: str = "sample"
    num_inference_steps: int | None = 10
    sampler: str = "dpmsolver++"

    contraction_loss: str = "frobenius"
    contraction_estimator: str = "fd_probe"
    contraction_weight: float = 0.1
    contraction_margin: float = 0.1
    contraction_margin_mode: str = "relative"
    contraction_num_probes: int = 1
    contraction_probe: str = "rademacher"
    contraction_fd_step: float = 1e-3
    contraction_lanczos_iters: int = 8
    contraction_batch_fraction: float = 0.25
    contraction_every: int = 1
    contraction_noise_window: tuple[float, float] = field(default_factory=lambda: (0.0, 1.0))
    contraction_residual_weight: str = "auto"
    contraction_diag_every: int = 50
    contraction_diag_samples: int = 4

    def __post_init__(self):
        try:
            self._post_init()
        except ValueError as e:
            # draccus replaces the message by "Couldn't instantiate class ...": say it once, plainly, on stderr
            print(f"error: cdp config: {e}", file=sys.stderr)
            raise

    def _post_init(self) -> None:
        # LeRobot's DiffusionConfig only knows epsilon/sample; v-prediction is handled by this plugin.
        pred = self.prediction_type
        if pred not in PREDICTION_TYPES:
            raise ValueError(f"`prediction_type` must be one of {list(PREDICTION_TYPES)}. Got {pred!r}.")
        self.prediction_type = "sample" if pred == "v_prediction" else pred
        try:
            super().__post_init__()
        finally:
            self.prediction_type = pred
        if self.sampler not in SAMPLERS:
            raise ValueError(f"`sampler` must be one of {list(SAMPLERS)}. Got {self.sampler!r}.")
        if self.num_inference_steps is not None and not (1 <= self.num_inference_steps <= self.num_train_timesteps):
            raise ValueError(
                f"`num_inference_steps` must be in [1, num_train_timesteps={self.num_train_timesteps}]. "
                f"Got {self.num_inference_steps}."
            )
        if self.n_action_steps > self.horizon - self.n_obs_steps + 1:
            raise ValueError(
                f"`n_action_steps` ({self.n_action_steps}) must be <= horizon - n_obs_steps + 1 "
                f"({self.horizon - self.n_obs_steps + 1})."
            )
        if self.contraction_diag_every < 0 or self.contraction_diag_samples < 1:
            raise ValueError("`contraction_diag_every` must be >= 0 and `contraction_diag_samples` >= 1.")
        self.contraction_config()  # validates the contraction fields with clear messages

    def contraction_config(self) -> ContractionConfig:
        """The framework-agnostic :class:`ContractionConfig` these fields describe (``contraction_<name>``)."""
        kwargs = {f.name: getattr(self, f"contraction_{f.name}") for f in fields(ContractionConfig)}
        kwargs["noise_window"] = tuple(kwargs["noise_window"])
        try:
            return ContractionConfig(**kwargs)
        except ValueError as e:
            raise ValueError(f"invalid cdp contraction setting: {e} (set it with --policy.contraction_*)") from None

    def schedule_config(self) -> ScheduleConfig:
        return ScheduleConfig(
            num_train_timesteps=self.num_train_timesteps,
            beta_schedule=self.beta_schedule,
            beta_start=self.beta_start,
            beta_end=self.beta_end,
            prediction_type=self.prediction_type,
            clip_sample=self.clip_sample,
            clip_sample_range=self.clip_sample_range,
        )

    def validate_features(self) -> None:
        if ACTION not in self.output_features:
            raise ValueError(
                f"cdp needs an '{ACTION}' output feature; the dataset/env provides {sorted(self.output_features)}"
            )
        if OBS_STATE not in self.input_features:
            raise ValueError(
                f"cdp needs an '{OBS_STATE}' input feature; the dataset/env provides {sorted(self.input_features)}"
            )
        super().validate_features()
        D = self.horizon * self.action_feature.shape[0]
        if self.contraction_estimator == "exact" and self.contraction_loss != "none" and D > EXACT_MAX_DIM:
            raise ValueError(
                f"contraction_estimator='exact' builds the full Jacobian and is limited to D <= {EXACT_MAX_DIM}; "
                f"here D = horizon * action_dim = {self.horizon} * {self.action_feature.shape[0]} = {D}. "
                "Use 'fd_probe' or 'hutchinson' (frobenius) or 'lanczos' (hinge)."
            )
