"""Turn a LeRobot ``diffusion`` checkpoint into a ``cdp`` one (warm start / ODE deployment).

    python -m cdp_plugin.policy.convert SRC_PRETRAINED_MODEL DST_DIR [--sampler ddim] [--num_inference_steps 10]

The weights are copied unchanged (cdp adds no parameter), the processors are copied, and ``config.json``
keeps every ``diffusion`` field — in particular ``prediction_type`` (a DP checkpoint is usually an epsilon
network; cdp's default ``sample`` would not match its weights) — with ``"type": "cdp"`` and the cdp
fields at their defaults unless overridden. The result loads with ``--policy.path=DST_DIR`` in
``lerobot-train`` (fine-tuning with the contraction penalty), ``lerobot-eval`` and ``lerobot-rollout``.

Alternative without conversion: ``lerobot-train --policy.type=cdp --policy.pretrained_path=SRC ...`` with
flags that repeat the DP architecture (``--policy.prediction_type=epsilon`` and the UNet sizes).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from cdp_plugin.policy.configuration_cdp import ContractiveDiffusionConfig
from cdp_plugin.samplers import SAMPLERS

_CDP_ONLY = set(ContractiveDiffusionConfig.__dataclass_fields__) - set(
    ContractiveDiffusionConfig.__mro__[1].__dataclass_fields__
)


def convert_diffusion_checkpoint(src: str | Path, dst: str | Path, **overrides) -> Path:
    """Write a ``cdp`` copy of the ``diffusion`` checkpoint folder ``src`` to ``dst``; returns ``dst``."""
    src, dst = Path(src), Path(dst)
    cfg_path = src / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path} not found: pass a checkpoint's pretrained_model folder")
    cfg = json.loads(cfg_path.read_text())
    if cfg.get("type") not in ("diffusion", "cdp"):
        raise ValueError(
            f"{cfg_path} is a {cfg.get('type')!r} checkpoint; only 'diffusion' (or 'cdp') converts"
        )
    from cdp_plugin.policy.safe_load import validate_processor_files

    validate_processor_files(src)  # only registered processor steps are copied (no code from the JSON)
    unknown = set(overrides) - _CDP_ONLY - set(cfg)
    if unknown:
        raise ValueError(f"unknown config fields {sorted(unknown)}")
    if cfg["type"] == "diffusion":  # a new cdp config (not one saved before these fields): today's meaning
        from cdp_plugin.contraction import LEGACY_VALUES, ContractionConfig

        cfg.update({f"contraction_{k}": getattr(ContractionConfig(), k) for k in LEGACY_VALUES})
    cfg["type"] = "cdp"
    # a DP checkpoint predicts with its own schedule: keep it, and keep LeRobot's steps unless asked
    cfg.setdefault("num_inference_steps", None)
    cfg.update(overrides)
    if dst.exists():
        raise FileExistsError(f"{dst} exists; choose a new folder")
    tmp = dst.with_name(dst.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    (tmp / "config.json").write_text(json.dumps(cfg, indent=4))
    # validate by parsing it the way LeRobot does, before the folder looks complete
    from lerobot.configs.policies import PreTrainedConfig

    PreTrainedConfig.from_pretrained(tmp)  # "cdp" is registered: this module imports its config class
    tmp.rename(dst)
    return dst


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--sampler", choices=SAMPLERS)
    ap.add_argument("--num_inference_steps", type=int)
    ap.add_argument("--contraction_weight", type=float)
    args = ap.parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if k not in ("src", "dst") and v is not None}
    out = convert_diffusion_checkpoint(args.src, args.dst, **overrides)
    print(f"cdp checkpoint written to {out}")


if __name__ == "__main__":
    main()
