"""Contractive ``DiffusionUnetHybridImagePolicy``: images through robomimic's encoder built in the constructor
(``train_diffusion_unet_hybrid_workspace``). Needs robomimic (0.2.0 as upstream pins).

Importing this module imports diffusion_policy
(``diffusion_policy.policy.diffusion_unet_hybrid_image_policy``); use it through
``cdp_plugin.diffusion_policy.ContractiveDiffusionUnetHybridImagePolicy`` (hydra: ``policy._target_``).
"""

from __future__ import annotations

from cdp_plugin.diffusion_policy._mixin import ContractiveMixin, finalize_class
from cdp_plugin.diffusion_policy._upstream import import_upstream

DiffusionUnetHybridImagePolicy = import_upstream(
    "diffusion_policy.policy.diffusion_unet_hybrid_image_policy",
    "DiffusionUnetHybridImagePolicy",
    extra_hint=(
        "The hybrid policies build their image encoder with robomimic: pip install robomimic "
        "(upstream pins 0.2.0)."
    ),
)


class ContractiveDiffusionUnetHybridImagePolicy(ContractiveMixin, DiffusionUnetHybridImagePolicy):
    __doc__ = f"""Drop-in contractive subclass of diffusion_policy's ``DiffusionUnetHybridImagePolicy``.

    Same constructor, state_dict, optimiser parameters and methods as the upstream class;
    ``compute_loss`` adds ``contraction_weight * penalty`` and ``sampler`` selects an ODE sampler.

    {ContractiveMixin.__doc__}"""


finalize_class(ContractiveDiffusionUnetHybridImagePolicy, DiffusionUnetHybridImagePolicy)
__all__ = ["ContractiveDiffusionUnetHybridImagePolicy"]
