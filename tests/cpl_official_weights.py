"""Deterministic random weights in the official ``SparsePromptIR`` layout, shared by the parity test and the
parity run against the official code (README, "Parity with the official code").

Every kind of parameter is perturbed away from its initial value — LayerNorm weights and biases and attention
temperatures included — so that a wrong mapping of any of them shows in the outputs.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

FIXTURES = Path(__file__).parent / "fixtures"


def official_cpl_keys() -> dict[str, list[int]]:
    """The 542 official parameter names and shapes (recorded from the official class on the meta device)."""
    return json.loads((FIXTURES / "official_keys_cpl.json").read_text())


def random_official_cpl_weights(seed: int = 7) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    weights = {}
    for key, shape in official_cpl_keys().items():
        noise = torch.randn(shape, generator=generator)
        if key.endswith("prompt_param"):
            value = torch.rand(shape, generator=generator)  # the official initialisation is U[0, 1)
        elif key.endswith("attn.temperature"):
            value = 1.0 + 0.3 * noise
        elif ".norm" in key and ".body." in key:  # LayerNorm weight / bias
            value = (1.0 + 0.1 * noise) if key.endswith("weight") else 0.1 * noise
        elif "linear_layer" in key:  # prompt routers: spread the logits so images route differently
            value = noise * (3.0 / math.sqrt(shape[1])) if key.endswith("weight") else 0.5 * noise
        elif shape[1] == 1:  # depthwise convolutions
            value = noise / 3.0
        else:  # other convolutions, scaled down so that ~60 residual blocks keep the activations O(1)
            value = noise * (0.3 / math.sqrt(math.prod(shape[1:])))
        weights[key] = value
    return weights


def parity_inputs() -> list[torch.Tensor]:
    """Two input sizes (multiples of 8, which the official network needs)."""
    return [
        torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)),
        torch.rand(2, 3, 40, 56, generator=torch.Generator().manual_seed(1)),
    ]
