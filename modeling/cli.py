"""``prompt-restore``: restore image files from the command line with `modeling.inference.restore`.

    prompt-restore INPUT... -o OUT [--model ID_OR_DIR] [--tile N] [--tile-overlap N]
                   [--degradation NAME|auto] [--device DEV] [--dtype fp32|bf16|fp16] [--suffix S]

INPUTs are files, folders (their image files, not recursive) and glob patterns. Each result is written to
``OUT/<input stem><suffix>.png``: always PNG, because it is lossless and keeps 16-bit grayscale and alpha (a JPEG
input therefore comes back as PNG). An output that would overwrite one of the inputs is refused.

Exit codes: 0 all images restored; 1 some inputs failed (one line each on stderr; the others are still written);
2 usage errors (bad options, output path is a file, model cannot be loaded).
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import tempfile
from pathlib import Path
from typing import Optional, Sequence

#: Extensions picked up when a folder is given (explicitly named files are tried whatever their extension).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pnm", ".gif")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prompt-restore",
        description="Restore images (denoise, derain, dehaze, deblur, enhance) with an all-in-one restoration model.",
        epilog="Outputs are written as OUT/<stem><suffix>.png. Exit codes: 0 ok, 1 some inputs failed, 2 usage error.",
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders (not recursive) or globs")
    parser.add_argument("-o", "--output", required=True, metavar="OUT", help="output folder (created if missing)")
    parser.add_argument("--model", default=None, metavar="ID_OR_DIR",
                        help="Hub id or local folder of a checkpoint (default: the packaged demo checkpoint)")
    parser.add_argument("--tile", type=int, default=None, metavar="N",
                        help="restore in overlapping N x N tiles (bounded memory); default: whole images")
    parser.add_argument("--tile-overlap", type=int, default=32, metavar="N", help="tile overlap in pixels (default 32)")
    parser.add_argument("--degradation", default=None, metavar="NAME|auto",
                        help="degradation label for models that take one (e.g. noise, rain, haze, blur, low-light)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:0, ... (default: CUDA if available)")
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "bf16", "fp16"),
                        help="autocast precision (default fp32)")
    parser.add_argument("--suffix", default="", help="appended to each output file stem, e.g. _restored")
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
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
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


def plan_outputs(files: Sequence[Path], out_dir: Path, suffix: str) -> tuple[list[tuple[Path, Path]], list[str]]:
    """Pair inputs with output paths; refuse outputs that would overwrite an input or another output."""
    inputs = {f.resolve() for f in files}
    jobs, errors, taken = [], [], {}
    for file in files:
        target = out_dir / f"{file.stem}{suffix}.png"
        key = target.resolve()
        if key in inputs:
            errors.append(f"{file}: refusing to overwrite input file {target} (use another -o or a --suffix)")
        elif key in taken:
            errors.append(f"{file}: output {target} would also be written for {taken[key]} (same file stem)")
        else:
            taken[key] = file
            jobs.append((file, target))
    return jobs, errors


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text


def _save_png(image, target: Path) -> None:
    # Write to a temporary file first so an interrupted run never leaves a half-written PNG under the final name.
    handle, tmp = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=".png", dir=target.parent)
    os.close(handle)
    try:
        image.save(tmp, format="PNG")
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


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

    if args.tile is not None and args.tile < 1:
        return fail_usage(f"--tile must be a positive number of pixels, got {args.tile}")
    if args.tile is not None and not 0 <= args.tile_overlap < args.tile:
        return fail_usage(f"--tile-overlap must be in [0, --tile), got {args.tile_overlap}")
    if args.batch_size < 1:
        return fail_usage(f"--batch-size must be >= 1, got {args.batch_size}")
    out_dir = Path(args.output)
    if out_dir.exists() and not out_dir.is_dir():
        return fail_usage(f"output {out_dir} exists and is not a folder")

    files, errors = expand_inputs(args.inputs)
    jobs, plan_errors = plan_outputs(files, out_dir, args.suffix)
    errors += plan_errors

    # Imported here so `--help` and usage errors stay fast (torch/transformers take seconds to import).
    from tqdm.auto import tqdm

    from .inference import (
        DEMO_CHECKPOINT_DIR,
        degradation_label_ids,
        load_model,
        load_processor,
        resolve_device,
        restore,
    )

    try:
        device = resolve_device(args.device)
    except RuntimeError as err:
        return fail_usage(f"invalid --device {args.device!r}: {_one_line(err)}")
    if jobs:
        try:
            model = load_model(args.model, trust_remote_code=args.trust_remote_code, device=device)
            processor = load_processor(args.model if args.model is not None else DEMO_CHECKPOINT_DIR)
            degradation_label_ids(model, args.degradation, 1)  # validate the name before the first image
        except (OSError, ValueError, TypeError, RuntimeError, ImportError) as err:
            return fail_usage(_one_line(err))
    else:
        model = processor = None

    for line in errors:
        print(f"prompt-restore: error: {line}", file=sys.stderr)
    if jobs:
        out_dir.mkdir(parents=True, exist_ok=True)
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
            )
            _save_png(restored, target)
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
