"""Model cards with measured results, the final model folder, and pushing it to the Hub.

`build_model_card` fills a template from ``model_cards/`` (one per published model, ``generic.md`` otherwise)
with the numbers the training run measured: the YAML header's ``model-index`` and the results table both come
from `results` and nothing else. `push_folder_to_hub` uploads the whole folder (weights, config, image processor,
card, figures) in one commit; ``PreTrainedModel.push_to_hub`` cannot, since it re-saves into a temporary folder
and replaces the README with transformers' default card (ecosystem-more.md §7). `save_model_folder` writes what
training publishes (weights through the ``image-restoration`` pipeline, processor, card, training curves drawn
by `plot_training_curves`, measured results) atomically.

A failed push can be retried from the command line::

    python -m training.model_card push OUTPUT_DIR org/name
"""

from __future__ import annotations

import argparse
import difflib
import glob
import json
import math
import numbers
import os
import re
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence, Union

from training.checkpointing import folder_written_atomically

if TYPE_CHECKING:  # huggingface_hub is imported where used, so `--help` and error paths stay fast
    from huggingface_hub import ModelCard

#: Card templates, one per published model (jinja, rendered by `huggingface_hub.ModelCard.from_template`).
MODEL_CARDS_DIR = Path(__file__).resolve().parent.parent / "model_cards"
TEMPLATE_FILES = {
    "pip": "pip-restormer.md", "promptir": "promptir.md", "restormer": "restormer.md", "cpl": "promptir-cpl.md",
    "dppd": "dppd.md",
}
GENERIC_TEMPLATE = "generic.md"

#: Never uploaded: training output that is not part of the published model (accelerate checkpoints, temporary
#: folders), hidden files at any depth, and pickled files (weights go out as safetensors only).
DEFAULT_IGNORE_PATTERNS = ("checkpoint-*", "*.tmp", "*.tmp/*", ".*", "*/.*", "*.bin", "*.pt", "*.pth", "*.ckpt",
                           "*.pkl", "*.pickle")
#: Suffixes of pickled files, matched in any case and anywhere in a name's suffixes ("EMA.PT", "optimizer.pth.tar",
#: "rng.pkl.gz"), which the case-sensitive patterns above would let through. Never uploaded, whatever the patterns.
PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle"})


def pickled_files(folder: Path) -> list[str]:
    """Files below `folder` that may hold pickles (`PICKLE_SUFFIXES`), as glob-escaped relative paths."""
    return [glob.escape(path.relative_to(folder).as_posix()) for path in sorted(folder.rglob("*"))
            if path.is_file() and PICKLE_SUFFIXES & {suffix.lower() for suffix in path.suffixes}]

_RESULT_NUMBER_KEYS = ("psnr", "ssim", "input_psnr", "input_ssim")

#: How the numbers were measured, by default (`training.evaluation` with its default options).
DEFAULT_METRIC_PROTOCOL = (
    "PSNR (dB) and SSIM on RGB images in [0, 1] (data range 1, predictions clipped to [0, 1], no Y channel, no border "
    "shave; SSIM with scikit-image's uniform 7×7 window), one score per image averaged over the images, as in the "
    "PromptIR / PIP evaluation code (`training/metrics/restoration_psnr_ssim`)."
)

#: Where the numbers of a card come from, by default (the training run's validation).
DEFAULT_RESULTS_SOURCE = "Measured by the training run on held-out image pairs."


#: The licence ids the Hub accepts in a card's ``license`` field (https://hf.co/docs/hub/repositories-licenses, and
#: the list the Hub's metadata check names when it refuses one). The Hub refuses an upload whose card names another
#: id ("Invalid metadata in README.md"), so a card is checked against this list before anything is converted or
#: uploaded; a licence the Hub does not know is ``other`` with a name and a link.
HUB_LICENSES = frozenset({
    "apache-2.0", "mit", "openrail", "bigscience-openrail-m", "creativeml-openrail-m", "bigscience-bloom-rail-1.0",
    "bigcode-openrail-m", "afl-3.0", "artistic-2.0", "bsl-1.0", "bsd", "bsd-2-clause", "bsd-3-clause",
    "bsd-3-clause-clear", "c-uda", "cc", "cc0-1.0", "cc-by-2.0", "cc-by-2.5", "cc-by-3.0", "cc-by-4.0", "cc-by-sa-3.0",
    "cc-by-sa-4.0", "cc-by-nc-2.0", "cc-by-nc-3.0", "cc-by-nc-4.0", "cc-by-nd-4.0", "cc-by-nc-nd-3.0",
    "cc-by-nc-nd-4.0", "cc-by-nc-sa-2.0", "cc-by-nc-sa-3.0", "cc-by-nc-sa-4.0", "cdla-sharing-1.0",
    "cdla-permissive-1.0", "cdla-permissive-2.0", "wtfpl", "ecl-2.0", "epl-1.0", "epl-2.0", "etalab-2.0", "eupl-1.1",
    "eupl-1.2", "agpl-3.0", "gfdl", "gpl", "gpl-2.0", "gpl-3.0", "lgpl", "lgpl-2.1", "lgpl-3.0", "isc", "h-research",
    "intel-research", "lppl-1.3c", "ms-pl", "apple-ascl", "apple-amlr", "mpl-2.0", "odc-by", "odbl", "openmdw-1.0",
    "openrail++", "osl-3.0", "postgresql", "ofl-1.1", "ncsa", "unlicense", "zlib", "pddl", "lgpl-lr",
    "deepfloyd-if-license", "fair-noncommercial-research-license", "llama2", "llama3", "llama3.1", "llama3.2",
    "llama3.3", "llama4", "grok2-community", "gemma", "unknown", "other",
})


def check_hub_license(license: str) -> None:
    """Raise ValueError, naming the closest id, when `license` is not a licence id the Hub accepts (`HUB_LICENSES`)."""
    if license in HUB_LICENSES:
        return
    lowered = str(license).strip().lower()
    close = [lowered] if lowered in HUB_LICENSES else difflib.get_close_matches(lowered, sorted(HUB_LICENSES), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise ValueError(f"license {license!r} is not a licence id the Hub accepts ({hint}see "
                     "https://hf.co/docs/hub/repositories-licenses; for other terms use license 'other' with a "
                     "name and a link)")


class HubPushError(RuntimeError):
    """A push to the Hub failed; the message is one line and says where the local copy is."""


# ---------------------------------------------------------------------------------------------------------------
# Model card
# ---------------------------------------------------------------------------------------------------------------


def build_model_card(
    model_id: str,
    model_type: str,
    results: Sequence[Mapping[str, Any]],
    training_summary: Mapping[str, Any],
    figures: Sequence[str] = (),
    base_model: Optional[Union[str, List[str]]] = None,
    metric_protocol: str = DEFAULT_METRIC_PROTOCOL,
    template_dir: Union[str, os.PathLike] = MODEL_CARDS_DIR,
    results_source: str = DEFAULT_RESULTS_SOURCE,
    comparison: str = "",
    license: str = "apache-2.0",
    usage: Optional[str] = None,
    license_name: Optional[str] = None,
    license_link: Optional[str] = None,
    model_config: Optional[Mapping[str, Any]] = None,
) -> "ModelCard":
    """A `huggingface_hub.ModelCard` for a trained model, with model-index results taken from `results`.

    Args:
        model_id: Hub id (``org/name``) or local name; used in the title and the usage snippets.
        model_type: the config's ``model_type`` (``pip``, ``promptir``, ``restormer``, ...); picks the template.
        results: one dict per evaluated task: ``task`` (e.g. ``"noise-25"``), ``dataset`` (name, or Hub id),
            ``psnr`` (dB) and optionally ``ssim``, ``split`` (default ``"validation"``), ``dataset_id`` (Hub id
            for model-index; default ``dataset``), ``input_psnr`` / ``input_ssim`` (scores of the degraded
            inputs), ``num_images``. Numbers must be finite; they are copied, never computed or rounded.
        training_summary: what to report about the run: ``command`` (str), ``config`` (dict of recipe values),
            ``datasets`` (Hub dataset ids for the card metadata), and any other scalars (steps, hardware, ...).
        figures: image paths relative to the model folder (uploaded next to README.md), linked in the card.
        base_model: Hub id(s) of the weights training started from, if any.
        metric_protocol: one or two sentences on how PSNR/SSIM were measured (change it with the metric options).
        template_dir: folder holding the templates (default: the repository's ``model_cards/``).
        results_source: one sentence saying what was evaluated (a training run's validation, or a protocol's
            test sets by ``training.evaluate_protocol``).
        comparison: optional Markdown shown after the results table (e.g. the published numbers beside ours,
            rendered from the same evaluation JSON).
        license: the card's ``license`` field (the weights' licence): a Hub licence id (`HUB_LICENSES`), or
            ``"other"`` with `license_name` (an id of your choosing, e.g. ``promptir-official-weights``) and
            `license_link` (a URL, or the name of a licence file the folder holds), which the Hub shows in place of
            a licence it does not know.
        usage: the card's usage section (default: `usage_section` of ``model_id``, for a folder with its code).
        model_config: the model's config (``config.to_dict()``), for what the card says of this model in
            particular (its degradation classes; for PIP, decoder prompts and CPL's plug-in); ``None``: the
            template's defaults, which describe the default config.
    """
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    check_hub_license(license)
    if license == "other" and not (license_name and license_link):
        raise ValueError("license 'other' needs license_name and license_link: the Hub shows them as the licence")
    if license != "other" and (license_name or license_link):
        raise ValueError(f"license_name and license_link describe license 'other', not {license!r}")
    results = [_check_result(result, index) for index, result in enumerate(results)]
    title = model_id.rstrip("/").split("/")[-1]
    eval_results = []
    for result in results:
        common = dict(
            task_type="image-to-image",
            task_name=f"Image restoration ({result['task']})",
            dataset_type=result.get("dataset_id") or result["dataset"],
            dataset_name=result["dataset"],
            dataset_config=result["task"],
            dataset_split=result.get("split", "validation"),
        )
        eval_results.append(EvalResult(metric_type="psnr", metric_name="PSNR", metric_value=result["psnr"], **common))
        if result.get("ssim") is not None:
            eval_results.append(
                EvalResult(metric_type="ssim", metric_name="SSIM", metric_value=result["ssim"], **common)
            )
    datasets = training_summary.get("datasets")
    card_data = ModelCardData(
        model_name=title,
        license=license,
        license_name=license_name,
        license_link=license_link,
        library_name="transformers",
        pipeline_tag="image-to-image",
        tags=["image-restoration", "all-in-one", "prompt-learning", model_type],
        base_model=base_model,
        datasets=list(datasets) if datasets else None,
        metrics=["psnr", "ssim"],
        # huggingface_hub refuses model-index without a model name; an untrained card simply has no results.
        eval_results=eval_results or None,
    )
    template_path = Path(template_dir) / TEMPLATE_FILES.get(model_type, GENERIC_TEMPLATE)
    return ModelCard.from_template(
        card_data,
        template_str=template_path.read_text(encoding="utf-8"),
        # `model_name` is consumed into model-index, so the title travels as its own variable.
        title=title,
        model_id=model_id,
        model_type=model_type,
        metric_protocol=metric_protocol,
        results_source=results_source,
        comparison=comparison,
        license=license,
        license_name=license_name,
        license_link=license_link,
        results_table=results_table(results),
        training_section=training_section(training_summary),
        recipe_config=recipe_config(training_summary),
        # a training command without a recipe file: the card must not claim the paper's recipe for it
        trained_by_flags=bool(training_summary.get("command")) and not recipe_config(training_summary),
        usage_section=usage if usage is not None else usage_section(model_id),
        figures=[{"path": Path(f).as_posix(), "caption": _caption(f)} for f in figures],
        config=dict(model_config or {}),
    )


def save_model_card(card: "ModelCard", folder: Union[str, os.PathLike]) -> Path:
    """Write `card` as ``folder/README.md`` and return that path. Figures it links must be copied there too."""
    path = Path(folder) / "README.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    card.save(path)
    return path


def results_table(results: Sequence[Mapping[str, Any]]) -> str:
    """Markdown table of the measured results, plus the mean of each column when there are several rows."""
    if not results:
        return "_No evaluation results were recorded for this model._"
    columns = [("Task", "task", None), ("Dataset", "dataset", None), ("Split", "split", None)]
    if any(r.get("num_images") is not None for r in results):
        columns.append(("Images", "num_images", None))
    columns += [("PSNR (dB)", "psnr", "{:.2f}"), ("SSIM", "ssim", "{:.4f}")]
    if any(r.get("input_psnr") is not None for r in results):
        columns.append(("Input PSNR (dB)", "input_psnr", "{:.2f}"))
    if any(r.get("input_ssim") is not None for r in results):
        columns.append(("Input SSIM", "input_ssim", "{:.4f}"))

    def cell(result: Mapping[str, Any], key: str, fmt: Optional[str]) -> str:
        value = result.get(key, "validation" if key == "split" else None)
        if value is None:
            return "–"
        return fmt.format(value) if fmt else str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(name for name, _, _ in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r, key, fmt) for _, key, fmt in columns) + " |" for r in results]
    if len(results) > 1:
        means = []
        for _, key, fmt in columns:
            values = [r[key] for r in results if r.get(key) is not None]
            if key == "task":
                means.append("**Average**")
            elif key in _RESULT_NUMBER_KEYS and len(values) == len(results):
                means.append(fmt.format(sum(values) / len(values)))
            else:
                means.append("")
        lines.append("| " + " | ".join(means) + " |")
    return "\n".join(lines)


def recipe_config(summary: Mapping[str, Any]) -> str:
    """The recipe file the run's ``command`` names with ``--config`` ("" when it names none)."""
    match = re.search(r"--config[ =](\S+)", str(summary.get("command", "")))
    return match.group(1) if match else ""


def training_section(summary: Mapping[str, Any]) -> str:
    """Markdown for the training recipe: scalar facts as a list, ``config`` as a table, ``command`` as code."""
    if not summary:
        return "_Training details were not recorded._"
    parts: List[str] = []
    facts = [
        f"- **{key.replace('_', ' ')}**: {_format_value(value)}"
        for key, value in summary.items()
        if key not in ("command", "config", "datasets")
    ]
    if summary.get("datasets"):
        facts.append("- **datasets**: " + ", ".join(f"`{d}`" for d in summary["datasets"]))
    if facts:
        parts.append("\n".join(facts))
    config = summary.get("config")
    if config:
        rows = ["| Setting | Value |", "|---|---|"]
        rows += [f"| `{key}` | {_format_value(value)} |" for key, value in config.items()]
        parts.append("\n".join(rows))
    if summary.get("command"):
        parts.append("Command:\n\n```bash\n" + str(summary["command"]).strip() + "\n```")
    return "\n\n".join(parts)


def usage_section(model_id: str, degradation: Optional[str] = None, degradation_names: Sequence[str] = ()) -> str:
    """How to run the model: transformers with remote code, the `image-restoration` pipeline, the CLI.

    `degradation`: for a model that cannot estimate the degradation itself (converted PIP, for instance), the
    label every snippet passes, since each would fail without one; `degradation_names` lists the others.
    """
    forward_label = label_argument = cli_label = needs = ""
    if degradation is not None:
        forward_label = f", degradation_labels={degradation!r}"
        label_argument = f", degradation={degradation!r}"
        cli_label = f" --degradation {degradation}"
        names = ", ".join(f"`{name}`" for name in degradation_names) or f"`{degradation}`"
        needs = (f"This model restores what it is told: it has no degradation estimator, so every call names the "
                 f"image's degradation, one of {names} (`{degradation}` below).\n\n")
    return f"""{needs}```python
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModel

model = AutoModel.from_pretrained("{model_id}", trust_remote_code=True).eval()
processor = AutoImageProcessor.from_pretrained("{model_id}", trust_remote_code=True)
inputs = processor(Image.open("degraded.png"), return_tensors="pt")
with torch.no_grad():
    output = model(pixel_values=inputs["pixel_values"]{forward_label})
processor.postprocess(output.reconstruction, inputs["metadata"])[0].save("restored.png")
```

With the `image-restoration` pipeline (large images: pass `tile=256` for bounded memory):

```python
from transformers import pipeline

restorer = pipeline("image-restoration", model="{model_id}", trust_remote_code=True)
restorer("degraded.png"{label_argument}).save("restored.png")
```

From the command line, with this repository installed (`pip install .` in a clone):

```bash
prompt-restore degraded.png -o restored/ --model {model_id} --trust-remote-code{cli_label}
```

In a browser: the repository's Gradio Space (`python space/app.py`, or publish your own with
`python space/build_space.py --push you/name`) takes this model id in its model picker."""


def packaged_usage_section() -> str:
    """How to run the demo checkpoint shipped inside the package (a folder without code: the package is the code)."""
    return """This checkpoint ships inside the package (`modeling/demo`, no code files of its own): it is the model that
`restore()`, the `prompt-restore` CLI and the Space use when no other is given.

```python
from modeling import restore

restore("degraded.png", degradation="auto").save("restored.png")  # model=None: this checkpoint
```

With the `image-restoration` pipeline (large images: pass `tile=256` for bounded memory):

```python
import modeling
from transformers import pipeline

restorer = pipeline("image-restoration", model=str(modeling.inference.DEMO_CHECKPOINT_DIR))
restorer("degraded.png").save("restored.png")
```

From the command line, with this repository installed (`pip install .` in a clone):

```bash
prompt-restore degraded.png -o restored/
```

In a browser: the repository's Gradio Space (`python space/app.py`) starts with it.

To put it on the Hub as a folder that carries its code (`trust_remote_code=True` where the package is not
installed), with this card's numbers: `python -m training.publish --model_dir modeling/demo ...` (README, "Publish")."""


def _check_result(result: Mapping[str, Any], index: int) -> Dict[str, Any]:
    missing = [key for key in ("task", "dataset", "psnr") if result.get(key) in (None, "")]
    if missing:
        raise ValueError(f"results[{index}] lacks {', '.join(missing)}: {dict(result)}")
    for key in _RESULT_NUMBER_KEYS:
        value = result.get(key)
        is_number = isinstance(value, numbers.Real) and not isinstance(value, bool)  # numpy scalars are Real
        if value is not None and not (is_number and math.isfinite(value)):
            raise ValueError(f"results[{index}][{key!r}] must be a finite number, got {value!r}")
    # Plain floats: numpy scalars would not serialise to YAML.
    return {
        key: float(value) if key in _RESULT_NUMBER_KEYS and value is not None else value
        for key, value in result.items()
    }


def _format_value(value: Any) -> str:
    if isinstance(value, (list, tuple, dict)):
        return "`" + json.dumps(value) + "`"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _caption(path: str) -> str:
    return Path(path).stem.replace("_", " ").replace("-", " ")


# ---------------------------------------------------------------------------------------------------------------
# Training curves and the final folder
# ---------------------------------------------------------------------------------------------------------------

#: Line colours of the per-task validation curves (cycled).
_TASK_COLOURS = ((200, 40, 40), (40, 110, 200), (30, 150, 60), (200, 130, 20), (140, 60, 170), (20, 160, 160),
                 (120, 120, 120), (220, 80, 150))


def plot_training_curves(
    history: Sequence[Mapping[str, Any]],
    path: Union[str, os.PathLike],
    validation_history: Sequence[Mapping[str, Any]] = (),
) -> bool:
    """Draw the training curves as one PNG with PIL (no plotting dependency); False if there is nothing to draw.

    Panels: the training loss averaged over each logging window (log scale; ``history`` rows ``{"step",
    "loss", "lr"}``), the validation PSNR of each task over the steps (``validation_history`` rows ``{"step",
    "psnr": {task: dB}}``; only when there are some), and the learning rate.
    """
    from PIL import Image, ImageDraw

    history = [row for row in history if row.get("loss") is not None]
    panels = []
    if history:
        steps = [row["step"] for row in history]
        panels.append(("log10 training loss (mean over each logging window)",
                       {"loss": (steps, [math.log10(max(row["loss"], 1e-12)) for row in history])}))
    tasks = sorted({task for row in validation_history for task in row.get("psnr", {})})
    if tasks:
        panels.append(("validation PSNR (dB) per task", {
            task: ([row["step"] for row in validation_history if task in row["psnr"]],
                   [row["psnr"][task] for row in validation_history if task in row["psnr"]])
            for task in tasks
        }))
    if history and all(row.get("lr") is not None for row in history):
        panels.append(("learning rate", {"lr": ([row["step"] for row in history], [row["lr"] for row in history])}))
    if not panels:
        return False
    width, height, margin = 560, 320, 44
    image = Image.new("RGB", (width * len(panels), height), "white")
    draw = ImageDraw.Draw(image)
    for panel, (title, series) in enumerate(panels):
        x0 = panel * width
        all_steps = [s for steps, _ in series.values() for s in steps]
        all_values = [v for _, values in series.values() for v in values]
        step_lo, step_hi = min(all_steps), max(all_steps)
        lo, hi = min(all_values), max(all_values)
        step_span, span = (step_hi - step_lo) or 1, (hi - lo) or 1.0
        box = (x0 + margin, margin, x0 + width - margin // 2, height - margin)
        draw.rectangle(box, outline=(120, 120, 120))

        def point(step: float, value: float) -> tuple[float, float]:
            return (box[0] + (step - step_lo) / step_span * (box[2] - box[0]),
                    box[3] - (value - lo) / span * (box[3] - box[1]))

        for index, (name, (steps, values)) in enumerate(series.items()):
            colour = _TASK_COLOURS[index % len(_TASK_COLOURS)]
            points = [point(s, v) for s, v in zip(steps, values)]
            if len(points) > 1:
                draw.line(points, fill=colour, width=2)
            for x, y in points if len(points) <= 40 else ():
                draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=colour)
            if len(series) > 1:  # legend
                draw.text((box[0] + 6, box[1] + 4 + 12 * index), name, fill=colour)
        shown = (10 ** lo, 10 ** hi) if title.startswith("log10") else (lo, hi)
        draw.text((x0 + margin, 8), title, fill=(0, 0, 0))
        draw.text((x0 + margin, 22), f"range {shown[0]:.4g} .. {shown[1]:.4g}", fill=(80, 80, 80))
        draw.text((box[0], box[3] + 8), f"step {step_lo} .. {step_hi}", fill=(0, 0, 0))
    image.save(path)
    return True


#: What `save_model_folder` records of the run (the card's ``training_summary``: command, steps, precision, ...).
TRAINING_SUMMARY_FILE = "training_summary.json"


def save_model_folder(
    model: Any,
    folder: Union[str, os.PathLike],
    *,
    model_id: str,
    model_type: str,
    results: Mapping[str, Mapping[str, Any]],
    dataset: str,
    training_summary: Mapping[str, Any],
    history: Sequence[Mapping[str, Any]] = (),
    validation_history: Sequence[Mapping[str, Any]] = (),
    image_processor: Any = None,
) -> Path:
    """Write the publishable model folder atomically (a ``.partial`` sibling renamed into place).

    Contents: weights (safetensors), config and code saved through the ``image-restoration`` pipeline (so the
    folder works with ``pipeline("image-restoration", model=folder, trust_remote_code=True)``), the image
    processor, ``README.md`` from `build_model_card` with `results` (``{task: {"psnr", "ssim", "input_psnr",
    ...}}`` as measured on `dataset`), ``training_curves.png``, ``eval_results.json`` and
    ``training_summary.json`` (`TRAINING_SUMMARY_FILE`: `training_summary`, which `training.publish` carries into
    the card it renders).
    """
    from modeling import save_restoration_folder

    folder = Path(folder)
    card_results = [
        {"task": task, "dataset": dataset, "split": "validation", "num_images": scores.get("images"),
         **{k: v for k, v in scores.items() if k != "images"}}
        for task, scores in results.items()
    ]
    with folder_written_atomically(folder) as partial:
        save_restoration_folder(model, partial, image_processor)
        figures = []
        if plot_training_curves(history, partial / "training_curves.png", validation_history):
            figures.append("training_curves.png")
        card = build_model_card(
            model_id=model_id, model_type=model_type, results=card_results, training_summary=training_summary,
            figures=figures, model_config=model.config.to_dict(),
        )
        save_model_card(card, partial)
        (partial / "eval_results.json").write_text(json.dumps(dict(results), indent=2))
        # The card's training facts, kept machine-readable: `training.publish` renders a new card from them.
        (partial / TRAINING_SUMMARY_FILE).write_text(json.dumps(dict(training_summary), indent=2, default=str))
    return folder


# ---------------------------------------------------------------------------------------------------------------
# Push
# ---------------------------------------------------------------------------------------------------------------


def push_folder_to_hub(
    folder: Union[str, os.PathLike],
    repo_id: str,
    token: Optional[str] = None,
    commit_message: str = "Upload model trained with prompt-restoration",
    private: Optional[bool] = None,
    ignore_patterns: Sequence[str] = DEFAULT_IGNORE_PATTERNS,
) -> str:
    """Create `repo_id` if needed and make it hold what `folder` holds, in one commit; return the commit URL.

    Files matching `ignore_patterns` stay out, and so do pickled files whatever the patterns (`PICKLE_SUFFIXES`);
    files of an earlier upload that `folder` no longer has (older
    weights, figures) are deleted in the same commit, so the repo never mixes two models.

    Raises `HubPushError` (one line, naming the local folder) when offline (``HF_HUB_OFFLINE=1``), without a
    token (argument, ``HF_TOKEN`` or ``hf auth login``), or when the Hub answers with an error. The folder is only
    read, never changed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise HubPushError(f"push to the Hub failed: {folder} is not a folder")
    from huggingface_hub import HfApi, constants, get_token

    if constants.is_offline_mode():
        _fail("offline mode is on (HF_HUB_OFFLINE=1)", folder, repo_id, private=private)
    token = token or get_token()
    if not token:
        _fail("no Hugging Face token (pass one, set HF_TOKEN or run `hf auth login`)", folder, repo_id,
              private=private)
    api = HfApi(token=token)
    try:
        repo_url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if private and not api.repo_info(repo_url.repo_id).private:
            # create_repo leaves an existing repo's visibility as it is: never upload "privately" into a public repo
            _fail(f"{repo_url.repo_id} exists and is public, so private=True would not keep the upload private "
                  "(make the repo private on the Hub first, or push without --private)", folder, repo_id,
                  private=private)
        commit = api.upload_folder(
            repo_id=repo_url.repo_id,
            folder_path=folder,
            commit_message=commit_message,
            ignore_patterns=list(ignore_patterns) + pickled_files(folder) or None,
            delete_patterns="*",  # what this folder does not have (the Hub keeps .gitattributes)
        )
    except HubPushError:
        raise
    except Exception as error:  # noqa: BLE001 - network boundary: every failure becomes one clear line
        _fail(_one_line(error), folder, repo_id, cause=error, private=private)
    return commit.commit_url


def _fail(reason: str, folder: Path, repo_id: str, cause: Optional[BaseException] = None,
          private: Optional[bool] = None) -> None:
    # The retry command carries --private: without it, a retry would create the repo public.
    retry = shlex.join(["python", "-m", "training.model_card", "push", str(folder), repo_id]
                       + (["--private"] if private else []))
    message = f"push to the Hub failed: {reason}; the model is saved locally in {folder} (retry with: {retry})"
    raise HubPushError(message) from cause


def _one_line(error: BaseException) -> str:
    # Every line, joined: the reason is often below the first one (huggingface_hub's "Invalid metadata in
    # README.md." names what the Hub refused on the lines after it).
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = " ".join(lines)
    text = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m training.model_card push FOLDER REPO_ID [--token T] [--message M]``: upload a saved model."""
    parser = argparse.ArgumentParser(prog="python -m training.model_card", description=main.__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    push = commands.add_parser("push", help="upload a model folder (weights, config, card, figures) to the Hub")
    push.add_argument("folder")
    push.add_argument("repo_id")
    push.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN or the stored login)")
    push.add_argument("--message", default="Upload model trained with prompt-restoration")
    push.add_argument("--private", action="store_true",
                      help="create the repo private (an existing public repo is refused, never uploaded to)")
    args = parser.parse_args(argv)
    try:
        url = push_folder_to_hub(args.folder, args.repo_id, token=args.token, commit_message=args.message,
                                 private=args.private or None)
    except HubPushError as error:
        sys.stderr.write(f"{error}\n")
        return 1
    sys.stdout.write(f"{url}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
