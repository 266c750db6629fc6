"""Lazy, well-explained imports of Chi et al.'s ``diffusion_policy`` (never imported at package import)."""

from __future__ import annotations

import importlib

UPSTREAM_URL = "https://github.com/real-stanford/diffusion_policy"
TESTED_COMMIT = "5ba07ac6661db573af695b419a7947ecb704690f"

INSTALL_HINT = (
    "cdp_plugin.diffusion_policy adapts Chi et al.'s `diffusion_policy`, which is not on PyPI and is not "
    "installed here. Install it from a checkout of "
    f"{UPSTREAM_URL} (tested at commit {TESTED_COMMIT[:7]}): either put the checkout's root directory on "
    "PYTHONPATH (`export PYTHONPATH=/path/to/diffusion_policy:$PYTHONPATH`; the folder that contains "
    "`diffusion_policy/` and `train.py`) or run `pip install -e /path/to/diffusion_policy`."
)


class UpstreamNotFoundError(ImportError):
    """diffusion_policy (or one of its sub-packages) cannot be imported."""


def _is_upstream_module(name: str | None) -> bool:
    return bool(name) and (name == "diffusion_policy" or name.startswith("diffusion_policy."))


def import_upstream(module: str, attr: str, extra_hint: str = ""):
    """Return ``getattr(import_module(module), attr)`` or raise an ImportError that says what to install.

    * diffusion_policy itself missing -> :class:`UpstreamNotFoundError` with :data:`INSTALL_HINT`.
    * diffusion_policy present but one of *its* dependencies missing (e.g. robomimic for the hybrid
      policies, zarr, numba) -> ImportError naming that dependency (plus ``extra_hint``).
    """
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if _is_upstream_module(e.name):
            raise UpstreamNotFoundError(f"cannot import {module}.{attr}: {INSTALL_HINT}") from e
        raise ImportError(
            f"diffusion_policy was found, but {module} could not be imported because its dependency "
            f"{e.name!r} is missing ({e}). {extra_hint}".rstrip()
        ) from e
    return getattr(mod, attr)
