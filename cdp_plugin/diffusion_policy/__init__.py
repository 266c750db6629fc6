"""Contractive drop-in subclasses of Chi et al.'s ``diffusion_policy`` policies.

Switch a diffusion_policy project to CDP by changing one hydra line::

    policy:
      # was diffusion_policy.policy.diffusion_unet_lowdim_policy.DiffusionUnetLowdimPolicy
      _target_: cdp_plugin.diffusion_policy.ContractiveDiffusionUnetLowdimPolicy

Classes and their upstream parents (``diffusion_policy.policy.…``):

* ``ContractiveDiffusionUnetLowdimPolicy``: ``diffusion_unet_lowdim_policy.DiffusionUnetLowdimPolicy``
* ``ContractiveDiffusionUnetImagePolicy``: ``diffusion_unet_image_policy.DiffusionUnetImagePolicy``
* ``ContractiveDiffusionUnetHybridImagePolicy``:
  ``diffusion_unet_hybrid_image_policy.DiffusionUnetHybridImagePolicy`` (robomimic)
* ``ContractiveDiffusionTransformerLowdimPolicy``:
  ``diffusion_transformer_lowdim_policy.DiffusionTransformerLowdimPolicy``
* ``ContractiveDiffusionTransformerHybridImagePolicy``:
  ``diffusion_transformer_hybrid_image_policy.DiffusionTransformerHybridImagePolicy`` (robomimic)

diffusion_policy is imported lazily (PEP 562 ``__getattr__``): ``import cdp_plugin.diffusion_policy``
never needs it; the first access to a class imports upstream, or raises an ImportError that says how to
install it (a checkout of github.com/real-stanford/diffusion_policy on PYTHONPATH, or ``pip install -e``).

:func:`patch_diffusers_optimization` is the opt-in fix for upstream's workspaces on diffusers >= 0.3x
(see :mod:`cdp_plugin.diffusion_policy.compat`); nothing is patched at import time.
"""

from __future__ import annotations

import importlib

from cdp_plugin.diffusion_policy._upstream import INSTALL_HINT, TESTED_COMMIT, UpstreamNotFoundError

_LAZY = {
    "ContractiveDiffusionUnetLowdimPolicy": "lowdim",
    "ContractiveDiffusionUnetImagePolicy": "image",
    "ContractiveDiffusionUnetHybridImagePolicy": "hybrid_image",
    "ContractiveDiffusionTransformerLowdimPolicy": "transformer_lowdim",
    "ContractiveDiffusionTransformerHybridImagePolicy": "transformer_hybrid_image",
    # no upstream import needed for these
    "ContractiveMixin": "_mixin",
    "patch_diffusers_optimization": "compat",
}

POLICY_CLASSES = tuple(k for k, v in _LAZY.items() if k.startswith("Contractive") and k != "ContractiveMixin")

__all__ = [*_LAZY, "INSTALL_HINT", "TESTED_COMMIT", "UpstreamNotFoundError", "POLICY_CLASSES"]


def __getattr__(name: str):
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{mod}"), name)
    globals()[name] = value  # cache: later lookups do not go through __getattr__
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
