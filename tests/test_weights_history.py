"""The table of every committed weights folder (training/weights/README.md) comes from their evaluation JSONs and
stays current; the folders themselves load with the package."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training import weights_history
from training.weights_history import (
    BEGIN_MARKER,
    END_MARKER,
    document_is_current,
    history_table,
    main,
    update_document,
)

REPO = Path(__file__).resolve().parents[1]


def _entry(gain: float, worst: float, input_psnr: float = 20.0, auto_gap: float | None = 0.0) -> dict:
    entry = {"psnr": input_psnr + gain, "input_psnr": input_psnr, "psnr_gain": gain, "min_image_gain": worst}
    if auto_gap is not None:
        entry["psnr_auto"] = entry["psnr"] - auto_gap
    return entry


def _weights_folder(root: Path, name: str, results: dict, file: str = "heldout_eval_whole.json") -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / file).write_text(json.dumps({"results": results}))
    return folder


@pytest.fixture
def weights_dir(tmp_path: Path) -> Path:
    root = tmp_path / "weights"
    _weights_folder(root, "pip-restormer-step900", {"noise-25": _entry(8.5, 3.25, auto_gap=0.25),
                                                    "blur-motion": _entry(1.76, -0.5)})
    _weights_folder(root, "pip-restormer-cpu-step80", {"noise-25": _entry(6.0, 1.0, auto_gap=None)})
    _weights_folder(root, "pip-restormer-step900-interpolated", {"noise-25": _entry(8.0, 3.0)})
    # Folders without a whole-photo evaluation are not rows.
    _weights_folder(root, "pip-restormer-step1000", {"noise-25": _entry(9.0, 4.0)}, file="heldout_eval_partial.json")
    return root


def test_table_rows_are_ordered_by_step_with_gains_worst_photos_and_the_label_free_gap(weights_dir, tmp_path):
    shipped = tmp_path / "eval_results.json"
    shipped.write_text((weights_dir / "pip-restormer-step900" / "heldout_eval_whole.json").read_text())
    lines = history_table(weights_dir, shipped).splitlines()
    assert len(lines) == 5
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert header[0] == "weights" and header[1] == "noise σ 15" and header[-1].startswith("label-free")
    assert len(header) == len(weights_history.COLUMNS) + 2
    older, newer, suffixed = ([cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:])
    # Step 80 comes before step 900, whatever the folder name's prefix; a suffixed folder after its step's.
    assert older[0] == "`pip-restormer-cpu-step80`"
    assert newer[0] == "`pip-restormer-step900` (shipped)"
    assert suffixed[0] == "`pip-restormer-step900-interpolated`" and suffixed[-1] == "0.00"
    column = {row: index + 1 for index, (row, _) in enumerate(weights_history.COLUMNS)}
    assert older[column["noise-25"]] == "+6.00 / +1.00"
    assert older[column["noise-15"]] == "–" and older[-1] == "–"  # not scored, and no label-free run
    assert newer[column["noise-25"]] == "+8.50 / +3.25"
    assert newer[column["blur-motion"]] == "+1.76 / −0.50"  # a typographic minus, as in the prose
    assert newer[-1] == "0.25"


def test_without_the_shipped_results_no_row_is_marked(weights_dir, tmp_path):
    assert "(shipped)" not in history_table(weights_dir, tmp_path / "missing.json")


def test_a_folder_not_named_after_its_step_is_an_error(tmp_path):
    _weights_folder(tmp_path, "pip-restormer-latest", {"noise-25": _entry(1.0, 0.5)})
    with pytest.raises(ValueError, match=r"step<N>\["):
        history_table(tmp_path, None)


def test_update_rewrites_only_between_the_markers_and_check_sees_staleness(weights_dir, tmp_path, capsys):
    document = tmp_path / "README.md"
    document.write_text(f"# Title\n\nbefore\n{BEGIN_MARKER}\n| old | table |\n{END_MARKER}\nafter\n")
    assert main(["--weights_dir", str(weights_dir), "--check", str(document)]) == 1
    assert "stale" in capsys.readouterr().err
    assert main(["--weights_dir", str(weights_dir), "--update", str(document)]) == 0
    text = document.read_text()
    assert text.startswith("# Title\n\nbefore\n" + BEGIN_MARKER + "\n| weights |")
    assert text.endswith(END_MARKER + "\nafter\n") and "| old | table |" not in text
    assert main(["--weights_dir", str(weights_dir), "--check", str(document)]) == 0
    assert update_document(document, history_table(weights_dir)) is False  # idempotent


def test_a_failed_update_leaves_the_document_as_it_was(tmp_path):
    document = tmp_path / "README.md"
    original = f"before\n{BEGIN_MARKER}\n| old | table |\n{END_MARKER}\nafter\n"
    document.write_text(original)
    with pytest.raises(UnicodeEncodeError):  # the write fails part-way: a lone surrogate cannot be encoded
        update_document(document, "| new | \ud800 |")
    assert document.read_text() == original
    assert sorted(path.name for path in tmp_path.iterdir()) == ["README.md"]


def test_a_document_without_markers_is_a_clear_error(tmp_path):
    document = tmp_path / "README.md"
    document.write_text("no table here\n")
    with pytest.raises(ValueError, match="weights-history"):
        document_is_current(document, "| table |")


def test_the_weights_readme_table_matches_the_committed_evaluations():
    """Regenerate with `python -m training.weights_history --update training/weights/README.md` after adding a
    weights folder."""
    table = history_table()
    assert "(shipped)" in table, "one committed folder holds the scores of the shipped demo"
    assert document_is_current(REPO / "training" / "weights" / "README.md", table)


def test_committed_weights_folders_name_no_code_they_do_not_hold():
    """Weights folders are committed without code files (the package provides the classes), so their configs must
    not point transformers at code: it would ask for trust_remote_code and then look for missing files. With the
    package, the shipped stage loads through the pipeline task like any code-less folder."""
    import numpy as np
    from transformers import pipeline

    import modeling  # noqa: F401  (registers the task)

    folders = sorted(path.parent for path in (REPO / "training" / "weights").glob("*/config.json"))
    assert len(folders) >= 20
    for folder in [*folders, REPO / "modeling" / "demo"]:
        for name in ("config.json", "preprocessor_config.json"):
            saved = json.loads((folder / name).read_text())
            named = [str(value).split(".")[0] for value in saved.get("auto_map", {}).values()]
            named += [str(p["impl"]).split(".")[0] for p in saved.get("custom_pipelines", {}).values()]
            missing = [module for module in named if not (folder / f"{module.split('--')[-1]}.py").is_file()]
            assert not missing, f"{folder.name}/{name} names code it does not hold: {missing}"
    shipped = REPO / "training" / "weights" / "pip-restormer-step56341-interpolated"
    restored = pipeline("image-restoration", model=str(shipped))(np.full((16, 16, 3), 128, np.uint8),
                                                                  degradation="noise")
    assert restored.shape == (16, 16, 3)
