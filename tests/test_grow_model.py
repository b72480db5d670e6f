"""`training.grow_model`: deeper stages that start as the identity, so a trained model keeps its output."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import tiny_model

from modeling import restore
from modeling.inference import load_model
from training.grow_model import check_same_output, grow_model, main


def test_grown_model_computes_the_same_function(model_type):
    torch.manual_seed(1)
    model = tiny_model(model_type, seed=3)
    # Random non-zero weights everywhere, so the identity of the new blocks is what keeps the output.
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.02 * torch.randn_like(parameter))
    grown = grow_model(model, [2, 1, 2, 3], num_refinement_blocks=2)
    assert list(grown.config.num_blocks) == [2, 1, 2, 3] and grown.config.num_refinement_blocks == 2
    assert len(_find(grown, "latent")) == 3
    added = sum(p.numel() for p in grown.parameters()) - sum(p.numel() for p in model.parameters())
    assert added > 0
    assert check_same_output(model, grown, size=40) == 0.0
    # The original is untouched, and every old weight was copied.
    grown_state = grown.state_dict()
    for key, tensor in model.state_dict().items():
        assert torch.equal(grown_state[key], tensor), key


def _find(model: torch.nn.Module, stage: str) -> torch.nn.Module:
    return getattr(model.unet, stage)


def test_new_blocks_start_at_zero_and_train():
    """Only the zeroed output projections get a gradient at first; one AdamW step makes them non-zero and
    changes the restoration, so the extra depth does learn."""
    model = tiny_model("pip", seed=0)
    grown = grow_model(model, [1, 1, 1, 2]).train()
    new_block = _find(grown, "latent")[1]
    assert torch.count_nonzero(new_block.attn.project_out.weight) == 0
    assert torch.count_nonzero(new_block.ffn.project_out.weight) == 0
    assert torch.count_nonzero(new_block.attn.qkv.weight) > 0  # the rest keeps the class's initialisation
    generator = torch.Generator().manual_seed(0)
    clean = torch.rand(2, 3, 32, 32, generator=generator)
    noisy = (clean + 0.1 * torch.randn(2, 3, 32, 32, generator=generator)).clamp(0, 1)
    loss = grown(noisy, labels=clean, degradation_labels=["noise", "noise"]).loss
    loss.backward()
    assert new_block.attn.project_out.weight.grad.abs().sum() > 0
    assert new_block.ffn.project_out.weight.grad.abs().sum() > 0
    assert new_block.attn.qkv.weight.grad.abs().sum() == 0  # behind a zero projection
    optimizer = torch.optim.AdamW(grown.parameters(), lr=1e-3)
    optimizer.step()
    assert torch.count_nonzero(new_block.ffn.project_out.weight) > 0
    assert check_same_output(model, grown.eval(), size=32) > 0


def test_blocks_can_only_be_added():
    model = tiny_model("restormer")
    with pytest.raises(ValueError, match="only be added"):
        grow_model(model, [1, 1, 1, 0])
    with pytest.raises(ValueError, match="only be added"):
        grow_model(model, [1, 1, 1, 1], num_refinement_blocks=0)
    with pytest.raises(ValueError, match="4 entries"):
        grow_model(model, [1, 1, 2])


def test_command_writes_a_loadable_grown_folder(tmp_path):
    model = tiny_model("pip", seed=2)
    model.save_pretrained(tmp_path / "small")
    record = main(["--model", str(tmp_path / "small"), "--output", str(tmp_path / "grown"),
                   "--num_blocks", "1", "2", "1", "3"])
    assert record["num_blocks"] == [[1, 1, 1, 1], [1, 2, 1, 3]]
    assert record["max_abs_output_difference"] == 0.0
    assert record["parameters"][1] > record["parameters"][0]
    assert json.loads((tmp_path / "grown" / "grow_model.json").read_text()) == record
    assert not (tmp_path / ".grown.partial").exists()
    grown = load_model(tmp_path / "grown")
    assert list(grown.config.num_blocks) == [1, 2, 1, 3]
    image = torch.rand(3, 24, 24, generator=torch.Generator().manual_seed(1)).mul(255).byte().permute(1, 2, 0).numpy()
    before = np.asarray(restore(image, model=model, degradation="noise"))
    after = np.asarray(restore(image, model=grown, degradation="noise"))
    assert before.shape == (24, 24, 3) and np.array_equal(before, after)


def test_training_refuses_a_recipe_that_would_drop_the_grown_blocks(tmp_path):
    """`train.py --pretrained_model_name_or_path GROWN` with a recipe still naming the old `num_blocks` must stop
    with a clear error, not train the smaller model and discard the new blocks; the matching config loads them."""
    from types import SimpleNamespace

    from accelerate import PartialState

    from training.train import build_model

    PartialState(cpu=True)  # train.py's logger needs the accelerate state, as under `accelerate launch`
    small = tiny_model("pip", seed=4)
    grown = grow_model(small, [1, 1, 1, 2])
    grown.save_pretrained(tmp_path / "grown")
    recipe = {"num_blocks": [1, 1, 1, 1], "dim": 8}
    args = SimpleNamespace(model_type="pip", pretrained_model_name_or_path=str(tmp_path / "grown"),
                           model_config=recipe)
    with pytest.raises(ValueError, match=r"have no place .*unet\.latent\.1\."):
        build_model(args)
    args.model_config = {**recipe, "num_blocks": [1, 1, 1, 2]}
    loaded = build_model(args)
    for key, tensor in grown.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], tensor), key
    # Adding modules on top of a checkpoint stays allowed (their weights start fresh, with a warning).
    args.model_config = {**recipe, "num_blocks": [1, 1, 1, 3]}
    assert list(build_model(args).config.num_blocks) == [1, 1, 1, 3]


def test_a_bf16_model_grows_and_is_checked_in_bf16(tmp_path):
    """The check on a random image runs in the model's precision (a bf16 checkpoint used to stop it with a dtype
    error), and the grown model keeps that precision."""
    model = tiny_model("pip").to(torch.bfloat16)
    grown = grow_model(model, num_blocks=[1, 1, 1, 2])
    assert next(grown.parameters()).dtype == torch.bfloat16
    assert check_same_output(model, grown) == 0.0


def test_command_mistakes_are_one_line_with_exit_code_2_and_write_nothing(tmp_path, capsys):
    """Fewer blocks than the model has, or a missing model folder, used to end in a Python traceback."""
    tiny_model("pip", seed=2).save_pretrained(tmp_path / "small")
    cases = {"blocks can only be added": ["--model", str(tmp_path / "small"), "--num_blocks", "1", "1", "1", "0"],
             "does not exist": ["--model", str(tmp_path / "nope"), "--num_blocks", "1", "2", "1", "3"]}
    for message, argv in cases.items():
        with pytest.raises(SystemExit) as exit_:
            main([*argv, "--output", str(tmp_path / "grown")])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and "Traceback" not in err, err
        assert err.strip().splitlines()[-1].startswith("grow_model: error: ") and message in err, err
    assert not (tmp_path / "grown").exists()


def test_an_output_that_is_not_a_model_folder_is_refused_before_anything_is_written(tmp_path, capsys):
    """`--output outputs` (the folder of every run, the model's own parent) used to be replaced whole by the grown
    model, deleting the source and every other run in it; any folder that is not a model folder is refused."""
    outputs = tmp_path / "outputs"
    tiny_model("pip", seed=2).save_pretrained(outputs / "small")
    (outputs / "other-run").mkdir()
    (outputs / "other-run" / "notes.txt").write_text("keep")
    for output in (outputs, outputs / "other-run"):
        with pytest.raises(SystemExit) as exit_:
            main(["--model", str(outputs / "small"), "--output", str(output), "--num_blocks", "1", "1", "1", "2"])
        assert exit_.value.code == 2 and "--output" in capsys.readouterr().err
    assert (outputs / "small" / "config.json").is_file() and (outputs / "other-run" / "notes.txt").is_file()
    # An earlier model folder is replaced, as before.
    main(["--model", str(outputs / "small"), "--output", str(outputs / "small"), "--num_blocks", "1", "1", "1", "2"])
    assert list(load_model(outputs / "small").config.num_blocks) == [1, 1, 1, 2]
