"""Contractive ``DiffusionUnetImagePolicy``: images through the injected ``MultiImageObsEncoder``
(``train_diffusion_unet_image_workspace``, ``image_pusht_diffusion_policy_cnn.yaml``). Needs torchvision, no
robomimic.

Importing this module imports diffusion_policy (``diffusion_policy.policy.diffusion_unet_image_policy``);
use it through ``cdp_plugin.diffusion_policy.ContractiveDiffusionUnetImagePolicy`` (hydra:
``policy._target_``).
"""

from __future__ import annotations

from cdp_plugin.diffusion_policy._mixin import ContractiveMixin, finalize_class
from cdp_plugin.diffusion_policy._upstream import import_upstream

DiffusionUnetImagePolicy = import_upstream(
    "diffusion_policy.policy.diffusion_unet_image_policy", "DiffusionUnetImagePolicy"
)


class ContractiveDiffusionUnetImagePolicy(ContractiveMixin, DiffusionUnetImagePolicy):
    __doc__ = f"""Drop-in contractive subclass of diffusion_policy's ``DiffusionUnetImagePolicy``.

    Same constructor, state_dict, optimiser parameters and methods as the upstream class;
    ``compute_loss`` adds ``contraction_weight * penalty`` and ``sampler`` selects an ODE sampler.

    {ContractiveMixin.__doc__}"""


finalize_class(ContractiveDiffusionUnetImagePolicy, DiffusionUnetImagePolicy)
__all__ = ["ContractiveDiffusionUnetImagePolicy"]
