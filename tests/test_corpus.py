"""Embedded corpus: photo table and fixed split, prepare() with and without the optional sources."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from PIL import Image

from data_helpers import textured_image
from training import data as D
from training import prepare_embedded_corpus as C

# ------------------------------------------------------------------------------------------------------ photo table


def test_photo_table_split_and_licences():
    names = [(p.origin, p.name) for p in C.PHOTOS]
    assert len(set(names)) == len(names)
    heldout = [p for p in C.PHOTOS if p.heldout]
    assert {("skimage", "hubble_deep_field"), ("skimage", "stereo_motorcycle")} <= {(p.origin, p.name) for p in heldout}
    assert sum(p.everyday for p in heldout) >= 6
    assert not any(p.gray for p in heldout)
    excluded_paths = {path for _, path, _ in C.EXCLUDED}
    for photo in C.PHOTOS:
        assert photo.licence and photo.package and photo.path not in excluded_paths
        if photo.package not in ("scikit-image", "scikit-learn", "matplotlib"):
            assert photo.path.startswith("/usr/share/") and "/usr/share/doc/" in photo.licence


# ------------------------------------------------------------------------------------------------------ prepare()


def _files_on_disk(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.png"))}


def test_prepare_without_debian_packages(tmp_path, caplog):
    """What CI sees: pip-package photos only, Debian packages skipped with a log line, dead leaves in train/."""
    with caplog.at_level(logging.INFO, logger="prepare_embedded_corpus"):
        manifest = C.prepare(tmp_path / "a", debian_root=None, max_side=48, dead_leaves_count=3,
                             dead_leaves_size=32)
    assert "lomiri-wallpapers-16.04" in caplog.text and "Debian packages disabled" in caplog.text
    files = manifest["files"]
    on_disk = _files_on_disk(tmp_path / "a")
    assert set(on_disk) == set(files)
    assert json.loads((tmp_path / "a/manifest.json").read_text(encoding="utf-8")) == manifest
    # the held-out photos of earlier corpora keep their names; dead leaves never go to heldout/
    assert {"heldout/skimage-hubble_deep_field.png", "heldout/skimage-stereo_motorcycle.png"} <= set(files)
    assert [f for f, e in files.items() if e["kind"] == "dead_leaves"] == [
        "train/deadleaves-0000.png", "train/deadleaves-0001.png", "train/deadleaves-0002.png"
    ]
    for relative, entry in files.items():
        assert relative.startswith(entry["split"] + "/")
        image, converted = D.decode_image(str(tmp_path / "a" / relative))
        assert not converted and (entry["height"], entry["width"]) == image.shape[:2]
        if entry["kind"] == "photo":
            assert max(image.shape[:2]) <= 48 and entry["licence"] and entry["original_path"]
    counts = manifest["counts"]
    assert counts["train_dead_leaves"] == 3 and counts["train_photos"] >= 4 and counts["heldout_photos"] >= 2
    assert {e["package"] for e in manifest["excluded"]} >= {"ukui-wallpapers", "gnome-backgrounds"}
    # deterministic: the same call gives the same bytes
    again = C.prepare(tmp_path / "b", debian_root=None, max_side=48, dead_leaves_count=3, dead_leaves_size=32)
    assert again == manifest and _files_on_disk(tmp_path / "b") == on_disk
    # and it trains all five tasks
    stream = D.build_stream("5-task", {"clean": tmp_path / "a/train"}, synthesize_missing=True,
                            patch_size=16, shards_per_rank=1, repeats={"noise": 1, "synthetic": 1})
    assert {e["task"] for e in stream} == {0, 1, 2, 3, 4}


def test_prepare_reads_debian_files_with_fixed_split_and_licence(tmp_path, caplog):
    root = tmp_path / "root"
    table = tuple(p for p in C.PHOTOS if p.name in ("Bridge", "friends", "EveningGlow", "Path"))
    portrait = textured_image(1, 90, 60)
    for photo in table:
        path = root / photo.path.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        if photo.name == "friends":  # a landscape JPEG whose EXIF says "rotate 90 degrees clockwise"
            exif = Image.Exif()
            exif[0x0112] = 6
            Image.fromarray(portrait.transpose(1, 0, 2)[:, ::-1]).save(path, quality=95, exif=exif)
        elif photo.name != "Path":  # Path stays missing
            Image.fromarray(textured_image(2, 40, 80)).save(path, quality=95)
    damaged = next(p for p in C.PHOTOS if p.name not in ("Bridge", "friends", "EveningGlow", "Path")
                   and p.package == table[0].package)
    (root / damaged.path.lstrip("/")).write_bytes(b"\xff\xd8 a damaged JPEG")  # skipped and reported, not fatal
    with caplog.at_level(logging.INFO, logger="prepare_embedded_corpus"):
        manifest = C.prepare(tmp_path / "out", debian_root=root, max_side=64, photos=(*table, damaged))
    assert [entry["path"] for entry in manifest["unreadable"]] == [damaged.path]
    assert json.loads((tmp_path / "out" / "manifest.json").read_text(encoding="utf-8")) == manifest
    files = manifest["files"]
    assert set(files) == {
        "train/lomiri-Bridge.png", "heldout/lomiri-friends.png", "heldout/plasma-EveningGlow.png"
    }
    assert "plasma-workspace-wallpapers: 1 of 2 photos not found" in caplog.text
    bridge = files["train/lomiri-Bridge.png"]
    assert bridge["package"] == "lomiri-wallpapers-16.04"
    assert bridge["original_path"] == "/usr/share/backgrounds/Bridge_by_Sander_Klootwijk.jpg"
    assert bridge["licence"].startswith("CC-BY-SA-4.0") and bridge["author"] == "Sander Klootwijk"
    assert (bridge["height"], bridge["width"], bridge["original_width"]) == (32, 64, 80)  # long side 80 -> 64
    friends, _ = D.decode_image(str(tmp_path / "out/heldout/lomiri-friends.png"))
    assert friends.shape[:2] == (64, 43)  # EXIF orientation applied before downscaling
    assert "GPL-2+" in files["heldout/plasma-EveningGlow.png"]["licence"]


def test_cli_skips_missing_sources(tmp_path):
    assert C.main(["--output", str(tmp_path), "--debian_root", str(tmp_path / "nothing"), "--max_side", "32",
                   "--dead_leaves", "1", "--dead_leaves_size", "24"]) == 0
    manifest = json.loads((tmp_path / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["counts"]["train_dead_leaves"] == 1 and manifest["dead_leaves"]["size"] == 24
    assert any(s["hint"] == "sudo apt-get install plasma-workspace-wallpapers" for s in manifest["skipped"])


def test_rerun_removes_images_of_an_earlier_run(tmp_path):
    C.prepare(tmp_path, debian_root=None, max_side=32, dead_leaves_count=2, dead_leaves_size=16)
    stale = tmp_path / "train/ukui-calla.png"  # an earlier version put wallpapers art in train/
    stale.write_bytes((tmp_path / "train/deadleaves-0000.png").read_bytes())
    (tmp_path / "train/skimage-hubble_deep_field.png").write_bytes(stale.read_bytes())  # now held out
    mine = tmp_path / "train/my-own.png"
    mine.write_bytes(stale.read_bytes())
    manifest = C.prepare(tmp_path, debian_root=None, max_side=32, dead_leaves_count=1, dead_leaves_size=16)
    written = {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.png")}
    assert written == set(manifest["files"]) | {"train/my-own.png"}
    assert "train/deadleaves-0001.png" not in written


def test_a_dead_leaves_size_no_run_can_use_is_refused_before_anything_is_removed(tmp_path):
    C.prepare(tmp_path, debian_root=None, max_side=32, dead_leaves_count=1, dead_leaves_size=16)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(ValueError, match="--dead_leaves_size >= 16, got 1 and 4"):
        C.prepare(tmp_path, debian_root=None, max_side=32, dead_leaves_count=1, dead_leaves_size=4)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
