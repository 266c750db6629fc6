"""Opt-in compatibility helpers for running upstream diffusion_policy on a current stack.

Nothing here runs at import time: call the helper yourself, before upstream's workspaces are imported.

``patch_diffusers_optimization()``
    Upstream's ``diffusion_policy/model/common/lr_scheduler.py`` (imported by every training workspace)
    does ``from diffusers.optimization import Union, SchedulerType, Optional, Optimizer,
    TYPE_TO_SCHEDULER_FUNCTION``. It picks the typing names ``Union`` / ``Optional`` out of diffusers'
    module namespace; diffusers 0.39 no longer imports them there, so every upstream workspace fails with
    ``ImportError: cannot import name 'Union' from 'diffusers.optimization'``. The helper adds exactly the
    missing typing aliases (``typing.Union``, ``typing.Optional``, and ``torch.optim.Optimizer`` if that is
    gone too) to ``diffusers.optimization`` and nothing else; it is idempotent and a no-op on diffusers
    versions that still have them.

Use it at the top of your own copy of upstream's ``train.py`` / ``eval.py`` (two lines)::

    from cdp_plugin.diffusion_policy.compat import patch_diffusers_optimization
    patch_diffusers_optimization()

or launch training through ``python -m cdp_plugin.diffusion_policy.train`` (upstream's ``train.py`` with
the helper applied explicitly; see :mod:`cdp_plugin.diffusion_policy.train`).
"""

from __future__ import annotations

import typing

__all__ = ["patch_diffusers_optimization", "REQUIRED_NAMES"]

# what upstream's lr_scheduler.py imports from diffusers.optimization
REQUIRED_NAMES = ("Union", "SchedulerType", "Optional", "Optimizer", "TYPE_TO_SCHEDULER_FUNCTION")


def patch_diffusers_optimization() -> list[str]:
    """Add the typing names upstream's ``lr_scheduler.py`` expects to ``diffusers.optimization``.

    Returns the names that were added (empty when nothing was missing). Raises ImportError when a
    *functional* name (``SchedulerType``, ``TYPE_TO_SCHEDULER_FUNCTION``) is missing: that cannot be
    fixed by an alias and needs a diffusers version upstream supports.
    """
    import diffusers.optimization as opt

    added: list[str] = []
    aliases: dict[str, object] = {"Union": typing.Union, "Optional": typing.Optional}
    if not hasattr(opt, "Optimizer"):
        from torch.optim import Optimizer

        aliases["Optimizer"] = Optimizer
    for name, value in aliases.items():
        if not hasattr(opt, name):
            setattr(opt, name, value)
            added.append(name)
    missing = [n for n in REQUIRED_NAMES if not hasattr(opt, n)]
    if missing:
        raise ImportError(
            f"diffusers.optimization lacks {missing}; diffusion_policy's lr_scheduler.py cannot work with "
            "this diffusers version (use diffusers 0.29-0.39)"
        )
    return added
