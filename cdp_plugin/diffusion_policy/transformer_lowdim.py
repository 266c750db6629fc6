"""Contractive ``DiffusionTransformerLowdimPolicy``: low-dimensional observations, TransformerForDiffusion
(``train_diffusion_transformer_lowdim_workspace``). Its dropout makes the penalty use separate dropout-free
forward passes.

Importing this module imports diffusion_policy
(``diffusion_policy.policy.diffusion_transformer_lowdim_policy``); use it through
``cdp_plugin.diffusion_policy.ContractiveDiffusionTransformerLowdimPolicy`` (hydra: ``policy._target_``).
"""

from __future__ import annotations

from cdp_plugin.diffusion_policy._mixin import ContractiveMixin, finalize_class
from cdp_plugin.diffusion_policy._upstream import import_upstream

DiffusionTransformerLowdimPolicy = import_upstream(
    "diffusion_policy.policy.diffusion_transformer_lowdim_policy", "DiffusionTransformerLowdimPolicy"
)


class ContractiveDiffusionTransformerLowdimPolicy(ContractiveMixin, DiffusionTransformerLowdimPolicy):
    __doc__ = f"""Drop-in contractive subclass of diffusion_policy's ``DiffusionTransformerLowdimPolicy``.

    Same constructor, state_dict, optimiser parameters and methods as the upstream class;
    ``compute_loss`` adds ``contraction_weight * penalty`` and ``sampler`` selects an ODE sampler.

    {ContractiveMixin.__doc__}"""


finalize_class(ContractiveDiffusionTransformerLowdimPolicy, DiffusionTransformerLowdimPolicy)
__all__ = ["ContractiveDiffusionTransformerLowdimPolicy"]
