"""The one parser of degradation labels, shared by every model that takes them and by ``restore()``.

A degradation label says what is wrong with an image. Models that are steered by it (PIP, DPPD) turn it into a
``(batch, num_degradations)`` weight matrix over their classes (``config.degradation_names``). Accepted forms:

- a class index (``1``) or name (``"rain"``), with common aliases (``"derain"``, ``"low_light"``, ``"dark"``);
- a mixture joined by ``+`` (``"rain+haze"``): the mean of the one-hots, as PIP's official code feeds mixed
  degradations; inside a per-image list a mixture may also be a pair (``[("rain", "haze"), "noise"]``);
- a name, index or ``+`` mixture for the whole batch, or a list (or tuple) with one label per image, so a bare
  pair ``("rain", "haze")`` is two images' labels, not a mixture;
- a ``(B,)`` integer tensor of indices (what the training loop passes) or a ``(B, num_degradations)`` float
  tensor of weights (used as given, e.g. an estimator's output reused for every tile of an image); numpy arrays
  and numpy integers are read as the tensors and ints they hold.
"""

from __future__ import annotations

import numbers
from typing import Any, Sequence

import numpy as np
import torch

from .errors import RestorationInputError

# Short names people use for the five official degradations, mapped to our canonical names.
DEGRADATION_ALIASES = {
    "denoise": "noise", "denoising": "noise", "gaussian-noise": "noise", "noisy": "noise",
    "derain": "rain", "deraining": "rain", "rainy": "rain",
    "dehaze": "haze", "dehazing": "haze", "hazy": "haze",
    "deblur": "blur", "deblurring": "blur", "motion-blur": "blur", "blurry": "blur",
    "lowlight": "low-light", "low": "low-light", "enhance": "low-light", "dark": "low-light",
}

#: How many labels one mixed degradation may combine (CDD-11 composites have up to three).
MAX_MIXED_LABELS = 3


def degradation_index(label: str | int, names: Sequence[str]) -> int:
    """Class index of one label (a name, an alias or an index) in ``names``; a clear error otherwise."""
    names = list(names)
    if isinstance(label, torch.Tensor) and label.ndim == 0 and not label.is_floating_point():
        label = int(label.item())
    if isinstance(label, numbers.Integral) and not isinstance(label, bool):
        label = int(label)  # numpy integers
    if isinstance(label, bool) or not isinstance(label, (int, str)):
        raise RestorationInputError(f"a degradation label must be a name or an index, got {label!r}")
    if isinstance(label, int):
        if not 0 <= label < len(names):
            raise RestorationInputError(f"degradation index {label} is out of range 0..{len(names) - 1} ({', '.join(names)})")
        return label
    key = label.strip().lower().replace("_", "-").replace(" ", "-")
    key = key if key in names else DEGRADATION_ALIASES.get(key, key)
    if key not in names:
        raise RestorationInputError(f"unknown degradation {label!r}; valid names are {', '.join(names)}")
    return names.index(key)


def _label_parts(label: Any) -> list:
    if isinstance(label, str):
        return label.split("+")
    if isinstance(label, torch.Tensor):
        return label.reshape(-1).tolist()
    if isinstance(label, (list, tuple)):
        return list(label)
    return [label]


def degradation_weights_from_labels(
    labels: Any, names: Sequence[str], batch_size: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """Turn ``labels`` (any form in the module docstring) into float32 weights of shape (batch_size, len(names))."""
    num = len(names)
    if isinstance(labels, np.ndarray):
        if labels.dtype.kind in "iuf":  # indices or weights, as the tensor forms
            labels = torch.from_numpy(np.array(labels, dtype=np.float32 if labels.dtype.kind == "f" else np.int64))
        else:  # strings, objects and booleans: the Python values they hold (a 0-d array gives its scalar)
            labels = labels.tolist()
    if isinstance(labels, torch.Tensor):
        if labels.dtype == torch.bool:  # True/False are no class indices (as bools are refused everywhere else)
            raise RestorationInputError("degradation labels must be names, indices or weights, not booleans")
        if labels.is_floating_point():
            if labels.shape != (batch_size, num):
                raise RestorationInputError(
                    f"degradation weights must have shape ({batch_size}, {num}), got {tuple(labels.shape)}"
                )
            # Value checks sync with the device; compiled graphs skip them (see check_pixel_values).
            if not torch.compiler.is_compiling() and (not torch.isfinite(labels).all() or (labels < 0).any()):
                raise RestorationInputError("degradation weights must be finite and non-negative")
            return labels.to(device=device, dtype=torch.float32)
        if labels.ndim == 1 and labels.shape[0] == batch_size:
            # The training loop's fast path: one class index per image, no Python-level parsing.
            if not torch.compiler.is_compiling() and labels.numel() and (labels.min() < 0 or labels.max() >= num):
                raise RestorationInputError(f"degradation indices must lie in 0..{num - 1}, got {labels.tolist()}")
            return torch.nn.functional.one_hot(labels.to(device=device, dtype=torch.long), num).float()
        labels = labels.item() if labels.ndim == 0 else labels.tolist()
    if isinstance(labels, (str, numbers.Integral)) and not isinstance(labels, bool):
        labels = [labels] * batch_size
    if not isinstance(labels, (list, tuple)) or len(labels) != batch_size:
        raise RestorationInputError(f"degradation_labels must give one label per image ({batch_size}), got {labels!r}")
    rows = torch.zeros(batch_size, num)
    for row, label in enumerate(labels):
        parts = _label_parts(label)
        if not 1 <= len(parts) <= MAX_MIXED_LABELS:
            raise RestorationInputError(
                f"a mixed degradation combines 2 to {MAX_MIXED_LABELS} labels, got {label!r}"
            )
        for part in parts:
            rows[row, degradation_index(part, names)] += 1.0 / len(parts)
    return rows.to(device)


def hard_weights(weights: torch.Tensor) -> torch.Tensor:
    """One-hot of the most likely class per row (the "hard" choice from soft estimator weights)."""
    return torch.nn.functional.one_hot(weights.argmax(dim=-1), weights.shape[-1]).to(weights.dtype)


__all__ = ["DEGRADATION_ALIASES", "degradation_index", "degradation_weights_from_labels", "hard_weights"]
