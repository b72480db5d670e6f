"""Shared fixtures: offline Hub, isolated caches, tiny configs of every model, image factories."""

from __future__ import annotations

import os
import tempfile

# Nothing in the test suite may reach the Hub; set before transformers/huggingface_hub are imported.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
_cache_root = tempfile.mkdtemp(prefix="prompt-restoration-tests-")
os.environ.setdefault("HF_MODULES_CACHE", os.path.join(_cache_root, "modules"))
os.environ.setdefault("HF_HOME", os.path.join(_cache_root, "hf_home"))

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import modeling  # noqa: E402

# One intra-op thread: the tiny test models gain nothing from two, and on a 2-core machine two OpenMP threads spin
# against the suite's other processes (launches, servers). Subprocess tests pass torch.get_num_threads() on, so
# their sums still match.
torch.set_num_threads(1)

#: The smallest configs that still exercise every code path of each model.
TINY_BACKBONE = dict(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, heads=[1, 1, 2, 2])
TINY_CONFIGS = {
    "restormer": dict(TINY_BACKBONE),
    "promptir": dict(TINY_BACKBONE, prompt_dims=[4, 8, 16], prompt_sizes=[8, 4, 2]),
    # Levels 1-2 have prompts wider than the feature (zero-pad path), level 3 narrower (pass-through path).
    "pip": dict(TINY_BACKBONE, prompt_dims=[12, 20, 16], prompt_sizes=[8, 4, 4], degradation_estimator_hidden_dim=16),
    "cpl": dict(TINY_BACKBONE, prompt_dims=[4, 8, 16], prompt_sizes=[8, 4, 2]),
    # Two CrossFusion heads exercise the multi-head reshape; per-place assignment (the default) all three modules.
    "dppd": dict(TINY_BACKBONE, prompt_dims=[4, 8, 8], num_prompt_tokens=3, embedding_dim=8, cross_fusion_heads=2),
}


def tiny_config(model_type: str, **overrides):
    config_class, _ = modeling.MODEL_CLASSES[model_type]
    return config_class(**{**TINY_CONFIGS[model_type], **overrides})


def tiny_model(model_type: str, seed: int = 0, **overrides):
    """A tiny model with seeded random weights, in eval mode."""
    _, model_class = modeling.MODEL_CLASSES[model_type]
    torch.manual_seed(seed)
    return model_class(tiny_config(model_type, **overrides)).eval()


@pytest.fixture(params=sorted(TINY_CONFIGS))
def model_type(request) -> str:
    return request.param


def smooth_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A natural-looking uint8 RGB test image: smooth gradients plus mild texture."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    channels = [
        0.5 + 0.4 * np.sin(xx / (7 + 3 * c) + c) * np.cos(yy / (11 + 2 * c)) + 0.05 * rng.standard_normal((height, width))
        for c in range(3)
    ]
    return (np.clip(np.stack(channels, -1), 0, 1) * 255).round().astype(np.uint8)
