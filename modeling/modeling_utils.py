"""The ``PreTrainedModel`` base shared by every restoration model: weight init, input checks, padding."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

from .configuration_backbone import RestorationBackboneConfig
from .degradation_labels import degradation_weights_from_labels
from .errors import RestorationInputError
from .restormer_blocks import ChannelLayerNorm, MultiDconvHeadTransposedAttention, TransformerBlock

#: Config keys that describe the saved file, not the model: left out where two models' configs are compared.
CONFIG_BOOKKEEPING = frozenset({"transformers_version", "architectures", "auto_map", "custom_pipelines", "dtype",
                                "torch_dtype"})


def model_config_fields(config) -> dict:
    """A config as a dict of what defines the model (no bookkeeping, no ``_``-private keys): equal for two models
    with one architecture and options, whatever file or library version they came from."""
    return {key: value for key, value in config.to_dict().items()
            if not key.startswith("_") and key not in CONFIG_BOOKKEEPING}


def model_fingerprint(model) -> str:
    """Hash (16 hex digits) of a model's config, without its bookkeeping keys, and of every weight's bytes: what
    tells one model from another across files (batch restoration's resume check, an evaluation's publication)."""
    hasher = hashlib.sha256()
    config = getattr(model, "config", None)
    if config is not None:
        hasher.update(json.dumps(model_config_fields(config), sort_keys=True, default=str).encode())
    for key, tensor in model.state_dict().items():
        data = tensor.detach().cpu().contiguous().reshape(-1)
        hasher.update(f"{key}:{data.dtype}:{tuple(tensor.shape)}".encode())
        hasher.update(data.view(torch.uint8).numpy())
    return hasher.hexdigest()[:16]

# Bytes; PyTorch's CPU allocator aligns every new tensor to this.
_CPU_ALIGNMENT = 64


class PromptRestorationPreTrainedModel(PreTrainedModel):
    """Common base: initialisation as the official code, input validation, pad-to-multiple and crop back.

    Degradation labels. A model whose forward is steered by the degradation of each image (PIP, DPPD) sets the
    class attribute ``accepts_degradation_labels = True``; ``restore()``, the pipeline and ``train.py`` ask
    this attribute and nothing else. Such a model parses labels with ``degradation_weights`` (the one parser,
    ``modeling.degradation_labels``) and, when it can tell the degradation itself, overrides
    ``can_estimate_degradation`` and ``estimate_degradation`` so that label-free inference can estimate once
    per image and reuse the weights for every tile.

    Losses. When ``labels`` (clean images) are given, ``output.loss`` is the weighted sum of the terms in
    ``output.loss_terms``; the terms are *unweighted* and keep their autograd graph, and every model has a
    ``"pixel"`` term, so a training loop can treat the pixel term on its own (PIP's loss-spike guard does).
    """

    #: Whether ``forward`` takes ``degradation_labels`` (see the class docstring).
    accepts_degradation_labels: bool = False

    config_class = RestorationBackboneConfig
    base_model_prefix = "unet"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["TransformerBlock"]

    def __init__(self, config: RestorationBackboneConfig, *inputs, **kwargs) -> None:
        # The config checks its values when it is built; one changed afterwards (``config.heads = [3, 1, 2, 2]``
        # before ``from_config``) is checked here, so it fails naming the field instead of deep in a forward.
        validate = getattr(config, "validate", None)
        if callable(validate):
            validate()
        super().__init__(config, *inputs, **kwargs)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """As transformers, then move weights that were loaded at unaligned addresses to aligned copies.

        Safetensors aligns tensors in the file to 8 bytes, and the loaded weights can be views into it. CPU
        matrix-multiply kernels choose their summation order by the address's alignment, so a ``Linear`` with
        such a weight gives results a few ulps away from the model that was saved; aligned copies reproduce it
        bit for bit.
        """
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        with torch.no_grad():
            for tensor in (*model.parameters(), *model.buffers()):
                if tensor.device.type == "cpu" and tensor.numel() and tensor.data_ptr() % _CPU_ALIGNMENT:
                    tensor.data = tensor.data.clone()
        return loaded

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Save as transformers does, with ``auto_map`` naming both AutoModel and AutoModelForImageToImage.

        transformers keeps one auto class per registered model class; the second entry is added here so a
        bare folder loads through either auto class with ``trust_remote_code=True``. A ``custom_pipelines`` entry
        (left on the config by a pipeline save, or by loading such a folder) is written only when its code file
        is in `save_directory` (a pipeline's own save copies it there first): a folder must not name code it
        does not hold, or ``pipeline()`` asks for remote code and then fails to find it.
        """
        if getattr(type(self), "_auto_class", None) is not None:
            module = type(self).__module__.rsplit(".", 1)[-1]
            reference = f"{module}.{type(self).__name__}"
            auto_map = dict(getattr(self.config, "auto_map", None) or {})
            auto_map.setdefault("AutoModel", reference)
            auto_map.setdefault("AutoModelForImageToImage", reference)
            self.config.auto_map = auto_map
        pipelines = getattr(self.config, "custom_pipelines", None)
        if pipelines:
            held = {task: info for task, info in pipelines.items()
                    if (Path(save_directory) / f"{str(info.get('impl', '')).rsplit('.', 1)[0]}.py").is_file()}
            if held:
                self.config.custom_pipelines = held
            else:
                del self.config.custom_pipelines
        try:
            return super().save_pretrained(save_directory, *args, **kwargs)
        finally:
            if pipelines:
                self.config.custom_pipelines = pipelines

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Initialise like the official code: PyTorch defaults for conv/linear, ones for norms and temperatures.

        transformers calls this only for modules that own parameters directly; modules with parameters of
        their own kind (prompts, mixing weights) define ``init_own_parameters()``.
        """
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            module.reset_parameters()
        elif isinstance(module, ChannelLayerNorm):
            nn.init.ones_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, MultiDconvHeadTransposedAttention):
            nn.init.ones_(module.temperature)
        elif hasattr(module, "init_own_parameters"):
            module.init_own_parameters()

    def compile_transformer_blocks(self, **compile_kwargs) -> int:
        """Regional ``torch.compile``: compile every Restormer ``TransformerBlock`` in place; returns how many.

        The blocks hold nearly all of the work and repeat with few distinct widths, so compiling them (rather
        than the whole model, whose prompt modules branch on data) is quick and free of graph breaks; the blocks
        of one width share their compiled code (PyTorch inlines the module, so its weights are inputs, not
        constants). Shapes are static by default (``dynamic=False``): each new input size compiles once more,
        so this suits fixed training crops and benchmarks, not one-off restores of arbitrary sizes. Weights,
        ``state_dict`` keys and outputs are unchanged. ``compile_kwargs`` go to ``nn.Module.compile``.
        """
        compile_kwargs.setdefault("dynamic", False)
        blocks = [module for module in self.modules() if isinstance(module, TransformerBlock)]
        for block in blocks:
            block.compile(**compile_kwargs)
        return len(blocks)

    @property
    def can_estimate_degradation(self) -> bool:
        """Whether ``estimate_degradation`` works (a label-taking model with a built-in estimator)."""
        return False

    def estimate_degradation(self, pixel_values: torch.Tensor, hard: bool = False) -> torch.Tensor:
        """(B, num_degradations) weights the model would use for ``pixel_values`` without labels."""
        raise RestorationInputError(f"{type(self).__name__} does not estimate the degradation of its inputs")

    def degradation_weights(
        self, degradation_labels, batch_size: int, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """Parse ``degradation_labels`` (names, aliases, mixtures, indices, weights) against this model's classes."""
        if not self.accepts_degradation_labels:
            raise RestorationInputError(f"{type(self).__name__} does not take degradation labels")
        return degradation_weights_from_labels(degradation_labels, self.config.degradation_names, batch_size, device)

    def check_pixel_values(self, pixel_values: torch.Tensor, name: str = "pixel_values") -> None:
        """Raise ``RestorationInputError`` naming the problem for inputs the network cannot restore."""
        if not isinstance(pixel_values, torch.Tensor):
            raise RestorationInputError(f"{name} must be a torch.Tensor, got {type(pixel_values).__name__}")
        if pixel_values.ndim != 4:
            raise RestorationInputError(
                f"{name} must have shape (batch, channels, height, width), got shape {tuple(pixel_values.shape)}"
            )
        if pixel_values.shape[1] != self.config.in_channels:
            raise RestorationInputError(
                f"{name} has {pixel_values.shape[1]} channels but the model expects {self.config.in_channels}"
            )
        if 0 in pixel_values.shape:
            raise RestorationInputError(f"{name} is empty: shape {tuple(pixel_values.shape)}")
        if not pixel_values.is_floating_point():
            raise RestorationInputError(
                f"{name} must be a floating-point tensor in [0, 1], got dtype {pixel_values.dtype}; "
                "use the image processor to convert integer images"
            )
        weights = next((p.dtype for p in self.parameters() if p.is_floating_point()), pixel_values.dtype)
        if pixel_values.dtype != weights and not torch.is_autocast_enabled(pixel_values.device.type):
            # Outside autocast every layer needs its input in the weights' dtype (torch would stop in the first one).
            raise RestorationInputError(
                f"{name} is {pixel_values.dtype} but the model's weights are {weights}: convert it "
                f"(pixel_values.to({weights})) or run under torch.autocast"
            )
        # Value checks read the tensor back to the host. Inside torch.compile they are skipped, so that a compiled
        # model is one graph without host syncs (what CUDA graphs need); eager calls, restore() included, check.
        if not torch.compiler.is_compiling() and not torch.isfinite(pixel_values).all():
            raise RestorationInputError(f"{name} contains NaN or infinite values")

    def pad_to_multiple(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Pad bottom/right so height and width are multiples of ``config.size_multiple``.

        Reflect padding (as the official test scripts) needs the pad to be smaller than the side; tiny
        images fall back to replicate padding instead of failing.
        """
        multiple = self.config.size_multiple
        height, width = pixel_values.shape[-2:]
        pad_h, pad_w = (-height) % multiple, (-width) % multiple
        if not pad_h and not pad_w:
            return pixel_values
        mode = self.config.pad_mode
        if mode == "reflect" and (pad_h >= height or pad_w >= width):
            mode = "replicate"
        return F.pad(pixel_values, (0, pad_w, 0, pad_h), mode=mode)

    @staticmethod
    def crop_to(tensor: torch.Tensor, height: int, width: int) -> torch.Tensor:
        return tensor[..., :height, :width]

    def l1_loss(
        self, restored: torch.Tensor, labels: torch.Tensor, pixel_values: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Mean L1 distance to the clean ``labels`` (Restormer's and PromptIR's loss) and its named term."""
        self.check_labels(labels, pixel_values)
        loss = F.l1_loss(restored, labels.to(restored.dtype))
        return loss, {"pixel": loss}

    def check_labels(self, labels: torch.Tensor, pixel_values: torch.Tensor) -> None:
        """Raise ``RestorationInputError`` for ``labels`` the loss cannot use: a shape unlike the output's, an
        integer dtype, NaN or infinity."""
        if not isinstance(labels, torch.Tensor) or labels.shape[0] != pixel_values.shape[0] or labels.shape[-2:] != pixel_values.shape[-2:]:
            shape = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
            raise RestorationInputError(
                f"labels must be clean images shaped like the output (batch {pixel_values.shape[0]}, "
                f"{self.config.out_channels} channels, {tuple(pixel_values.shape[-2:])}), got {shape}"
            )
        if labels.shape[1] != self.config.out_channels:
            raise RestorationInputError(
                f"labels have {labels.shape[1]} channels but the model writes {self.config.out_channels}"
            )
        # An integer image (0-255) would be cast to float and give a loss about 255 times too large, silently.
        if not labels.is_floating_point():
            raise RestorationInputError(
                f"labels must be a floating-point tensor in [0, 1], got dtype {labels.dtype}; "
                "use the image processor to convert integer images"
            )
        # As for pixel_values: skipped inside torch.compile, where it would be a host sync.
        if not torch.compiler.is_compiling() and not torch.isfinite(labels).all():
            raise RestorationInputError("labels contain NaN or infinite values")
