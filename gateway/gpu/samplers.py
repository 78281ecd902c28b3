"""Our sampler names and the diffusers schedulers they map to (names only, so no torch import).

| ours               | diffusers                                                     |
|--------------------|---------------------------------------------------------------|
| euler              | EulerDiscreteScheduler                                        |
| euler_ancestral    | EulerAncestralDiscreteScheduler                               |
| heun               | HeunDiscreteScheduler                                         |
| lms                | LMSDiscreteScheduler (needs scipy)                            |
| ddim               | DDIMScheduler                                                 |
| ddpm               | DDPMScheduler                                                 |
| pndm               | PNDMScheduler (PLMS steps only)                               |
| dpm_2              | KDPM2DiscreteScheduler                                        |
| dpm_2_ancestral    | KDPM2AncestralDiscreteScheduler                               |
| dpmpp_2m           | DPMSolverMultistepScheduler (dpmsolver++, order 2)            |
| dpmpp_2s_ancestral | none: diffusers has no ancestral single-step DPM++; refused   |

Each scheduler is built from the model's own scheduler config (beta schedule, timestep
spacing), so a model keeps its training-time noise schedule whichever sampler is asked for.
"""

from __future__ import annotations

from typing import Any

from gateway.domain.generation import Sampler

SCHEDULERS: dict[Sampler, tuple[str, dict[str, Any]]] = {
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_ancestral": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "ddpm": ("DDPMScheduler", {}),
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}),
    "dpm_2": ("KDPM2DiscreteScheduler", {}),
    "dpm_2_ancestral": ("KDPM2AncestralDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
}
SUPPORTED_SAMPLERS: frozenset[Sampler] = frozenset(SCHEDULERS)
DEFAULT_SAMPLER: Sampler = "euler"
