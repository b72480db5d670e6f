"""Package trained weights as the demo model shipped inside the package (``modeling/demo/``).

    python -m training.package_demo --model outputs/pip-restormer-cpu/model --heldout data/embedded/heldout \
        --output modeling/demo

The folder written holds what ``restore()``, the CLI, the pipeline and the Space load by default: the config,
``model.safetensors``, the image processor, a model card whose results come from the held-out evaluation run
here (``eval_results.json``, never typed in), the training curves, a before/after grid, and ``examples/``:
small crops of held-out photos (never trained on) with each degradation synthesized at a fixed seed, plus their
clean crops in ``examples/clean/`` so that a test can score them. No code files are copied: the package itself
provides the model classes (a copy made with ``save_pretrained`` carries them for ``trust_remote_code``).
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import sys
import zlib
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modeling.inference import AUTO_MODES, DEFAULT_AUTO_MODE  # noqa: E402
from training.checkpointing import check_output_folder, folder_written_atomically  # noqa: E402

#: The card's note on how the shipped weights were trained: the document it names holds every stage's command (the
#: README's "Train" section only points there).
STAGES_NOTE = ("trained in several runs; `training/weights/README.md` in the repository lists each run's command, "
               "from scratch to these weights")

#: (degradation, held-out photo stem, synthesis parameters) of the shipped examples, one per degradation.
EXAMPLES = (
    ("noise", "lomiri-friends", {"sigma": 25.0}),
    ("rain", "sklearn-china", {}),
    ("haze", "lomiri-picosdeeuropa", {}),
    ("blur", "plasma-FallenLeaf", {"family": "gaussian", "sigma": 2.0}),
    ("low-light", "plasma-EveningGlow", {}),
)
EXAMPLE_SIZE = 256


def write_examples(heldout: Path, folder: Path, seed: int = 0) -> list[dict]:
    """Degraded crops of held-out photos (``examples/<photo>-<task>.png``) and their clean crops."""
    from PIL import Image

    from training.data import center_crop, decode_image
    from training.degradations import synthesize

    (folder / "clean").mkdir(parents=True, exist_ok=True)
    written = []
    for task, stem, params in EXAMPLES:
        source = heldout / f"{stem}.png"
        if not source.is_file():
            raise FileNotFoundError(f"held-out photo {source} is missing (build the corpus with its Debian packages)")
        clean = center_crop(decode_image(source)[0], EXAMPLE_SIZE)
        rng = np.random.default_rng([seed, zlib.crc32(f"{stem}-{task}".encode())])
        degraded = synthesize(clean, task, rng, **params).image
        name = f"{stem}-{task}.png"
        Image.fromarray(degraded).save(folder / name)
        Image.fromarray(clean).save(folder / "clean" / f"{stem}.png")
        written.append({"file": f"examples/{name}", "clean": f"examples/clean/{stem}.png", "degradation": task,
                        "photo": stem, "synthesis": params})
    return written


def before_after_grid(model, examples: list[dict], folder: Path, auto_mode: str) -> Path:
    """One row per example: degraded | restored without a label | clean."""
    from diffusers.utils import make_image_grid
    from PIL import Image

    from modeling import restore

    tiles = []
    for example in examples:
        degraded = Image.open(folder / example["file"]).convert("RGB")
        # fp32, like the scores: the picture must not depend on whether this CPU computes bf16 natively
        restored = restore(degraded, model, degradation="auto", auto_mode=auto_mode, dtype="fp32")
        tiles += [degraded, restored, Image.open(folder / example["clean"]).convert("RGB")]
    path = folder / "before_after.png"
    make_image_grid(tiles, rows=len(examples), cols=3).save(path)
    return path


RESULTS_SOURCE = (
    "Measured by `python -m training.package_demo` (`training.evaluate_model.evaluate_heldout`) on the held-out "
    "photos of the embedded corpus (never trained on), each degradation synthesized at a seed fixed by the row's "
    "name and the image."
)


def heldout_comparison(results: dict, auto_mode: str) -> str:
    """The card's second table: both modes, the worst single image and non-local means, from the same results."""
    from training.evaluate_model import markdown_table

    return (
        f"The same evaluation with the label-free mode (`degradation=\"auto\"`, `auto_mode=\"{auto_mode}\"`, what "
        "`restore()` and the CLI do by default), the worst single-image gain over the degraded input, and "
        "scikit-image's non-local means given the true noise σ:\n\n" + markdown_table(results)
    )


class ReuseRefused(ValueError):
    """``reuse_evaluation`` cannot take ``OUTPUT/eval_results.json``: missing, or scored on other weights or
    settings."""


def same_weights(model, other) -> bool:
    """Whether two models hold the very same tensors (names, dtypes and values)."""
    import torch

    ours, theirs = model.state_dict(), other.state_dict()
    return ours.keys() == theirs.keys() and all(
        ours[key].dtype == theirs[key].dtype and torch.equal(ours[key], theirs[key]) for key in ours
    )


def package_demo(
    model_dir: Path,
    heldout: Path,
    output: Path,
    auto_mode: str = DEFAULT_AUTO_MODE,
    reuse_evaluation: bool = False,
    inference_tile: int | None = None,
    eval_workers: int = 1,
    weights_name: str | None = None,
) -> dict:
    """Evaluate ``model_dir`` on ``heldout`` and write the shipped demo folder ``output`` (atomically).

    ``reuse_evaluation``: take the results from ``output/eval_results.json`` (an earlier run on the same weights,
    checked against the weights in ``output`` and against the restore settings it records, ``auto_mode``, ``tile``,
    ``tile_overlap``, ``dtype``, ...: others raise `ReuseRefused`) instead of evaluating again
    (which takes tens of minutes on a CPU); the card, grid and examples are rewritten.
    ``inference_tile``: write this tile side into the shipped config (``restore()``'s default tiling for the model,
    see ``RestorationBackboneConfig``) before evaluating; 0 clears it (whole images); ``None`` keeps the model's.
    ``eval_workers``: share the evaluation's rows among this many one-thread processes (the same numbers to float
    rounding; see ``training.evaluate_model.evaluate_heldout_in_processes``).
    The weights are shipped in the precision they were saved in; a checkpoint saved in bf16 or fp16 is scored (and
    its before/after grid drawn) as its float32 copy, in fp32 like every held-out evaluation.
    ``weights_name``: where the card says the weights are kept (e.g. the committed ``training/weights/...`` folder);
    default: ``model_dir``, which is often a scratch folder under ``outputs/``.
    """
    import torch

    from modeling import save_restoration_folder
    from modeling.inference import load_model
    from training.evaluate_model import (
        evaluate_heldout,
        evaluate_heldout_in_processes,
        markdown_table,
        restore_settings,
    )
    from training.model_card import build_model_card, packaged_usage_section, save_model_card

    model = load_model(str(model_dir), device="cpu")  # shipped in the precision it was saved in
    if inference_tile is not None:
        model.config.inference_tile = inference_tile or None
        model.config.validate()
    # Scored and pictured in fp32, as evaluate_model scores: restore() refuses fp32 over half-precision weights, so a
    # checkpoint saved in bf16 or fp16 is scored as its float32 copy (what evaluate_model --dtype fp32 loads).
    scored = model if all(not p.is_floating_point() or p.dtype == torch.float32 for p in model.parameters()) else (
        copy.deepcopy(model).float())
    # What evaluate_heldout restores with here (its defaults, with the model's inference_tile), recorded with the
    # scores and compared when they are reused.
    settings = restore_settings(model, auto_mode=auto_mode)
    if reuse_evaluation:
        if not (output / "eval_results.json").is_file():
            raise ReuseRefused(f"{output} holds no eval_results.json to reuse: evaluate (leave out reuse_evaluation)")
        earlier = json.loads((output / "eval_results.json").read_text())
        if earlier.get("inference_tile") != model.config.inference_tile:
            raise ReuseRefused(
                f"{output}/eval_results.json scored inference_tile={earlier.get('inference_tile')!r}, but the model "
                f"restores with {model.config.inference_tile!r}"
            )
        for key, value in settings.items():  # every restore setting the scores were measured with
            if key not in earlier:
                raise ReuseRefused(f"{output}/eval_results.json does not record the {key} it was scored with: "
                                   "evaluate again (leave out reuse_evaluation)")
            if earlier[key] != value:
                raise ReuseRefused(f"{output}/eval_results.json scored {key}={earlier[key]!r}, not {value!r}: "
                                   "evaluate again (leave out reuse_evaluation)")
        if not same_weights(model, load_model(str(output), device="cpu")):
            raise ReuseRefused(f"{output}/eval_results.json scored the weights of {output}, not those of {model_dir}: "
                             "evaluate them (leave out reuse_evaluation)")
        results = earlier["results"]
    with folder_written_atomically(output) as partial:
        save_restoration_folder(model, partial, with_code=False)  # the installed package provides the classes
        if not reuse_evaluation and eval_workers > 1:  # the workers load what is shipped (with its inference_tile)
            results = evaluate_heldout_in_processes(partial, heldout, eval_workers, auto_mode=auto_mode)
        elif not reuse_evaluation:
            results = evaluate_heldout(scored, heldout, auto_mode=auto_mode)
        examples = write_examples(heldout, partial / "examples")
        figures = [before_after_grid(scored, examples, partial, auto_mode).name]
        if (model_dir / "training_curves.png").is_file():
            shutil.copy(model_dir / "training_curves.png", partial / "training_curves.png")
            figures.insert(0, "training_curves.png")
        evaluation = {"heldout": sorted(p.name for p in heldout.iterdir() if p.suffix == ".png"), **settings,
                      "inference_tile": model.config.inference_tile, "results": results, "examples": examples}
        (partial / "eval_results.json").write_text(json.dumps(evaluation, indent=2) + "\n")
        training = {"weights": weights_name or f"{model_dir}",
                    "stages": STAGES_NOTE}
        if (model_dir / "estimator_training.json").is_file():
            training["estimator"] = "trained afterwards, body frozen: `python -m training.train_estimator` (see README)"
        card = build_model_card(
            model_id="prompt-restoration/pip-restormer-cpu-demo",
            model_type=model.config.model_type,
            results=[{"task": name, "dataset": "embedded held-out photos", "split": "heldout", **scores}
                     for name, scores in results.items()],
            training_summary={"command": "accelerate launch training/train.py --config "
                                         "training/configs/pip_restormer_cpu.yaml", **training},
            figures=figures,
            results_source=RESULTS_SOURCE,
            comparison=heldout_comparison(results, auto_mode),
            usage=packaged_usage_section(),
        )
        save_model_card(card, partial)
        (partial / "heldout_table.md").write_text(markdown_table(results) + "\n")
    return results


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, type=Path, help="trained model folder (train.py's OUTPUT/model)")
    parser.add_argument("--heldout", required=True, type=Path, help="held-out clean photos")
    parser.add_argument("--output", type=Path, default=Path(__file__).resolve().parents[1] / "modeling" / "demo",
                        help="folder to write: new, empty or an earlier model folder (replaced; default: the "
                             "shipped demo)")
    parser.add_argument("--auto_mode", default=DEFAULT_AUTO_MODE, choices=AUTO_MODES,
                        help=f"label-free mode scored and shown (default {DEFAULT_AUTO_MODE!r}: what restore() does)")
    parser.add_argument("--reuse_evaluation", action="store_true",
                        help="take the scores from OUTPUT/eval_results.json of an earlier run on the same weights "
                             "(refused when OUTPUT holds other weights, or scores measured with other restore "
                             "settings: auto_mode, tiles, precision, ...)")
    parser.add_argument("--inference_tile", type=int, default=None,
                        help="tile side restore() uses for this model by default (written into its config; 0: "
                             "whole images); default: keep the model's")
    parser.add_argument("--eval_workers", type=int, default=1,
                        help="share the evaluation among this many one-thread processes (the same numbers to "
                             "float rounding)")
    parser.add_argument("--weights_name", default=None,
                        help="where the card says the weights are kept, e.g. the committed training/weights/... "
                             "folder (default: --model)")
    args = parser.parse_args(argv)
    try:  # before the evaluation: a folder that is not a model folder would be replaced whole
        check_output_folder(args.output, [args.model, args.heldout])
    except ValueError as error:
        parser.error(str(error))
    from training.evaluate_model import markdown_table

    try:
        results = package_demo(
            args.model, args.heldout, args.output, args.auto_mode, args.reuse_evaluation, args.inference_tile,
            args.eval_workers, args.weights_name,
        )
    except ReuseRefused as error:  # one line, as argparse reports a bad option; other errors keep their traceback
        parser.error(str(error))
    print(markdown_table(results))
    return results


if __name__ == "__main__":
    main()
