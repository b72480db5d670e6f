"""Tiny on-disk corpora for the data tests: every official layout, bad files, a clean photo folder.

Paired images are flat colours that encode the pair: red = pair id * 8 + 8 in both images, green = 200 in the
degraded image and 40 in the clean one. A stream example whose degraded and clean crops have the same red value
was therefore paired correctly, whatever crop and flip/rotation it went through.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

HEIGHT, WIDTH = 40, 48
CDD11_TYPES = (
    "low", "haze", "rain", "snow", "low_haze", "low_rain", "low_snow",
    "haze_rain", "haze_snow", "low_haze_rain", "low_haze_snow",
)


def coded_image(pair_id: int, degraded: bool, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[..., 0] = pair_id * 8 + 8
    image[..., 1] = 200 if degraded else 40
    image[..., 2] = 100
    return image


def textured_image(seed: int, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """Smooth mid-range content (values ~60..190, so synthetic noise is rarely clipped)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    channels = [125 + 55 * np.sin(xx / (5 + c) + seed) * np.cos(yy / (7 + c)) + 5 * rng.standard_normal((height, width))
                for c in range(3)]
    return np.clip(np.rint(np.stack(channels, -1)), 0, 255).astype(np.uint8)


def save(path: Path, image: np.ndarray, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, **kwargs)
    return path


def save_pair(degraded: Path, clean: Path, pair_id: int) -> tuple[str, str]:
    save(degraded, coded_image(pair_id, True))
    save(clean, coded_image(pair_id, False))
    return str(degraded), str(clean)


def make_clean_folder(root: Path, count: int = 6) -> Path:
    for i in range(count):
        save(root / f"photo{i:02d}.png", textured_image(i))
    return root


def make_layouts(root: Path) -> dict[str, tuple[Path, list[tuple[str, str]], list[str]]]:
    """One folder per task with all its official layouts: {task: (root, expected pairs, expected unpaired)}."""
    layouts: dict[str, tuple[Path, list[tuple[str, str]], list[str]]] = {}
    pair_id = 0

    def next_id() -> int:
        nonlocal pair_id
        pair_id += 1
        return pair_id

    # Rain100L train (official list layout) + Rain100L test / Rain13K (input/target, same name)
    task_root = root / "derain_data"
    pairs = [save_pair(task_root / f"Derain/rainy/rain-{k}.png", task_root / f"Derain/gt/norain-{k}.png", next_id())
             for k in (1, 2, 12)]
    pairs += [save_pair(task_root / f"Rain100L/input/{k}.png", task_root / f"Rain100L/target/{k}.png", next_id())
              for k in (1, 2)]
    unpaired = [str(save(task_root / "Derain/rainy/rain-99.png", coded_image(0, True)))]
    layouts["rain"] = (task_root, pairs, unpaired)

    # RESIDE OTS: synthetic/partN/<id>_<A>_<beta>.jpg -> original/<id>.jpg ; SOTS: input/<id>_a_b.jpg -> target/<id>.png
    task_root = root / "dehaze_data"
    pairs = []
    ots = {"0025": ("part1/0025_0.8_0.04", "part2/0025_1_0.2"), "0026": ("part1/0026_0.9_0.1",)}
    for clean_id, hazy_names in ots.items():
        pid = next_id()
        clean = save(task_root / f"Dehaze/original/{clean_id}.jpg", coded_image(pid, False), quality=100)
        for hazy in hazy_names:
            degraded = save(task_root / f"Dehaze/synthetic/{hazy}.jpg", coded_image(pid, True), quality=100)
            pairs.append((str(degraded), str(clean)))
    pid = next_id()
    pairs.append((str(save(task_root / "SOTS/input/0001_0.8_0.2.jpg", coded_image(pid, True), quality=100)),
                  str(save(task_root / "SOTS/target/0001.png", coded_image(pid, False)))))
    layouts["haze"] = (task_root, pairs, [])

    # GoPro per sequence (same frame name in two sequences!) and flattened (PIP/AdaIR)
    task_root = root / "deblur_data"
    gopro = task_root / "GoPro/train"
    pairs = [save_pair(gopro / f"{seq}/blur/000047.png", gopro / f"{seq}/sharp/000047.png", next_id())
             for seq in ("GOPR0372_07_00", "GOPR0374_11_00")]
    pairs.append(save_pair(task_root / "Deblur/blur/GOPR0372_07_00_000047.png",
                           task_root / "Deblur/sharp/GOPR0372_07_00_000047.png", next_id()))
    layouts["blur"] = (task_root, pairs, [])

    # LOL v1 (low/high) and AdaIR (low/gt)
    task_root = root / "enhance_data"
    pairs = [save_pair(task_root / f"our485/low/{k}.png", task_root / f"our485/high/{k}.png", next_id())
             for k in (1, 2)]
    pairs.append(save_pair(task_root / "Enhance/low/7.png", task_root / "Enhance/gt/7.png", next_id()))
    layouts["low-light"] = (task_root, pairs, [])
    return layouts


def make_cdd11(root: Path, names: tuple[str, ...] = ("000001", "000002")) -> dict[str, dict[str, list]]:
    """CDD-11 train and test splits: {split: {type: [(degraded, clean)]}}."""
    expected: dict[str, dict[str, list[tuple[str, str]]]] = {}
    for split in ("train", "test"):
        expected[split] = {}
        for i, name in enumerate(names):
            save(root / split / "clear" / f"{name}.png", coded_image(i, False))
        for t, cdd_type in enumerate(CDD11_TYPES):
            expected[split][cdd_type] = []
            for i, name in enumerate(names):
                degraded = save(root / split / cdd_type / f"{name}.png", coded_image(i, True))
                expected[split][cdd_type].append((str(degraded), str(root / split / "clear" / f"{name}.png")))
    return expected


def png_bytes(image: np.ndarray | Image.Image) -> bytes:
    buffer = io.BytesIO()
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(buffer, format="PNG")
    return buffer.getvalue()


def make_bad_folder(root: Path) -> dict[str, int]:
    """input/target pairs with every kind of bad or odd file; returns the expected per-kind counts."""
    upright = textured_image(3)
    for name in ("ok", "ok2"):  # 10 pairs in all: an even plan needs no padding with 2 shards
        save(root / f"input/{name}.png", upright)
        save(root / f"target/{name}.png", upright)
    (root / "input/corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    save(root / "target/corrupt.png", upright)
    (root / "input/truncated.png").write_bytes(png_bytes(textured_image(4))[:300])
    save(root / "target/truncated.png", upright)
    save(root / "input/gray.png", upright[..., 0])  # mode L
    save(root / "target/gray.png", upright)
    rgba = np.concatenate([upright, np.full((HEIGHT, WIDTH, 1), 128, np.uint8)], axis=2)
    save(root / "input/rgba.png", rgba)
    save(root / "target/rgba.png", rgba)
    save(root / "input/deep.png", np.full((HEIGHT, WIDTH), 128 * 257, dtype=np.uint16))  # 16-bit gray
    save(root / "target/deep.png", upright)
    Image.fromarray(upright).convert("P", palette=Image.Palette.ADAPTIVE).save(root / "input/palette.png")
    save(root / "target/palette.png", upright)
    save(root / "input/mismatch.png", upright)
    save(root / "target/mismatch.png", upright[:32])
    save(root / "input/lonely.png", upright)
    # EXIF orientation 6: stored rotated 90 degrees counter-clockwise, displayed upright (40x48) after transpose
    exif = Image.Exif()
    exif[0x0112] = 6
    save(root / "input/exif.jpg", np.ascontiguousarray(np.rot90(upright, k=1)), exif=exif, quality=95)
    save(root / "target/exif.png", upright)
    return {"corrupt": 2, "size_mismatch": 1, "missing_pair": 1, "converted": 5, "kept": 7}
