"""Find the ready-made configs shipped with the package (``policy_configs/``), installed or from source.

The configs are package data of ``cdp_plugin`` (the repository's top-level ``policy_configs`` is a link to
``cdp_plugin/policy_configs``), so an installed wheel finds them without the source tree::

    cdp-configs list                          # every shipped config, relative to the configs directory
    cdp-configs path lerobot/cdp_pusht.json   # absolute path, e.g. for lerobot-train --config_path=...
    cdp-configs dir                           # the directory itself (for hydra's --config-dir)

    lerobot-train --config_path=$(cdp-configs path cdp_state_small_cpu) --dataset.root=...

From Python: :func:`policy_configs_dir`, :func:`list_configs`, :func:`config_path`. Locating the files does
not import LeRobot or torch.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["policy_configs_dir", "list_configs", "config_path", "main"]

_SUFFIXES = (".json", ".yaml")


def policy_configs_dir() -> Path:
    """Directory holding ``lerobot/*.json`` (LeRobot train configs) and ``diffusion_policy/*.yaml``."""
    path = Path(__file__).resolve().parent / "policy_configs"
    if not path.is_dir():
        raise FileNotFoundError(
            f"policy_configs not found at {path}: the package was installed without its "
            "data files; reinstall lerobot_policy_cdp"
        )
    return path


def list_configs() -> list[str]:
    """Every shipped config, as a POSIX path relative to :func:`policy_configs_dir` (sorted)."""
    root = policy_configs_dir()
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.suffix in _SUFFIXES)


def config_path(name: str) -> Path:
    """Absolute path of config ``name``: a relative path (``lerobot/cdp_pusht.json``) or a unique stem.

    >>> config_path("cdp_pusht").name
    'cdp_pusht.json'
    """
    root = policy_configs_dir()
    direct = root / name
    if direct.is_file():
        return direct
    matches = [c for c in list_configs() if Path(c).stem == Path(name).stem or c == name]
    if len(matches) == 1:
        return root / matches[0]
    if not matches:
        raise FileNotFoundError(
            f"config {name!r} not found in {root}; choose one of: {', '.join(list_configs())}"
        )
    raise FileNotFoundError(f"config {name!r} is ambiguous: {', '.join(matches)}; give the relative path")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cdp-configs", description="Locate the configs shipped with cdp.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("dir", help="print the configs directory")
    sub.add_parser("list", help="list the shipped configs")
    p = sub.add_parser("path", help="print the absolute path of one config")
    p.add_argument("name", help="relative path (lerobot/cdp_pusht.json) or unique name (cdp_pusht)")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "dir":
            print(policy_configs_dir())
        elif args.cmd == "list":
            print("\n".join(list_configs()))
        else:
            print(config_path(args.name))
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
