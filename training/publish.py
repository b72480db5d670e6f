"""Publish a model: convert or take a trained folder, verify it loads everywhere, card from an evaluation, upload.

    python -m training.publish --official_checkpoint model.ckpt --model_type promptir \
        --eval_json results.json --repo_id org/promptir-3task
    python -m training.publish --model_dir outputs/pip-restormer/model --eval_json results.json \
        --repo_id org/pip-restormer --output publish/pip-restormer

Steps, each of which stops the command with one clear line when it fails:

1. **Weights.** ``--official_checkpoint`` is converted by the method's converter in ``modeling/conversion``
   (read with ``torch.load(weights_only=True)``; ``--config`` JSON overrides the config, e.g. for a BiasFree
   Restormer); ``--model_dir`` is a folder written by training. Either way the model is saved through the
   ``image-restoration`` pipeline, so the folder carries its code (``*.py``), config, safetensors weights and
   image processor.
2. **Verification.** The folder is loaded back with ``AutoModelForImageToImage`` (outputs must match the model
   that was saved), then a bare copy is loaded in a fresh interpreter in which this package cannot be imported,
   with ``AutoModel.from_pretrained(..., trust_remote_code=True)`` and ``pipeline("image-restoration", ...,
   trust_remote_code=True)``; its output must equal ours.
3. **Card.** ``README.md`` is rendered by ``training.model_card.build_model_card`` from ``--eval_json`` (written by
   ``python -m training.evaluate_protocol``): the model-index and the tables hold the JSON's numbers and no
   others; its Training section shows what training recorded of the run (``training_summary.json`` in
   ``--model_dir``: the command, its recipe, steps and precision). The JSON must be complete (every column of its protocol, finite scores, the average their mean) and
   its ``model_type`` and ``model_fingerprint`` (which weights it scored) the model's. The JSON itself is shipped
   as ``protocol_results.json``.
4. **Upload** of the whole folder in one commit (``training.model_card.push_folder_to_hub``), unless
   ``--no_push``. A failed push leaves the verified folder in ``--output``.

Exit codes: 0 published (or prepared with ``--no_push``), 1 the push failed, 2 usage, conversion or
verification error.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from huggingface_hub.utils import validate_repo_id  # noqa: E402

from training.checkpointing import folder_written_atomically  # noqa: E402

logger = logging.getLogger(__name__)

#: ``--model_type`` -> (module in ``modeling.conversion``, converter function).
CONVERTERS: dict[str, tuple[str, str]] = {
    "restormer": ("convert_restormer", "convert_restormer_checkpoint"),
    "promptir": ("convert_promptir", "convert_promptir_checkpoint"),
    "pip": ("convert_pip", "convert_pip_checkpoint"),
    "cpl": ("convert_cpl", "convert_cpl_checkpoint"),
    "dppd": ("convert_dppd", "convert_dppd_checkpoint"),
}

#: Where each method's official release lives: the ``license_link`` of a card for converted official weights, whose
#: licence is that release's (``license: other``, ``license_name: <model_type>-official-weights``).
OFFICIAL_RELEASES: dict[str, str] = {
    "restormer": "https://github.com/swz30/Restormer",
    "promptir": "https://github.com/va1shn9v/PromptIR",
    "pip": "https://github.com/longzilicart/pip_universal",
    "cpl": "https://github.com/Aitical/CPLIR",
    "dppd": "https://github.com/Aitical/DPPD",
}

#: Files of a training folder that are not part of the published model (the card is rendered anew).
_NOT_PUBLISHED = {"README.md", "protocol_results.json"}


class PublishError(RuntimeError):
    """Conversion, loading or verification failed; the message says what and where."""


def convert_official(checkpoint: str | os.PathLike, model_type: str, config_overrides: Optional[dict] = None):
    """Our model with the weights of an official checkpoint (the converters check every key)."""
    import importlib

    import modeling

    if model_type not in CONVERTERS:
        raise PublishError(f"--model_type must be one of {sorted(CONVERTERS)}, got {model_type!r}")
    module_name, function_name = CONVERTERS[model_type]
    convert = getattr(importlib.import_module(f"modeling.conversion.{module_name}"), function_name)
    from huggingface_hub.errors import StrictDataclassError

    config_class, _ = modeling.MODEL_CLASSES[model_type]
    try:
        # Restormer's converter needs a config (LayerNorm type); the others infer theirs from the file when None.
        config = config_class(**config_overrides) if config_overrides or model_type == "restormer" else None
    except (TypeError, ValueError, StrictDataclassError) as error:
        # a misspelt key (TypeError, which main() would report as a fault of the evaluation JSON) or a bad value
        # (the config's validators, raised as a multi-line StrictDataclassError: its cause is the one line)
        cause = error.__cause__ if isinstance(error, StrictDataclassError) and error.__cause__ else error
        raise PublishError(f"--config does not describe a {config_class.__name__}: {cause}") from None
    try:
        return convert(str(checkpoint), config)
    except (ValueError, OSError, RuntimeError, EOFError, KeyError, pickle.UnpicklingError) as error:
        # UnpicklingError: a checkpoint holding objects that torch.load(weights_only=True) will not rebuild;
        # EOFError / KeyError: an empty file, or one that is no torch file at all
        raise PublishError(f"cannot convert {checkpoint} as {model_type}: {error}") from error


def _probe_input():
    """A fixed, seeded RGB input of odd size (so the model's padding and cropping are exercised)."""
    import numpy as np

    rng = np.random.default_rng(0)
    return rng.random((21, 27, 3)).astype(np.float32)


def _probe_label(model: Any) -> Optional[str]:
    """A degradation label for models that need one (converted PIP has no estimator), else None."""
    from modeling.inference import accepts_degradation_labels

    if not accepts_degradation_labels(model):
        return None
    names = list(getattr(model.config, "degradation_names", None) or [])
    return names[0] if names else None


def save_folder(model: Any, folder: Path, processor: Any = None, extra_files: Sequence[Path] = ()) -> None:
    """Save weights, config, code and processor through the ``image-restoration`` pipeline (what remote code needs)."""
    from modeling import save_restoration_folder

    save_restoration_folder(model, folder, processor)
    for path in extra_files:
        target = folder / path.name
        if not target.exists():
            shutil.copy2(path, target)


def verify_folder(folder: Path, model: Any, timeout: float = 600) -> None:
    """Load `folder` with AutoModel here and with remote code from a bare copy, without this package, elsewhere.

    Raises `PublishError` when either load fails or gives other outputs than `model`.
    """
    import numpy as np
    from transformers import AutoModelForImageToImage

    from modeling import restore

    image, label = _probe_input(), _probe_label(model)
    kwargs = {"degradation": label} if label is not None else {}
    expected = restore(image, model, device="cpu", dtype="fp32", **kwargs)
    try:
        reloaded = AutoModelForImageToImage.from_pretrained(folder).eval()
    except Exception as error:  # noqa: BLE001 - any loading failure is a verification failure
        raise PublishError(f"{folder} does not load with AutoModelForImageToImage: {error}") from error
    if type(reloaded).__name__ != type(model).__name__:
        raise PublishError(f"{folder} loads as {type(reloaded).__name__}, not {type(model).__name__}")
    reloaded_output = restore(image, reloaded, device="cpu", dtype="fp32", **kwargs)
    if not np.allclose(reloaded_output, expected, atol=1e-6, rtol=0):
        raise PublishError(f"{folder}: the reloaded model's output differs from the converted one's")
    del reloaded

    with tempfile.TemporaryDirectory(prefix="publish-verify-") as scratch:
        scratch = Path(scratch)
        bare = scratch / "bare-copy"
        shutil.copytree(folder, bare)
        np.save(scratch / "image.npy", image)
        np.save(scratch / "expected.npy", expected)
        script = f"""
import sys
import numpy as np
sys.modules["modeling"] = None  # the installed package must not be needed: only the folder's own code
sys.modules["training"] = None
from transformers import AutoModel, pipeline
model = AutoModel.from_pretrained({str(bare)!r}, trust_remote_code=True)
assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
pipe = pipeline("image-restoration", model={str(bare)!r}, trust_remote_code=True, device="cpu")
assert type(pipe).__module__.startswith("transformers_modules"), type(pipe).__module__
kwargs = {kwargs!r}
out = pipe(np.load({str(scratch / "image.npy")!r}), dtype="fp32", **kwargs)
expected = np.load({str(scratch / "expected.npy")!r})
error = float(np.abs(np.asarray(out, dtype=np.float64) - expected).max())
assert error <= 1e-6, f"remote-code output differs by {{error}}"
print("remote code ok")
"""
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(scratch / "modules"), PYTHONNOUSERSITE="1")
        result = subprocess.run([sys.executable, "-c", script], cwd=scratch, env=env, capture_output=True,
                                text=True, timeout=timeout)
    if result.returncode != 0 or "remote code ok" not in result.stdout:
        tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise PublishError(f"{folder} does not load with trust_remote_code without the package: {tail}")


def training_record(model_dir: Path) -> dict[str, Any]:
    """What training recorded of the run that wrote `model_dir` (``training_summary.json``; {} for a folder
    without one, e.g. written before training kept it): the card then names that run's command and recipe."""
    from training.model_card import TRAINING_SUMMARY_FILE

    path = model_dir / TRAINING_SUMMARY_FILE
    if not path.is_file():
        return {}
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise PublishError(f"cannot read {path}: {error}") from error
    if not isinstance(record, dict):
        raise PublishError(f"{path} must hold a JSON object (what training recorded), got {type(record).__name__}")
    return record


def render_card(folder: Path, results: dict, repo_id: str, model_type: str, license: str, weights: str,
                license_name: Optional[str] = None, license_link: Optional[str] = None,
                required_label: Optional[str] = None, degradation_names: Sequence[str] = (),
                training: Optional[Mapping[str, Any]] = None, model_config: Optional[Mapping[str, Any]] = None) -> Path:
    """Write ``README.md`` from the evaluation JSON (model-index, tables, published rows) and ship the JSON.

    `required_label`: for a model that cannot estimate the degradation, the label the usage snippets pass (one of
    `degradation_names`), so that they run as written. `training`: what training recorded of the run
    (``training_summary.json``: its command, steps, precision), shown in the card's Training section.
    `model_config`: the model's config, for what the card says of this model in particular (see
    `build_model_card`)."""
    from training.evaluate_protocol import markdown_report, model_card_results
    from training.model_card import build_model_card, save_model_card, usage_section

    report = markdown_report(results, model_name=repo_id.split("/")[-1])
    # Only the side-by-side table: the per-column table is the card's own results table.
    comparison = report[report.index("PSNR/SSIM beside the published numbers"):].split("\n\nSkipped files")[0]
    skipped = results.get("skipped", {}).get("count", 0)
    source = (f"Evaluated with `python -m training.evaluate_protocol` on the test sets of the `{results['protocol']}` "
              f"protocol ({results['protocol_description']}); the numbers come from `protocol_results.json`"
              + (f", where the {skipped} skipped test files are listed" if skipped else "") + ".")
    summary = {"weights": weights, **(training or {}), "evaluation seed": results.get("seed"),
               "degradation labels at test time": results.get("degradation") or "none (blind model)"}
    card = build_model_card(
        repo_id, model_type, model_card_results(results), summary,
        metric_protocol=results["convention_description"], results_source=source, comparison=comparison,
        license=license, license_name=license_name, license_link=license_link,
        usage=usage_section(repo_id, required_label, degradation_names), model_config=model_config,
    )
    (folder / "protocol_results.json").write_text(json.dumps(results, indent=2))
    return save_model_card(card, folder)


def check_output_folder(output: Path, source: Path) -> None:
    """The publish folder is replaced as a whole: refuse one that holds the source being published, or an existing
    folder that an earlier publish did not write (it holds ``config.json`` and ``protocol_results.json``):
    ``publish/`` itself, a home or project folder, or another model's training folder with its own files."""
    from training import checkpointing

    try:
        checkpointing.check_output_folder(output, [source], markers=("config.json", "protocol_results.json"),
                                          written_by="a folder written by publish", may_be_a_source=False)
    except ValueError as error:
        raise PublishError(str(error)) from None


def license_file(license_link: Optional[str], model_dir: Optional[str]) -> Optional[Path]:
    """The local file a non-URL `license_link` names (as given, else inside `model_dir`), which the folder ships
    under its own name; None for a URL. The upload makes the repo hold the folder and nothing else, so a link to a
    file the folder lacks would point at nothing (and delete the repo's copy)."""
    if not license_link or "://" in license_link:
        return None
    candidates = [Path(license_link)] + ([Path(model_dir) / license_link] if model_dir else [])
    for path in candidates:
        if path.is_file():
            return path
    raise PublishError(f"--license_link {license_link} is no URL and no file here"
                       + (f" or in {model_dir}" if model_dir else "") + ": the published folder must hold the "
                       "licence it links (give a URL, or the path of the licence file to ship)")


def prepare_folder(
    output: Path,
    *,
    results: dict,
    repo_id: str,
    official_checkpoint: Optional[str] = None,
    model_type: Optional[str] = None,
    model_dir: Optional[str] = None,
    config_overrides: Optional[dict] = None,
    license: Optional[str] = None,
    license_name: Optional[str] = None,
    license_link: Optional[str] = None,
    verify: bool = True,
) -> Path:
    """Build, verify and card the publishable folder at `output` (written atomically); return it.

    Licence: a trained folder defaults to ``apache-2.0``; converted official weights to ``other``, named
    ``<model_type>-official-weights`` and linked to the official release (`OFFICIAL_RELEASES`), whose terms they
    keep. ``other`` with a trained folder needs `license_name` and `license_link`."""
    from modeling.inference import load_model, load_processor
    from modeling.modeling_utils import model_fingerprint
    from training.model_card import check_hub_license

    if (official_checkpoint is None) == (model_dir is None):
        raise PublishError("give either --official_checkpoint (with --model_type) or --model_dir")
    check_output_folder(Path(output), Path(official_checkpoint or model_dir))
    if official_checkpoint is not None and model_type is None:
        raise PublishError("--official_checkpoint needs --model_type")
    # The card's licence, settled before any conversion. Official releases carry their own terms: never claim a
    # licence for them by default.
    license = license or ("other" if official_checkpoint is not None else "apache-2.0")
    try:  # the Hub refuses a card with another id, but only at upload, after conversion and verification
        check_hub_license(license)
    except ValueError as error:
        raise PublishError(f"--{error}") from None
    if license == "other" and official_checkpoint is not None:
        license_name = license_name or f"{model_type}-official-weights"
        license_link = license_link or OFFICIAL_RELEASES[model_type]
    if license == "other" and not (license_name and license_link):
        raise PublishError("--license other needs --license_name and --license_link (the Hub shows them as the "
                           "licence)")
    if license != "other" and (license_name or license_link):
        raise PublishError(f"--license_name and --license_link describe --license other, not {license!r}")
    shipped_license = license_file(license_link, model_dir)
    if shipped_license is not None:
        license_link = shipped_license.name
    extra: list[Path] = []
    training: dict[str, Any] = {}
    if official_checkpoint is not None:
        model = convert_official(official_checkpoint, model_type, config_overrides)
        processor = None
        weights = f"converted from the official checkpoint `{Path(official_checkpoint).name}`"
    else:
        try:
            model = load_model(model_dir, device="cpu")
        except Exception as error:  # noqa: BLE001
            raise PublishError(f"cannot load {model_dir}: {error}") from error
        processor = load_processor(model_dir)
        extra = [p for p in sorted(Path(model_dir).iterdir())
                 if p.is_file() and p.name not in _NOT_PUBLISHED and p.suffix in (".png", ".json", ".jpg")]
        weights = f"trained with this repository (`{Path(model_dir).name}`)"
        training = training_record(Path(model_dir))
    model_type = model.config.model_type
    if results.get("model_type") != model_type:
        evaluated = f"of a {results['model_type']!r} model" if "model_type" in results else "names no model_type"
        raise PublishError(f"the evaluation JSON {evaluated}, this is {model_type!r}")
    scored = results.get("model_fingerprint")
    if scored is None:  # written before evaluations recorded it, or edited
        raise PublishError("the evaluation JSON does not record which weights it scored (no model_fingerprint): "
                           "evaluate this model with training.evaluate_protocol")
    if scored != model_fingerprint(model):
        raise PublishError(f"the evaluation JSON scored other weights (fingerprint {scored}) than this model's "
                           f"({model_fingerprint(model)}): evaluate this model with training.evaluate_protocol")
    if shipped_license is not None:
        extra = [*(path for path in extra if path.name != shipped_license.name), shipped_license]
    required_label = _probe_label(model) if not getattr(model, "can_estimate_degradation", False) else None
    output = Path(output)
    with folder_written_atomically(output) as partial:
        save_folder(model, partial, processor, extra)
        render_card(partial, results, repo_id, model_type, license, weights, license_name, license_link,
                    required_label, list(getattr(model.config, "degradation_names", None) or []), training,
                    model.config.to_dict())
        if verify:
            verify_folder(partial, model)
    return output


def _json_object(text: str) -> dict:
    """``--config``: a JSON object (config overrides), else a usage error."""
    try:
        value = json.loads(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"not JSON ({error}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object of config overrides, got {text!r}")
    return value


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training.publish", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--official_checkpoint", help="official .pth/.ckpt file to convert")
    source.add_argument("--model_dir", help="model folder written by training")
    parser.add_argument("--model_type", choices=sorted(CONVERTERS), help="method of --official_checkpoint")
    parser.add_argument("--config", type=_json_object, default=None,
                        help='config overrides for the conversion, JSON (e.g. \'{"layer_norm_type": "BiasFree"}\')')
    parser.add_argument("--eval_json", required=True, help="results of python -m training.evaluate_protocol")
    parser.add_argument("--repo_id", required=True, help="Hub repo to create or update (org/name)")
    parser.add_argument("--output", default=None, help="local folder to write (default: publish/<name>)")
    parser.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN or the stored login)")
    parser.add_argument("--license", default=None,
                        help="card licence, a Hub licence id, checked before anything is converted (default: "
                        "apache-2.0 for trained folders; 'other' for official weights, named <model_type>-official-weights "
                        "and linked to the official release)")
    parser.add_argument("--license_name", default=None, help="with --license other: the licence's id on the card")
    parser.add_argument("--license_link", default=None,
                        help="with --license other: a URL to the licence, or the path of a licence file (as "
                        "given, else in --model_dir), which the folder ships and the card links")
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--no_push", action="store_true", help="prepare and verify the folder, do not upload")
    args = parser.parse_args(argv)
    if args.model_dir and (args.model_type or args.config):  # they describe a conversion, which a folder skips
        parser.error("--model_type and --config apply to --official_checkpoint, not --model_dir")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command line entry point (see the module docstring); returns the exit code."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from training.evaluate_protocol import check_protocol_results
    from training.model_card import HubPushError, push_folder_to_hub

    try:
        results = json.loads(Path(args.eval_json).read_text())
        check_protocol_results(results, args.eval_json)
        validate_repo_id(args.repo_id)  # before anything is written: the default folder is named after it
        output = Path(args.output or Path("publish") / args.repo_id.split("/")[-1])
        folder = prepare_folder(
            output, results=results, repo_id=args.repo_id, official_checkpoint=args.official_checkpoint,
            model_type=args.model_type, model_dir=args.model_dir, config_overrides=args.config, license=args.license,
            license_name=args.license_name, license_link=args.license_link,
        )
    except (PublishError, OSError, ValueError) as error:  # ValueError: bad JSON, non-finite numbers, bad repo id
        sys.stderr.write(f"publish failed: {error}\n")
        return 2
    except (KeyError, TypeError) as error:  # a results file without a score the card needs, or null where one belongs
        sys.stderr.write(f"publish failed: {args.eval_json} does not hold what the card needs "
                         f"({type(error).__name__}: {error}); write it with training.evaluate_protocol\n")
        return 2
    sys.stdout.write(f"verified folder: {folder}\n")
    if args.no_push:
        return 0
    try:
        url = push_folder_to_hub(folder, args.repo_id, token=args.token, private=args.private or None,
                                 commit_message=f"Upload {results.get('model_type')} evaluated on {results['protocol']}")
    except HubPushError as error:
        sys.stderr.write(f"{error}\n")
        return 1
    sys.stdout.write(f"{url}\n")
    return 0


__all__ = ["CONVERTERS", "PublishError", "convert_official", "prepare_folder", "render_card", "save_folder",
           "verify_folder", "main"]


if __name__ == "__main__":
    sys.exit(main())
