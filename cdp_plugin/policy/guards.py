"""Reliability guards of the ``cdp`` policy: nothing non-finite is trained on, saved, loaded or served.

Pure checks (called from :mod:`cdp_plugin.policy.modeling_cdp`):

* :func:`check_finite_loss` -- a non-finite training loss stops training with an error naming the LeRobot
  step and the term (``diffusion_loss``, ``contraction_penalty`` or ``total``), *before* the optimiser step,
  so the last checkpoint still holds the last finite weights.
* :func:`check_finite_tensors` -- weights (before a save, after a load) must be finite; the error names the
  first offending tensor.
* :func:`check_observation` / :func:`check_actions` -- ``select_action`` refuses a missing key, a wrong
  shape or a non-finite / absurd (|x| > :data:`OBS_ABS_LIMIT` after normalisation) observation, converts
  float64 / integer inputs to the policy dtype, and never returns a non-finite action.

``lerobot-train`` hooks (:func:`install_train_hooks`): LeRobot 0.6.1 has no callback for resume, dataset
loading, checkpoint links or Ctrl-C, so at plugin import, *only when* ``lerobot.scripts.lerobot_train`` is
the running script, five module attributes of that script are wrapped. Each wrapper only acts when the run
trains a ``cdp`` policy and otherwise calls LeRobot's function unchanged:

=============================== =========================================================================
``make_train_eval_datasets``    a missing / empty ``--dataset.root`` (or no local copy while offline)
                                raises one line naming the folder instead of the Hub's
                                ``OfflineModeIsEnabled`` traceback
``make_optimizer_and_scheduler`` on ``--resume=true``: restores ``ContractiveDiffusionModel._train_step``
                                from the checkpoint's ``training_step.json`` (``contraction_every`` and the
                                diagnostics continue) and warns when ``--steps`` differs from the
                                checkpoint's (LeRobot rebuilds the LR schedule for the new total);
                                says once that ``use_amp`` on CPU means bfloat16 autocast
``update_last_checkpoint``      replaces ``checkpoints/last`` atomically (``os.replace`` of a new link), so
                                a kill at any instant leaves a ``last`` that names a complete checkpoint
``train``                       Ctrl-C prints how to resume (no traceback, exit 130); a cdp guard error
                                (non-finite loss / weights, bad dataset) prints one ``error:`` line, exit 1
=============================== =========================================================================
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import Tensor

logger = logging.getLogger(__name__)

# A normalised observation (LeRobot's MIN_MAX maps the training range to [-1, 1], MEAN_STD to unit std)
# larger than this in magnitude is not a measurement the policy can act on: refuse it.
OBS_ABS_LIMIT = 1e6
TRAIN_MODULE = "lerobot.scripts.lerobot_train"
_HOOKED = "_cdp_guard_hook"


class NonFiniteError(FloatingPointError):
    """A loss, weight or action of a ``cdp`` policy is NaN or infinite."""


class ObservationError(ValueError):
    """An observation handed to ``select_action`` is missing a key, mis-shaped or non-finite."""


class DatasetNotFoundError(FileNotFoundError):
    """``--dataset.root`` is missing or holds no LeRobot dataset."""


GUARD_ERRORS = (NonFiniteError, ObservationError, DatasetNotFoundError)


# --------------------------------------------------------------------------------------------- training
def check_finite_loss(step: int, terms: Mapping[str, Tensor], hint: str = "") -> None:
    """Raise :class:`NonFiniteError` naming ``step`` and the first non-finite entry of ``terms``.

    ``terms`` is ordered (e.g. ``diffusion_loss``, ``contraction_penalty``, ``total``): the first non-finite
    one is the cause. One fused ``isfinite`` on the total decides whether to look further (one sync).
    """
    if torch.isfinite(torch.stack([v.detach().float().reshape(()) for v in terms.values()])).all():
        return
    name, value = next((k, v) for k, v in terms.items() if not torch.isfinite(v).all())
    raise NonFiniteError(
        f"cdp: non-finite {name} ({value.item()}) at training step {step}; training stopped before this "
        f"optimiser update, so the last checkpoint keeps finite weights. {hint}".rstrip()
    )


def check_finite_tensors(named: Iterable[tuple[str, Tensor]], where: str) -> None:
    """Raise :class:`NonFiniteError` if any tensor is NaN / inf; names the first one and ``where``."""
    bad = [
        (k, int((~torch.isfinite(t)).sum()))
        for k, t in named
        if t.is_floating_point() and not torch.isfinite(t).all()
    ]
    if bad:
        k, n = bad[0]
        more = f" (and {len(bad) - 1} more tensors)" if len(bad) > 1 else ""
        raise NonFiniteError(f"cdp: {where}: '{k}' holds {n} non-finite values{more}")


# -------------------------------------------------------------------------------------------- inference
def _expected_keys(config) -> dict[str, tuple[int, ...]]:
    return {k: tuple(f.shape) for k, f in config.input_features.items()}


def check_observation(config, batch: Mapping, dtype: torch.dtype, device: torch.device) -> dict:
    """Validate the observation of one ``select_action`` call; return it with tensors in ``dtype``.

    Every input feature of the policy must be present with shape ``(B, *feature_shape)`` (or
    ``(B, n_obs_steps, *feature_shape)``), one ``B`` for all keys, finite, and within
    ``|x| <= OBS_ABS_LIMIT`` (the policy sees normalised values). float64 / integer inputs are cast to
    ``dtype`` (not rejected). Keys the policy does not use pass through untouched.
    """
    expected = _expected_keys(config)
    missing = [k for k in expected if k not in batch]
    if missing:
        raise ObservationError(
            f"cdp: observation is missing {missing}; the policy was trained on {sorted(expected)} and got "
            f"{sorted(batch)} (check the env/robot features and --rename_map)"
        )
    out = dict(batch)
    sizes = {}
    for key, shape in expected.items():
        x = batch[key]
        if not isinstance(x, Tensor):
            try:
                x = torch.as_tensor(x)
            except (TypeError, ValueError, RuntimeError):
                raise ObservationError(
                    f"cdp: observation '{key}' must be a tensor or array, got {type(x).__name__}"
                ) from None
        if tuple(x.shape[-len(shape) :]) != shape or x.dim() not in (len(shape) + 1, len(shape) + 2):
            raise ObservationError(
                f"cdp: observation '{key}' has shape {tuple(x.shape)}; the policy expects "
                f"(batch, {', '.join(map(str, shape))})"
                f" -- the feature shape {shape} it was trained on"
            )
        if key in config.image_features and not x.is_floating_point():
            raise ObservationError(
                f"cdp: image '{key}' is {x.dtype}; pass float images in [0, 1] "
                "(LeRobot's preprocess_observation does)"
            )
        if x.dtype != dtype:
            x = x.to(dtype)
        if not torch.isfinite(x).all():
            raise ObservationError(f"cdp: observation '{key}' holds NaN or inf values; refusing to act on it")
        peak = x.abs().max().item() if x.numel() else 0.0
        if peak > OBS_ABS_LIMIT:
            raise ObservationError(
                f"cdp: observation '{key}' reaches |x| = {peak:.3g} after normalisation "
                f"(limit {OBS_ABS_LIMIT:g}); "
                "the training data spans about [-1, 1]: check the sensor and the units"
            )
        sizes[key] = x.shape[0]
        out[key] = x.to(device)
    if len(set(sizes.values())) > 1:
        raise ObservationError(f"cdp: observation keys disagree on the batch size: {sizes}")
    return out


def check_actions(actions: Tensor, weights: Iterable[tuple[str, Tensor]] | None = None) -> Tensor:
    """``actions`` if finite, else raise :class:`NonFiniteError` (naming a non-finite weight if any)."""
    if torch.isfinite(actions).all():
        return actions
    cause = "the observation drove the network out of range"
    if weights is not None:
        bad = next((k for k, t in weights if t.is_floating_point() and not torch.isfinite(t).all()), None)
        if bad is not None:
            cause = f"the policy's weight '{bad}' is non-finite (corrupt checkpoint)"
    raise NonFiniteError(f"cdp: the policy produced a non-finite action ({cause}); no action returned")


# ------------------------------------------------------------------------------------ lerobot-train hooks
def _is_cdp(cfg) -> bool:
    policy = getattr(cfg, "policy", None)
    return getattr(policy, "type", None) == "cdp"


def dataset_problem(root: str | Path | None, repo_id: str) -> str | None:
    """One-line description of why ``root`` is not a usable LeRobot dataset, or None if it looks fine."""
    if root is None:
        return None
    root = Path(root)
    hint = f"make one (e.g. python -m cdp_plugin.data.generate pointmaze --out {root}) or fix --dataset.root"
    if not root.exists():
        return f"the dataset folder --dataset.root={root} does not exist; {hint}"
    info = root / "meta" / "info.json"
    if not info.is_file():
        return f"--dataset.root={root} holds no LeRobot dataset (no meta/info.json); {hint}"
    try:
        meta = json.loads(info.read_text())
    except (OSError, ValueError) as e:
        return f"{info} is not readable JSON ({e}); the dataset is corrupt, write it again"
    if int(meta.get("total_episodes", 0) or 0) == 0 or int(meta.get("total_frames", 0) or 0) == 0:
        return (
            f"the dataset at --dataset.root={root} is empty (0 episodes); record or generate episodes first"
        )
    return None


def _wrap_datasets(fn):
    @functools.wraps(fn)
    def make_train_eval_datasets(cfg, *args, **kwargs):
        if not _is_cdp(cfg):
            return fn(cfg, *args, **kwargs)
        problem = dataset_problem(cfg.dataset.root, cfg.dataset.repo_id)
        if problem:
            raise DatasetNotFoundError(f"cdp: {problem}")
        try:
            return fn(cfg, *args, **kwargs)
        except ConnectionError as e:  # huggingface_hub's OfflineModeIsEnabled is a ConnectionError
            if type(e).__name__ != "OfflineModeIsEnabled":
                raise
            where = cfg.dataset.root or f"$HF_LEROBOT_HOME/{cfg.dataset.repo_id}"
            raise DatasetNotFoundError(
                f"cdp: no local copy of dataset '{cfg.dataset.repo_id}' at {where} and the Hub is offline "
                "(HF_HUB_OFFLINE=1); pass --dataset.root=<folder of a LeRobot dataset>"
            ) from None

    return make_train_eval_datasets


def restore_train_step(policy, checkpoint_dir: str | Path) -> int | None:
    """Set the plugin's step counter (``_train_step``) from ``checkpoint_dir/training_state``; return it."""
    model = getattr(policy, "diffusion", None)
    if model is None or not hasattr(model, "_train_step"):
        return None
    step = json.loads((Path(checkpoint_dir) / "training_state" / "training_step.json").read_text())["step"]
    model._train_step = int(step)
    return int(step)


def lr_schedule_warning(cfg) -> str | None:
    """A warning when a resumed run's ``--steps`` differs from the checkpoint's (LR schedule changes)."""
    saved = Path(cfg.checkpoint_path) / "pretrained_model" / "train_config.json"
    try:
        old = json.loads(saved.read_text()).get("steps")
    except (OSError, ValueError):
        return None
    if old is None or old == cfg.steps:
        return None
    return (
        f"cdp: resuming with --steps={cfg.steps} but the checkpoint was trained with --steps={old}: LeRobot "
        f"rebuilds the learning-rate schedule for {cfg.steps} steps, so the LR from here on differs from the "
        f"original run (pass --steps={old} to keep it)"
    )


def _wrap_optimizer(fn):
    @functools.wraps(fn)
    def make_optimizer_and_scheduler(cfg, policy, *args, **kwargs):
        out = fn(cfg, policy, *args, **kwargs)
        if not _is_cdp(cfg):
            return out
        if getattr(cfg, "resume", False) and getattr(cfg, "checkpoint_path", None):
            step = restore_train_step(policy, cfg.checkpoint_path)
            logger.info("cdp: resumed the contraction schedule at step %s", step)
            if (msg := lr_schedule_warning(cfg)) and out[1] is not None:
                logger.warning(msg)
        if cfg.policy.use_amp and str(cfg.policy.device).startswith("cpu"):
            logger.warning(
                "cdp: --policy.use_amp=true on CPU: lerobot-train autocasts to bfloat16 (torch's CPU "
                "autocast "
                "dtype); the fd_probe finite-difference step is raised to 0.05 under autocast"
            )
        return out

    return make_optimizer_and_scheduler


def atomic_update_last_checkpoint(checkpoint_dir: Path) -> Path:
    """Point ``checkpoints/last`` at ``checkpoint_dir`` with one atomic rename (never a missing link)."""
    checkpoint_dir = Path(checkpoint_dir)
    last = checkpoint_dir.parent / "last"
    tmp = checkpoint_dir.parent / f".last.{os.getpid()}"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(checkpoint_dir.relative_to(checkpoint_dir.parent))
    os.replace(tmp, last)
    return last


def _wrap_last(fn, run: dict):
    @functools.wraps(fn)
    def update_last_checkpoint(checkpoint_dir):
        return atomic_update_last_checkpoint(checkpoint_dir) if run.get("cdp") else fn(checkpoint_dir)

    return update_last_checkpoint


def resume_hint(output_dir: str | Path | None) -> str:
    """What to run to continue an interrupted ``lerobot-train`` run."""
    if output_dir is None:
        return (
            "resume with lerobot-train --resume=true "
            "--config_path=<output_dir>/checkpoints/last/pretrained_model/train_config.json"
        )
    last = Path(output_dir) / "checkpoints" / "last"
    if not last.exists():
        return (
            f"no checkpoint was written yet under {output_dir}; start again "
            "(remove the folder or pick a new --output_dir)"
        )
    step = json.loads((last / "training_state" / "training_step.json").read_text()).get("step")
    return (
        f"the last complete checkpoint is step {step}; resume with: lerobot-train "
        f"--config_path={last / 'pretrained_model' / 'train_config.json'} --resume=true"
    )


def _wrap_train(fn, run: dict):
    @functools.wraps(fn)
    def train(*args, **kwargs):
        run.clear()
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt:
            if not run.get("cdp"):
                raise
            print(
                f"\ncdp: training interrupted (Ctrl-C); {resume_hint(run.get('output_dir'))}", file=sys.stderr
            )
            raise SystemExit(130) from None
        except GUARD_ERRORS as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(1) from None
        except FloatingPointError as e:
            if not (run.get("cdp") and str(e).startswith("cdp:")):
                raise
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(1) from None

    return train


def _record_run(fn, run: dict):
    @functools.wraps(fn)
    def make_train_eval_datasets(cfg, *args, **kwargs):
        run.update(cdp=_is_cdp(cfg), output_dir=getattr(cfg, "output_dir", None))
        return fn(cfg, *args, **kwargs)

    return make_train_eval_datasets


def _train_modules() -> list:
    mods = [sys.modules.get(TRAIN_MODULE)]
    main = sys.modules.get("__main__")
    if getattr(getattr(main, "__spec__", None), "name", None) == TRAIN_MODULE:
        mods.append(main)  # python -m lerobot.scripts.lerobot_train / accelerate launch -m ...
    return [m for m in mods if m is not None]


def install_train_hooks() -> int:
    """Wrap the hooks described in the module docstring in the running ``lerobot_train`` script(s).

    Does nothing (returns 0) unless ``lerobot.scripts.lerobot_train`` is already imported, i.e. unless
    this process is ``lerobot-train``; idempotent. Returns the number of modules hooked.
    """
    n = 0
    for mod in _train_modules():
        if getattr(mod.train, _HOOKED, False):
            continue
        run: dict = {}  # what the current train() call is about: {"cdp": bool, "output_dir": path}
        wrapped = {
            "make_train_eval_datasets": _record_run(_wrap_datasets(mod.make_train_eval_datasets), run),
            "make_optimizer_and_scheduler": _wrap_optimizer(mod.make_optimizer_and_scheduler),
            "update_last_checkpoint": _wrap_last(mod.update_last_checkpoint, run),
            "train": _wrap_train(mod.train, run),
        }
        for name, fn in wrapped.items():
            setattr(fn, _HOOKED, True)
            setattr(mod, name, fn)
        n += 1
    return n


# ------------------------------------------------------------------------------------ policy mix-in
class GuardedPolicyMixin:
    """Checks on ``DiffusionPolicy``: ``ContractiveDiffusionPolicy(GuardedPolicyMixin, DiffusionPolicy)``.

    * ``select_action`` / ``predict_action_chunk``: :func:`check_observation` in, :func:`check_actions` out.
    * ``save_pretrained``: refuses non-finite weights before anything is written.
    * ``from_pretrained``: validates the processor JSON next to the weights, loads a ``diffusion``
      checkpoint as a cdp warm start (with a warning), and ``_load_as_safetensor`` refuses a weights file
      that lacks a parameter or holds non-finite values (:mod:`cdp_plugin.policy.safe_load`).
    """

    def _obs(self, batch):
        p = next(self.parameters())
        return check_observation(self.config, batch, p.dtype, p.device)

    def select_action(self, batch, noise=None):
        return check_actions(super().select_action(self._obs(batch), noise=noise), self.named_parameters())

    def predict_action_chunk(self, batch, noise=None):
        return check_actions(
            super().predict_action_chunk(self._obs(batch), noise=noise), self.named_parameters()
        )

    def save_pretrained(self, save_directory, *, state_dict=None, **kwargs):
        tensors = state_dict if state_dict is not None else self.state_dict()
        check_finite_tensors(tensors.items(), f"refusing to save non-finite weights to {save_directory}")
        return super().save_pretrained(save_directory, state_dict=state_dict, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_name_or_path, *, config=None, **kwargs):
        from lerobot.configs.policies import PreTrainedConfig
        from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig

        from cdp_plugin.policy import safe_load

        # lerobot-eval / -rollout / the async server load the policy before its processors: validate them now
        hub = ("revision", "cache_dir", "force_download", "token", "local_files_only", "proxies")
        safe_load.validate_processor_files(
            pretrained_name_or_path, **{k: kwargs[k] for k in hub if k in kwargs}
        )
        if config is None:
            cfg_kwargs = {k: v for k, v in kwargs.items() if k != "strict"}
            config = PreTrainedConfig.from_pretrained(pretrained_name_or_path, **cfg_kwargs)
        if not isinstance(config, cls.config_class):
            if not isinstance(config, DiffusionConfig):
                raise TypeError(
                    f"cdp: {pretrained_name_or_path} is a '{config.type}' checkpoint; "
                    "ContractiveDiffusionPolicy "
                    "loads 'cdp' and 'diffusion' checkpoints"
                )
            logger.warning(
                "cdp: %s is a 'diffusion' checkpoint: loading it as a cdp warm start (weights and diffusion "
                "fields kept, cdp sampler defaults); for a saved cdp copy run: "
                "python -m cdp_plugin.policy.convert %s <dst>",
                pretrained_name_or_path,
                pretrained_name_or_path,
            )
            config = safe_load.cdp_config_from_diffusion(config)
        return super().from_pretrained(pretrained_name_or_path, config=config, **kwargs)

    @classmethod
    def _load_as_safetensor(cls, model, model_file, map_location, strict):
        """LeRobot's loader, after :func:`check_weights_file`; the adaptive gamma's buffer may be absent (a DP or
        fixed-gamma checkpoint: gamma starts at ``contraction_weight``), which is not logged as a missing key."""
        from lerobot.policies.utils import log_model_loading_keys
        from lerobot.utils.device_utils import resolve_safetensors_device
        from safetensors.torch import load_model

        from cdp_plugin.policy.safe_load import OPTIONAL_KEYS, check_weights_file

        check_weights_file(model, model_file)
        device = resolve_safetensors_device(map_location)
        missing, unexpected = load_model(model, model_file, strict=False, device=device)
        missing = [k for k in missing if k not in OPTIONAL_KEYS]
        if strict and (missing or unexpected):
            raise RuntimeError(f"{model_file}: missing keys {missing}, unexpected keys {unexpected}")
        log_model_loading_keys(missing, unexpected)
        return model
