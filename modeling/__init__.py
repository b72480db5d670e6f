"""Prompt-learning all-in-one image restoration models as transformers models.

Importing this package registers every model with ``AutoConfig``, ``AutoModel``,
``AutoModelForImageToImage`` and ``AutoImageProcessor``, registers the ``image-restoration`` pipeline task,
and marks the classes for ``auto_map`` so that a
folder written by ``save_pretrained`` carries its own code and loads with ``trust_remote_code=True`` where
this package is not installed.
"""

from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageToImage

from .configuration_backbone import DEGRADATION_NAMES, RestorationBackboneConfig
from .configuration_cpl import CPLConfig
from .configuration_dppd import DPPDConfig
from .configuration_pip import PIPConfig
from .configuration_promptir import PromptIRConfig
from .configuration_restormer import RestormerConfig
from .image_processing_restoration import RestorationImageProcessor
from .decoder_prompts import PerPlace
from .inference import restore
from .modeling_cpl import CPLForImageRestoration
from .modeling_dppd import DPPDForImageRestoration
from .modeling_outputs import ImageRestorationOutput
from .modeling_pip import PIPForImageRestoration
from .modeling_promptir import PromptIRForImageRestoration
from .modeling_restormer import RestormerForImageRestoration
from .modeling_utils import PromptRestorationPreTrainedModel, RestorationInputError
from .pipeline_restoration import ImageRestorationPipeline, register_pipeline, save_restoration_folder

MODEL_CLASSES = {
    "restormer": (RestormerConfig, RestormerForImageRestoration),
    "promptir": (PromptIRConfig, PromptIRForImageRestoration),
    "pip": (PIPConfig, PIPForImageRestoration),
    "cpl": (CPLConfig, CPLForImageRestoration),
    "dppd": (DPPDConfig, DPPDForImageRestoration),
}


def _register() -> None:
    for model_type, (config_class, model_class) in MODEL_CLASSES.items():
        AutoConfig.register(model_type, config_class, exist_ok=True)
        AutoModel.register(config_class, model_class, exist_ok=True)
        AutoModelForImageToImage.register(config_class, model_class, exist_ok=True)
        config_class.register_for_auto_class()
        # One auto class per model class is stored; the base class's save_pretrained adds the
        # AutoModelForImageToImage entry to auto_map next to this one.
        model_class.register_for_auto_class("AutoModel")
        AutoImageProcessor.register(config_class, image_processor_classes={"pil": RestorationImageProcessor}, exist_ok=True)
    RestorationImageProcessor.register_for_auto_class("AutoImageProcessor")
    register_pipeline()


_register()

__all__ = [
    "CPLConfig",
    "CPLForImageRestoration",
    "DEGRADATION_NAMES",
    "DPPDConfig",
    "DPPDForImageRestoration",
    "ImageRestorationOutput",
    "ImageRestorationPipeline",
    "MODEL_CLASSES",
    "PIPConfig",
    "PerPlace",
    "PIPForImageRestoration",
    "PromptIRConfig",
    "PromptIRForImageRestoration",
    "PromptRestorationPreTrainedModel",
    "RestorationBackboneConfig",
    "RestorationInputError",
    "RestormerConfig",
    "RestormerForImageRestoration",
    "RestorationImageProcessor",
    "register_pipeline",
    "save_restoration_folder",
    "restore",
]
