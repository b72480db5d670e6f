"""Restore a whole archive (a folder tree or a `datasets` dataset) on several processes, resumably.

    accelerate launch -m training.batch_restore --input DIR|DATASET --output DIR [--model ID_OR_DIR]
        [--degradation auto|NAME] [--tile N] [--batch_size N] [--output_format folder|dataset] [--push_to_hub ID]

How it works:

* The inputs are listed and sorted on the main process (files below a folder, or the rows of a dataset) and the
  ones not yet done are split between the processes with `PartialState.split_between_processes`; neighbouring
  (sorted) files tend to share a size, so each process decodes a window of them and hands the whole window to
  `modeling.restore`, which batches same-size images. Everything `restore()` does (batching, tiling, labels,
  bit depth) therefore applies here unchanged.
* Each output is written atomically (temporary name, then `os.replace`), and only then is a JSON line appended
  to the process's own ``manifest-rank{i}.jsonl``. At start the main process reads every manifest, so a run
  killed at any point resumes without restoring a recorded image again, whatever the number of processes of
  either run; an output written but not yet recorded is simply restored again and replaced. A recorded image is
  restored again when its output has been removed or (folder inputs) its input file changed since (size or
  modification time).
* ``OUT/run_settings.json`` records what decides the outputs: the model (a fingerprint of its config and
  weights), ``--degradation``, ``--output_format`` and, for dataset inputs, the split and columns. A resume under
  other values is refused, since it would mix two restorations in one archive; ``--tile``, ``--tile_overlap``,
  ``--dtype`` and ``--batch_size`` may change (a run that ran out of memory can go on with tiles).
* A file that cannot be read or restored is logged, recorded as failed and counted; it never stops the run (and
  is tried again on a resume). Options that no image could use (a degradation the model does not take, an input
  that is neither a folder nor a dataset, an output that cannot be a folder) stop the run before anything is
  written: exit code 2.
* ``--output_format folder`` mirrors the input tree (relative names, formats and bit depth kept: 16-bit PNG in,
  16-bit PNG out; JPEG in, JPEG out). ``--output_format dataset`` writes the same files under ``OUT/images`` and
  then a dataset with columns ``file_name``, ``input``, ``restored`` with ``save_to_disk`` to ``OUT/dataset``
  (and to the Hub with ``--push_to_hub ID``).
* The main process shows one progress bar for the whole archive and writes ``OUT/summary.json`` (restored,
  skipped as already done, failed, images/s).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

from PIL import Image

from accelerate import PartialState
from accelerate.logging import get_logger
from accelerate.utils import broadcast_object_list, gather_object

import modeling
from modeling.cli import save_image_atomic
from modeling.image_processing_restoration import load_image_file
from modeling.inference import check_tile_options, degradation_label_ids, load_model, load_processor
from modeling.modeling_utils import model_fingerprint
from modeling.tiling import check_tiling

from .checkpointing import unwritable_folder_reason, write_text_atomic
from .data import IMAGE_EXTENSIONS, list_image_files

logger = get_logger(__name__)

MANIFEST_PREFIX = "manifest-rank"
SUMMARY_NAME = "summary.json"
SETTINGS_NAME = "run_settings.json"
#: Settings that decide what an output is (`run_settings`): a resume under other values is refused.
DEFINING_SETTINGS = ("model_fingerprint", "degradation", "output_format", "split", "image_column", "file_column")
#: Images decoded and handed to `restore()` at once, in batches: bounded memory, room for same-size batching.
WINDOW_BATCHES = 4
#: Tests only: seconds to sleep per image, so that a run can be killed half-way.
TEST_SLEEP_ENV = "BATCH_RESTORE_TEST_SLEEP_S"


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Command-line arguments (see the module docstring)."""
    parser = argparse.ArgumentParser(description="Restore every image of a folder tree or dataset, resumably.")
    parser.add_argument("--input", required=True,
                        help="a folder (restored recursively), a dataset saved with save_to_disk, or a Hub dataset id")
    parser.add_argument("--output", required=True, help="output folder (manifests and summary.json go here too)")
    parser.add_argument("--model", default=None,
                        help="Hub id or local folder of a checkpoint (default: the packaged demo checkpoint)")
    parser.add_argument("--degradation", default="auto",
                        help="degradation label for models that take one, or 'auto' (default) to estimate it per image")
    parser.add_argument("--tile", default=None, type=int,
                        help="restore in overlapping N x N tiles (bounded memory); 0: whole images; default: the "
                             "model's inference_tile, else whole images up to 4 megapixels and 1024-px tiles above")
    parser.add_argument("--tile_overlap", type=int, default=None,
                        help="tile overlap in pixels, at most half the tile (default: 32, capped at a quarter of "
                             "the tile); without --tile it applies to the default tiles of large images")
    parser.add_argument("--batch_size", type=int, default=4, help="same-size images (or tiles) per forward pass (default: 4)")
    parser.add_argument("--dtype", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                        help="autocast precision; auto (default): bf16 on a CPU with native bf16, else fp32")
    parser.add_argument("--output_format", default="folder", choices=("folder", "dataset"),
                        help="folder: mirror the input tree; dataset: also a datasets dataset (save_to_disk)")
    parser.add_argument("--push_to_hub", default=None, metavar="ID",
                        help="push the dataset (file_name, input, restored) to this Hub dataset repo")
    parser.add_argument("--private", action="store_true", help="create the Hub dataset repo as private")
    parser.add_argument("--image_column", default="image", help="image column of a dataset input (default: image)")
    parser.add_argument("--file_column", default="file_name",
                        help="column naming each row of a dataset input (default: file_name; where the dataset has no "
                             "such column, rows are named by their index)")
    parser.add_argument("--split", default="train", help="split of a dataset input (default: train)")
    parser.add_argument("--streaming", action="store_true", help="stream a Hub dataset instead of downloading it")
    parser.add_argument("--cpu", action="store_true", help="run on CPU even where a GPU is available")
    parser.add_argument("--no_reuse_freed_memory", dest="reuse_freed_memory", action="store_false",
                        help="on CPU, give freed activation memory back to the system after every batch (by default "
                             "it is kept for the next batch: modeling.inference.keep_freed_memory_for_reuse)")
    parser.add_argument("--trust_remote_code", action="store_true", help="allow the checkpoint's own model code")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch_size must be >= 1, got {args.batch_size}")
    if args.push_to_hub and args.output_format != "dataset":
        parser.error("--push_to_hub pushes a dataset: add --output_format dataset")
    try:  # the overlap of default tiles is checked once the model (and its inference_tile) is known
        check_tiling(args.tile, args.tile_overlap, names=("--tile", "--tile_overlap"))
    except ValueError as err:
        parser.error(str(err))
    if args.tile == 0 and args.tile_overlap is not None:
        parser.error("--tile 0 restores whole images, so there is no tile overlap: drop --tile_overlap")
    return args


# ---------------------------------------------------------------------------------------------------- inputs
class FolderSource:
    """Image files below a folder, named by their POSIX path relative to it (sorted, hidden entries skipped)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def names(self) -> list[str]:
        root = self.root.as_posix().rstrip("/")
        return [path[len(root) + 1:] for path in list_image_files(self.root)]

    def ignored(self) -> int:
        """Files below the folder without an image extension (not restored, only counted)."""
        return sum(
            1 for path in self.root.rglob("*")
            if path.is_file() and not any(part.startswith(".") for part in path.relative_to(self.root).parts)
            and path.suffix.lower() not in IMAGE_EXTENSIONS
        )

    def read(self, name: str) -> Any:
        # The inference decoder: EXIF rotation, gray/palette/alpha, 16-bit colour PNG as uint16, clear errors.
        return load_image_file(self.root / name)

    def output_name(self, name: str) -> str:
        return name

    def stamp(self, name: str) -> Optional[list[int]]:
        """Size and modification time of the input file: a recorded restoration of a file changed since is redone."""
        try:
            info = (self.root / name).stat()
        except OSError:
            return None
        return [info.st_size, info.st_mtime_ns]

    def input_bytes(self, name: str) -> dict:
        return {"bytes": (self.root / name).read_bytes(), "path": Path(name).name}


def _safe_relative_name(name: str) -> str:
    """``name`` as a relative POSIX path with no empty, ".", ".." or backslash-separated parts (what a dataset's
    file names must already be to be written below the output folder)."""
    parts = [part for part in name.replace("\\", "/").split("/") if part not in ("", ".", "..")]
    return "/".join(parts)


class DatasetSource:
    """Rows of a `datasets` dataset (saved with save_to_disk, or a Hub id); rows named by `file_column` when the
    dataset has that column, else by their index."""

    def __init__(self, dataset: Any, image_column: str, file_column: str) -> None:
        if image_column not in (dataset.column_names or []):
            raise ValueError(f"dataset has no column {image_column!r} (columns: {dataset.column_names}); "
                             "use --image_column")
        self.dataset, self.image_column = dataset, image_column
        self.file_column = file_column if file_column in dataset.column_names else None
        # An image column is read as its stored bytes, through the inference decoder, not as the PIL image that
        # `datasets` decodes: Pillow reduces 16-bit colour to 8 bits, and the dataset output keeps the input as is.
        import datasets

        feature = (dataset.features or {}).get(image_column)
        self._encoded = (dataset.cast_column(image_column, datasets.Image(decode=False))
                         if isinstance(feature, datasets.Image) else None)
        if self.file_column:
            names = [str(n) for n in dataset[self.file_column]]
            if len(set(names)) != len(names):
                raise ValueError(f"column {self.file_column!r} has duplicate names; they must name rows uniquely")
            unsafe = [name for name in names if _safe_relative_name(name) != name]
            if unsafe:  # written below --output: an absolute name or ".." would land elsewhere
                raise ValueError(
                    f"column {self.file_column!r} has names that are not plain relative paths (absolute, '..', "
                    f"'.', empty or backslash parts), e.g. {unsafe[0]!r}; {len(unsafe)} in all"
                )
        else:
            width = max(6, len(str(len(dataset))))
            names = [f"{i:0{width}d}" for i in range(len(dataset))]
        self._index = {name: i for i, name in enumerate(names)}
        outputs: dict[str, str] = {}
        for name in names:  # "x" and "x.png" would both be written to x.png
            other = outputs.setdefault(self.output_name(name), name)
            if other != name:
                raise ValueError(f"rows {other!r} and {name!r} would both be written to {self.output_name(name)!r}")

    def names(self) -> list[str]:
        return sorted(self._index)

    def ignored(self) -> int:
        return 0

    def _stored(self, name: str) -> dict:
        value = self._encoded[self._index[name]][self.image_column]
        if not value or not (value.get("bytes") or value.get("path")):
            raise ValueError(f"row {name!r}: column {self.image_column!r} is empty")
        if not value.get("bytes") and "://" in value["path"]:
            # A streamed dataset names its image files by URL (hf://datasets/...): fetched as `datasets` would.
            import fsspec

            with fsspec.open(value["path"], "rb") as handle:
                value = {"bytes": handle.read(), "path": value["path"]}
        return value

    def read(self, name: str) -> Any:
        if self._encoded is not None:
            value = self._stored(name)
            return load_image_file(value["bytes"] if value.get("bytes") else value["path"])
        image = self.dataset[self._index[name]][self.image_column]
        if not isinstance(image, Image.Image):
            raise ValueError(f"row {name!r}: column {self.image_column!r} holds {type(image).__name__}, not an image")
        image.load()
        return image

    def output_name(self, name: str) -> str:
        # Dataset rows are written losslessly as PNG unless their name already says which format.
        return name if Path(name).suffix.lower() in IMAGE_EXTENSIONS else f"{name}.png"

    def stamp(self, name: str) -> None:
        return None  # rows have no modification time

    def input_bytes(self, name: str) -> Any:
        return self._stored(name) if self._encoded is not None else self.read(name)


def open_source(args: argparse.Namespace) -> FolderSource | DatasetSource:
    """A folder, a dataset saved with save_to_disk, or a Hub dataset id (ValueError naming `--input` otherwise)."""
    path = Path(args.input)
    if path.is_dir() and not ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file()):
        return FolderSource(path)
    import datasets

    if path.is_dir():
        dataset = datasets.load_from_disk(str(path))
        if isinstance(dataset, datasets.DatasetDict):
            if args.split not in dataset:
                raise ValueError(f"--input {args.input} has no split {args.split!r} (splits: {sorted(dataset)}); "
                                 "use --split")
            dataset = dataset[args.split]
    else:
        try:
            dataset = datasets.load_dataset(args.input, split=args.split, streaming=args.streaming)
        except Exception as err:  # offline, no such repo, no such split, or a path that does not exist
            raise ValueError(
                f"--input {args.input!r} is not a folder, a dataset saved with save_to_disk, or a dataset that "
                f"datasets.load_dataset can load ({_one_line(err)})"
            ) from err
        if args.streaming:
            # Rows are named and read by index, so the stream is materialised once (one pass over the data), its
            # images as their stored bytes: decoded by `datasets` here, a corrupt one would end the whole run and
            # 16-bit colour would come out at 8 bits, before the inference decoder (`DatasetSource.read`) sees them.
            if isinstance((dataset.features or {}).get(args.image_column), datasets.Image):
                dataset = dataset.cast_column(args.image_column, datasets.Image(decode=False))
            dataset = datasets.Dataset.from_list(list(dataset), features=dataset.features)
    return DatasetSource(dataset, args.image_column, args.file_column)


# ---------------------------------------------------------------------------------------------------- manifest
def _manifest_rank(path: Path) -> int:
    match = re.fullmatch(rf"{MANIFEST_PREFIX}(\d+)\.jsonl", path.name)
    return int(match.group(1)) if match else -1


def read_manifests(output_dir: Path) -> dict[str, dict]:
    """One record per input name over every ``manifest-rank*.jsonl`` (any number of earlier processes): its last
    restoration if it has one, else its last failure (a file that failed on one rank in one run and was restored
    by another rank later is restored, whatever the order of the files); a line cut short by a kill is ignored."""
    records: dict[str, dict] = {}
    for manifest in sorted(output_dir.glob(f"{MANIFEST_PREFIX}*.jsonl"), key=_manifest_rank):
        for line in manifest.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not (isinstance(record, dict) and "file" in record):
                continue
            earlier = records.get(record["file"])
            if earlier is not None and earlier.get("status") == "ok" and record.get("status") != "ok":
                continue
            records[record["file"]] = record
    return records


def run_settings(args: argparse.Namespace, model: Any, source: FolderSource | DatasetSource) -> dict:
    """What this run restores with (written to ``OUT/run_settings.json``; see `DEFINING_SETTINGS`)."""
    from_dataset = isinstance(source, DatasetSource)
    return {
        "model": args.model if args.model is not None else "the packaged demo checkpoint",
        "model_fingerprint": model_fingerprint(model),
        "degradation": args.degradation,
        "output_format": args.output_format,
        "split": args.split if from_dataset else None,
        "image_column": args.image_column if from_dataset else None,
        "file_column": source.file_column if from_dataset else None,
        "tile": args.tile,
        "tile_overlap": args.tile_overlap,
        "dtype": args.dtype,
    }


def settings_changes(earlier: dict, current: dict) -> list[str]:
    """The defining settings that differ between an earlier run's record and this run, as "name: old -> new"."""
    return [f"{key}: {earlier.get(key)!r} -> {current.get(key)!r}" for key in DEFINING_SETTINGS
            if earlier.get(key) != current.get(key)]


class Manifest:
    """This process's append-only record of finished inputs."""

    def __init__(self, output_dir: Path, rank: int) -> None:
        self.path = output_dir / f"{MANIFEST_PREFIX}{rank}.jsonl"
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
        # A kill during a write can leave a partial last line: end it, or the next record would be glued to it.
        size = os.fstat(self._fd).st_size
        if size:
            with open(self.path, "rb") as handle:
                handle.seek(size - 1)
                if handle.read(1) != b"\n":
                    os.write(self._fd, b"\n")

    def append(self, record: dict) -> None:
        # One write() of one short line on an O_APPEND descriptor: lines of concurrent writers never interleave.
        # ASCII escapes: a file name that is not UTF-8 (held as surrogate escapes) is written and read back as is.
        os.write(self._fd, (json.dumps(record) + "\n").encode("ascii"))

    def close(self) -> None:
        os.fsync(self._fd)
        os.close(self._fd)


class ArchiveProgress:
    """The main process's bar over the whole archive: it counts the lines every process appended to its manifest
    since the start, so other processes' work shows too without any communication."""

    def __init__(self, output_dir: Path, total: Optional[int], initial: int, enabled: bool) -> None:
        from tqdm.auto import tqdm

        self.output_dir, self.enabled = output_dir, enabled
        self._offsets = {p: p.stat().st_size for p in output_dir.glob(f"{MANIFEST_PREFIX}*.jsonl")}
        self._counted = 0
        self.bar = tqdm(total=total, initial=initial, desc="restoring archive", unit="img", disable=not enabled)

    def refresh(self) -> None:
        if not self.enabled:
            return
        count = 0
        for manifest in self.output_dir.glob(f"{MANIFEST_PREFIX}*.jsonl"):
            with open(manifest, "rb") as handle:
                handle.seek(self._offsets.get(manifest, 0))
                count += handle.read().count(b"\n")
        self.bar.update(count - self._counted)
        self._counted = count

    def close(self) -> None:
        self.refresh()
        self.bar.close()


# ---------------------------------------------------------------------------------------------------- restore
def output_format_of(name: str) -> str:
    """Pillow format for an output name, from its extension (".jpg" -> "JPEG", ".tif" -> "TIFF")."""
    return Image.registered_extensions().get(Path(name).suffix.lower(), "PNG")


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def in_output_mode(result: Any, out_name: str) -> Any:
    """A restored image in a mode its output format can hold: gray inputs come back as RGB, which a ``.pgm`` (gray
    only; Pillow would write a colour pixmap under that name) or ``.pbm`` (bilevel) file cannot take."""
    suffix = Path(out_name).suffix.lower()
    if isinstance(result, Image.Image) and result.mode in ("RGB", "RGBA"):
        if suffix == ".pgm":
            return result.convert("L")
        if suffix == ".pbm":
            return result.convert("L").convert("1", dither=Image.Dither.NONE)
    return result


def restore_window(
    names: Sequence[str],
    source: FolderSource | DatasetSource,
    images_dir: Path,
    manifest: Manifest,
    restore_kwargs: dict,
    rank: int,
) -> tuple[int, list[str]]:
    """Decode, restore (one `modeling.restore` call, same-size images batched) and write one window of inputs,
    recording each in the manifest after its output is in place. Returns (restored count, failed names)."""
    decoded: list[tuple[str, Any]] = []
    failed: list[str] = []

    def fail(name: str, err: BaseException) -> None:
        logger.warning(f"{name}: {_one_line(err)}")
        manifest.append({"file": name, "status": "failed", "error": _one_line(err), "rank": rank})
        failed.append(name)

    for name in names:
        try:
            decoded.append((name, source.read(name)))
        except Exception as err:  # one unreadable file must not stop the archive
            fail(name, err)
    if not decoded:
        return 0, failed
    try:
        results = modeling.restore([image for _, image in decoded], **restore_kwargs)
    except Exception as err:  # an image the processor or model refuses: restore one by one to isolate it
        logger.info(f"batch of {len(decoded)} failed ({_one_line(err)}); restoring its images one by one")
        results = []
        for name, image in decoded:
            try:
                results.append(modeling.restore(image, **restore_kwargs))
            except Exception as one_err:
                results.append(one_err)
    sleep = float(os.environ.get(TEST_SLEEP_ENV, "0") or 0)
    restored = 0
    for (name, _), result in zip(decoded, results):
        if isinstance(result, BaseException):
            fail(name, result)
            continue
        out_name = source.output_name(name)
        target = images_dir / out_name
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            # overwrite=True: an output without a manifest line is from a killed run and is redone.
            save_image_atomic(in_output_mode(result, out_name), target, overwrite=True,
                              format=output_format_of(out_name))
        except Exception as err:
            fail(name, err)
            continue
        if sleep:
            time.sleep(sleep)
        manifest.append({"file": name, "status": "ok", "output": out_name, "input": source.stamp(name), "rank": rank})
        restored += 1
    return restored, failed


#: Temporary names of `modeling.cli.save_image_atomic`: ".<name>.<8 hex digits>.tmp".
_TEMPORARY = re.compile(r"^\..+\.[0-9a-f]{8}\.tmp$")


def remove_stale_temporaries(images_dir: Path) -> int:
    """Delete half-written outputs left by a killed run (called before any process writes); returns how many."""
    removed = 0
    for path in images_dir.rglob(".*.tmp") if images_dir.is_dir() else ():
        if path.is_file() and _TEMPORARY.match(path.name):
            path.unlink()
            removed += 1
    return removed


def is_done(record: Optional[dict], name: str, source: FolderSource | DatasetSource, images_dir: Path) -> bool:
    """Whether a manifest record stands for `name`: restored, its output still there and (folder inputs) the input
    file unchanged since. Records of older versions, without an input stamp, are taken as they are."""
    if record is None or record.get("status") != "ok":
        return False
    if not (images_dir / record.get("output", source.output_name(name))).is_file():
        return False
    recorded = record.get("input")
    return recorded is None or recorded == source.stamp(name)


def _dataset_rows(names: list[str], outputs: list[str], source: Any) -> Iterator[dict]:
    for name, output in zip(names, outputs):
        yield {
            # A file name that is not UTF-8 (surrogate escapes) cannot be an Arrow string: its odd bytes as \\xNN.
            "file_name": name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace"),
            "input": source.input_bytes(name),
            "restored": {"bytes": Path(output).read_bytes(), "path": Path(output).name},
        }


def _is_within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def build_dataset(
    source: FolderSource | DatasetSource, images_dir: Path, records: dict[str, dict], cache_dir: Path
) -> Any:
    """Dataset with columns file_name, input, restored (images as stored bytes: formats and bit depth kept).

    Built with `Dataset.from_generator` into `cache_dir`, so the archive is streamed to Arrow files instead of
    being held in memory.
    """
    import datasets

    present = set(source.names())
    done = sorted(name for name, record in records.items() if record.get("status") == "ok")
    # An input removed since an earlier run restored it, or an output removed by hand, cannot fill a row.
    gone = [name for name in done if name not in present or not (images_dir / records[name]["output"]).is_file()]
    if gone:
        logger.warning(f"dataset: left out {len(gone)} earlier restoration(s) whose input or output is gone, "
                       f"e.g. {gone[0]!r}")
        done = [name for name in done if name not in set(gone)]
    outputs = [str(images_dir / records[name]["output"]) for name in done]
    features = datasets.Features(
        {"file_name": datasets.Value("string"), "input": datasets.Image(), "restored": datasets.Image()}
    )
    return datasets.Dataset.from_generator(
        _dataset_rows, features=features, cache_dir=str(cache_dir),
        gen_kwargs={"names": done, "outputs": outputs, "source": source},
    )


def main(args: argparse.Namespace) -> dict:
    """Restore the archive; returns the summary (also written to OUT/summary.json on the main process)."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    import torch

    # Without cpu=True, PartialState leaves a CPU-only `accelerate launch --multi_gpu` as N separate rank-0 runs.
    state = PartialState(cpu=args.cpu or not torch.cuda.is_available())
    output_dir = Path(args.output)
    input_dir = Path(args.input)
    images_dir = output_dir / "images" if args.output_format == "dataset" else output_dir
    if input_dir.is_dir():
        # Outputs (the images folder in dataset mode too) would replace the inputs, or be taken for inputs by the
        # next (resumed) run.
        for written in {output_dir, images_dir}:
            if written.resolve() == input_dir.resolve() or input_dir.resolve() in written.resolve().parents:
                raise ValueError(f"--output {output_dir} would write into --input {input_dir}: pick a folder outside it")
    # Before the model loads: a file (or a path below one) would otherwise fail at mkdir, after loading, with a
    # traceback.
    problem = unwritable_folder_reason(output_dir)
    if problem is not None:
        raise ValueError(problem)
    started = time.perf_counter()

    # A Hub dataset or model is downloaded once, by the main process; the others then read the local cache.
    with state.main_process_first():
        source = open_source(args)
        model = load_model(args.model, trust_remote_code=args.trust_remote_code, device=state.device,
                           dtype=args.dtype)
    check_tile_options(model, args.tile, args.tile_overlap, names=("--tile", "--tile_overlap"))
    try:  # a label the model cannot take would fail every image: a usage error, not one failure per file
        degradation_label_ids(model, None if args.degradation == "auto" else args.degradation, 1)
    except ValueError as err:
        raise ValueError(f"--degradation {args.degradation}: {err}") from None
    # Each rank owns its process, so each may tune its allocator (False off glibc, where nothing changes).
    reused_freed_memory = bool(state.device.type == "cpu" and args.reuse_freed_memory
                               and modeling.inference.keep_freed_memory_for_reuse())
    # The plan is made once, on the main process, before anyone writes: every process then works on the same
    # sorted to-do list, whatever the manifests of earlier runs (with any number of processes) contain.
    plan: list[Any] = [None]
    if state.is_main_process:
        names = source.names()
        # An output folder above the input one: an input named like the input folder's own path there (in/a.png
        # below OUT/in) would be written over another input (OUT/in/a.png).
        clash = next((name for name in names if input_dir.is_dir()
                      and _is_within((images_dir / source.output_name(name)).resolve(), input_dir.resolve())), None)
        if clash is not None:
            plan = [{"error": f"--output {output_dir} would write {clash!r} into --input {input_dir}, over an input: "
                              "pick an output folder outside the input folder"}]
        else:
            settings = run_settings(args, model, source)
            settings_path = output_dir / SETTINGS_NAME
            earlier = json.loads(settings_path.read_text(encoding="utf-8")) if settings_path.is_file() else None
            changes = settings_changes(earlier, settings) if isinstance(earlier, dict) else []
            if changes:
                plan = [{"error": f"--output {output_dir} holds a run restored with other settings "
                                  f"({'; '.join(changes)}); resuming would mix two restorations in one archive: "
                                  "rerun with the earlier settings, or restore into a new --output folder"}]
            else:
                output_dir.mkdir(parents=True, exist_ok=True)
                write_text_atomic(settings_path, json.dumps(settings, indent=2) + "\n")
                remove_stale_temporaries(images_dir)
                records = read_manifests(output_dir)
                todo = [name for name in names if not is_done(records.get(name), name, source, images_dir)]
                redone = sum(1 for name in todo if records.get(name, {}).get("status") == "ok")
                if redone:
                    logger.info(f"restoring {redone} recorded image(s) again: output removed or input changed since")
                plan = [{"todo": todo, "total": len(names), "skipped": len(names) - len(todo),
                         "ignored": source.ignored()}]
    if state.num_processes > 1:
        broadcast_object_list(plan, from_process=0)
    plan = plan[0]
    if "error" in plan:  # every process stops, not only the main one
        raise ValueError(plan["error"])

    processor = load_processor(args.model if args.model is not None else modeling.inference.DEMO_CHECKPOINT_DIR)
    restore_kwargs = dict(
        model=model, processor=processor, tile=args.tile, tile_overlap=args.tile_overlap,
        degradation=None if args.degradation == "auto" else args.degradation,
        device=state.device, dtype=args.dtype, batch_size=args.batch_size,
    )
    # Throughput is timed from here, once every process has its model: loading is a constant, not restoring.
    state.wait_for_everyone()
    work_started = time.perf_counter()
    manifest = Manifest(output_dir, state.process_index)
    progress = ArchiveProgress(output_dir, plan["total"], plan["skipped"], enabled=state.is_main_process)
    restored, failed = 0, []
    with state.split_between_processes(plan["todo"]) as mine:
        window = args.batch_size * WINDOW_BATCHES
        try:
            for start in range(0, len(mine), window):
                count, bad = restore_window(
                    mine[start:start + window], source, images_dir, manifest, restore_kwargs, state.process_index
                )
                restored += count
                failed += bad
                progress.refresh()
        finally:
            manifest.close()
    state.wait_for_everyone()
    progress.close()

    per_rank = [{"rank": state.process_index, "restored": restored, "failed": failed}]
    if state.num_processes > 1:
        per_rank = gather_object(per_rank)
    finished = time.perf_counter()
    seconds, work_seconds = finished - started, finished - work_started
    summary: dict = {}
    if state.is_main_process:
        total_restored = sum(r["restored"] for r in per_rank)
        failed_files = sorted(name for r in per_rank for name in r["failed"])
        summary = {
            "total": plan["total"],
            "restored": total_restored,
            "skipped": plan["skipped"],
            "failed": len(failed_files),
            "failed_files": failed_files,
            "ignored_non_image_files": plan["ignored"],
            "restored_per_process": [r["restored"] for r in sorted(per_rank, key=lambda r: r["rank"])],
            "num_processes": state.num_processes,
            "seconds": round(seconds, 3),
            "restore_seconds": round(work_seconds, 3),
            # Over the restore phase (all processes, from the moment every one has loaded the model).
            "images_per_second": round(total_restored / work_seconds, 4) if work_seconds > 0 else None,
            "freed_memory_reused": reused_freed_memory,  # the main process's (every rank decides alike)
        }
        if args.output_format == "dataset":
            cache_dir = output_dir / ".dataset-cache"
            dataset = build_dataset(source, images_dir, read_manifests(output_dir), cache_dir)
            dataset.save_to_disk(str(output_dir / "dataset"))
            summary["dataset"] = str(output_dir / "dataset")
            if args.push_to_hub:
                dataset.push_to_hub(args.push_to_hub, private=args.private)
                summary["pushed_to"] = args.push_to_hub
            del dataset  # its Arrow files live in the cache: close them before removing it
            shutil.rmtree(cache_dir, ignore_errors=True)
        write_text_atomic(output_dir / SUMMARY_NAME, json.dumps(summary, indent=2) + "\n")
        logger.info(
            f"restored {summary['restored']}, skipped {summary['skipped']} (already done), failed {summary['failed']}"
            f" in {work_seconds:.1f} s ({summary['images_per_second']} images/s; {seconds:.1f} s with loading)"
            f" -> {output_dir}",
            main_process_only=True,
        )
    state.wait_for_everyone()
    return summary


def cli(argv: Optional[Sequence[str]] = None) -> int:
    """The command line: 0 when the run finished (failed files are counted in the summary), 2 for a usage error
    found before anything was restored (bad options, input or output folder, settings changed since an earlier
    run)."""
    args = parse_args(argv)
    try:
        main(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"batch_restore: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
