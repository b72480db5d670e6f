"""`training.interpolate_weights`: the weighted average of two runs' weights, written as a loadable model folder."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_model

from modeling.inference import load_model
from training.interpolate_weights import interpolate_models, interpolate_state_dicts, main


def _two_runs(model_type: str = "pip"):
    """One model and a 'continued run' of it: the same architecture, every weight moved."""
    first = tiny_model(model_type, seed=0)
    second = tiny_model(model_type, seed=0)
    with torch.no_grad():
        for parameter in second.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return first, second


def test_the_average_is_the_weighted_mean_of_every_weight(model_type):
    first, second = _two_runs(model_type)
    averaged = interpolate_models([first, second], [0.25, 0.75]).state_dict()
    a, b = first.state_dict(), second.state_dict()
    for key, tensor in averaged.items():
        assert tensor.dtype == a[key].dtype, key
        if tensor.is_floating_point():
            expected = (0.25 * a[key].double() + 0.75 * b[key].double()).to(tensor.dtype)
            assert torch.equal(tensor, expected), key
    # The end points are the models themselves, to the last bit.
    for weights, source in (([1.0, 0.0], a), ([0.0, 1.0], b)):
        end_point = interpolate_models([first, second], weights).state_dict()
        assert all(torch.equal(end_point[key], source[key]) for key in source)


def test_the_midpoint_restores_between_the_two_runs():
    first, second = _two_runs()
    middle = interpolate_models([first, second], [0.5, 0.5])
    pixels = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        outputs = [model(pixel_values=pixels, degradation_labels=["noise"]).reconstruction
                   for model in (first, middle, second)]
    start, middle_out, end = (output.flatten().double() for output in outputs)
    span = (end - start).norm()
    assert span > 1  # the two runs restore differently (19.8 here: an RMS difference of 0.36 over 3072 values)
    # The network is not linear in its weights, so the midpoint's output is not exactly the outputs' average, but it
    # lies between them: measured along start -> end it sits near half way (0.46 here), and it is far closer to the
    # average than the ends are (0.21 x span here; the ends are 0.5 x span away). An extrapolation such as
    # 3 a - 2 b lands outside (-0.67 and 3.5 x span).
    position = float((middle_out - start) @ (end - start) / span**2)
    assert 0.3 < position < 0.7
    assert (middle_out - (start + end) / 2).norm() < 0.35 * span


def test_weights_and_models_that_cannot_be_averaged_are_refused():
    first, second = _two_runs()
    with pytest.raises(ValueError, match="sum to 1"):
        interpolate_models([first, second], [0.5, 0.6])
    with pytest.raises(ValueError, match="non-negative"):
        interpolate_models([first, second], [1.5, -0.5])
    with pytest.raises(ValueError, match="two or more"):
        interpolate_state_dicts([first.state_dict()], [1.0])
    deeper = tiny_model("pip", seed=0, num_blocks=[1, 1, 1, 2])
    with pytest.raises(ValueError, match="num_blocks"):
        interpolate_models([first, deeper], [0.5, 0.5])
    with pytest.raises(ValueError, match="is a"):
        interpolate_models([first, tiny_model("restormer")], [0.5, 0.5])
    counters = [{"steps": torch.tensor([3])}, {"steps": torch.tensor([4])}]
    with pytest.raises(ValueError, match="non-float"):
        interpolate_state_dicts(counters, [0.5, 0.5])


def test_command_writes_a_loadable_folder_with_its_record(tmp_path):
    first, second = _two_runs()
    first.save_pretrained(tmp_path / "run-a")
    second.save_pretrained(tmp_path / "run-b")
    record = main(["--models", str(tmp_path / "run-a"), str(tmp_path / "run-b"), "--output", str(tmp_path / "mid")])
    assert record["weights"] == [0.5, 0.5]  # equal by default
    assert json.loads((tmp_path / "mid" / "interpolate_weights.json").read_text()) == record
    assert not (tmp_path / ".mid.partial").exists()
    loaded = load_model(tmp_path / "mid").state_dict()
    expected = interpolate_models([first, second], [0.5, 0.5]).state_dict()
    assert all(torch.equal(loaded[key], expected[key]) for key in expected)


def test_bf16_models_average_into_a_bf16_model():
    """The average is computed in float64 and stored in the models' dtype (it used to come back float32)."""
    first, second = tiny_model("pip", seed=0).to(torch.bfloat16), tiny_model("pip", seed=1).to(torch.bfloat16)
    middle = interpolate_models([first, second], [0.5, 0.5])
    assert {p.dtype for p in middle.parameters()} == {torch.bfloat16}
    key = next(iter(first.state_dict()))
    expected = ((first.state_dict()[key].double() + second.state_dict()[key].double()) / 2).to(torch.bfloat16)
    assert torch.equal(middle.state_dict()[key], expected)


def test_an_output_that_is_not_a_model_folder_is_refused_before_anything_is_written(tmp_path, capsys):
    """`--output` naming the folder that holds the runs used to replace it whole (both runs deleted)."""
    first, second = _two_runs()
    first.save_pretrained(tmp_path / "runs" / "run-a")
    second.save_pretrained(tmp_path / "runs" / "run-b")
    with pytest.raises(SystemExit) as exit_:
        main(["--models", str(tmp_path / "runs" / "run-a"), str(tmp_path / "runs" / "run-b"),
              "--output", str(tmp_path / "runs")])
    assert exit_.value.code == 2 and "--output" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["run-a", "run-b"]


def test_models_that_cannot_be_averaged_are_one_line_not_a_traceback(tmp_path, capsys):
    """A missing model, two architectures, a weight count other than the models' or weights not summing to 1 used to
    end in a Python traceback: each is one 'error:' line, exit code 2, and nothing written."""
    first, _ = _two_runs()
    first.save_pretrained(tmp_path / "run-a")
    tiny_model("pip", seed=0, num_blocks=[1, 1, 1, 2]).save_pretrained(tmp_path / "deeper")
    for models, extra, message in (
        ([tmp_path / "run-a", tmp_path / "deeper"], [], "num_blocks"),
        ([tmp_path / "run-a", tmp_path / "absent"], [], "absent"),
        ([tmp_path / "run-a", tmp_path / "run-a"], ["--weights", "0.5"], "one weight per model"),
        ([tmp_path / "run-a", tmp_path / "run-a"], ["--weights", "0.7", "0.7"], "sum to 1"),
    ):
        with pytest.raises(SystemExit) as exit_:
            main(["--models", *map(str, models), *extra, "--output", str(tmp_path / "mid")])
        error = capsys.readouterr().err  # (after transformers' progress bars; argparse adds its usage line)
        last = error.strip().splitlines()[-1]
        assert exit_.value.code == 2 and "Traceback" not in error and message in last, error
        assert "error: " in last, error  # argparse's "PROG: error:" or the command's "interpolate_weights: error:"
    assert not (tmp_path / "mid").exists()
