"""PIP's pixel degradation estimator, and the estimator-only training stage (`training.train_estimator`)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_model
from data_helpers import save, textured_image
from safetensors.torch import load_file

from modeling import PIPForImageRestoration, restore
from modeling.modeling_pip import PixelDegradationEstimator
from training.train_estimator import main


def test_pixel_estimator_drives_the_label_free_forward():
    model = tiny_model("pip", degradation_estimator_input="pixels")
    assert isinstance(model.degradation_estimator, PixelDegradationEstimator)
    x = torch.rand(2, 3, 20, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        output = model(x)
        expected = model.degradation_estimator(model.pad_to_multiple(x)).softmax(-1)
        labelled = model(x, degradation_labels=expected)
    torch.testing.assert_close(output.degradation_weights.float(), expected)
    torch.testing.assert_close(model.estimate_degradation(x), expected)
    # The label-free forward is the labelled forward with the estimator's weights.
    torch.testing.assert_close(output.reconstruction, labelled.reconstruction)
    assert torch.equal(model.estimate_degradation(x, hard=True).sum(1), torch.ones(2))


def test_wrong_estimator_input_is_refused():
    from huggingface_hub.errors import StrictDataclassClassValidationError

    with pytest.raises(StrictDataclassClassValidationError, match="degradation_estimator_input"):
        tiny_model("pip", degradation_estimator_input="pixel")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("estimator")
    for i in range(6):
        save(root / "clean" / f"photo{i}.png", textured_image(i, 48, 48))
    for i in range(2):
        save(root / "heldout" / f"photo{i}.png", textured_image(100 + i, 40, 40))
    source = root / "model"
    tiny_model("pip").save_pretrained(source)
    output = root / "out"
    record = main(["--model", str(source), "--output", str(output), "--data_roots", f"clean={root / 'clean'}",
                   "--heldout", str(root / "heldout"), "--max_train_steps", "40", "--patch_size", "32",
                   "--train_batch_size", "10", "--dataloader_num_workers", "0", "--logging_steps", "10",
                   "--learning_rate", "3e-3", "--warmup_steps", "5"])
    return source, output, record


def test_estimator_stage_changes_only_the_estimator(trained):
    source, output, record = trained
    before, after = load_file(source / "model.safetensors"), load_file(output / "model.safetensors")
    body = [name for name in before if not name.startswith("degradation_estimator.")]
    assert body and all(torch.equal(before[name], after[name]) for name in body)
    assert any(name.startswith("degradation_estimator.levels.") for name in after)
    assert not any(name.startswith("degradation_estimator.levels.") for name in before)
    assert json.loads((output / "config.json").read_text())["degradation_estimator_input"] == "pixels"
    saved = json.loads((output / "estimator_training.json").read_text())
    assert saved["history"] == record["history"] and len(saved["history"]) == 4
    # Cross-entropy falls on these easy, very different synthetic degradations.
    assert saved["history"][-1]["loss"] < saved["history"][0]["loss"]
    for key in ("heldout_before", "heldout_after"):
        confusion = saved[key]["confusion"]
        assert sum(map(sum, confusion)) == saved[key]["images"] == 2 * 5
        assert saved[key]["accuracy"] == pytest.approx(sum(confusion[i][i] for i in range(5)) / 10)
    assert (output / "modeling_pip.py").is_file(), "code files for trust_remote_code"


def test_estimator_stage_output_loads_and_restores_label_free(trained):
    from transformers import AutoModel

    _, output, _ = trained
    model = AutoModel.from_pretrained(output).eval()
    assert isinstance(model, PIPForImageRestoration)
    assert isinstance(model.degradation_estimator, PixelDegradationEstimator)
    image = (torch.rand(3, 24, 24, generator=torch.Generator().manual_seed(1)))
    weights = model.estimate_degradation(image[None])
    restored = restore(image, model)
    with torch.no_grad():
        expected = model(image[None], degradation_labels=weights).reconstruction[0].clamp(0, 1)
    torch.testing.assert_close(restored, expected, atol=1e-6, rtol=0)
