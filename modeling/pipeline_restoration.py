"""Custom ``image-restoration`` pipeline task (transformers 5 removed the stock ``image-to-image`` task).

``preprocess`` / ``_forward`` / ``postprocess`` delegate to `RestorationImageProcessor` and
`modeling.inference.run_model`, so the pipeline restores exactly like `restore()` and the CLI.

```python
>>> from transformers import pipeline
>>> pipe = pipeline("image-restoration", model=model, image_processor=RestorationImageProcessor())
>>> restored = pipe("noisy.png", tile=256)  # PIL image of the original size
```
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Sized
from pathlib import Path
from typing import Any, Optional

import torch
from transformers import AutoModelForImageToImage, Pipeline
from transformers.pipelines import PIPELINE_REGISTRY
from transformers.utils import logging

from .image_processing_restoration import RestorationImageProcessor
from .inference import (
    AUTO_MODES,
    DEFAULT_AUTO_MODE,
    accepts_degradation_labels,
    default_output_type,
    degradation_label_ids,
    estimate_degradation_weights,
    is_auto,
    check_statistics_passes,
    check_tile_options,
    resolve_channels_last,
    resolve_device,
    resolve_dtype,
    resolve_statistics_passes,
    resolve_statistics_tolerance,
    run_model,
)


logger = logging.get_logger(__name__)

TASK_NAME = "image-restoration"

#: Call arguments of the pipeline (besides the inputs); `batch_size` and `num_workers` are the base class's.
CALL_ARGUMENTS = (
    "tile", "tile_overlap", "statistics_passes", "statistics_tolerance", "degradation", "auto_mode", "dtype",
    "output_type", "channels_last",
)
_OUTPUT_TYPES = ("pil", "np", "pt")


def _unknown_argument_error(names: list[str]) -> TypeError:
    valid = CALL_ARGUMENTS + ("batch_size", "num_workers")
    parts = []
    for name in names:
        close = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
        parts.append(f"'{name}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
    return TypeError(
        f"Unknown argument{'s' if len(names) > 1 else ''} for the {TASK_NAME} pipeline: {', '.join(parts)}. "
        f"Valid arguments: {', '.join(valid)}."
    )


class ImageRestorationPipeline(Pipeline):
    """Restore images with any `*ForImageRestoration` model.

    Call kwargs:
    - `tile` (int >= 8, tiled inference; 0: whole image; default: the model's `inference_tile`, else whole images
      up to 4 megapixels and 1024-px tiles above), `tile_overlap` (int in [0, tile // 2]; default 32, capped at
      tile // 4; with no tile, checked against the default tile; see `modeling.inference.check_tile_options`);
    - `statistics_passes` (int >= 0: the most passes gathering whole-image statistics for the tiles; default as
      `restore`: 6 whenever tiles split the image), `statistics_tolerance` (stop the passes once they settle;
      default as `restore`: 0.01; 0: all passes);
    - `degradation` (name, index, mixture or "auto", one for all the images; only for models taking
      `degradation_labels`; checked where it is given, as `dtype` is), `auto_mode`
      ("cautious", the default, "hard" or "soft"; see `restore`);
    - `dtype` ("auto", the default: bf16 on a CPU with native bf16, fp32 elsewhere; "fp32", "bf16", "fp16":
      autocast precision), `output_type` ("pil", "np" or "pt"; default: the kind of the input, PIL for paths,
      uint16 numpy for 16-bit colour files), `channels_last` (default: the CPU fast path on CPU; False: plain NCHW).

    Each may also be given once to `pipeline(...)`, except `dtype`: there transformers takes it as the torch dtype
    to load the weights in (`torch.bfloat16` or "bfloat16"; "bf16" or "fp32" are no torch dtypes and fail in
    transformers), so the autocast precision is a call kwarg only. Transformers does not convert a model instance;
    a construction `dtype` other than "auto" that is not the instance's own weights' dtype raises a ValueError
    (it used to be dropped silently).
    `pipeline(..., device=...)` is checked as `restore()` checks it (ValueError for a device this torch cannot use,
    e.g. "cuda" on a CPU-only build, or "meta") before the model is moved.
    Unknown or positional arguments raise a TypeError naming the closest valid one. Inputs: PIL images, numpy
    arrays, tensors or file paths, or a list (or tuple) of them, which returns a list (empty for an empty one), or
    a generator or dataset (e.g. `KeyDataset`), which returns an iterator (empty for an empty one).
    Images go through the model one at a time, in eval mode as `restore` runs it (a model given in training mode
    is put back in it afterwards); use `modeling.inference.restore` to batch same-size images.
    """

    _load_processor = False
    # None: transformers tries to load the folder's image processor and leaves it None when there is none (a
    # plain `model.save_pretrained` folder, a model instance), where `__init__` takes the default one.
    _load_image_processor = None
    _load_feature_extractor = False
    _load_video_processor = False  # else transformers looks for one and asks whether to run the folder's code
    _load_tokenizer = False

    def __init__(self, *args, **kwargs) -> None:
        device = kwargs.get("device")
        if isinstance(device, (str, torch.device)):
            # Before the base class moves the model there: it would fail deep in torch ("Torch not compiled with
            # CUDA enabled") or, for "meta", drop the caller's weights. Same check and message as restore().
            resolve_device(device)
        construction_dtype = kwargs.get("dtype")
        super().__init__(*args, **kwargs)
        if not is_auto(construction_dtype):
            self._check_construction_dtype(construction_dtype)
        if self.image_processor is None:  # the default one pads (do_pad=True) as this model pads its input
            self.image_processor = RestorationImageProcessor().padding_like(self.model)

    def _check_construction_dtype(self, dtype: Any) -> None:
        """ValueError unless `dtype` (given to `pipeline(...)`) is the dtype of the weights: for a folder or Hub id
        transformers loads them in it, but a model instance is used as it is and the base class drops `dtype`."""
        wanted = getattr(torch, dtype, None) if isinstance(dtype, str) else dtype
        weights = getattr(self.model, "dtype", None)
        if isinstance(wanted, torch.dtype) and wanted == weights:
            return
        raise ValueError(
            f"pipeline(..., dtype={dtype!r}) names the dtype to load weights in, but the model's weights are "
            f"{weights} and transformers does not convert a model instance. For autocast precision pass it when "
            f"calling the pipeline (pipe(image, dtype='bf16')); to convert the weights, use model.to(torch.bfloat16) "
            "before building the pipeline."
        )

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        """Save model, config, image processor and code, with this pipeline's code and its ``custom_pipelines``
        entry also where the class was loaded as remote code (this package not installed)."""
        # transformers copies a pipeline's code only for a class in its registry (`register_pipeline` puts the
        # package's class there); a class loaded from a folder's code is not, and its save lost the pipeline.
        if getattr(type(self), "_registered_impl", None) is None:
            type(self)._registered_impl = {
                TASK_NAME: {"impl": type(self), "pt": (AutoModelForImageToImage,), "type": "image"}
            }
        super().save_pretrained(save_directory, **kwargs)

    def __call__(self, inputs: Any, *args, **kwargs) -> Any:
        # The base class only warns about positional arguments and drops them ("Ignoring args").
        if args:
            raise TypeError(
                f"The {TASK_NAME} pipeline takes the image(s) as its only positional argument; pass options by name "
                f"({', '.join(f'{name}=...' for name in CALL_ARGUMENTS)}), got {len(args)} more."
            )
        if isinstance(inputs, tuple):  # the base class only batches lists; a tuple would reach one image's code
            inputs = list(inputs)
        if isinstance(inputs, list) and not inputs:
            self._sanitize_parameters(**kwargs)  # options are still checked
            return []
        if isinstance(inputs, torch.utils.data.Dataset) and isinstance(inputs, Sized) and len(inputs) == 0:
            # The base class reads a KeyDataset's first item (to look for chat messages): IndexError when empty,
            # e.g. a filtered datasets.Dataset. Datasets give an iterator back, here one with nothing in it.
            self._sanitize_parameters(**kwargs)
            return iter(())
        return super().__call__(inputs, **kwargs)

    def _sanitize_parameters(
        self,
        tile: Optional[int] = None,
        tile_overlap: Optional[int] = None,
        degradation: Any = None,
        auto_mode: Optional[str] = None,
        dtype: Any = None,
        output_type: Optional[str] = None,
        channels_last: Optional[bool] = None,
        statistics_passes: Optional[int] = None,
        statistics_tolerance: Optional[float] = None,
        **kwargs,
    ) -> tuple[dict, dict, dict]:
        if kwargs:
            raise _unknown_argument_error(sorted(kwargs))
        check_statistics_passes(statistics_passes)
        resolve_statistics_tolerance(statistics_tolerance)
        # Fail before the first image, on the tiling the run will use: a call's options are merged over those given
        # at construction (Pipeline.__call__), which this attribute holds once construction is done.
        constructed = getattr(self, "_forward_params", {})
        check_tile_options(self.model, tile if tile is not None else constructed.get("tile"),
                           tile_overlap if tile_overlap is not None else constructed.get("tile_overlap"))
        if output_type is not None and output_type not in _OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {', '.join(map(repr, _OUTPUT_TYPES))}, got {output_type!r}.")
        preprocess_params: dict = {}
        forward_params: dict = {}
        postprocess_params: dict = {}
        if degradation is not None:
            # Checked here, as restore() checks it before any image: a typo or a label for a model that takes none
            # would otherwise pass pipeline(...) and an empty input, and fail only at the first image.
            if isinstance(degradation, (list, tuple)) and len(degradation) != 1:
                raise ValueError(
                    f"The {TASK_NAME} pipeline takes one degradation for all its images (a name, an index, a mixture "
                    f"such as 'rain+haze', or 'auto'), got a list of {len(degradation)}; restore(images, "
                    "degradation=[...]) takes one per image."
                )
            degradation_label_ids(self.model, degradation, 1)
            preprocess_params["degradation"] = degradation
        if auto_mode is not None:
            if auto_mode not in AUTO_MODES:  # checked for every model, as restore() does, not at the first image
                raise ValueError(f"auto_mode must be one of {AUTO_MODES}, got {auto_mode!r}.")
            forward_params["auto_mode"] = auto_mode
        if tile is not None:
            forward_params["tile"] = tile
        if tile_overlap is not None:
            forward_params["tile_overlap"] = tile_overlap
        if statistics_passes is not None:
            forward_params["statistics_passes"] = statistics_passes
        if statistics_tolerance is not None:
            forward_params["statistics_tolerance"] = statistics_tolerance
        if dtype is not None:
            resolve_dtype(dtype)  # a wrong name fails before the first image, as in restore()
            forward_params["dtype"] = dtype
        if channels_last is not None:
            resolve_channels_last(channels_last, self.device)  # a wrong value fails before the first image
            forward_params["channels_last"] = channels_last
        if output_type is not None:
            postprocess_params["output_type"] = output_type
        return preprocess_params, forward_params, postprocess_params

    def preprocess(self, image: Any, degradation: Any = None) -> dict:
        features = self.image_processor(image, do_pad=False, return_tensors="pt")
        inputs = {"pixel_values": features["pixel_values"], "metadata": features["metadata"][0]}
        labels = degradation_label_ids(self.model, degradation, 1)
        if labels is not None:
            inputs["degradation_labels"] = labels
        return inputs

    def _forward(
        self,
        model_inputs: dict,
        tile: Optional[int] = None,
        tile_overlap: Optional[int] = None,
        dtype: Any = None,
        auto_mode: str = DEFAULT_AUTO_MODE,
        channels_last: Optional[bool] = None,
        statistics_passes: Optional[int] = None,
        statistics_tolerance: Optional[float] = None,
    ) -> dict:
        # Inference mode, as restore() runs it: a model given in training mode (a fresh instance, or one from a
        # training loop) would sample DPPD's prompts at random, a different output on every call. Its mode is put
        # back afterwards.
        was_training = self.model.training
        self.model.eval()
        try:
            weights = model_inputs.get("degradation_labels")
            if weights is None and accepts_degradation_labels(self.model):
                # Label-free: estimate once for the whole image, then every tile uses the same prompts.
                weights = estimate_degradation_weights(
                    self.model, model_inputs["pixel_values"], auto_mode=auto_mode, device=self.device, dtype=dtype,
                    channels_last=channels_last,
                )
            reconstruction = run_model(
                self.model,
                model_inputs["pixel_values"],
                degradation_labels=weights,
                tile=tile,
                tile_overlap=tile_overlap,
                device=self.device,
                dtype=dtype,
                channels_last=channels_last,
                statistics_passes=resolve_statistics_passes(
                    self.model, statistics_passes, tile, model_inputs["pixel_values"].shape[-2:]
                ),
                statistics_tolerance=resolve_statistics_tolerance(statistics_tolerance),
            )
        finally:
            if was_training:
                self.model.train()
        return {"reconstruction": reconstruction, "metadata": model_inputs["metadata"]}

    def postprocess(self, model_outputs: dict, output_type: Optional[str] = None) -> Any:
        meta = model_outputs["metadata"]
        output_type = output_type or default_output_type(meta)
        return self.image_processor.postprocess(model_outputs["reconstruction"], [meta], output_type)[0]

    def get_iterator(self, inputs, num_workers, batch_size, preprocess_params, forward_params, postprocess_params):
        # Images of different sizes cannot be collated; the generic pad-collate would break the metadata.
        if batch_size and batch_size > 1:
            logger.warning_once(
                f"The {TASK_NAME} pipeline runs one image at a time; ignoring batch_size={batch_size}. "
                "Use modeling.inference.restore(..., batch_size=N) to batch same-size images."
            )
        return super().get_iterator(inputs, num_workers, 1, preprocess_params, forward_params, postprocess_params)


def register_pipeline() -> None:
    """Register the `image-restoration` task with transformers' `PIPELINE_REGISTRY` (idempotent)."""
    registered = PIPELINE_REGISTRY.supported_tasks.get(TASK_NAME)
    if registered is not None and registered.get("impl") is ImageRestorationPipeline:
        return
    PIPELINE_REGISTRY.register_pipeline(
        TASK_NAME,
        pipeline_class=ImageRestorationPipeline,
        pt_model=AutoModelForImageToImage,
        type="image",
    )


#: Config keys that point at the code files of a saved folder (remote code): stripped when the code is left out.
_CODE_REFERENCES = ("auto_map", "custom_pipelines")


def save_restoration_folder(
    model: Any, folder: str | os.PathLike, image_processor: Optional[RestorationImageProcessor] = None,
    *, with_code: bool = True,
) -> Path:
    """Save weights (safetensors), config, image processor and, with `with_code`, the modeling code and the
    pipeline definition: the folder then loads with `AutoModel`, `AutoImageProcessor` and
    ``pipeline("image-restoration", ...)`` both with this package (``pipeline_class=ImageRestorationPipeline``)
    and without it (``trust_remote_code=True``). Without the code (a folder shipped inside the package) the config
    keeps no reference to code files, so ``pipeline("image-restoration", model=folder)`` works with the package.
    The saved image processor (`image_processor`, default settings when None) pads as the model pads its input
    (`RestorationImageProcessor.padding_like`: the config's `pad_mode` and multiple)."""
    from transformers import pipeline

    register_pipeline()
    folder = Path(folder)
    device = next(model.parameters()).device
    image_processor = (image_processor or RestorationImageProcessor()).padding_like(model)
    restorer = pipeline(TASK_NAME, model=model, image_processor=image_processor, device=device)
    restorer.save_pretrained(folder)
    if not with_code:
        for code_file in folder.glob("*.py"):
            code_file.unlink()
        strip_code_references(folder)
    return folder


def strip_code_references(folder: str | os.PathLike) -> list[str]:
    """Remove ``auto_map`` and ``custom_pipelines`` from a saved folder's config files, for a folder kept without
    its code files (transformers would otherwise ask for `trust_remote_code` and then look for files that are not
    there). Returns the names of the files changed."""
    changed = []
    for name in ("config.json", "preprocessor_config.json"):
        path = Path(folder) / name
        if not path.is_file():
            continue
        saved = json.loads(path.read_text())
        if any(key in saved for key in _CODE_REFERENCES):
            path.write_text(json.dumps({k: v for k, v in saved.items() if k not in _CODE_REFERENCES}, indent=2,
                                       sort_keys=True) + "\n")
            changed.append(name)
    return changed


__all__ = [
    "ImageRestorationPipeline", "TASK_NAME", "register_pipeline", "save_restoration_folder", "strip_code_references",
]
