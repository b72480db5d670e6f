"""Configuration fields shared by every model built on the Restormer encoder/decoder.

Each method's config (``RestormerConfig``, ``PromptIRConfig``, ``PIPConfig``, ...) subclasses
``RestorationBackboneConfig`` and adds its own prompt settings. Defaults are the official values
(Restormer, CVPR 2022; identical in PromptIR, PIP and CPL).
"""

from __future__ import annotations

import contextvars
import dataclasses
import difflib
import math

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig
from transformers.utils import logging

logger = logging.get_logger(__name__)

LAYER_NORM_TYPES = ("WithBias", "BiasFree")

#: Degradation classes of the 5-task all-in-one setting, in the label order used by PIP's official code
#: (noise 0, rain 1, haze 2, blur 3, low-light 4) and by our training data.
DEGRADATION_NAMES = ("noise", "rain", "haze", "blur", "low-light")

#: Keyword arguments that every transformers config takes or writes besides its dataclass fields.
TRANSFORMERS_CONFIG_KWARGS = frozenset(
    {
        "torch_dtype", "num_labels", "name_or_path", "output_attentions", "attn_implementation",
        "experts_implementation", "per_layer_config", "model_type", "auto_map", "custom_pipelines", "use_cache",
        "tie_word_embeddings", "pruned_heads", "tokenizer_class", "task_specific_params", "finetuning_task",
    }
)

# Set while a saved config is read back (``from_dict``): keys written by a newer version of this package are
# then kept with a warning instead of being refused, so that newer checkpoints still load.
_READING_SAVED_CONFIG = contextvars.ContextVar("reading_saved_config", default=False)


def describe_unknown_config_keys(config_class: type, keys) -> str:
    """``"'dimm' (did you mean 'dim'?), 'zzz'"`` for the keys of `keys` that are neither hyperparameters of
    `config_class` (its dataclass fields, transformers' own included) nor keys transformers passes or writes
    (`TRANSFORMERS_CONFIG_KWARGS`, ``attribute_map``); ``""`` when there are none. ``_``-private keys
    (``_name_or_path``, ``_commit_hash``, ...) are transformers' bookkeeping and never reported."""
    fields = sorted(field.name for field in dataclasses.fields(config_class))
    valid = set(fields) | TRANSFORMERS_CONFIG_KWARGS | set(getattr(config_class, "attribute_map", {}))
    unknown = sorted(str(key) for key in keys if key not in valid and not str(key).startswith("_"))
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(key, fields, n=1, cutoff=0.6)
        hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    return ", ".join(hints)


def check_unknown_config_keys(config_class: type, keys) -> None:
    """Raise ``TypeError`` naming each key that is neither a field of ``config_class`` nor a transformers kwarg."""
    unknown = describe_unknown_config_keys(config_class, keys)
    if unknown:
        raise TypeError(f"{config_class.__name__} got unknown argument(s) {unknown}")


def check_finite(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")


def check_positive_int(name: str, value, minimum: int = 1) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is an int (not a bool) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer of at least {minimum}, got {value!r}")


def check_degradation_names(names) -> None:
    """Degradation class names the label parser can select: distinct non-empty strings in its canonical form
    (lower case, words joined by "-", as it normalises labels), without "+" (it joins mixed labels) and not
    "auto" (it asks for the estimator)."""
    if not names:
        raise ValueError("degradation_names must list at least one name")
    for name in names:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"degradation_names must be non-empty strings, got {names}")
        canonical = name.strip().lower().replace("_", "-").replace(" ", "-")
        if "+" in name:
            raise ValueError(f"degradation_names may not contain '+' (it joins mixed labels), got {name!r}")
        if canonical == "auto":
            raise ValueError("'auto' asks for the degradation estimator; it cannot name a degradation class")
        if name != canonical:
            raise ValueError(
                f"degradation name {name!r} could never be selected (labels are read in lower case with words "
                f"joined by '-'): use {canonical!r}"
            )
    if len(set(names)) != len(names):
        raise ValueError(f"degradation_names must be unique, got {names}")


def check_bool(name: str, value) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")


@strict(accept_kwargs=True)
class RestorationBackboneConfig(PreTrainedConfig):
    r"""
    Shared backbone arguments (all models in this package).

    Args:
        in_channels (`int`, defaults to 3): image channels read (official `inp_channels`; 6 for Restormer's
            dual-pixel task).
        out_channels (`int`, defaults to 3): image channels written.
        dim (`int`, defaults to 48): base width; the levels run at dim, 2 dim, 4 dim and 8 dim (paper: 48).
        num_blocks (`list[int]`, defaults to `[4, 6, 6, 8]`): Transformer blocks at encoder levels 1-3 and in
            the latent; decoder levels 1-3 reuse the first three numbers (paper: [4, 6, 6, 8]).
        num_refinement_blocks (`int`, defaults to 4): blocks after decoder level 1 (paper: 4).
        heads (`list[int]`, defaults to `[1, 2, 4, 8]`): attention heads per level (paper: [1, 2, 4, 8]).
        ffn_expansion_factor (`float`, defaults to 2.66): GDFN hidden width = int(width x factor) (paper: 2.66).
        bias (`bool`, defaults to `False`): biases in the blocks' convolutions (paper: False).
        layer_norm_type (`str`, defaults to `"WithBias"`): `"WithBias"` or `"BiasFree"` channel LayerNorm
            (official deraining/deblurring configs use WithBias, the denoising ones BiasFree).
        pad_mode (`str`, defaults to `"reflect"`): how inputs whose sides are not multiples of `size_multiple`
            (8; CPL: its `pad_multiple`) are padded inside the model before being cropped back (the official test
            scripts reflect-pad; images too small to reflect fall back to replicate padding).
        inference_tile (`int`, *optional*): tile side that `restore()`, the pipeline, the CLI, batch restoration
            and the Space use when the caller names none (`tile=0` still asks for the whole image). Meant for
            models trained on small crops: MDTA builds its channel attention from statistics over the whole
            input, so on an image far larger than the training crops those statistics are not the ones the model
            learned from; overlapping tiles near the crop size keep them local (the idea of TLC, Chu et al., ECCV
            2022, done by tiling). It trades: on the shipped CPU model (64 x 64 crops), 64-pixel tiles gain on
            rain, noise and motion blur and lose dB on low light and haze, which need the whole image (README,
            "Restore an image"), so that model names none. `None` (default): whole images. At least 8.
    """

    in_channels: int = 3
    out_channels: int = 3
    dim: int = 48
    num_blocks: list[int] | tuple[int, ...] = (4, 6, 6, 8)
    num_refinement_blocks: int = 4
    heads: list[int] | tuple[int, ...] = (1, 2, 4, 8)
    ffn_expansion_factor: float | int = 2.66
    bias: bool = False
    layer_norm_type: str = "WithBias"
    pad_mode: str = "reflect"
    inference_tile: int | None = None

    def __post_init__(self, **kwargs):
        # A misspelled argument must never be silently ignored (transformers would store it as an attribute).
        if _READING_SAVED_CONFIG.get():
            # A key of a newer version must not stop its checkpoints from loading, but a typo in a hand-edited
            # config.json must not pass unnoticed either: keep it, and say which field was probably meant.
            unknown = describe_unknown_config_keys(type(self), kwargs)
            if unknown:
                logger.warning(
                    f"{type(self).__name__}: config.json holds key(s) unknown to this version, kept as attributes "
                    f"but used by nothing: {unknown}"
                )
        else:
            check_unknown_config_keys(type(self), kwargs)
        for name in ("num_blocks", "heads"):  # list() of None or an int would fail without naming the field
            if not isinstance(getattr(self, name), (list, tuple)):
                raise ValueError(f"{name} must list 4 integers (levels 1-3 and latent), got {getattr(self, name)!r}")
        self.num_blocks = list(self.num_blocks)
        self.heads = list(self.heads)
        super().__post_init__(**kwargs)

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs):
        """As transformers, but a saved config may hold keys of a newer version (kept, with a warning), and an
        override that is no hyperparameter (``from_pretrained(folder, dimm=8)``) is named in a warning instead of
        being dropped without a word."""
        return_unused_kwargs = kwargs.pop("return_unused_kwargs", False)
        token = _READING_SAVED_CONFIG.set(True)
        try:
            result, unused = super().from_dict(config_dict, return_unused_kwargs=True, **kwargs)
        finally:
            _READING_SAVED_CONFIG.reset(token)
        # A caller that asks for the unused kwargs (PreTrainedModel / AutoModel.from_pretrained) passes on its
        # own arguments (device_map, ...) and deals with the rest; otherwise transformers would drop them silently.
        unknown = "" if return_unused_kwargs else describe_unknown_config_keys(cls, unused)
        if unknown:
            logger.warning(f"{cls.__name__}.from_pretrained: ignoring unknown argument(s) {unknown}")
        # from_pretrained(..., pad_mode=...) overrides are set as attributes after construction, past the checks
        # that construction runs: check the final config now, not when it is saved after a whole training run.
        result.validate()
        return (result, unused) if return_unused_kwargs else result

    @property
    def size_multiple(self) -> int:
        """Inputs are padded to a multiple of this (three 2x downsamplings)."""
        return 8

    def validate_backbone(self):
        """Check list lengths, widths and head counts, naming the offending field."""
        if len(self.num_blocks) != 4:
            raise ValueError(f"num_blocks must list 4 depths (levels 1-3 and latent), got {self.num_blocks}")
        if len(self.heads) != 4:
            raise ValueError(f"heads must list 4 head counts (levels 1-3 and latent), got {self.heads}")
        for name, values in (("num_blocks", self.num_blocks), ("heads", self.heads)):
            if any(isinstance(v, bool) or not isinstance(v, int) for v in values):
                raise ValueError(f"{name} must list integers, got {values}")
        for name in ("dim", "in_channels", "out_channels"):
            check_positive_int(name, getattr(self, name))
        check_positive_int("num_refinement_blocks", self.num_refinement_blocks, minimum=0)
        if any(d < 0 for d in self.num_blocks) or self.num_refinement_blocks < 0:
            raise ValueError("num_blocks and num_refinement_blocks must be non-negative")
        if self.dim <= 0 or self.dim % 2:
            raise ValueError(f"dim must be a positive even number, got {self.dim}")
        check_finite("ffn_expansion_factor", self.ffn_expansion_factor)
        if self.ffn_expansion_factor <= 0:
            raise ValueError(f"ffn_expansion_factor must be positive, got {self.ffn_expansion_factor}")
        if int(self.dim * self.ffn_expansion_factor) < 1:  # the narrowest GDFN, at level 1
            raise ValueError(
                f"ffn_expansion_factor {self.ffn_expansion_factor} leaves no hidden channel at width {self.dim} "
                "(GDFN hidden width = int(width x factor))"
            )
        check_bool("bias", self.bias)
        if self.layer_norm_type not in LAYER_NORM_TYPES:
            raise ValueError(f"layer_norm_type must be one of {LAYER_NORM_TYPES}, got {self.layer_norm_type!r}")
        if self.pad_mode not in ("reflect", "replicate", "constant"):
            raise ValueError(f"pad_mode must be 'reflect', 'replicate' or 'constant', got {self.pad_mode!r}")
        if self.inference_tile is not None and (
            isinstance(self.inference_tile, bool) or not isinstance(self.inference_tile, int) or self.inference_tile < 8
        ):
            # 8 = modeling.tiling.MIN_TILE (not imported: configs stay free of torch code).
            raise ValueError(f"inference_tile must be None or an integer of at least 8 pixels, got {self.inference_tile!r}")
        widths = [self.dim, self.dim * 2, self.dim * 4, self.dim * 8]
        for level, (width, num_heads) in enumerate(zip(widths, self.heads), start=1):
            if num_heads <= 0 or width % num_heads:
                raise ValueError(f"level {level} width {width} is not divisible by heads[{level - 1}]={num_heads}")
        # Decoder level 1 and the refinement stage run at 2 dim with heads[0].
        if (self.dim * 2) % self.heads[0]:
            raise ValueError(f"decoder level 1 width {self.dim * 2} is not divisible by heads[0]={self.heads[0]}")
        if self.in_channels <= 0 or self.out_channels <= 0:
            raise ValueError("in_channels and out_channels must be positive")
        if self.in_channels != self.out_channels and not getattr(self, "dual_pixel_task", False):
            raise ValueError(
                f"the global residual adds the input to the output: in_channels ({self.in_channels}) must equal "
                f"out_channels ({self.out_channels})"
            )
