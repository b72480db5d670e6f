"""The held-out scores of every committed weights folder, side by side, read from their evaluation JSONs.

    python -m training.weights_history                      # print the Markdown table
    python -m training.weights_history --update training/weights/README.md   # rewrite the table between the markers
    python -m training.weights_history --check training/weights/README.md    # exit 1 when that table is stale

Each folder under ``training/weights/`` that holds ``heldout_eval_whole.json`` (written by
``training.package_demo`` / ``training.evaluate_model`` on the whole held-out photos) gives one row: per degradation
the mean PSNR gain over the degraded input and the gain on the worst single photo, and the largest difference
between the label-free and the labelled mode over all rows. The folder whose scores equal the shipped demo's
(``modeling/demo/eval_results.json``) is marked as shipped. Numbers are never typed into ``training/weights/README.md``:
this table is generated, and a test checks that its copy is current.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from training.checkpointing import write_text_atomic

REPO = Path(__file__).resolve().parents[1]
WEIGHTS_DIR = REPO / "training" / "weights"
SHIPPED_RESULTS = REPO / "modeling" / "demo" / "eval_results.json"
EVALUATION_FILE = "heldout_eval_whole.json"
BEGIN_MARKER = "<!-- weights-history -->"
END_MARKER = "<!-- /weights-history -->"

#: (row name in the evaluation JSON, column heading), in the cards' order.
COLUMNS = (
    ("noise-15", "noise σ 15"),
    ("noise-25", "σ 25"),
    ("noise-50", "σ 50"),
    ("blur-gaussian", "Gaussian blur"),
    ("blur-defocus", "defocus"),
    ("blur-motion", "motion"),
    ("low-light", "low light"),
    ("haze", "haze"),
    ("rain", "rain"),
)


def folder_step(folder: Path) -> int:
    """The training step a weights folder is named after (``pip-restormer-step47591`` → 47591; a suffix such as
    ``-interpolated`` may follow the step)."""
    match = re.search(r"step(\d+)(?:-[\w-]+)?$", folder.name)
    if match is None:
        raise ValueError(f"{folder.name}: a weights folder is named '<model>-step<N>[-<suffix>]'")
    return int(match.group(1))


def scored_folders(weights_dir: Path = WEIGHTS_DIR) -> list[Path]:
    """Weights folders with a whole-photo evaluation, oldest step first."""
    folders = (path.parent for path in weights_dir.glob(f"*/{EVALUATION_FILE}"))
    return sorted(folders, key=lambda folder: (folder_step(folder), folder.name))


def _cell(entry: dict | None) -> str:
    if entry is None:
        return "–"
    return f"{entry['psnr_gain']:+.2f} / {entry['min_image_gain']:+.2f}".replace("-", "−")


def _label_free_gap(results: dict[str, dict]) -> str:
    """Largest |label-free − labelled| PSNR over the rows scored both ways, in dB."""
    gaps = [abs(entry["psnr_auto"] - entry["psnr"]) for entry in results.values() if "psnr_auto" in entry]
    return f"{max(gaps):.2f}" if gaps else "–"


def history_table(weights_dir: Path = WEIGHTS_DIR, shipped_results: Path | None = SHIPPED_RESULTS) -> str:
    """The Markdown table: one row per scored weights folder, each cell 'mean gain / worst photo gain' in dB."""
    shipped = None
    if shipped_results is not None and shipped_results.is_file():
        shipped = json.loads(shipped_results.read_text())["results"]
    header = ["weights", *(heading for _, heading in COLUMNS), "label-free vs labelled (largest gap)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for folder in scored_folders(weights_dir):
        results = json.loads((folder / EVALUATION_FILE).read_text())["results"]
        name = f"`{folder.name}`" + (" (shipped)" if results == shipped else "")
        cells = [_cell(results.get(row)) for row, _ in COLUMNS]
        lines.append("| " + " | ".join([name, *cells, _label_free_gap(results)]) + " |")
    return "\n".join(lines)


def _split(text: str, path: Path) -> tuple[str, str, str]:
    """The text before, inside and after the markers (each marker on its own line)."""
    start, end = text.find(BEGIN_MARKER), text.find(END_MARKER)
    if start < 0 or end < start:
        raise ValueError(f"{path}: no '{BEGIN_MARKER}' ... '{END_MARKER}' block to hold the table")
    head = text[: start + len(BEGIN_MARKER)]
    return head, text[len(head): end], text[end:]


def update_document(path: Path, table: str) -> bool:
    """Rewrite the table between the markers of ``path``; True when the file changed."""
    text = path.read_text()
    head, inside, tail = _split(text, path)
    new_text = f"{head}\n{table}\n{tail}"
    if new_text == text:
        return False
    write_text_atomic(path, new_text)  # an interrupted rewrite leaves the old document, never half of one
    return True


def document_is_current(path: Path, table: str) -> bool:
    """Whether the table between the markers of ``path`` is exactly ``table``."""
    _, inside, _ = _split(path.read_text(), path)
    return inside.strip("\n") == table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--update", type=Path, metavar="DOCUMENT", help="rewrite the table between the markers")
    action.add_argument("--check", type=Path, metavar="DOCUMENT", help="exit 1 when the document's table is stale")
    parser.add_argument("--weights_dir", type=Path, default=WEIGHTS_DIR)
    args = parser.parse_args(argv)
    table = history_table(args.weights_dir)
    if args.update is not None:
        changed = update_document(args.update, table)
        print(f"{args.update}: {'updated' if changed else 'already current'}")
    elif args.check is not None:
        if not document_is_current(args.check, table):
            print(f"{args.check}: the weights table is stale; run python -m training.weights_history "
                  f"--update {args.check}", file=sys.stderr)
            return 1
        print(f"{args.check}: current")
    else:
        print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
