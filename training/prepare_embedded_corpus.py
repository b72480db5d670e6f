"""Prepare a small local corpus of clean photos for demos and smoke training (nothing is downloaded).

Sources:

* the photographs bundled inside scikit-image's data module (``skimage.data``; only images whose file ships
  with the wheel are used -- functions that would fetch with pooch are skipped);
* the Debian package ``ukui-wallpapers`` if installed (``sudo apt-get install ukui-wallpapers``; files in
  ``/usr/share/backgrounds``). These are rendered digital art, not camera photos; the three flat vector ones
  are left out because their crops are mostly constant colour.

Output (deterministic; the same files give the same split)::

    <output>/train/<origin>-<name>.png      clean RGB images, long side <= --max-side
    <output>/heldout/<origin>-<name>.png    every --heldout-every-th image of each origin (sorted by name)
    <output>/manifest.json                  origin, split, size and licence pointer of every file

Train on it with all five tasks synthesized from the clean photos::

    build_stream("5-task", {"clean": "<output>/train"}, synthesize_missing=True)

Usage: ``python -m training.prepare_embedded_corpus --output data/embedded [--include-gray]``
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image


logger = logging.getLogger("prepare_embedded_corpus")

# (function name in skimage.data, file it reads from the package folder)
SKIMAGE_COLOR_PHOTOS: tuple[tuple[str, str], ...] = (
    ("astronaut", "astronaut.png"),
    ("chelsea", "chelsea.png"),
    ("coffee", "coffee.png"),
    ("hubble_deep_field", "hubble_deep_field.jpg"),
    ("immunohistochemistry", "ihc.png"),
    ("retina", "retina.jpg"),
    ("rocket", "rocket.jpg"),
    ("stereo_motorcycle", "motorcycle_left.png"),  # left view only: the right view is a near duplicate
)
SKIMAGE_GRAY_PHOTOS: tuple[tuple[str, str], ...] = (
    ("brick", "brick.png"),
    ("camera", "camera.png"),
    ("coins", "coins.png"),
    ("grass", "grass.png"),
    ("gravel", "gravel.png"),
    ("moon", "moon.png"),
)
UKUI_WALLPAPERS: tuple[str, ...] = (
    "2004default.jpg",
    "calla.png",
    "firstgeneration.jpg",
    "fluent-color.png",
    "focal-ubuntukylin.png",
    "goldfish.png",
    "rhythm.jpg",
    "string.jpg",
    "the-mouse.jpg",
)  # city.png, desert.png, rollpaper.png: flat vector art, skipped
DEFAULT_WALLPAPER_DIR = "/usr/share/backgrounds"


def skimage_photos(include_gray: bool) -> Iterator[tuple[str, np.ndarray]]:
    """(name, uint8 RGB array) for every bundled skimage photo; never triggers a download."""
    import skimage.data

    package_dir = Path(skimage.data.__file__).parent
    candidates = SKIMAGE_COLOR_PHOTOS + (SKIMAGE_GRAY_PHOTOS if include_gray else ())
    for function_name, filename in candidates:
        if not (package_dir / filename).is_file():
            logger.info("skimage.data.%s is not bundled (needs pooch/network): skipped", function_name)
            continue
        loader: Callable[[], np.ndarray] = getattr(skimage.data, function_name)
        image = loader()
        if function_name == "stereo_motorcycle":
            image = image[0]
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        yield function_name, np.ascontiguousarray(image[:, :, :3].astype(np.uint8))


def wallpapers(directory: Path) -> Iterator[tuple[str, np.ndarray]]:
    """(name, uint8 RGB array) for the ukui wallpapers present in ``directory``."""
    for filename in UKUI_WALLPAPERS:
        path = directory / filename
        if path.is_file():
            with Image.open(path) as image:
                yield Path(filename).stem, np.asarray(image.convert("RGB"))


def downscale(image: np.ndarray, max_side: int) -> np.ndarray:
    """Lanczos-downscale so the long side is at most ``max_side`` (also removes most JPEG artefacts)."""
    height, width = image.shape[:2]
    scale = max_side / max(height, width)
    if scale >= 1:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))


def prepare(
    output: Path,
    *,
    wallpaper_dir: Path | None = Path(DEFAULT_WALLPAPER_DIR),
    include_gray: bool = False,
    max_side: int = 1024,
    heldout_every: int = 4,
) -> dict:
    """Write ``train/``, ``heldout/`` and ``manifest.json`` under ``output``; returns the manifest."""
    if heldout_every < 2:
        raise ValueError("--heldout-every must be >= 2 (some images must stay in train)")
    origins: dict[str, list[tuple[str, np.ndarray]]] = {"skimage": sorted(skimage_photos(include_gray))}
    if wallpaper_dir is not None and wallpaper_dir.is_dir():
        origins["ukui"] = sorted(wallpapers(wallpaper_dir))
    if wallpaper_dir is not None and not origins.get("ukui"):
        logger.info(
            "no ukui wallpapers found in %s (install them with `sudo apt-get install ukui-wallpapers`)", wallpaper_dir
        )
    manifest: dict[str, dict] = {}
    for split in ("train", "heldout"):
        (output / split).mkdir(parents=True, exist_ok=True)
    for origin, items in origins.items():
        for position, (name, image) in enumerate(sorted(items, key=lambda item: item[0])):
            split = "heldout" if position % heldout_every == heldout_every - 1 else "train"
            image = downscale(image, max_side)
            relative = f"{split}/{origin}-{name}.png"
            Image.fromarray(image).save(output / relative)
            manifest[relative] = {
                "origin": origin,
                "name": name,
                "split": split,
                "height": int(image.shape[0]),
                "width": int(image.shape[1]),
                "licence": (
                    f"see help(skimage.data.{name})"
                    if origin == "skimage"
                    else "see /usr/share/doc/ukui-wallpapers/copyright"
                ),
            }
    (output / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, required=True, help="folder to write train/ and heldout/ into")
    parser.add_argument(
        "--wallpaper-dir", type=Path, default=Path(DEFAULT_WALLPAPER_DIR),
        help="where ukui-wallpapers installs its images (default %(default)s); skipped if absent",
    )
    parser.add_argument("--no-wallpapers", action="store_true", help="use the skimage photos only")
    parser.add_argument("--include-gray", action="store_true", help="add skimage's gray photos (as RGB)")
    parser.add_argument("--max-side", type=int, default=1024, help="downscale so the long side is at most this")
    parser.add_argument("--heldout-every", type=int, default=4, help="every n-th image of an origin is held out")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    manifest = prepare(
        args.output,
        wallpaper_dir=None if args.no_wallpapers else args.wallpaper_dir,
        include_gray=args.include_gray,
        max_side=args.max_side,
        heldout_every=args.heldout_every,
    )
    splits = [entry["split"] for entry in manifest.values()]
    print(f"wrote {splits.count('train')} train and {splits.count('heldout')} held-out images to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
