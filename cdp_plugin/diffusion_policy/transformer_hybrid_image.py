"""Contractive ``DiffusionTransformerHybridImagePolicy``: images through robomimic's encoder and
TransformerForDiffusion (``train_diffusion_transformer_hybrid_workspace``). Needs robomimic.

Importing this module imports diffusion_policy
(``diffusion_policy.policy.diffusion_transformer_hybrid_image_policy``); use it through
``cdp_plugin.diffusion_policy.ContractiveDiffusionTransformerHybridImagePolicy`` (hydra:
``policy._target_``).
"""

from __future__ import annotations

from cdp_plugin.diffusion_policy._mixin import ContractiveMixin, finalize_class
from cdp_plugin.diffusion_policy._upstream import import_upstream

DiffusionTransformerHybridImagePolicy = import_upstream(
    "diffusion_policy.policy.diffusion_transformer_hybrid_image_policy",
    "DiffusionTransformerHybridImagePolicy",
    extra_hint=(
        "The hybrid policies build their image encoder with robomimic: pip install robomimic "
        "(upstream pins 0.2.0)."
    ),
)


class ContractiveDiffusionTransformerHybridImagePolicy(
    ContractiveMixin, DiffusionTransformerHybridImagePolicy
):
    __doc__ = f"""Drop-in contractive subclass of upstream's ``DiffusionTransformerHybridImagePolicy``.

    Same constructor, state_dict, optimiser parameters and methods as the upstream class;
    ``compute_loss`` adds ``contraction_weight * penalty`` and ``sampler`` selects an ODE sampler.

    {ContractiveMixin.__doc__}"""


finalize_class(ContractiveDiffusionTransformerHybridImagePolicy, DiffusionTransformerHybridImagePolicy)
__all__ = ["ContractiveDiffusionTransformerHybridImagePolicy"]
