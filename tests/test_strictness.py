"""A typo never passes silently: unknown config keys and forward arguments raise, naming the closest valid one."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_config, tiny_model

import modeling
from modeling import PIPConfig, PromptIRConfig, RestormerConfig


@pytest.mark.parametrize(
    "config_class, typo, suggestion",
    [(PIPConfig, "prompt_dim", "prompt_dims"), (PromptIRConfig, "prompt_lenght", "prompt_len"),
     (RestormerConfig, "num_block", "num_blocks"), (PIPConfig, "zzz_not_a_field", None)],
)
def test_unknown_config_key_names_the_closest_field(config_class, typo, suggestion):
    with pytest.raises(TypeError, match=typo) as error:
        config_class(**{typo: [1, 2, 3]})
    if suggestion:
        assert f"did you mean '{suggestion}'" in str(error.value)
    else:
        assert "did you mean" not in str(error.value)


def test_transformers_standard_kwargs_still_work():
    config = PIPConfig(torch_dtype="float32", num_labels=3, output_attentions=False, name_or_path="x")
    assert config.dtype == torch.float32 and config.num_labels == 3


def test_config_saved_by_a_newer_version_still_loads(tmp_path, model_type):
    config = tiny_config(model_type)
    config.save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    data["field_from_a_future_version"] = 7
    (tmp_path / "config.json").write_text(json.dumps(data))
    loaded = type(config).from_pretrained(tmp_path)
    assert loaded.field_from_a_future_version == 7
    assert loaded.dim == config.dim
    # And the strict check is back on for direct construction afterwards.
    with pytest.raises(TypeError):
        type(config)(field_from_a_future_version=7)


@pytest.mark.parametrize(
    "overrides, message",
    [(dict(topm_weight_init=float("nan")), "topm_weight_init must be a finite number"),
     (dict(decoder_prompts="yes"), "decoder_prompts must be True or False"),
     (dict(use_degradation_estimator=1), "use_degradation_estimator must be True or False"),
     (dict(prompt_interaction_ffn_expansion_factor=float("inf")), "finite"),
     (dict(bias="no"), "bias must be True or False")],
)
def test_pip_config_value_checks(overrides, message):
    from huggingface_hub.errors import StrictDataclassClassValidationError

    with pytest.raises(StrictDataclassClassValidationError, match=message):
        PIPConfig(**overrides)


def test_forward_rejects_misspelled_keyword(model_type):
    model = tiny_model(model_type)
    with pytest.raises(TypeError, match="degradation_label"):
        model(torch.rand(1, 3, 8, 8), degradation_label="rain")


def test_only_label_models_declare_labels():
    declared = {name: model_class.accepts_degradation_labels for name, (_, model_class) in modeling.MODEL_CLASSES.items()}
    assert declared["pip"] is True
    assert declared["restormer"] is False and declared["promptir"] is False
