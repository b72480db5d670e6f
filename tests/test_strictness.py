"""A typo never passes silently: unknown config keys and forward arguments raise, naming the closest valid one."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import TINY_CONFIGS, tiny_config, tiny_model

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


def config_key_warnings(caplog) -> list[str]:
    """Warnings of the shared config check, from the package or from a folder's copied code (transformers_modules)."""
    return [record.getMessage() for record in caplog.records if record.name.endswith("configuration_backbone")]


def test_a_misspelled_from_pretrained_override_is_named_with_the_closest_field(tmp_path, model_type, caplog):
    """transformers drops a keyword of from_pretrained that is no attribute of the config without a word: the user
    who typed num_blokcs= got the saved depths and no hint that the override never applied."""
    from transformers import AutoConfig

    config = tiny_config(model_type)
    config.save_pretrained(tmp_path)
    name = type(config).__name__
    with caplog.at_level(logging.WARNING):
        loaded = type(config).from_pretrained(tmp_path, num_blokcs=[2, 2, 2, 2])
        auto = AutoConfig.from_pretrained(tmp_path, dimm=16, zzz_not_a_field=1)
        known = AutoConfig.from_pretrained(tmp_path, pad_mode="replicate", dtype="float32", output_attentions=False)
    assert loaded.num_blocks == config.num_blocks and not hasattr(loaded, "num_blokcs")
    assert auto.dim == config.dim and known.pad_mode == "replicate"
    assert config_key_warnings(caplog) == [
        f"{name}.from_pretrained: ignoring unknown argument(s) 'num_blokcs' (did you mean 'num_blocks'?)",
        f"{name}.from_pretrained: ignoring unknown argument(s) 'dimm' (did you mean 'dim'?), 'zzz_not_a_field'",
    ]


def test_a_misspelled_key_in_config_json_is_named_with_the_closest_field(tmp_path, caplog):
    config = tiny_config("pip")
    config.save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    data["prompt_dim"] = data.pop("prompt_dims")  # a hand edit: the default prompt widths are built instead
    (tmp_path / "config.json").write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING):
        loaded = PIPConfig.from_pretrained(tmp_path)
    assert loaded.prompt_dims == PIPConfig().prompt_dims
    assert config_key_warnings(caplog) == [
        "PIPConfig: config.json holds key(s) unknown to this version, kept as attributes but used by nothing: "
        "'prompt_dim' (did you mean 'prompt_dims'?)"
    ]


def test_every_config_json_this_package_writes_loads_without_an_unknown_key_warning(tmp_path, caplog):
    """The keys transformers writes (transformers_version, architectures, auto_map, custom_pipelines, dtype, ...)
    are no typos: the warning must stay silent for the shipped models, for folders saved plainly, with their code
    (training, publish) and by the converters, and for their code loaded as remote code."""
    from transformers import AutoConfig, AutoModel, pipeline

    from modeling.conversion.common import save_converted

    repo = Path(__file__).resolve().parents[1]
    folders = [path.parent for path in (repo / "modeling" / "demo").glob("config.json")]
    folders += [path.parent for path in (repo / "training" / "weights").glob("*/config.json")]
    assert len(folders) > 1
    with_code = []
    for model_type in sorted(TINY_CONFIGS):
        model = tiny_model(model_type)
        model.save_pretrained(tmp_path / f"{model_type}-plain")
        modeling.save_restoration_folder(model, tmp_path / f"{model_type}-with-code")
        folders += [tmp_path / f"{model_type}-plain", tmp_path / f"{model_type}-with-code"]
        with_code.append(tmp_path / f"{model_type}-with-code")
    official = {  # the options the converters set for official checkpoints
        "restormer": dict(dual_pixel_task=True, in_channels=6, out_channels=3),
        "promptir": dict(keep_unused_official_modules=True),
        "pip": dict(keep_unused_official_modules=True, use_degradation_estimator=False),
    }
    for model_type, overrides in official.items():
        labels = {"degradation_labels": "noise"} if model_type == "pip" else {}
        save_converted(tiny_model(model_type, **overrides), str(tmp_path / f"{model_type}-converted"), **labels)
        folders.append(tmp_path / f"{model_type}-converted")
    assert {"auto_map", "custom_pipelines", "transformers_version", "architectures", "dtype"} <= set(
        json.loads((with_code[0] / "config.json").read_text()))
    with caplog.at_level(logging.WARNING):
        for folder in folders:
            config = AutoConfig.from_pretrained(folder)
            type(config).from_pretrained(folder)
            if folder.is_relative_to(tmp_path):  # the shipped weights are larger; their config was read above
                AutoModel.from_pretrained(folder)
        pipeline("image-restoration", model=str(with_code[0]), pipeline_class=modeling.ImageRestorationPipeline)
    assert config_key_warnings(caplog) == []
    # The configs' own code copied into the folders, where the package is not importable (one process for all five).
    script = textwrap.dedent(
        f"""
        import logging, sys
        sys.modules["modeling"] = None
        from transformers import AutoConfig
        warnings = []
        handler = logging.Handler(logging.WARNING)
        handler.emit = lambda record: warnings.append(record.name + ": " + record.getMessage())
        logging.getLogger().addHandler(handler)
        for folder in {[str(folder) for folder in with_code]!r}:
            config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
            assert type(config).__module__.startswith("transformers_modules"), type(config).__module__
        print("REMOTE_WARNINGS", [w for w in warnings if "configuration_backbone" in w])
        AutoConfig.from_pretrained(folder, trust_remote_code=True, dimm=8)  # the capture itself works
        print("TYPO_WARNINGS", len([w for w in warnings if "configuration_backbone" in w and "'dimm'" in w]))
        """
    )
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["HF_MODULES_CACHE"] = str(tmp_path / "modules")
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert "REMOTE_WARNINGS []" in result.stdout and "TYPO_WARNINGS 1" in result.stdout, \
        result.stdout + result.stderr[-3000:]


@pytest.mark.parametrize(
    "overrides, message",
    [(dict(topm_weight_init=float("nan")), "topm_weight_init must be a finite number"),
     (dict(decoder_prompts="yes"), "decoder_prompts must be True or False"),
     (dict(use_degradation_estimator=1), "use_degradation_estimator must be True or False"),
     (dict(prompt_interaction_ffn_expansion_factor=float("inf")), "finite"),
     (dict(bias="no"), "bias must be True or False"),
     # An infinite weight makes the loss inf from the first step; a negative one a term the training maximises.
     (dict(frequency_loss_weight=float("inf")), "frequency_loss_weight must be a finite number"),
     (dict(degradation_estimator_loss_weight=-5.0), "degradation_estimator_loss_weight must be non-negative"),
     (dict(prompt_regularization_weight=-1.0), "prompt_regularization_weight must be non-negative"),
     (dict(prompt_angle_scale=-0.01), "prompt_angle_scale must be non-negative"),
     (dict(contrastive_layer_weights=[-1, 1, 1, 1, 1]), "contrastive_layer_weights must be non-negative")],
)
def test_pip_config_value_checks(overrides, message):
    from huggingface_hub.errors import StrictDataclassClassValidationError

    with pytest.raises(StrictDataclassClassValidationError, match=message):
        PIPConfig(**overrides)


@pytest.mark.parametrize(
    "config_class, overrides, message",
    [(PIPConfig, dict(prompt_sizes=[0, 4, 2]), "prompt_sizes must be an integer of at least 1, got 0"),
     (PIPConfig, dict(prompt_dims=[-8, 128, 320]), "prompt_dims must be an integer of at least 1, got -8"),
     (PIPConfig, dict(degradation_estimator_hidden_dim=0), "degradation_estimator_hidden_dim must be an integer"),
     (PIPConfig, dict(decoder_prompts=True, decoder_prompt_sizes=[0, 4, 2]), "decoder_prompt_sizes must be"),
     (PIPConfig, dict(decoder_prompts=True, decoder_prompt_len=0), "decoder_prompt_len must be"),
     (PromptIRConfig, dict(prompt_fusion_heads=0), "prompt_fusion_heads must be an integer of at least 1"),
     (RestormerConfig, dict(dim=8, ffn_expansion_factor=0.1), "leaves no hidden channel at width 8"),
     (PIPConfig, dict(prompt_dims=[16, 32, 64], prompt_interaction_ffn_expansion_factor=0.05),
      "prompt_interaction_ffn_expansion_factor 0.05 leaves no hidden channel at prompt width 16"),
     (RestormerConfig, dict(dim=8.0), "dim must be an integer"),
     (RestormerConfig, dict(num_blocks=[1.5, 1, 1, 1]), "num_blocks must list integers"),
     (PIPConfig, dict(degradation_names=["Noise", "rain", "haze", "blur", "low-light"]), "use 'noise'"),
     (PIPConfig, dict(degradation_names=["noise", "rain", "haze", "blur", "low_light"]), "use 'low-light'"),
     (PIPConfig, dict(degradation_names=["noise", "rain", "haze", "blur", "auto"]), "'auto' asks for"),
     (PIPConfig, dict(degradation_names=["noise", "rain", "haze", "blur", ""]), "non-empty strings"),
     (PIPConfig, dict(degradation_names=["noise", "rain", "haze", "blur", "rain+haze"]), "may not contain '\\+'"),
     (modeling.DPPDConfig, dict(degradation_names=["Rain"]), "use 'rain'"),
     # Strings are truthy: "false" used to switch the option on (a dual-pixel model, the dead official modules).
     (RestormerConfig, dict(in_channels=6, out_channels=6, dual_pixel_task="false"),
      "dual_pixel_task must be True or False, got 'false'"),
     (PromptIRConfig, dict(keep_unused_official_modules="false"),
      "keep_unused_official_modules must be True or False, got 'false'")],
)
def test_config_values_that_would_fail_later_are_refused_now(config_class, overrides, message):
    """Values that used to pass the config and then fail deep inside the model (zero or negative sizes, float
    widths, a GDFN with no hidden channel, a zero head count) or that no label could ever select (class names
    outside the parser's canonical form)."""
    from huggingface_hub.errors import StrictDataclassClassValidationError

    with pytest.raises(StrictDataclassClassValidationError, match=message):
        config_class(**overrides)


def test_overrides_given_to_from_pretrained_are_checked_when_loading(tmp_path):
    """from_pretrained(folder, pad_mode=...) sets overrides after the config is built: they are checked there, so a
    training run started from pretrained weights fails at the start, not when it saves the model at the end."""
    from huggingface_hub.errors import StrictDataclassClassValidationError

    from training import train

    tiny_model("pip").save_pretrained(tmp_path / "pip")
    for overrides, message in ((dict(pad_mode="circular"), "pad_mode"), (dict(inference_tile=3), "inference_tile")):
        with pytest.raises(StrictDataclassClassValidationError, match=message):
            modeling.PIPForImageRestoration.from_pretrained(tmp_path / "pip", **overrides)
        args = train.TrainingArguments(model_type="pip", pretrained_model_name_or_path=str(tmp_path / "pip"),
                                       model_config=overrides)
        with pytest.raises(ValueError, match=f"model_config .* as overrides of .*{message}"):
            train.build_model(args)
    assert modeling.PIPForImageRestoration.from_pretrained(tmp_path / "pip", inference_tile=16).config.inference_tile \
        == 16


def test_forward_rejects_misspelled_keyword(model_type):
    model = tiny_model(model_type)
    with pytest.raises(TypeError, match="degradation_label"):
        model(torch.rand(1, 3, 8, 8), degradation_label="rain")


def test_only_label_models_declare_labels():
    declared = {name: model_class.accepts_degradation_labels for name, (_, model_class) in modeling.MODEL_CLASSES.items()}
    assert declared["pip"] is True
    assert declared["restormer"] is False and declared["promptir"] is False


@pytest.mark.parametrize(
    "model_type, field, value, message",
    [("restormer", "heads", [3, 1, 2, 2], "not divisible by heads"),
     ("restormer", "dim", 7, "dim must be a positive even number"),
     ("pip", "prompt_dims", [4, 8], "prompt_dims and prompt_sizes must list 3 values"),
     ("dppd", "cross_fusion_heads", 3, "not divisible by cross_fusion_heads=3")],
)
def test_a_config_changed_after_construction_is_checked_when_the_model_is_built(model_type, field, value, message):
    """``config.heads = ...`` before building a model skips the checks run at construction; the model runs them, so
    the field is named instead of a shape error deep in the forward (or a KeyError while building)."""
    from huggingface_hub.errors import StrictDataclassClassValidationError

    config = tiny_config(model_type)
    setattr(config, field, value)
    with pytest.raises(StrictDataclassClassValidationError, match=message):
        modeling.MODEL_CLASSES[model_type][1](config)


def test_overrides_that_change_a_checkpoint_s_widths_name_the_weights(tmp_path):
    """model_config overrides that reshape trained weights (another prompt width) are refused naming the weights and
    both shapes; transformers raised a RuntimeError that named none ('look at the above report')."""
    from training import train

    tiny_model("pip").save_pretrained(tmp_path / "pip")
    args = train.TrainingArguments(model_type="pip", pretrained_model_name_or_path=str(tmp_path / "pip"),
                                   model_config={"prompt_dims": [16, 20, 16]})
    with pytest.raises(ValueError, match=r"weights of .* have another shape in the model that model_config .* builds "
                                         r"\(e\.g\. skip_prompts\.level1\.\S+ \(\[\d+(, \d+)*\] in the weights"):
        train.build_model(args)


def test_zero_loss_weights_are_accepted_as_turning_the_term_off():
    """The loss-weight checks refuse negative weights ("must be non-negative"); zero stays valid, the way to turn one
    term (or one contrastive layer) off."""
    config = PIPConfig(frequency_loss_weight=0.0, degradation_estimator_loss_weight=0.0, prompt_regularization_weight=0.0,
                       prompt_angle_scale=0.0)
    assert config.degradation_estimator_loss_weight == 0.0
    weights = [0.0, 1 / 16, 1 / 8, 1 / 4, 1.0]
    assert tiny_config("cpl", contrastive_layer_weights=weights).contrastive_layer_weights == weights


def test_private_bookkeeping_keys_of_a_config_json_are_not_reported(tmp_path, caplog):
    """Keys that start with `_` (`_name_or_path`, `_commit_hash`, written by other tools or versions) are
    transformers' bookkeeping, not typos: loading them names nothing."""
    tiny_config("pip").save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**data, "_name_or_path": "someone/model", "_scratch": 1}))
    with caplog.at_level(logging.WARNING):
        PIPConfig.from_pretrained(tmp_path)
    assert config_key_warnings(caplog) == []
