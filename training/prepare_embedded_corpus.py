"""Prepare a local corpus of clean photos (plus procedural dead-leaves images) for training on synthesized
degradations; nothing is downloaded.

Only these sources are read, each skipped with a log line when it is not installed:

* photographs bundled with the Python packages scikit-image (``skimage/data``; always installed with
  ``.[train]``), scikit-learn (``load_sample_images``: china, flower) and matplotlib (``sample_data``:
  grace_hopper);
* photographs among the wallpapers of the Debian packages ``lomiri-wallpapers`` (16.04 and 20.04 sets) and
  ``plasma-workspace-wallpapers`` (``sudo apt-get install lomiri-wallpapers plasma-workspace-wallpapers``).
  ``ukui-wallpapers`` and ``gnome-backgrounds`` were inspected too but hold no photographs (all rendered or
  vector art), like the rest of the wallpapers: :data:`EXCLUDED` lists every file left out and why;
* ``--dead_leaves N`` seeded dead-leaves images (:mod:`training.dead_leaves`), written to ``train/`` only.

Every photo has a fixed split (:data:`PHOTOS`, column ``heldout``), so the split does not depend on which
sources are installed. The held-out photos (never trained on) are the two of earlier corpora
(skimage ``hubble_deep_field`` and ``stereo_motorcycle``) and six everyday photos chosen across sources and
content: sklearn ``china`` (building, trees, sky), lomiri ``friends`` (dogs, wood), ``picosdeeuropa``
(mountains), ``Wine`` (indoor), plasma ``EveningGlow`` (boats at sunset) and ``FallenLeaf`` (close-up, bokeh).

Output (deterministic: the same installed files and arguments give the same bytes)::

    <output>/train/<origin>-<name>.png       clean RGB photos, long side <= --max_side (Lanczos)
    <output>/train/deadleaves-<i>.png        --dead_leaves images of --dead_leaves_size (seed [seed, i])
    <output>/heldout/<origin>-<name>.png     held-out photos, same processing
    <output>/manifest.json                   per file: source package, original path, licence, author,
                                             split, sizes; counts, skipped sources, excluded files

Photos are downscaled so the long side is at most ``--max_side`` (default 1024: a 96-128 px training crop still
sees a good part of the scene, decoding stays cheap and Lanczos averaging removes most JPEG artefacts).

Train on it with all five tasks synthesized from the clean images::

    build_stream("5-task", {"clean": "<output>/train"}, synthesize_missing=True)

Usage: ``python -m training.prepare_embedded_corpus --output data/embedded [--dead_leaves 200] [--include_gray]``
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageOps

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.checkpointing import write_text_atomic  # noqa: E402
from training.dead_leaves import dead_leaves  # noqa: E402


logger = logging.getLogger("prepare_embedded_corpus")


class Photo(NamedTuple):
    """One source photograph: where it lives, its licence, and its fixed split."""

    origin: str  # output file prefix
    name: str  # output file stem
    package: str  # pip distribution or Debian package that ships the file
    path: str  # path inside the pip package, or absolute path installed by the Debian package
    licence: str
    author: str
    heldout: bool = False
    everyday: bool = True  # an everyday photo (not astronomy, microscopy, ...)
    gray: bool = False  # a gray photo, used only with include_gray


_LOMIRI_16 = "/usr/share/doc/lomiri-wallpapers-16.04/copyright"
_LOMIRI_20 = "/usr/share/doc/lomiri-wallpapers-20.04/copyright"
_PLASMA = (
    "GPL-2+ (/usr/share/doc/plasma-workspace-wallpapers/copyright, all files); the wallpaper's metadata.json "
    "says LGPLv3"
)


def _lomiri(name: str, file: str, licence: str, author: str, heldout: bool = False, version: str = "16.04"):
    copyright_file = _LOMIRI_16 if version == "16.04" else _LOMIRI_20
    return Photo("lomiri", name, f"lomiri-wallpapers-{version}", f"/usr/share/backgrounds/{file}",
                 f"{licence} ({copyright_file})", author, heldout)


def _plasma(name: str, author: str, heldout: bool = False):
    return Photo("plasma", name, "plasma-workspace-wallpapers",
                 f"/usr/share/wallpapers/{name}/contents/images/2560x1600.jpg", _PLASMA, author, heldout)


PHOTOS: tuple[Photo, ...] = (
    # scikit-image (skimage/data); licences as stated in each loader's docstring
    Photo("skimage", "astronaut", "scikit-image", "skimage/data/astronaut.png",
          "public domain (NASA)", "NASA"),
    Photo("skimage", "chelsea", "scikit-image", "skimage/data/chelsea.png", "CC0-1.0", "Stefan van der Walt"),
    Photo("skimage", "coffee", "scikit-image", "skimage/data/coffee.png", "CC0-1.0", "Rachel Michetti"),
    Photo("skimage", "rocket", "scikit-image", "skimage/data/rocket.jpg", "public domain (SpaceX)", "SpaceX"),
    Photo("skimage", "hubble_deep_field", "scikit-image", "skimage/data/hubble_deep_field.jpg",
          "public domain (NASA)", "NASA", heldout=True, everyday=False),
    Photo("skimage", "stereo_motorcycle", "scikit-image", "skimage/data/motorcycle_left.png",
          "Middlebury 2014 stereo dataset (Scharstein et al., GCPR 2014); no licence stated",
          "Middlebury College", heldout=True),
    *(
        Photo("skimage", name, "scikit-image", f"skimage/data/{name}.png", licence, author, gray=True)
        for name, licence, author in (
            ("brick", "CC0-1.0 (CC0Textures)", ""),
            ("camera", "CC0-1.0", "Lav Varshney"),
            ("coins", "no known copyright restrictions (Brooklyn Museum)", ""),
            ("grass", "CC0-1.0", "linolafett (DeviantArt)"),
            ("gravel", "CC0-1.0 (CC0Textures)", ""),
            ("moon", "not stated in help(skimage.data.moon)", ""),
        )
    ),
    # scikit-learn load_sample_images (sklearn/datasets/images/README.txt)
    Photo("sklearn", "china", "scikit-learn", "sklearn/datasets/images/china.jpg", "CC-BY-2.0",
          "danielbuechele (Flickr)", heldout=True),
    Photo("sklearn", "flower", "scikit-learn", "sklearn/datasets/images/flower.jpg", "CC-BY-2.0",
          "vultilion (Flickr)"),
    # matplotlib sample data (no per-file licence in sample_data/README.txt)
    Photo("matplotlib", "grace_hopper", "matplotlib", "matplotlib/mpl-data/sample_data/grace_hopper.jpg",
          "public domain (official US Navy portrait, work of the US federal government)", "US Navy"),
    # lomiri-wallpapers (Ubuntu 16.04 community contest set, and the 20.04 set)
    _lomiri("Bridge", "Bridge_by_Sander_Klootwijk.jpg", "CC-BY-SA-4.0", "Sander Klootwijk"),
    _lomiri("Dragonfly", "Dragonfly_by_Bolly.jpg", "CC-BY-SA-4.0", "Bolly"),
    _lomiri("Picture_0B", "Picture_0B_by_freespace.jpg", "CC-BY-4.0", "Trevor Freespace"),
    _lomiri("Picture_1A", "Picture_1A_by_freespace.jpg", "CC-BY-4.0", "Trevor Freespace"),
    _lomiri("Wine", "Wine_by_Jakkub_Mede.jpg", "CC-BY-4.0", "Jakub Mede", heldout=True),
    _lomiri("aitzgorri", "aitzgorri_by_Aitzol_Berasategi.jpg", "CC-BY-4.0", "Aitzol Berasategi"),
    _lomiri("free", "free_by_Peter_Nerlich.jpg", "CC-BY-SA-4.0", "Peter Nerlich"),
    _lomiri("friends", "friends_by_Aitzol_Berasategi.jpg", "CC-BY-4.0", "Aitzol Berasategi", heldout=True),
    _lomiri("greentock", "greentock_by_Peter_Nerlich.jpg", "CC-BY-SA-4.0", "Peter Nerlich"),
    _lomiri("life", "life_by_Aitzol_Berasategi.jpg", "CC-BY-4.0", "Aitzol Berasategi"),
    _lomiri("picosdeeuropa", "picosdeeuropa_by_Aitzol_Berasategi.jpg", "CC-BY-4.0", "Aitzol Berasategi",
            heldout=True),
    _lomiri("seeding", "seeding_by_Clements_Engelhardt.jpg", "CC0-1.0", "Clemens Engelhardt"),
    _lomiri("sunset", "sunset_by_Aitzol_Berasategi.jpg", "CC-BY-4.0", "Aitzol Berasategi"),
    _lomiri("Kleiber", "Kleiber_by_Lukas_Baubkus.jpg", "CC-BY-SA-3.0", "Lukas Baubkus", version="20.04"),
    # plasma-workspace-wallpapers (largest size of each; authors from metadata.json)
    _plasma("BytheWater", "Maciej Wiklo"),
    _plasma("ColdRipple", "Risto Saukonpää"),
    _plasma("ColorfulCups", "Dmitri Popov"),
    _plasma("DarkestHour", "Risto Saukonpää"),
    _plasma("EveningGlow", "Ian Hex", heldout=True),
    _plasma("FallenLeaf", "Martin Klapetek", heldout=True),
    _plasma("Grey", "Sigi Sagi"),
    _plasma("Kite", "Risto Saukonpää"),
    _plasma("OneStandsOut", "Risto Saukonpää"),
    _plasma("Path", "Risto Saukonpää"),
    _plasma("summer_1am", "Risto Saukonpää"),
)
"""Every source photo, in output order. Gray ones are used only with ``include_gray``."""

_DIGITAL_ART = "digital art (rendered or painted), not a photograph"
EXCLUDED: tuple[tuple[str, str, str], ...] = (
    ("scikit-image", "skimage/data/ihc.png", "microscopy (immunohistochemistry), not an everyday photo"),
    ("scikit-image", "skimage/data/retina.jpg", "fundus photograph (medical), not an everyday photo"),
    ("scikit-image", "skimage/data/motorcycle_right.png", "near duplicate of motorcycle_left (held out)"),
    ("scikit-image", "skimage/data/{cell,chessboard_*,clock_motion,color,horse,lfw_subset,logo,microaneurysms,"
     "multipage*,no_time_for_that_tiny,page,phantom,text}",
     "not clean everyday photos: graphics, text, synthetic, tiny, microscopy or already blurred (clock_motion)"),
    ("matplotlib", "matplotlib/mpl-data/sample_data/Minduka_Present_Blue_Pack.png", "icon"),
    ("matplotlib", "matplotlib/mpl-data/sample_data/logo2.png", "logo"),
    *(
        ("ukui-wallpapers", f"/usr/share/backgrounds/{file}", _DIGITAL_ART)
        for file in ("2004default.jpg", "calla.png", "city.png", "desert.png", "firstgeneration.jpg",
                     "fluent-color.png", "focal-ubuntukylin.png", "goldfish.png", "rhythm.jpg", "rollpaper.png",
                     "string.jpg", "the-mouse.jpg")
    ),
    ("gnome-backgrounds", "/usr/share/backgrounds/gnome/*.webp, *.svg",
     "all rendered or vector art (adwaita, blobs, drool, dune, field, grid, licorice, oceans, pixels, symbolic, "
     "truchet, vnc, wood)"),
    ("lomiri-wallpapers", "/usr/share/backgrounds/lomiri-default-background.png", "colour gradient art"),
    ("lomiri-wallpapers", "/usr/share/backgrounds/warty-final-ubuntu.png", "colour gradient art"),
    ("lomiri-wallpapers-16.04", "/usr/share/backgrounds/analogpattern_by_Peter_Nerlich.jpg",
     "abstract colour-tinted texture, no scene"),
    ("lomiri-wallpapers-16.04", "/usr/share/backgrounds/umang_by_Abhishek_Mudgal.jpg",
     "abstract colour gradient"),
    *(
        ("lomiri-wallpapers-20.04", f"/usr/share/backgrounds/{file}", _DIGITAL_ART)
        for file in ("Fossa_by_Jasper_Roks.jpg", "Infinite-Sea_by_Aury88.jpg",
                     "Painting-Colors_by__herobrine7gamer.jpg")
    ),
    ("plasma-workspace-wallpapers", "/usr/share/wallpapers/Autumn", "painting"),
    *(
        ("plasma-workspace-wallpapers", f"/usr/share/wallpapers/{name}", _DIGITAL_ART)
        for name in ("Altai", "Canopee", "Cascade", "Cluster", "Elarun", "Flow", "FlyingKonqui", "Honeywave",
                     "IceCold", "Kay", "Kokkini", "MilkyWay", "Opal", "PastelHills", "Patak", "SafeLanding",
                     "Shell", "Volna")
    ),
    ("plasma-workspace-wallpapers", "/usr/share/wallpapers/*/contents/images/<smaller>.jpg",
     "smaller renditions of the same wallpaper (only the largest is used)"),
)
"""(package, path, reason) of every inspected file that is not used."""

_PIP_PACKAGES = {"scikit-image": "skimage", "scikit-learn": "sklearn", "matplotlib": "matplotlib"}


def _pip_file(photo: Photo) -> Path | None:
    """The file of a photo shipped inside an importable package (located without importing it), or None."""
    module, _, relative = photo.path.partition("/")
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / relative


def source_file(photo: Photo, debian_root: Path | None) -> Path | None:
    """Where ``photo`` is on this machine, or None if its package is not installed (or Debian is disabled)."""
    if photo.package in _PIP_PACKAGES:
        path = _pip_file(photo)
    elif debian_root is None:
        return None
    else:
        path = debian_root / photo.path.lstrip("/")
    return path if path is not None and path.is_file() else None


def load_rgb(path: Path, max_side: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode as uint8 RGB (EXIF orientation applied), Lanczos-downscaled to ``max_side``; also the original size."""
    with Image.open(path) as image:
        original = image.size
        scale = min(1.0, 2 * max_side / max(original))
        # JPEG only: let libjpeg decode at a power-of-2 reduction that stays >= 2x the target size (much faster)
        image.draft(None, (int(np.ceil(original[0] * scale)), int(np.ceil(original[1] * scale))))
        image = ImageOps.exif_transpose(image).convert("RGB")
    return downscale(np.asarray(image), max_side), (original[1], original[0])


def downscale(image: np.ndarray, max_side: int) -> np.ndarray:
    """Lanczos-downscale so the long side is at most ``max_side`` (also removes most JPEG artefacts)."""
    height, width = image.shape[:2]
    scale = max_side / max(height, width)
    if scale >= 1:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))


_OUTPUT_PREFIXES = ("skimage-", "sklearn-", "matplotlib-", "lomiri-", "plasma-", "ukui-", "deadleaves-")
"""File-name prefixes this script writes (``ukui-``: earlier versions), removed before a new run."""


def _remove_stale_outputs(output: Path) -> None:
    """Delete the manifest and the images an earlier run wrote into ``train/`` and ``heldout/``; other files are
    left alone.

    A photo that is now held out, or no longer used, must not stay in ``train/``.
    """
    stale = [
        path for split in ("train", "heldout") if (output / split).is_dir()
        for path in sorted((output / split).iterdir())
        if path.suffix == ".png" and path.name.startswith(_OUTPUT_PREFIXES)
    ]
    # The old manifest goes first: a run that stops half-way leaves no manifest describing images it removed.
    (output / "manifest.json").unlink(missing_ok=True)
    for path in stale:
        path.unlink()
    if stale:
        logger.info("removed %d images of an earlier run from %s", len(stale), output)


def prepare(
    output: Path,
    *,
    debian_root: Path | None = Path("/"),
    include_gray: bool = False,
    max_side: int = 1024,
    dead_leaves_count: int = 0,
    dead_leaves_size: int = 512,
    seed: int = 0,
    photos: tuple[Photo, ...] = PHOTOS,
) -> dict:
    """Write ``train/``, ``heldout/`` and ``manifest.json`` under ``output``; returns the manifest.

    ``debian_root`` is the file-system root the Debian packages are installed under (None: skip them);
    ``dead_leaves_count`` images of ``dead_leaves_size``\\ :sup:`2` go to ``train/`` with seeds ``[seed, i]``.
    """
    from tqdm.auto import tqdm

    if max_side < 16:
        raise ValueError(f"--max_side must be >= 16, got {max_side}")
    if dead_leaves_count < 0 or (dead_leaves_count and dead_leaves_size < 16):  # checked before anything is removed
        raise ValueError(f"--dead_leaves must be >= 0 and --dead_leaves_size >= 16, got {dead_leaves_count} and "
                         f"{dead_leaves_size}")
    _remove_stale_outputs(output)
    for split in ("train", "heldout"):
        (output / split).mkdir(parents=True, exist_ok=True)
    files: dict[str, dict] = {}
    missing_by_package: dict[str, list[str]] = {}
    unreadable: list[dict] = []
    for photo in photos:
        if photo.gray and not include_gray:
            continue
        path = source_file(photo, debian_root)
        if path is None:
            missing_by_package.setdefault(photo.package, []).append(photo.path)
            continue
        try:
            image, (original_height, original_width) = load_rgb(path, max_side)
        except (OSError, ValueError, SyntaxError) as error:  # a damaged installed file: skipped and reported
            logger.warning("%s: cannot read %s (%s); skipped", photo.package, path, error)
            unreadable.append({"package": photo.package, "path": photo.path, "error": str(error)})
            continue
        split = "heldout" if photo.heldout else "train"
        relative = f"{split}/{photo.origin}-{photo.name}.png"
        Image.fromarray(image).save(output / relative)
        files[relative] = {
            "kind": "photo", "split": split, "origin": photo.origin, "name": photo.name,
            "package": photo.package, "original_path": photo.path, "licence": photo.licence,
            "author": photo.author, "everyday": photo.everyday, "height": int(image.shape[0]),
            "width": int(image.shape[1]), "original_height": original_height, "original_width": original_width,
        }
    skipped = []
    for package, paths in missing_by_package.items():
        if package in _PIP_PACKAGES:
            hint = f"pip install {package}"
        else:
            hint = "Debian packages disabled" if debian_root is None else f"sudo apt-get install {package}"
        wanted = sum(1 for p in photos if p.package == package and (include_gray or not p.gray))
        logger.info("%s: %d of %d photos not found, skipped (%s)", package, len(paths), wanted, hint)
        skipped.append({"package": package, "paths": paths, "hint": hint})

    for index in tqdm(range(dead_leaves_count), desc="dead leaves", disable=dead_leaves_count < 20):
        image = dead_leaves(dead_leaves_size, np.random.default_rng([seed, index]))
        relative = f"train/deadleaves-{index:04d}.png"
        Image.fromarray(image).save(output / relative)
        files[relative] = {
            "kind": "dead_leaves", "split": "train", "seed": [seed, index],
            "height": dead_leaves_size, "width": dead_leaves_size,
        }

    def count(split: str, kind: str, everyday: bool | None = None) -> int:
        return sum(1 for e in files.values() if e["split"] == split and e["kind"] == kind
                   and (everyday is None or e.get("everyday") == everyday))

    manifest = {
        "counts": {
            "train_photos": count("train", "photo"),
            "train_dead_leaves": count("train", "dead_leaves"),
            "heldout_photos": count("heldout", "photo"),
            "heldout_everyday_photos": count("heldout", "photo", everyday=True),
        },
        "max_side": max_side,
        "dead_leaves": {
            "generator": "training.dead_leaves.dead_leaves (default parameters)",
            "count": dead_leaves_count, "size": dead_leaves_size, "seed": seed,
        },
        "files": files,
        "skipped": skipped,
        "unreadable": unreadable,
        "excluded": [{"package": p, "path": path, "reason": r} for p, path, r in EXCLUDED],
    }
    text = json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    write_text_atomic(output / "manifest.json", text)  # last, and whole: its presence means the folder is complete
    return manifest


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, required=True, help="folder to write train/ and heldout/ into")
    parser.add_argument(
        "--debian_root", "--debian-root", type=Path, default=Path("/"),
        help="root the Debian wallpaper packages are installed under (default %(default)s); absent ones are skipped",
    )
    parser.add_argument("--no_debian", "--no-debian", "--no-wallpapers", action="store_true",
                        help="skip the Debian wallpaper packages")
    parser.add_argument("--include_gray", "--include-gray", action="store_true",
                        help="add skimage's gray photos (as RGB) to train/")
    parser.add_argument("--max_side", "--max-side", type=int, default=1024,
                        help="downscale photos so the long side is at most this (default %(default)s)")
    parser.add_argument("--dead_leaves", "--dead-leaves", type=int, default=200,
                        help="number of dead-leaves images to write into train/ (default %(default)s; 0: none)")
    parser.add_argument("--dead_leaves_size", "--dead-leaves-size", type=int, default=512,
                        help="side of the square dead-leaves images (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the dead-leaves images (default 0)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    manifest = prepare(
        args.output,
        debian_root=None if args.no_debian else args.debian_root,
        include_gray=args.include_gray,
        max_side=args.max_side,
        dead_leaves_count=args.dead_leaves,
        dead_leaves_size=args.dead_leaves_size,
        seed=args.seed,
    )
    counts = manifest["counts"]
    logger.info(
        "wrote %d train photos + %d dead-leaves images and %d held-out photos (%d everyday) to %s",
        counts["train_photos"], counts["train_dead_leaves"], counts["heldout_photos"],
        counts["heldout_everyday_photos"], args.output,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
