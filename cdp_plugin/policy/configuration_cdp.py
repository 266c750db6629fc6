"""Configuration of the Contractive Diffusion Policy (LeRobot policy type ``cdp``)."""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass, field, fields

from lerobot.configs.policies import PreTrainedConfig
from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
from lerobot.utils.constants import ACTION, OBS_STATE

from cdp_plugin.contraction import EXACT_MAX_DIM, LEGACY_VALUES, PREDICTION_TYPES, ContractionConfig
from cdp_plugin.samplers import SAMPLERS


def _with_contraction_fields(cls: type) -> type:
    """Add ``contraction_<name>`` for every :class:`ContractionConfig` field, before ``@dataclass`` runs.

    The fields the core gained later (:data:`LEGACY_VALUES`) get default ``None``: ``__post_init__`` resolves
    it to the core's default, or to the legacy value when the config was decoded from a saved file that
    predates the field (see :meth:`ContractiveDiffusionConfig._resolve_unset`).
    """
    ann = cls.__dict__["__annotations__"]
    for f in fields(ContractionConfig):
        name = f"contraction_{f.name}"
        legacy = f.name in LEGACY_VALUES
        ann[name] = f"{f.type} | None" if legacy else f.type
        setattr(cls, name, field(default=None if legacy else f.default, metadata=f.metadata))
    return cls


def _decoded_from_file() -> bool:
    """Whether this config is being built by draccus from a dict (a config.json / train_config.json, or CLI
    args): LeRobot's only way to load a saved config. A Python constructor call is not."""
    frame = sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        if code.co_name == "decode_dataclass" and "draccus" in code.co_filename:
            return True
        frame = frame.f_back
    return False


@PreTrainedConfig.register_subclass("cdp")
@dataclass
@_with_contraction_fields
class ContractiveDiffusionConfig(DiffusionConfig):
    """LeRobot's ``DiffusionConfig`` plus the contraction penalty and a deterministic ODE sampler.

    Everything ``diffusion`` accepts works unchanged (``--policy.horizon``, ``--policy.down_dims``, ...).
    Defaults that differ from ``diffusion`` follow the paper where LeRobot allows:

    * ``prediction_type="sample"`` (x0 prediction, as the official code); ``"epsilon"`` and
      ``"v_prediction"`` are supported too — the penalty is always formed on the implied x0-Jacobian.
    * ``sampler="dpmsolver++"`` with ``num_inference_steps=10`` (deterministic DPM-Solver++(2M));
      ``"ddim"`` (eta = 0) and ``"ddpm"`` (the training schedule stepped stochastically) are selectable;
      every sampler is built from the training scheduler's config
      (:func:`cdp_plugin.samplers.make_scheduler`).
    * the cosine (``squaredcos_cap_v2``) schedule LeRobot already uses.

    Contraction fields ``--policy.contraction_<name>``: one per field of
    :class:`cdp_plugin.contraction.ContractionConfig` (generated from it: same defaults and docs, listed
    in the README's table; ``contraction_normalization`` and ``contraction_threshold`` default to ``None``
    = the core's default, or the legacy value for a config saved before they existed). Plus the LeRobot-only
    ``contraction_diag_every``: every N training steps, log Lanczos estimates of lambda_max / lambda_min of
    sym J_x0 on ``contraction_diag_samples`` samples (0 disables).
    """

    prediction_type: str = "sample"
    num_inference_steps: int | None = 10
    sampler: str = "dpmsolver++"

    contraction_diag_every: int = 50
    contraction_diag_samples: int = 4
    # + contraction_<name> for every ContractionConfig field (added by _with_contraction_fields)

    def __post_init__(self):
        try:
            self._post_init()
        except ValueError as e:
            # draccus replaces the message by "Couldn't instantiate class ...": say it once, plainly, on
            # stderr
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
        if self.num_inference_steps is not None and not (
            1 <= self.num_inference_steps <= self.num_train_timesteps
        ):
            raise ValueError(
                f"`num_inference_steps` must be in [1, num_train_timesteps={self.num_train_timesteps}]. "
                f"Got {self.num_inference_steps}."
            )
        if self.n_action_steps > self.horizon - self.n_obs_steps + 1:
            raise ValueError(
                f"`n_action_steps` ({self.n_action_steps}) must be <= horizon - n_obs_steps + 1 "
                f"({self.horizon - self.n_obs_steps + 1})."
            )
        self._resolve_unset()
        if self.contraction_diag_every < 0 or self.contraction_diag_samples < 1:
            raise ValueError("`contraction_diag_every` must be >= 0 and `contraction_diag_samples` >= 1.")
        # validates the contraction fields with clear messages; the loss's own estimator, weight and adaptive
        # default fill the unset ones, so a saved config says what trained
        resolved = self.contraction_config()
        for name in ("estimator", "weight", "adaptive_target", "adaptive_every"):
            setattr(self, f"contraction_{name}", getattr(resolved, name))

    def _resolve_unset(self) -> None:
        """Fill the ``None`` contraction fields: a config decoded from a saved file (it carries features)
        that predates them keeps its meaning (legacy values, said in one warning); any other gets the core's
        defaults."""
        unset = [k for k in LEGACY_VALUES if getattr(self, f"contraction_{k}") is None]
        if not unset:
            return
        saved = bool(self.input_features or self.output_features) and _decoded_from_file()
        defaults = {f.name: f.default for f in fields(ContractionConfig)}
        for k in unset:
            setattr(self, f"contraction_{k}", LEGACY_VALUES[k] if saved else defaults[k])
        if saved:
            warnings.warn(
                "cdp config saved without "
                + ", ".join(f"contraction_{k}" for k in unset)
                + ": loaded with the "
                "meaning it was trained with ("
                + ", ".join(f"contraction_{k}={LEGACY_VALUES[k]!r}" for k in unset)
                + "); new configs default to "
                + ", ".join(f"{defaults[k]!r}" for k in unset)
                + " (README: contraction fields)",
                UserWarning,
                stacklevel=2,
            )

    def contraction_config(self) -> ContractionConfig:
        """The framework-agnostic :class:`ContractionConfig` these ``contraction_<name>`` fields describe."""
        kwargs = {f.name: getattr(self, f"contraction_{f.name}") for f in fields(ContractionConfig)}
        kwargs["noise_window"] = tuple(kwargs["noise_window"])
        try:
            return ContractionConfig(**kwargs)
        except ValueError as e:
            raise ValueError(
                f"invalid cdp contraction setting: {e} (set it with --policy.contraction_*)"
            ) from None

    def validate_features(self) -> None:
        if ACTION not in self.output_features:
            raise ValueError(
                f"cdp needs an '{ACTION}' output feature; "
                f"the dataset/env provides {sorted(self.output_features)}"
            )
        if OBS_STATE not in self.input_features:
            raise ValueError(
                f"cdp needs an '{OBS_STATE}' input feature; "
                f"the dataset/env provides {sorted(self.input_features)}"
            )
        super().validate_features()
        D = self.horizon * self.action_feature.shape[0]
        if self.contraction_estimator == "exact" and self.contraction_loss != "none" and D > EXACT_MAX_DIM:
            raise ValueError(
                f"contraction_estimator='exact' builds the full Jacobian and is limited to "
                f"D <= {EXACT_MAX_DIM}; "
                f"here D = horizon * action_dim = {self.horizon} * {self.action_feature.shape[0]} = {D}. "
                "Use 'fd_probe' or 'hutchinson' (frobenius) or 'lanczos' (hinge)."
            )
