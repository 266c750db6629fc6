"""Contractive ``DiffusionUnetLowdimPolicy``: low-dimensional observations, ConditionalUnet1D
(``train_diffusion_unet_lowdim_workspace``, also the DDIM variant). Needs no robomimic.

Importing this module imports diffusion_policy (``diffusion_policy.policy.diffusion_unet_lowdim_policy``);
use it through ``cdp_plugin.diffusion_policy.ContractiveDiffusionUnetLowdimPolicy`` (hydra:
``policy._target_``).
"""

from __future__ import annotations

from cdp_plugin.diffusion_policy._mixin import ContractiveMixin, finalize_class
from cdp_plugin.diffusion_policy._upstream import import_upstream

DiffusionUnetLowdimPolicy = import_upstream(
    "diffusion_policy.policy.diffusion_unet_lowdim_policy", "DiffusionUnetLowdimPolicy"
)


class ContractiveDiffusionUnetLowdimPolicy(ContractiveMixin, DiffusionUnetLowdimPolicy):
    __doc__ = f"""Drop-in contractive subclass of diffusion_policy's ``DiffusionUnetLowdimPolicy``.

    Same constructor, state_dict, optimiser parameters and methods as the upstream class;
    ``compute_loss`` adds ``contraction_weight * penalty`` and ``sampler`` selects an ODE sampler.

    {ContractiveMixin.__doc__}"""


finalize_class(ContractiveDiffusionUnetLowdimPolicy, DiffusionUnetLowdimPolicy)
__all__ = ["ContractiveDiffusionUnetLowdimPolicy"]
