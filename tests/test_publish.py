"""The publish command: convert or take a folder, verify remote code without the package, card from the JSON, push."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load as load_safetensors

from conftest import TINY_CONFIGS, tiny_model
from fake_hub import FakeHub
from test_evaluate_protocol import make_test_root
from training import evaluate_protocol as ep

REPO_ROOT = Path(__file__).resolve().parent.parent


def official_restormer_state_dict(model) -> dict[str, torch.Tensor]:
    """Our Restormer weights under the official names (the inverse of convert_restormer.KEY_RULES)."""
    official = {}
    for key, value in model.state_dict().items():
        key = key.removeprefix("unet.")
        for norm in ("norm1", "norm2"):
            key = key.replace(f".{norm}.weight", f".{norm}.body.weight").replace(f".{norm}.bias", f".{norm}.body.bias")
        official[key] = value.clone()
    return official


def evaluation_json(model, tmp_path: Path, protocol: str = "3-task") -> Path:
    root = make_test_root(tmp_path / f"data-{protocol}", protocol)
    convention = ep.CONVENTIONS[ep.PROTOCOLS[protocol].default_convention]
    test_sets = ep.ProtocolTestSets(protocol, ep.find_test_roots(protocol, root), convention=convention)
    results = ep.evaluate_protocol(model, test_sets)
    path = tmp_path / f"results-{protocol}.json"
    path.write_text(json.dumps(results))
    return path


def _publish(args: list[str], env: dict) -> subprocess.CompletedProcess:
    # A fresh interpreter: huggingface_hub reads HF_ENDPOINT / HF_TOKEN at import.
    env = {**env, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "training.publish", *args], env=env, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=600)


def _card_numbers(card) -> dict:
    return {(e.dataset_config, e.metric_type): e.metric_value for e in card.data.eval_results}


def test_publish_official_checkpoint_to_fake_hub(tmp_path):
    from huggingface_hub import ModelCard

    model = tiny_model("restormer")
    checkpoint = tmp_path / "restormer_official.pth"
    torch.save({"params": official_restormer_state_dict(model)}, checkpoint)
    eval_json = evaluation_json(model, tmp_path)
    results = json.loads(eval_json.read_text())
    with FakeHub() as hub:
        result = _publish(["--official_checkpoint", str(checkpoint), "--model_type", "restormer",
                           "--config", json.dumps(TINY_CONFIGS["restormer"]), "--eval_json", str(eval_json),
                           "--repo_id", "me/tiny-restormer", "--output", str(tmp_path / "out")], hub.client_env())
        assert result.returncode == 0, result.stderr[-3000:]
        received = hub.files("me/tiny-restormer")
    assert result.stdout.splitlines()[-1].startswith(f"{hub.endpoint}/me/tiny-restormer/commit/")
    # config, weights, processor, the code trust_remote_code needs, the card and the evaluation it came from
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md",
            "protocol_results.json"} <= set(received)
    code = {name for name in received if name.endswith(".py")}
    assert {"modeling_restormer.py", "configuration_restormer.py", "pipeline_restoration.py",
            "image_processing_restoration.py"} <= code
    assert set(received) == {p.name for p in (tmp_path / "out").iterdir()}
    # the uploaded weights are the official ones, converted
    weights = load_safetensors(received["model.safetensors"])
    for key, value in model.state_dict().items():
        assert torch.equal(weights[key], value), key
    config = json.loads(received["config.json"])
    assert config["model_type"] == "restormer" and config["dim"] == TINY_CONFIGS["restormer"]["dim"]
    assert "AutoModel" in config["auto_map"]
    # the card's model-index holds exactly the JSON's numbers
    card = ModelCard(received["README.md"].decode())
    expected = {(name, metric): t[metric] for name, t in results["tasks"].items() for metric in ("psnr", "ssim")}
    assert _card_numbers(card) == expected
    assert {e.dataset_split for e in card.data.eval_results} == {"test"}
    assert card.data.license == "other"  # official weights: their own terms, never a licence claimed for them
    # ... named and linked to the official release, as the Hub asks of "other"
    assert card.data.license_name == "restormer-official-weights"
    assert card.data.license_link == "https://github.com/swz30/Restormer"
    assert "[restormer-official-weights](https://github.com/swz30/Restormer)" in card.text
    text = card.text
    assert results["convention_description"] in text and "`3-task` protocol" in text
    assert "| PromptIR + CPL | 31.27/0.980 | 38.77/0.985 |" in text  # published rows beside ours
    assert f"| haze | SOTS-outdoor | test | 1 | {results['tasks']['haze']['psnr']:.2f} |" in text
    assert "## Limits" in text and "converted from the official checkpoint `restormer_official.pth`" in text
    assert json.loads(received["protocol_results.json"]) == results


def test_publish_trained_folder_with_labels_no_push(tmp_path, monkeypatch):
    """A PIP folder (labels) through --model_dir: verified with remote code, card from a 5-task evaluation."""
    from huggingface_hub import ModelCard

    model = tiny_model("pip")
    model_dir = tmp_path / "trained"
    model.save_pretrained(model_dir)
    (model_dir / "README.md").write_text("old card, replaced")
    command = "accelerate launch training/train.py --config training/configs/pip_restormer_cpu.yaml --seed 3"
    (model_dir / "training_summary.json").write_text(json.dumps({"command": command, "steps": 1234}))
    eval_json = evaluation_json(model, tmp_path, "5-task")
    out = tmp_path / "folder"
    from training import publish

    code = publish.main(["--model_dir", str(model_dir), "--eval_json", str(eval_json), "--repo_id", "me/tiny-pip",
                         "--output", str(out), "--no_push"])
    assert code == 0
    card = ModelCard.load(out / "README.md")
    results = json.loads(eval_json.read_text())
    assert _card_numbers(card) == {(n, m): t[m] for n, t in results["tasks"].items() for m in ("psnr", "ssim")}
    assert card.data.license == "apache-2.0" and "pip" in card.data.tags
    assert "| IDR | 25.24/0.943 |" in card.text and "Prompt-In-Prompt" in card.text
    # the run's own record, not the paper's recipe (every PIP card used to say "Recipe: pip_restormer_5task.yaml")
    assert "\nRecipe: `training/configs/pip_restormer_cpu.yaml`, run as the command below says." in card.text
    assert command in card.text and "1234" in card.text
    assert any(p.suffix == ".py" for p in out.iterdir()) and not list(tmp_path.glob(".folder.partial"))
    # With the package installed, the README's pipeline call runs the package's code, without a prompt; a plain
    # call asks for trust_remote_code (the folder declares its pipeline for use without the package).
    import numpy as np
    from transformers import pipeline

    import modeling

    monkeypatch.setattr("builtins.input", lambda *a, **k: pytest.fail("transformers asked to run the folder's code"))
    image = np.random.default_rng(0).random((24, 32, 3)).astype(np.float32)
    restorer = pipeline("image-restoration", model=str(out), pipeline_class=modeling.ImageRestorationPipeline)
    assert type(restorer.model).__module__ == "modeling.modeling_pip"
    np.testing.assert_array_equal(restorer(image, degradation="rain", output_type="np", dtype="fp32"),
                                  modeling.restore(image, model, degradation="rain", dtype="fp32"))
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        pipeline("image-restoration", model=str(out))
    # an evaluation of another kind of model is refused before anything is written
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**results, "model_type": "promptir"}))
    assert publish.main(["--model_dir", str(model_dir), "--eval_json", str(other), "--repo_id", "me/x",
                         "--output", str(tmp_path / "refused"), "--no_push"]) == 2
    assert not (tmp_path / "refused").exists()
    (model_dir / "training_summary.json").write_text("{not json")  # a damaged record is named, not ignored
    assert publish.main(["--model_dir", str(model_dir), "--eval_json", str(eval_json), "--repo_id", "me/x",
                         "--output", str(tmp_path / "refused"), "--no_push"]) == 2
    assert not (tmp_path / "refused").exists()
    other.write_text(json.dumps({k: v for k, v in results.items() if k != "model_type"}))  # nothing to match
    assert publish.main(["--model_dir", str(model_dir), "--eval_json", str(other), "--repo_id", "me/x",
                         "--output", str(tmp_path / "refused"), "--no_push"]) == 2
    assert not (tmp_path / "refused").exists()


def test_publish_never_replaces_a_folder_it_did_not_write(tmp_path, monkeypatch, capsys):
    """The publish folder is replaced as a whole, so a malformed repo id (whose default folder would be publish/
    itself), an output holding the model being published, or an existing non-model folder are refused first."""
    from training import publish

    model = tiny_model("pip")
    model_dir = tmp_path / "trained"
    model.save_pretrained(model_dir)
    eval_json = evaluation_json(model, tmp_path, "5-task")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "publish" / "other-model").mkdir(parents=True)
    args = ["--model_dir", str(model_dir), "--eval_json", str(eval_json), "--no_push"]
    assert publish.main([*args, "--repo_id", "me/tiny-pip/"]) == 2
    assert "Repo id must be in the form" in capsys.readouterr().err
    assert (tmp_path / "publish" / "other-model").is_dir()
    for output in (model_dir, tmp_path):
        assert publish.main([*args, "--repo_id", "me/tiny-pip", "--output", str(output)]) == 2
        assert "would be deleted" in capsys.readouterr().err
    assert publish.main([*args, "--repo_id", "me/tiny-pip", "--output", str(tmp_path / "publish")]) == 2
    assert "is not a folder written by publish" in capsys.readouterr().err
    assert (tmp_path / "publish" / "other-model").is_dir() and (model_dir / "model.safetensors").is_file()
    # Another model's folder (a training folder with files of its own) is not a publish folder: refused, kept.
    model.save_pretrained(tmp_path / "publish" / "tiny-pip")
    (tmp_path / "publish" / "tiny-pip" / "notes.md").write_text("hand-written")
    assert publish.main([*args, "--repo_id", "me/tiny-pip"]) == 2
    assert "not a folder written by publish" in capsys.readouterr().err
    assert (tmp_path / "publish" / "tiny-pip" / "notes.md").is_file()
    # The default folder holding an earlier publish of it: replaced.
    (tmp_path / "publish" / "tiny-pip" / "notes.md").unlink()
    (tmp_path / "publish" / "tiny-pip" / "protocol_results.json").write_text(eval_json.read_text())
    assert publish.main([*args, "--repo_id", "me/tiny-pip"]) == 0
    assert (tmp_path / "publish" / "tiny-pip" / "README.md").is_file()
    assert publish.main([*args, "--repo_id", "me/tiny-pip"]) == 0  # and again, over its own output
    assert (tmp_path / "publish" / "other-model").is_dir()


def test_publish_usage_errors(tmp_path, capsys):
    from training import publish

    assert publish.main(["--official_checkpoint", str(tmp_path / "missing.pth"), "--eval_json",
                         str(tmp_path / "missing.json"), "--repo_id", "me/x", "--no_push"]) == 2
    assert "publish failed" in capsys.readouterr().err
    model = tiny_model("restormer")
    model.save_pretrained(tmp_path / "trained")
    eval_json = evaluation_json(model, tmp_path)
    assert publish.main(["--official_checkpoint", str(tmp_path / "missing.pth"), "--eval_json",
                         str(eval_json), "--repo_id", "me/x", "--no_push"]) == 2
    assert "needs --model_type" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        publish.parse_args(["--eval_json", "x", "--repo_id", "me/x"])  # neither checkpoint nor folder
    with pytest.raises(SystemExit):  # conversion options with a folder, which is not converted
        publish.parse_args(["--model_dir", "d", "--model_type", "pip", "--eval_json", "x", "--repo_id", "me/x"])
    assert "apply to --official_checkpoint" in capsys.readouterr().err
    # "other" without a name and a link: the Hub would show an unnamed licence. A name with a Hub licence id: unused.
    folder_args = ["--model_dir", str(tmp_path / "trained"), "--eval_json", str(eval_json), "--repo_id", "me/x",
                   "--output", str(tmp_path / "out"), "--no_push"]
    assert publish.main([*folder_args, "--license", "other"]) == 2
    assert "--license other needs --license_name and --license_link" in capsys.readouterr().err
    assert publish.main([*folder_args, "--license_name", "mine"]) == 2
    assert "describe --license other, not 'apache-2.0'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    # ... checked before anything is loaded or converted
    assert publish.main([*folder_args[:1], str(tmp_path / "missing"), *folder_args[2:], "--license", "other"]) == 2
    assert "--license other needs" in capsys.readouterr().err
    # A checkpoint holding objects that weights_only loading refuses: one line and exit code 2, no traceback.
    import collections

    torch.save({"state_dict": collections.OrderedDict(), "extra": collections.Counter("ab")}, tmp_path / "odd.ckpt")
    assert publish.main(["--official_checkpoint", str(tmp_path / "odd.ckpt"), "--model_type", "pip", "--eval_json",
                         str(eval_json), "--repo_id", "me/x", "--no_push"]) == 2
    assert "cannot convert" in capsys.readouterr().err
    # CPL's BasicSR file has exactly PromptIR's keys: as --model_type promptir (Lightning files only) it is refused
    # rather than published as a soft-routing PromptIR.
    from cpl_official_weights import random_official_cpl_weights

    weights = random_official_cpl_weights()
    torch.save({"params": weights, "params_ema": weights}, tmp_path / "CPLIR_3task.pth")
    assert publish.main(["--official_checkpoint", str(tmp_path / "CPLIR_3task.pth"), "--model_type", "promptir",
                         "--eval_json", str(eval_json), "--repo_id", "me/x", "--no_push"]) == 2
    assert "a BasicSR file holding ['params', 'params_ema']" in capsys.readouterr().err


def test_verification_fails_for_a_folder_missing_its_code(tmp_path):
    from training import publish

    model = tiny_model("promptir")
    folder = tmp_path / "folder"
    folder.mkdir()
    publish.save_folder(model, folder)
    publish.verify_folder(folder, model)  # complete: passes
    (folder / "modeling_promptir.py").unlink()
    with pytest.raises(publish.PublishError, match="trust_remote_code without the package"):
        publish.verify_folder(folder, model)


@pytest.fixture(scope="module")
def three_task_results(tmp_path_factory) -> dict:
    tmp_path = tmp_path_factory.mktemp("eval")
    return json.loads(evaluation_json(tiny_model("restormer"), tmp_path).read_text())


@pytest.mark.parametrize(
    "model_type, template_text",
    [("restormer", "swz30/Restormer"), ("promptir", "va1shn9v/PromptIR"), ("pip", "arXiv:2312.05038"),
     ("cpl", "Aitical/CPLIR"), ("dppd", "10.1109/tip.2025.3567205")],
)
def test_every_model_has_a_card_rendered_from_the_json(tmp_path, three_task_results, model_type, template_text):
    from huggingface_hub import ModelCard

    from training import publish
    from training.model_card import TEMPLATE_FILES

    assert (REPO_ROOT / "model_cards" / TEMPLATE_FILES[model_type]).is_file()
    results = {**three_task_results, "model_type": model_type}
    path = publish.render_card(tmp_path, results, f"me/{model_type}", model_type, "apache-2.0", "trained here")
    card = ModelCard.load(path)
    assert _card_numbers(card) == {(n, m): t[m] for n, t in results["tasks"].items() for m in ("psnr", "ssim")}
    text = card.text
    assert template_text in text and "## Limits" in text and "## Training" in text and "Licence" in text
    assert f'AutoModel.from_pretrained("me/{model_type}", trust_remote_code=True)' in text
    assert 'pipeline("image-restoration"' in text and "prompt-restore" in text and "Space" in text
    assert "{{" not in text and "Measured by the training run" not in text  # the evaluation is named instead
    assert json.loads((tmp_path / "protocol_results.json").read_text()) == results


def test_the_published_card_describes_the_models_own_config(tmp_path, three_task_results):
    """publish's card is rendered from the published model's config, as save_model_folder's is: a DPPD trained with
    other loss weights states them, not the template's defaults."""
    from modeling.modeling_utils import model_fingerprint
    from training import publish

    model = tiny_model("dppd", prototype_loss_weight=0.5, prototype_separation_weight=0.0, kl_loss_weight=0.02)
    model.save_pretrained(tmp_path / "trained")
    results = {**three_task_results, "model_type": "dppd", "model_fingerprint": model_fingerprint(model)}
    folder = publish.prepare_folder(tmp_path / "out", results=results, repo_id="me/dppd",
                                    model_dir=str(tmp_path / "trained"), verify=False)
    card = " ".join((folder / "README.md").read_text().split())  # the sentence wraps
    assert ("Loss: L1 + 0.5 × prototype cross-entropy (with degradation labels) + 0.0 × prototype separation + "
            "0.02 × KL towards the prototype prior.") in card


def test_publish_refuses_a_file_as_output_and_results_without_the_cards_numbers(tmp_path, capsys):
    """--output naming a file used to move it aside and put the folder in its place; a results file missing a
    score used to end in a traceback with exit code 1 (documented as "push failed"). Both are usage errors."""
    from training import publish

    model = tiny_model("restormer")
    model.save_pretrained(tmp_path / "trained")
    eval_json = evaluation_json(model, tmp_path)
    args = ["--model_dir", str(tmp_path / "trained"), "--repo_id", "me/x", "--no_push"]
    assert publish.main([*args, "--eval_json", str(eval_json), "--output", str(eval_json)]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err and eval_json.is_file()
    results = json.loads(eval_json.read_text())
    for task in results["tasks"].values():
        del task["input_psnr"]
    (tmp_path / "partial.json").write_text(json.dumps(results))
    assert publish.main([*args, "--eval_json", str(tmp_path / "partial.json"), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "tasks['haze']['input_psnr'] is None, not a finite number" in err and "Traceback" not in err


def _edited(results: dict, edit) -> dict:
    results = json.loads(json.dumps(results))
    edit(results)
    return results


@pytest.mark.parametrize("edit, message", [
    # a column missing: the card would average four columns and print the JSON's five-column average beside it
    (lambda r: r["tasks"].pop("rain"), "has no rain"),
    (lambda r: r["tasks"].clear(), "has no haze, rain, noise-15, noise-25, noise-50"),
    (lambda r: r["tasks"].update(extra={}), "unknown extra"),
    (lambda r: r.update(tasks=list(r["tasks"].values())), "'tasks' is a JSON list"),
    (lambda r: r["tasks"].update(rain=[1, 2]), "tasks['rain'] is a JSON list"),
    (lambda r: r.update(average=None), "'average' is a JSON NoneType"),
    (lambda r: r["tasks"]["rain"].update(psnr="31.2"), "tasks['rain']['psnr'] is '31.2', not a finite number"),
    (lambda r: r["tasks"]["rain"].update(ssim=True), "tasks['rain']['ssim'] is True"),
    (lambda r: r["average"].update(psnr=r["average"]["psnr"] + 0.3), "average['psnr'] is"),
    (lambda r: r.update(protocol="4-task"), "protocol '4-task' is none of"),
    (lambda r: r.pop("skipped"), "'skipped' is None"),
    (lambda r: r.update(protocol_description=None), "'protocol_description' is None"),
])
def test_publish_refuses_results_that_are_not_an_evaluation(tmp_path, three_task_results, capsys, edit, message):
    """Hand-edited or truncated results files: one line and exit code 2, before anything is loaded or written."""
    from training import publish

    path = tmp_path / "edited.json"
    path.write_text(json.dumps(_edited(three_task_results, edit)))
    code = publish.main(["--model_dir", str(tmp_path / "absent"), "--eval_json", str(path), "--repo_id", "me/x",
                         "--output", str(tmp_path / "o"), "--no_push"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and f"publish failed: {path}" in err, err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "o").exists()
    ep.check_protocol_results(three_task_results)  # the unedited results pass


def test_publish_needs_the_evaluation_of_these_weights_and_ships_the_licence_it_links(tmp_path, capsys):
    """A results file records which weights it scored: another model of the same type is refused. A licence link
    that is a file is shipped in the folder (the upload makes the repo hold the folder only, so an unshipped
    file would be deleted from the repo and the link would point at nothing)."""
    from training import publish

    model = tiny_model("restormer")
    model.save_pretrained(tmp_path / "trained")
    results = json.loads(evaluation_json(model, tmp_path).read_text())
    assert len(results["model_fingerprint"]) == 16
    args = ["--model_dir", str(tmp_path / "trained"), "--repo_id", "me/x", "--no_push"]
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**results, "model_fingerprint": "0123456789abcdef"}))
    assert publish.main([*args, "--eval_json", str(other), "--output", str(tmp_path / "o")]) == 2
    assert "scored other weights (fingerprint 0123456789abcdef)" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    other.write_text(json.dumps({k: v for k, v in results.items() if k != "model_fingerprint"}))
    assert publish.main([*args, "--eval_json", str(other), "--output", str(tmp_path / "o")]) == 2
    assert "does not record which weights it scored" in capsys.readouterr().err
    own = tmp_path / "own.json"
    own.write_text(json.dumps(results))
    licence = ["--license", "other", "--license_name", "my-terms"]
    assert publish.main([*args, "--eval_json", str(own), "--output", str(tmp_path / "o"), *licence,
                         "--license_link", "TERMS.txt"]) == 2
    assert "--license_link TERMS.txt is no URL and no file here or in" in capsys.readouterr().err
    (tmp_path / "trained" / "TERMS.txt").write_text("my terms")
    assert publish.main([*args, "--eval_json", str(own), "--output", str(tmp_path / "o"), *licence,
                         "--license_link", "TERMS.txt"]) == 0
    assert (tmp_path / "o" / "TERMS.txt").read_text() == "my terms"
    from huggingface_hub import ModelCard

    assert ModelCard.load(tmp_path / "o" / "README.md").data.license_link == "TERMS.txt"
    # a path elsewhere is shipped under its name
    (tmp_path / "LICENSE.md").write_text("other terms")
    assert publish.main([*args, "--eval_json", str(own), "--output", str(tmp_path / "o"), *licence,
                         "--license_link", str(tmp_path / "LICENSE.md")]) == 0
    assert (tmp_path / "o" / "LICENSE.md").read_text() == "other terms"
    assert ModelCard.load(tmp_path / "o" / "README.md").data.license_link == "LICENSE.md"


@pytest.mark.parametrize("license, hint", [("MIT", "did you mean 'mit'?"), ("Apache-2.0", "did you mean 'apache-2.0'?"),
                                           ("gpl-3.0-or-later", "did you mean 'gpl-3.0'?")])
def test_publish_refuses_a_licence_the_hub_does_not_accept_before_converting(tmp_path, capsys, license, hint):
    """The Hub refuses an upload whose card names a licence id it does not know ("Invalid metadata in README.md"):
    --no_push used to verify such a folder (exit 0), and a real push failed only after conversion and verification."""
    from training import publish
    from training.model_card import build_model_card, check_hub_license

    model = tiny_model("restormer")
    model.save_pretrained(tmp_path / "trained")
    eval_json = evaluation_json(model, tmp_path)
    args = ["--eval_json", str(eval_json), "--repo_id", "me/x", "--output", str(tmp_path / "o"), "--no_push"]
    code = publish.main(["--model_dir", str(tmp_path / "trained"), *args, "--license", license])
    err = capsys.readouterr().err
    assert code == 2 and f"--license {license!r} is not a licence id the Hub accepts" in err and hint in err, err
    assert not (tmp_path / "o").exists()
    # ... before an official checkpoint is converted (this one does not exist)
    code = publish.main(["--official_checkpoint", str(tmp_path / "missing.pth"), "--model_type", "restormer", *args,
                         "--license", license])
    assert code == 2 and "is not a licence id the Hub accepts" in capsys.readouterr().err
    with pytest.raises(ValueError, match="not a licence id the Hub accepts"):
        build_model_card("me/x", "restormer", [], {}, license=license)
    for accepted in ("mit", "apache-2.0", "other", "cc-by-nc-4.0"):
        check_hub_license(accepted)


def test_publish_names_a_bad_config_override_in_one_line(tmp_path, capsys):
    """--config with a misspelt key used to be reported as a fault of the evaluation JSON ("does not hold what the
    card needs"), a value the config refuses ended in a traceback, and a JSON list in a TypeError."""
    from training import publish

    model = tiny_model("restormer")
    torch.save({"params": official_restormer_state_dict(model)}, tmp_path / "restormer.pth")
    eval_json = evaluation_json(model, tmp_path)
    args = ["--official_checkpoint", str(tmp_path / "restormer.pth"), "--model_type", "restormer", "--eval_json",
            str(eval_json), "--repo_id", "me/x", "--output", str(tmp_path / "o"), "--no_push"]
    for overrides, message in (({"layer_norm_typ": "BiasFree"}, "did you mean 'layer_norm_type'?"),
                               ({"dim": "8"}, "dim must be an integer of at least 1, got '8'")):
        config = json.dumps({**TINY_CONFIGS["restormer"], **overrides})
        assert publish.main([*args, "--config", config]) == 2
        err = capsys.readouterr().err
        assert err.startswith("publish failed: --config does not describe a RestormerConfig: ") and message in err, err
        assert len(err.strip().splitlines()) == 1 and "evaluation" not in err and str(eval_json) not in err
    assert not (tmp_path / "o").exists()
    with pytest.raises(SystemExit):
        publish.parse_args([*args, "--config", "[1, 2]"])
    assert "--config: must be a JSON object of config overrides" in capsys.readouterr().err


def test_a_failed_private_push_says_how_to_retry_privately(tmp_path):
    from training.model_card import HubPushError, push_folder_to_hub

    (tmp_path / "my folder").mkdir()
    for private, flag in ((True, " me/x --private)"), (None, " me/x)")):
        with pytest.raises(HubPushError) as caught:  # offline in tests: fails before any request
            push_folder_to_hub(tmp_path / "my folder", "me/x", token="t", private=private)
        assert str(caught.value).endswith(flag) and f"'{tmp_path / 'my folder'}'" in str(caught.value)


def test_card_snippets_of_a_model_that_needs_labels_run_as_written(tmp_path, monkeypatch):
    """A PIP without a degradation estimator (as converted official checkpoints are) restores only with a label:
    the card's three usage snippets pass one, and each runs as printed against the published folder."""
    import re
    import shlex

    import numpy as np
    from PIL import Image

    from modeling import cli, restore
    from training import publish

    model = tiny_model("pip", use_degradation_estimator=False)
    assert not model.can_estimate_degradation
    model.save_pretrained(tmp_path / "trained")
    eval_json = evaluation_json(model, tmp_path, "5-task")
    out = tmp_path / "published"
    assert publish.main(["--model_dir", str(tmp_path / "trained"), "--eval_json", str(eval_json), "--repo_id",
                         "me/tiny-pip", "--output", str(out), "--no_push"]) == 0
    text = (out / "README.md").read_text()
    label = model.config.degradation_names[0]
    assert "has no degradation estimator" in text and f"--degradation {label}" in text
    monkeypatch.chdir(tmp_path)
    image = (np.random.default_rng(0).random((20, 24, 3)) * 255).astype(np.uint8)
    Image.fromarray(image).save("degraded.png")
    expected = restore(image.astype(np.float32) / 255, model, degradation=label, dtype="fp32")
    python_blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(python_blocks) == 2
    for block in python_blocks:
        Path("restored.png").unlink(missing_ok=True)
        exec(block.replace('"me/tiny-pip"', repr(str(out))), {})
        restored = np.asarray(Image.open("restored.png"), dtype=np.float32) / 255
        # the snippets run with the defaults (bf16 autocast on a CPU with native bf16): within bf16 rounding
        assert np.abs(restored - expected).max() <= 4 / 255
    command = re.search(r"```bash\n(prompt-restore .*?)\n```", text).group(1)
    argv = shlex.split(command.replace("me/tiny-pip", str(out)))[1:]
    assert cli.main(argv) == 0
    restored = np.asarray(Image.open(Path("restored") / "degraded.png"), dtype=np.float32) / 255
    assert np.abs(restored - expected).max() <= 4 / 255
