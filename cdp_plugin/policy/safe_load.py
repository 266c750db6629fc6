"""Safe loading of checkpoints: processor JSON validated before LeRobot sees it, complete finite weights.

**Processor JSON.** LeRobot's ``DataProcessorPipeline.from_pretrained`` builds each step of
``policy_preprocessor.json`` / ``policy_postprocessor.json`` either from ``"registry_name"`` (a class
registered with ``@ProcessorStepRegistry.register``) or from ``"class"``: *any importable dotted path*,
instantiated with the JSON's ``"config"`` as keyword arguments. A checkpoint whose step reads
``{"class": "subprocess.Popen", "config": {"args": "...", "shell": true}}`` runs a shell command at load
time. :func:`validate_processor_files` accepts only steps named by ``"registry_name"`` that the registry
knows, with a ``"state_file"`` that is a bare ``*.safetensors`` file name; every cdp loader (the converter,
``ContractiveDiffusionPolicy.from_pretrained``, the bench probe, the Franka evaluation) calls it first, and
:func:`load_pre_post_processors` is the validated stand-in for LeRobot's ``make_pre_post_processors``.

**Weights.** LeRobot loads ``model.safetensors`` with ``strict=False``: a file with the wrong keys yields a
random policy and a log line. :func:`check_weights_file` makes a missing parameter, a shape mismatch or a
non-finite value an error that names the file and the key.
"""

from __future__ import annotations

import json
import logging
from dataclasses import fields
from pathlib import Path, PurePosixPath

import torch

logger = logging.getLogger(__name__)

PROCESSOR_FILES = ("policy_preprocessor.json", "policy_postprocessor.json")


class UnsafeCheckpointError(ValueError):
    """A checkpoint file would make LeRobot import or run something outside its processor registry."""


class CheckpointMismatchError(ValueError):
    """``model.safetensors`` does not hold every parameter of the policy, or holds non-finite values."""


def _registry() -> set[str]:
    import lerobot.processor  # noqa: F401  (registers LeRobot's own steps)
    from lerobot.processor.pipeline import ProcessorStepRegistry

    return set(ProcessorStepRegistry.list())


def validate_processor_config(config: object, source: str) -> None:
    """Raise :class:`UnsafeCheckpointError` unless every step of ``config`` is a registered LeRobot step."""
    if not isinstance(config, dict) or not isinstance(config.get("steps"), list):
        raise UnsafeCheckpointError(f"{source}: not a LeRobot processor config (no 'steps' list)")
    known = _registry()
    for i, step in enumerate(config["steps"]):
        if not isinstance(step, dict):
            raise UnsafeCheckpointError(f"{source}: step {i} is not an object")
        name = step.get("registry_name")
        if name is None:
            raise UnsafeCheckpointError(
                f"{source}: step {i} names a Python class ({step.get('class')!r}) instead of a registered "
                "processor step; cdp loads only steps from LeRobot's ProcessorStepRegistry "
                "(refusing to import it)"
            )
        if name not in known:
            raise UnsafeCheckpointError(
                f"{source}: step {i} uses unknown processor step {name!r}; install the package that "
                "registers "
                "it (and import it) before loading, or remove the step"
            )
        state = step.get("state_file")
        if state is not None and (
            not isinstance(state, str)
            or PurePosixPath(state).name != state
            or "\\" in state
            or not state.endswith(".safetensors")
        ):
            raise UnsafeCheckpointError(
                f"{source}: step {i} state_file {state!r} must be a bare *.safetensors file name"
            )
        if not isinstance(step.get("config", {}), dict):
            raise UnsafeCheckpointError(f"{source}: step {i} 'config' must be an object")


def validate_processor_files(pretrained: str | Path, filenames=PROCESSOR_FILES, **hub_kwargs) -> list[Path]:
    """Validate the processor JSON files of a checkpoint (local folder or Hub repo id); return their paths.

    Files that do not exist in a local folder are skipped (a bare ``save_pretrained`` has none); for a Hub
    repo each file is fetched (cached) with ``hf_hub_download`` before LeRobot reads it.
    """
    out = []
    for name in filenames:
        path = Path(pretrained) / name
        if not Path(pretrained).is_dir():
            from huggingface_hub import hf_hub_download
            from huggingface_hub.errors import (
                EntryNotFoundError,
                HFValidationError,
                LocalEntryNotFoundError,
            )

            try:
                path = Path(hf_hub_download(str(pretrained), name, **hub_kwargs))
            except (EntryNotFoundError, LocalEntryNotFoundError, HFValidationError):
                continue  # no such file / repo (or not cached while offline): LeRobot will not load it either
        if not path.is_file():
            continue
        try:
            config = json.loads(path.read_text())
        except ValueError as e:
            raise UnsafeCheckpointError(f"{path}: not valid JSON ({e})") from None
        validate_processor_config(config, str(path))
        out.append(path)
    return out


def load_pre_post_processors(policy_cfg, pretrained_path: str | Path, **kwargs):
    """LeRobot's ``make_pre_post_processors(policy_cfg, pretrained_path=...)`` after validating the JSON."""
    from lerobot.policies.factory import make_pre_post_processors

    validate_processor_files(pretrained_path)
    return make_pre_post_processors(policy_cfg, pretrained_path=str(pretrained_path), **kwargs)


# The adaptive gamma's buffer: a checkpoint trained without the adaptive weight lacks it, and a policy that
# turns it on when loading such a checkpoint starts gamma from ``contraction_weight``.
OPTIONAL_KEYS = frozenset({"diffusion.contraction_weight"})


def check_weights_file(model: torch.nn.Module, model_file: str | Path) -> None:
    """Raise :class:`CheckpointMismatchError` if ``model_file`` lacks a key of ``model`` (but those in
    :data:`OPTIONAL_KEYS`), has another shape, or holds a non-finite value. Unexpected extra keys are only
    logged (as LeRobot does)."""
    from safetensors import safe_open

    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    with safe_open(str(model_file), framework="pt", device="cpu") as f:
        keys = set(f.keys())
        missing = sorted(set(expected) - keys - OPTIONAL_KEYS)
        if missing:
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            raise CheckpointMismatchError(
                f"cdp: {model_file} lacks {len(missing)} of the policy's {len(expected)} tensors "
                f"({missing[:3]}{more}); it is not a checkpoint of this architecture: pass the matching "
                "--policy.* sizes or another checkpoint"
            )
        for k in sorted(keys & set(expected)):
            t = f.get_tensor(k)
            if tuple(t.shape) != expected[k]:
                raise CheckpointMismatchError(
                    f"cdp: {model_file}: '{k}' has shape {tuple(t.shape)}, the policy expects {expected[k]}; "
                    "pass the checkpoint's architecture flags (--policy.down_dims, horizon, ...)"
                )
            if t.is_floating_point() and not torch.isfinite(t).all():
                n = int((~torch.isfinite(t)).sum())
                raise CheckpointMismatchError(
                    f"cdp: {model_file}: '{k}' holds {n} non-finite values; the checkpoint is corrupt"
                )
        extra = sorted(keys - set(expected))
        if extra:
            logger.warning(
                "cdp: %s has %d tensors the policy does not use (ignored): %s",
                model_file,
                len(extra),
                extra[:3],
            )


def cdp_config_from_diffusion(config):
    """A ``ContractiveDiffusionConfig`` holding every field of a LeRobot ``DiffusionConfig`` (warm start).

    The DP's architecture and ``prediction_type`` are kept (its weights were trained with them); the cdp
    fields, the sampler and ``num_inference_steps`` take cdp's defaults (DPM-Solver++, 10 steps).
    """
    from cdp_plugin.policy.configuration_cdp import ContractiveDiffusionConfig

    skip = {"num_inference_steps"}
    kwargs = {f.name: getattr(config, f.name) for f in fields(config) if f.init and f.name not in skip}
    return ContractiveDiffusionConfig(**kwargs)
