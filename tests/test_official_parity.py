"""Fidelity to the official code: parameter counts, recorded output slices, checkpoint conversion.

The expected slices were recorded by the parity run described in the README ("Parity with the official
code"): our model built with ``torch.manual_seed(0)`` had its weights mapped to the official names and
loaded into the official class from the official repository; these are the *official code's* outputs on
the fixed input below. Our model must reproduce them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from modeling import PromptIRConfig, PromptIRForImageRestoration, RestormerConfig, RestormerForImageRestoration
from modeling.conversion import convert_promptir, convert_restormer
from modeling.conversion.common import rename_key

FIXTURES = Path(__file__).parent / "fixtures"


def count_parameters(model_class, config) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in model_class(config).parameters())


@pytest.mark.parametrize(
    "model_class, config, expected",
    [
        (RestormerForImageRestoration, RestormerConfig(), 26_126_644),
        (RestormerForImageRestoration, RestormerConfig(layer_norm_type="BiasFree"), 26_111_668),
        (PromptIRForImageRestoration, PromptIRConfig(keep_unused_official_modules=True), 35_592_263),
        (PromptIRForImageRestoration, PromptIRConfig(), 35_376_967),
    ],
)
def test_official_parameter_counts(model_class, config, expected):
    assert count_parameters(model_class, config) == expected


def fixed_input() -> torch.Tensor:
    return torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))


OFFICIAL_SLICES = {
    "restormer-WithBias": [[0.503874, 0.772327, 0.156067], [0.285271, 0.163193, 0.153347], [0.710832, 0.355991, 0.569581]],
    "restormer-BiasFree": [[0.492733, 0.784527, 0.175272], [0.286478, 0.169628, 0.124963], [0.697034, 0.350572, 0.561789]],
    "promptir": [[0.51828, 0.850154, 0.16714], [0.157454, 0.188896, 0.079824], [0.726419, 0.416114, 0.390202]],
}


@pytest.mark.parametrize(
    "name, build",
    [
        ("restormer-WithBias", lambda: RestormerForImageRestoration(RestormerConfig())),
        ("restormer-BiasFree", lambda: RestormerForImageRestoration(RestormerConfig(layer_norm_type="BiasFree"))),
        ("promptir", lambda: PromptIRForImageRestoration(PromptIRConfig(keep_unused_official_modules=True))),
    ],
)
def test_outputs_match_official_code_slices(name, build):
    torch.manual_seed(0)
    model = build().eval()
    with torch.no_grad():
        output = model(fixed_input()).reconstruction
    torch.testing.assert_close(output[0, 0, :3, :3], torch.tensor(OFFICIAL_SLICES[name]), atol=1e-5, rtol=0)


def official_keys(name: str) -> dict[str, list[int]]:
    return json.loads((FIXTURES / f"official_keys_{name}.json").read_text())


def random_official_state_dict(name: str) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return {k: torch.randn(shape, generator=generator) for k, shape in official_keys(name).items()}


def test_restormer_converter_maps_every_official_key(tmp_path):
    official = random_official_state_dict("restormer")
    assert len(official) == 494
    path = tmp_path / "restormer.pth"
    torch.save({"params": official}, path)
    model = convert_restormer.convert_restormer_checkpoint(str(path), RestormerConfig())
    ours = model.state_dict()
    assert len(ours) == len(official)
    for key, value in official.items():
        assert torch.equal(ours[rename_key(key, convert_restormer.KEY_RULES)], value), key
    torch.testing.assert_close(ours["unet.encoder_level1.0.norm1.weight"], official["encoder_level1.0.norm1.body.weight"])


def test_promptir_converter_lightning_checkpoint(tmp_path):
    official = random_official_state_dict("promptir")
    assert len(official) == 548
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": {f"net.{k}": v for k, v in official.items()}, "epoch": 119}, path)
    model = convert_promptir.convert_promptir_checkpoint(str(path))
    assert model.config.keep_unused_official_modules
    ours = model.state_dict()
    assert len(ours) == 548
    # Every official tensor lands, unchanged, under the key the converter's renaming rules give it (prompt
    # components lose their leading broadcast axis); the hand-written names below check the rules themselves.
    for key, value in official.items():
        expected = value[0] if key.endswith("prompt_param") else value
        assert torch.equal(ours[rename_key(key, convert_promptir.KEY_RULES)], expected), key
    torch.testing.assert_close(
        ours["decoder_prompts.latent.generator.prompt_components"], official["prompt3.prompt_param"][0]
    )
    torch.testing.assert_close(ours["decoder_prompts.level2.fusion.reduce.weight"], official["reduce_noise_level1.weight"])
    torch.testing.assert_close(ours["unused_official_modules.chnl_reduce3.weight"], official["chnl_reduce3.weight"])
    # Dropping the unused modules gives the lean model with the same outputs.
    lean = convert_promptir.convert_promptir_checkpoint(str(path), drop_unused_official_modules=True)
    assert len(lean.state_dict()) == 542
    with torch.no_grad():
        torch.testing.assert_close(lean(fixed_input()).reconstruction, model(fixed_input()).reconstruction)


def test_converter_saves_the_complete_folder_and_checks_its_reloaded_output(tmp_path):
    """The converter's folder is what training.publish uploads (weights, config, processor, code, pipeline): it loads
    with the image processor and the pipeline, and its output on a fixed input is checked after reloading."""
    import json

    from transformers import AutoImageProcessor

    from modeling.conversion.common import check_output_slice

    official = random_official_state_dict("restormer")
    torch.save({"params": official}, tmp_path / "r.pth")
    convert_restormer.main([str(tmp_path / "r.pth"), str(tmp_path / "out")])
    out = tmp_path / "out"
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.bin"))
    assert {"modeling_restormer.py", "pipeline_restoration.py", "image_processing_restoration.py"} <= {
        p.name for p in out.glob("*.py")}
    assert "image-restoration" in json.loads((out / "config.json").read_text())["custom_pipelines"]
    assert AutoImageProcessor.from_pretrained(out).__class__.__name__ == "RestorationImageProcessor"
    reloaded = RestormerForImageRestoration.from_pretrained(out)
    torch.testing.assert_close(reloaded.state_dict()["unet.output.weight"], official["output.weight"])
    # The slice check refuses damaged weights (a non-finite output) instead of saving them.
    with torch.no_grad():
        reloaded.unet.output.weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="not finite"):
        check_output_slice(reloaded, None)


def test_converter_rejects_incomplete_checkpoint(tmp_path):
    official = random_official_state_dict("restormer")
    official.pop("output.weight")
    torch.save({"params": official}, tmp_path / "broken.pth")
    with pytest.raises(ValueError, match="missing.*unet.output.weight"):
        convert_restormer.convert_restormer_checkpoint(str(tmp_path / "broken.pth"), RestormerConfig())


def test_converter_refuses_pickled_objects(tmp_path):
    import argparse

    # Any non-allow-listed object must be refused by torch.load(weights_only=True), never unpickled.
    torch.save({"params": {"x": argparse.Namespace(payload=1)}}, tmp_path / "evil.pth")
    with pytest.raises(Exception, match="(?i)weights_only|unsupported|global"):
        convert_restormer.convert_restormer_checkpoint(str(tmp_path / "evil.pth"), RestormerConfig())


def test_restormer_converter_takes_params_unless_asked_and_writes_only_into_a_new_folder(tmp_path, capsys):
    """A BasicSR file holding both: `params`, what the official test scripts load (the EMA weights used to win
    silently), or `params_ema` with --use_ema_weights. A folder that already holds files is refused (old files
    such as a pytorch_model.bin would stay beside the converted ones)."""
    official = random_official_state_dict("restormer")
    ema = {key: value + 1 for key, value in official.items()}
    torch.save({"params_ema": ema, "params": official}, tmp_path / "both.pth")
    taken = convert_restormer.convert_restormer_checkpoint(str(tmp_path / "both.pth"), RestormerConfig())
    assert torch.equal(taken.state_dict()["unet.output.weight"], official["output.weight"])
    averaged = convert_restormer.convert_restormer_checkpoint(str(tmp_path / "both.pth"), RestormerConfig(),
                                                              use_ema_weights=True)
    assert torch.equal(averaged.state_dict()["unet.output.weight"], ema["output.weight"])
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "pytorch_model.bin").write_bytes(b"old")
    with pytest.raises(SystemExit) as exit_:
        convert_restormer.main([str(tmp_path / "both.pth"), str(tmp_path / "used")])
    assert exit_.value.code == 2 and "exists and is not an empty folder" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "used").iterdir()) == ["pytorch_model.bin"]


def test_promptir_converter_keeps_the_unused_modules_of_the_file_whatever_config_is_given(tmp_path):
    """`publish --config` passes a config for other reasons (a LayerNorm type): the file's never-called official
    convs still get their places, where they used to be refused as unexpected keys."""
    official = random_official_state_dict("promptir")
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": {f"net.{k}": v for k, v in official.items()}}, path)
    model = convert_promptir.convert_promptir_checkpoint(str(path), PromptIRConfig(layer_norm_type="WithBias"))
    assert model.config.keep_unused_official_modules and len(model.state_dict()) == 548


@pytest.mark.parametrize("converter", ["convert_restormer", "convert_promptir", "convert_pip", "convert_cpl",
                                       "convert_dppd"])
def test_converters_report_a_bad_checkpoint_file_as_one_usage_line(converter, tmp_path, capsys):
    """A missing file, an empty one, one that is no torch file, one holding a pickled object, one that is no dict of
    tensors and another model's checkpoint used to end in a traceback (torch's text for a pickled object advises
    weights_only=False). Each is one 'error:' line, exit code 2, and no output folder."""
    import argparse
    import importlib

    main = importlib.import_module(f"modeling.conversion.{converter}").main
    (tmp_path / "empty.pth").write_bytes(b"")
    (tmp_path / "text.pth").write_text("not a checkpoint")
    torch.save({"params": {"x": argparse.Namespace(payload=1)}}, tmp_path / "evil.pth")
    torch.save([1, 2], tmp_path / "list.pth")
    torch.save({"state_dict": {"conv.weight": torch.zeros(1)}, "params": {"conv.weight": torch.zeros(1)}},
               tmp_path / "other.pth")
    cases = {"missing.pth": "No such file", "empty.pth": "empty or truncated", "text.pth": "weights_only=True",
             "evil.pth": "weights_only=True", "list.pth": "", "other.pth": ""}
    for name, message in cases.items():
        with pytest.raises(SystemExit) as exit_:
            main([str(tmp_path / name), str(tmp_path / "out")])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and "Traceback" not in err, err
        last = err.strip().splitlines()[-1]
        assert f"error: cannot convert {tmp_path / name}: " in last and message in last, err
        assert "weights_only=False" not in err
    assert not (tmp_path / "out").exists()


def test_dppd_inspect_reports_a_missing_file_as_one_usage_line(tmp_path, capsys):
    from modeling.conversion import convert_dppd

    with pytest.raises(SystemExit) as exit_:
        convert_dppd.main([str(tmp_path / "missing.ckpt"), "--inspect"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err and "No such file" in err.strip().splitlines()[-1], err


def test_a_denoising_checkpoint_converted_with_biased_layer_norms_names_the_fix(tmp_path, capsys):
    """Restormer's denoising releases have bias-free LayerNorms; forgetting --layer_norm_type BiasFree used to end in
    a traceback listing 88 missing keys."""
    official = {key: value for key, value in random_official_state_dict("restormer").items()
                if not re.search(r"\.norm\d\.body\.bias$", key)}
    torch.save({"params": official}, tmp_path / "denoise.pth")
    with pytest.raises(SystemExit) as exit_:
        convert_restormer.main([str(tmp_path / "denoise.pth"), str(tmp_path / "out")])
    error = capsys.readouterr().err
    assert exit_.value.code == 2 and "layer_norm_type='BiasFree'" in error and "Traceback" not in error
    convert_restormer.main([str(tmp_path / "denoise.pth"), str(tmp_path / "out"), "--layer_norm_type", "BiasFree"])
    assert RestormerForImageRestoration.from_pretrained(tmp_path / "out").config.layer_norm_type == "BiasFree"
