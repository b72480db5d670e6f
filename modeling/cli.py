"""``prompt-restore``: restore image files from the command line with `modeling.inference.restore`.

    prompt-restore INPUT... -o OUT [--model ID_OR_DIR] [--tile N] [--tile-overlap N] [--statistics-passes N]
                   [--statistics-tolerance T] [--overwrite]
                   [--degradation NAME|auto] [--device DEV] [--dtype auto|fp32|bf16|fp16] [--suffix S]

INPUTs are files, folders (their image files, not recursive, hidden ones skipped) and glob patterns. Each result
is written to ``OUT/<input stem><suffix>.png``: always PNG, because it is lossless and keeps 16-bit depth (gray
and colour) and alpha (a JPEG input therefore comes back as PNG). An output that would overwrite one of the inputs is always
refused; one that would replace another existing file is refused unless ``--overwrite`` is given. Results are
written through a temporary file and renamed, with the permissions of any new file (the umask applies).

Exit codes: 0 all images restored; 1 some inputs failed (one line each on stderr; the others are still written);
2 usage errors (bad options, output folder cannot be created or written, unusable device, model cannot be loaded),
reported on one line before any model is loaded where possible.

The console script starts in `training.cli_launcher`, which runs this file's `main` without importing the
`modeling` package first, so ``--help`` and usage errors answer at once: this module must import only the standard
library at module level (torch, transformers and the rest of `modeling` are imported inside `main`).
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

#: Extensions picked up when a folder is given (explicitly named files are tried whatever their extension).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pnm", ".gif")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prompt-restore",
        description="Restore images (denoise, derain, dehaze, deblur, enhance) with an all-in-one restoration model.",
        epilog="Outputs are written as OUT/<stem><suffix>.png. Exit codes: 0 ok, 1 some inputs failed, 2 usage error.",
    )
    parser.add_argument("inputs", nargs="*", metavar="INPUT",
                        help="image files, folders (not recursive; hidden files skipped) or globs")
    parser.add_argument("--examples", action="store_true",
                        help="also restore the degraded example photos shipped with the package (modeling/demo/examples)")
    parser.add_argument("-o", "--output", required=True, metavar="OUT", help="output folder (created if missing)")
    parser.add_argument("--model", default=None, metavar="ID_OR_DIR",
                        help="Hub id or local folder of a checkpoint (default: the packaged demo checkpoint)")
    parser.add_argument("--tile", type=int, default=None, metavar="N",
                        help="restore in overlapping N x N tiles (bounded memory), N >= 8; 0: whole images; default: "
                             "the model's inference_tile if its config names one, else whole images up to 4 "
                             "megapixels and 1024 x 1024 tiles above")
    parser.add_argument("--tile-overlap", type=int, default=None, metavar="N",
                        help="tile overlap in pixels, at most half the tile (default: 32, capped at a quarter of the "
                             "tile); without --tile it applies to the default tiles of large images")
    parser.add_argument("--statistics-passes", type=int, default=None, metavar="N",
                        help="with tiles, the most passes that gather whole-image statistics before the restoring "
                             "pass (each costs one tiled restore); 0: every tile uses its own (faster, less like the "
                             "whole image); default: 6 whenever tiles split an image")
    parser.add_argument("--statistics-tolerance", type=float, default=None, metavar="T",
                        help="stop the statistics passes, from the second on, once a pass changes the statistics "
                             "by at most T (relative); 0: run them all; default: 0.01")
    parser.add_argument("--degradation", default=None, metavar="NAME|auto",
                        help="degradation label for models that take one (e.g. noise, rain, haze, blur, low-light)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:0, ... (default: CUDA if available)")
    parser.add_argument("--dtype", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                        help="autocast precision; auto (default): bf16 on a CPU with native bf16 (AVX-512 BF16 or "
                             "AMX), fp32 elsewhere; fp32 turns bf16 off (env PROMPT_RESTORE_DTYPE sets what auto means)")
    parser.add_argument("--no-channels-last", dest="channels_last", action="store_const", const=False, default=None,
                        help="turn off the CPU fast path (channels-last inputs; same outputs up to float rounding)")
    parser.add_argument("--no-reuse-freed-memory", dest="reuse_freed_memory", action="store_false",
                        help="leave glibc's allocator as it is (default on CPU: keep freed activation buffers for "
                             "the next image, 2.9-3.1x faster on this project's CPU, benchmarks/bench_malloc.py)")
    parser.add_argument("--suffix", default="", help="appended to each output file stem, e.g. _restored")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace existing output files (input files are never overwritten)")
    parser.add_argument("--batch-size", type=int, default=4, help="tiles per forward pass in tiled mode (default 4)")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="allow loading model code shipped with the checkpoint")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    return parser


def expand_inputs(patterns: Sequence[str]) -> tuple[list[Path], list[str]]:
    """Files for the given files / folders / globs (order kept, duplicates dropped) and error lines for misses."""
    files: list[Path] = []
    errors: list[str] = []
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            # Hidden files are skipped, as a glob's "*" skips them: macOS's "._photo.png" companions (resource
            # forks copied to other disks) are not images and would each fail the run.
            found = sorted(p for p in path.iterdir()
                           if not p.name.startswith(".") and p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                errors.append(f"{pattern}: folder contains no image files")
        elif path.exists():
            found = [path]
        else:
            found = sorted(Path(p) for p in glob.glob(pattern) if Path(p).is_file())
            if not found:
                errors.append(f"{pattern}: no such file, folder or matching pattern")
        files.extend(found)
    unique, seen = [], set()
    for file in files:
        key = file.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(file)
    return unique, errors


def plan_outputs(
    files: Sequence[Path], out_dir: Path, suffix: str, overwrite: bool = False
) -> tuple[list[tuple[Path, Path]], list[str]]:
    """Pair inputs with output paths; refuse outputs that would overwrite an input (always) or another output, and
    existing files unless `overwrite`."""
    inputs = {f.resolve() for f in files}
    jobs, errors, taken = [], [], {}
    for file in files:
        target = out_dir / f"{file.stem}{suffix}.png"
        key = target.resolve()
        if key in inputs:
            errors.append(f"{file}: refusing to overwrite input file {target} (use another -o or a --suffix)")
        elif key in taken:
            errors.append(f"{file}: output {target} would also be written for {taken[key]} (same file stem)")
        elif not overwrite and os.path.lexists(target):
            errors.append(f"{file}: output {target} already exists; not replacing it (use --overwrite, another -o "
                          "or a --suffix)")
        else:
            taken[key] = file
            jobs.append((file, target))
    return jobs, errors


def check_output_folder(out_dir: Path) -> Optional[str]:
    """Why results cannot be written into `out_dir`, or None. Creates nothing: a missing folder's nearest existing
    ancestor must be a writable folder (the folder itself is created after the model has loaded)."""
    if out_dir.exists():
        if not out_dir.is_dir():
            return f"output {out_dir} exists and is not a folder"
        if not os.access(out_dir, os.W_OK | os.X_OK):
            return f"output folder {out_dir} is not writable"
        return None
    ancestor = out_dir
    while not ancestor.exists() and ancestor != ancestor.parent:
        if ancestor.is_symlink():  # mkdir cannot create a folder through a link to nowhere (FileExistsError)
            return f"cannot create output folder {out_dir}: {ancestor} is a link to {os.readlink(ancestor)}, " \
                   "which does not exist"
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return f"cannot create output folder {out_dir}: {ancestor} is not a folder"
    if not os.access(ancestor, os.W_OK | os.X_OK):
        return f"cannot create output folder {out_dir}: {ancestor} is not writable"
    return None


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text


def _open_new_file_beside(target: Path) -> tuple[int, Path]:
    """Create a hidden temporary file next to `target` with the mode of any new file (0o666 less the umask;
    `tempfile.mkstemp` would make it 0o600, and the rename keeps that mode)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    # The temporary name adds 14 characters: shorten the part taken from the target so that it stays within the
    # 255 bytes a file name may have wherever the target's own name fits.
    name = target.name
    # os.fsencode: a name read from disk may hold bytes that are not UTF-8 (as surrogate escapes), which str.encode
    # refuses.
    while len(os.fsencode(name)) + 14 > 255:
        name = name[:-1]
    for _ in range(100):
        tmp = target.parent / f".{name}.{os.urandom(4).hex()}.tmp"
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file next to {target}")


def save_image_atomic(image: Any, target: Path, overwrite: bool = False, format: str = "PNG") -> None:
    """Write a PIL image or uint8/uint16 array as `target` in `format` (PNG keeps 16-bit colour); never leaves a
    partial file under the final name. Also used by `training.batch_restore`."""
    from .image_processing_restoration import write_image

    # Write to a temporary file first so an interrupted run never leaves a half-written file under the final name.
    handle, tmp = _open_new_file_beside(target)
    try:
        with os.fdopen(handle, "wb") as file:
            write_image(image, file, format)
        if not overwrite and os.path.lexists(target):  # appeared while this image was being restored
            raise FileExistsError(f"output {target} already exists; not replacing it (use --overwrite)")
        os.replace(tmp, target)
    except BaseException:
        if os.path.lexists(tmp):
            os.remove(tmp)
        raise


def _save_png(image: Any, target: Path, overwrite: bool = False) -> None:
    """Write `image` as the PNG `target` atomically (see `save_image_atomic`)."""
    save_image_atomic(image, target, overwrite=overwrite, format="PNG")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 1 some inputs failed, 2 usage error)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse exits 2 on usage errors, 0 for --help
        return int(exit_.code or 0)

    def fail_usage(message: str) -> int:
        print(f"prompt-restore: error: {message}", file=sys.stderr)
        return 2

    # Checks that need no third-party import come first, so these usage errors are immediate.
    if not args.inputs and not args.examples:
        return fail_usage("give at least one INPUT (file, folder or glob), or --examples")
    if args.tile == 0 and args.tile_overlap is not None:
        return fail_usage("--tile 0 restores whole images, so there is no tile overlap: drop --tile-overlap")
    if args.batch_size < 1:
        return fail_usage(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.statistics_passes is not None and args.statistics_passes < 0:
        return fail_usage(f"--statistics-passes must be >= 0, got {args.statistics_passes}")
    if args.statistics_tolerance is not None and not 0 <= args.statistics_tolerance < float("inf"):
        return fail_usage(f"--statistics-tolerance must be a finite number >= 0, got {args.statistics_tolerance}")
    out_dir = Path(args.output)
    problem = check_output_folder(out_dir)
    if problem is not None:
        return fail_usage(problem)

    inputs = list(args.inputs)
    if args.examples:
        # The package's own folder, found without importing torch (this module stays import-light).
        examples = Path(__file__).resolve().parent / "demo" / "examples"
        if not examples.is_dir():
            return fail_usage(f"no shipped examples in {examples} (this install carries no demo weights)")
        inputs.append(str(examples))
    files, errors = expand_inputs(inputs)
    jobs, plan_errors = plan_outputs(files, out_dir, args.suffix, overwrite=args.overwrite)
    errors += plan_errors

    # Imported here so `--help` and usage errors stay fast (torch/transformers take seconds to import).
    from tqdm.auto import tqdm

    from .inference import (
        DEMO_CHECKPOINT_DIR,
        check_tile_options,
        degradation_label_ids,
        load_model,
        load_processor,
        resolve_device,
        resolve_dtype,
        restore,
    )
    from .tiling import check_tiling

    try:
        check_tiling(args.tile, args.tile_overlap, names=("--tile", "--tile-overlap"))
        resolve_dtype(args.dtype)  # with "auto", PROMPT_RESTORE_DTYPE: once here, not once per image
    except ValueError as err:
        return fail_usage(_one_line(err))
    try:
        device = resolve_device(args.device)
    except (ValueError, RuntimeError) as err:
        return fail_usage(f"invalid --device {args.device!r}: {_one_line(err)}")
    if jobs and device.type == "cpu" and args.reuse_freed_memory:
        from . import inference

        inference.keep_freed_memory_for_reuse()  # process-wide: fine for the CLI's own process
    if jobs:
        from transformers.utils import logging as transformers_logging

        bars = transformers_logging.is_progress_bar_enabled()
        if args.quiet:  # from_pretrained's "Loading weights" bar
            transformers_logging.disable_progress_bar()
        try:
            model = load_model(args.model, trust_remote_code=args.trust_remote_code, device=device, dtype=args.dtype)
            processor = load_processor(args.model if args.model is not None else DEMO_CHECKPOINT_DIR)
            degradation_label_ids(model, args.degradation, 1)  # validate the name before the first image
            check_tile_options(model, args.tile, args.tile_overlap, names=("--tile", "--tile-overlap"))
        except (OSError, ValueError, TypeError, RuntimeError, ImportError) as err:
            return fail_usage(_one_line(err))
        finally:
            if bars:
                transformers_logging.enable_progress_bar()
    else:
        model = processor = None

    if jobs:
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            return fail_usage(f"cannot create output folder {out_dir}: {err.strerror or _one_line(err)}")
    for line in errors:
        print(f"prompt-restore: error: {line}", file=sys.stderr)
    written = 0
    bar = tqdm(jobs, desc="restoring", unit="img", disable=args.quiet, file=sys.stderr)
    for source, target in bar:
        try:
            restored = restore(
                source,
                model,
                processor,
                tile=args.tile,
                tile_overlap=args.tile_overlap,
                degradation=args.degradation,
                device=device,
                dtype=args.dtype,
                batch_size=args.batch_size,
                channels_last=args.channels_last,
                statistics_passes=args.statistics_passes,
                statistics_tolerance=args.statistics_tolerance,
            )
            _save_png(restored, target, overwrite=args.overwrite)
            written += 1
        except Exception as err:  # one bad file must not stop the others; report it on one line
            errors.append(str(source))
            tqdm.write(f"prompt-restore: error: {source}: {_one_line(err)}", file=sys.stderr)
    bar.close()
    if not args.quiet:
        print(f"restored {written} image(s) into {out_dir}; {len(errors)} error(s)", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
