"""The Gradio Space (space/app.py), tested through the real server on 127.0.0.1.

`gradio_client` checks that `/restore` returns exactly what `restore()` returns, that bad inputs get a message
and the server keeps serving, the model picker and its cache, and 50 concurrent requests. A headless Chromium
driven by Playwright uploads, restores and takes a screenshot (skipped only without chromium or playwright).
Tiny models in temp folders; every server and browser is closed at the end of its module.
"""

from __future__ import annotations

import configparser
import importlib.util
import os
import re
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

gr = pytest.importorskip("gradio")
pytest.importorskip("gradio_client")
import httpx  # noqa: E402  (a gradio_client dependency)
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from conftest import smooth_image, tiny_model  # noqa: E402
from launch_helpers import free_port  # noqa: E402
from modeling.image_processing_restoration import RestorationImageProcessor, load_image_file, write_png  # noqa: E402
from modeling.inference import DEFAULT_AUTO_MODE, estimate_degradation_weights, load_model, restore  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
SPACE_DIR = REPO_ROOT / "space"
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
#: Limits of the test server: small enough that over-limit images stay cheap to make.
MAX_MEGAPIXELS = 0.02
MAX_FILE_MB = 0.25
TILE = 64


def load_space_app():
    """Import space/app.py as a module (it is a script folder, not a package)."""
    name = "prompt_restoration_space_app"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, SPACE_DIR / "app.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Request handlers run in threads of this process; on a shared 2-core machine two torch threads each thrash."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def app():
    return load_space_app()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("space-models")
    folders = {}
    for model_type in ("pip", "restormer", "promptir"):
        folders[model_type] = root / model_type
        tiny_model(model_type).save_pretrained(folders[model_type])
    folders["pip-tiled"] = root / "pip-tiled"  # a model whose config names its own tile
    tiny_model("pip", inference_tile=16).save_pretrained(folders["pip-tiled"])
    foreign = root / "not-ours"
    foreign.mkdir()
    (foreign / "config.json").write_text('{"model_type": "swin2sr"}')
    folders["not-ours"] = foreign
    return folders


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("space-images")
    paths = {name: root / f"{name}.png" for name in ("good", "good2", "tiled", "rgba", "tiny", "big_mp", "big_mb", "fake")}
    Image.fromarray(smooth_image(48, 64, seed=1)).save(paths["good"])
    Image.fromarray(smooth_image(44, 60, seed=2)).save(paths["good2"])  # not a multiple of 8
    Image.fromarray(smooth_image(96, 120, seed=3)).save(paths["tiled"])  # sides above TILE: tiled
    alpha = np.tile(np.linspace(0, 255, 56).astype(np.uint8), (40, 1))
    Image.fromarray(np.dstack([smooth_image(40, 56, seed=4), alpha]), "RGBA").save(paths["rgba"])
    paths["png16"] = root / "png16.png"
    write_png((smooth_image(32, 40, seed=5).astype(np.uint16) * 257 + 3), paths["png16"])  # 16-bit RGB PNG
    Image.fromarray(np.full((1, 1, 3), 128, np.uint8)).save(paths["tiny"])
    Image.fromarray(np.zeros((160, 160, 3), np.uint8)).save(paths["big_mp"])  # 0.026 MP, a few hundred bytes
    noise = np.random.default_rng(0).integers(0, 256, (330, 330, 3), dtype=np.uint8)
    Image.fromarray(noise).save(paths["big_mb"])  # ~0.3 MB of incompressible pixels
    assert paths["big_mb"].stat().st_size > MAX_FILE_MB * 2**20
    paths["fake"].write_text("this is not an image, whatever its name says")
    paths["text"] = root / "notes.txt"
    paths["text"].write_text("not an image")
    examples = root / "examples"
    examples.mkdir()
    Image.fromarray(smooth_image(40, 56, seed=6)).save(examples / "noisy_example.png")
    Image.fromarray(smooth_image(40, 56, seed=7)).save(examples / "rainy_example.png")
    paths["examples"] = examples
    return paths


@pytest.fixture(scope="module")
def server(app, checkpoints, images):
    """The Space on 127.0.0.1 (free port) with the tiny PIP as its default model; closed after the module."""
    settings = app.SpaceSettings(
        model=str(checkpoints["pip"]),
        examples_dir=images["examples"],
        max_megapixels=MAX_MEGAPIXELS,
        max_file_mb=MAX_FILE_MB,
        tile=TILE,
        queue_size=64,
        model_cache_size=2,
        device="cpu",
        output_dir=images["examples"].parent / "outputs",
    )
    demo, space = app.build_demo(settings)
    demo.launch(
        server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True, share=False,
        **space.launch_kwargs(),
    )
    try:
        yield demo, space, demo.local_url
    finally:
        demo.close()


def make_client(url: str, **kwargs) -> Client:
    # Uploads wait for the event loop, which a busy CI machine can hold up longer than httpx's default 5 s.
    return Client(url, verbose=False, analytics_enabled=False, httpx_kwargs={"timeout": 120}, **kwargs)


@pytest.fixture(scope="module")
def client(server):
    return make_client(server[2])


def call(client, image, model="", degradation="auto", auto_mode=DEFAULT_AUTO_MODE):
    """`/restore` → ((before, after), png, chart update, status)."""
    return client.predict(handle_file(str(image)), str(model), degradation, auto_mode, api_name="/restore")


def png_array(path) -> np.ndarray:
    loaded = load_image_file(path)  # 16-bit colour PNGs come back as uint16 arrays
    return np.asarray(loaded)


def assert_serving(client, images, checkpoints):
    """A good request after a bad one still succeeds and is right."""
    _, png, _, status = call(client, images["good2"])
    assert status.startswith("Restored 60×44 px")
    np.testing.assert_array_equal(png_array(png), np.asarray(restore(str(images["good2"]), model=str(checkpoints["pip"]))))


# ------------------------------------------------------------------------------------------------ the API
def test_restore_endpoint_returns_what_restore_returns(client, images, checkpoints):
    folder = str(checkpoints["pip"])
    (before, after), png, chart, status = call(client, images["good"])
    expected = np.asarray(restore(str(images["good"]), model=folder))
    assert Image.open(png).format == "PNG" and Image.open(after).format == "PNG"
    np.testing.assert_array_equal(png_array(png), expected)
    np.testing.assert_array_equal(png_array(after), expected)
    np.testing.assert_array_equal(png_array(before), np.asarray(Image.open(images["good"])))
    assert status.startswith("Restored 64×48 px") and "whole image" in status

    # The chart shows the weights restore(degradation="auto") uses.
    model = load_model(folder)
    pixel_values = torch.from_numpy(np.stack(RestorationImageProcessor()(str(images["good"]))["pixel_values"]))
    weights = estimate_degradation_weights(model, pixel_values)[0]
    rows = chart["value"]["data"]
    assert [name for name, _ in rows] == list(model.config.degradation_names)
    np.testing.assert_allclose([value for _, value in rows], weights.numpy(), atol=1e-4)
    assert sorted(value for _, value in rows) == [0, 0, 0, 0, 1]  # the default auto mode: one prompt

    # The same through the demo's other kinds of model (no labels: no chart) and the soft auto mode.
    _, png, chart, _ = call(client, images["good"], model=checkpoints["restormer"])
    np.testing.assert_array_equal(png_array(png), np.asarray(restore(str(images["good"]), model=str(checkpoints["restormer"]))))
    assert chart["visible"] is False
    _, png, _, _ = call(client, images["good"], auto_mode="hard")
    np.testing.assert_array_equal(png_array(png), np.asarray(restore(str(images["good"]), model=folder, auto_mode="hard")))
    _, png, chart, _ = call(client, images["good"], auto_mode="soft")
    np.testing.assert_array_equal(png_array(png), np.asarray(restore(str(images["good"]), model=folder, auto_mode="soft")))
    soft = estimate_degradation_weights(model, pixel_values, auto_mode="soft")[0]
    np.testing.assert_allclose([value for _, value in chart["value"]["data"]], soft.numpy(), atol=1e-4)


def test_explicit_degradation_and_tiles(client, images, checkpoints):
    folder = str(checkpoints["pip"])
    _, png, chart, status = call(client, images["tiled"], degradation="rain")
    passes = []  # the statistics passes restore() runs by default (it stops once they settle)
    expected = restore(str(images["tiled"]), model=folder, tile=TILE, degradation="rain", batch_size=1,
                       statistics_callback=lambda number, change: passes.append(number))
    np.testing.assert_array_equal(png_array(png), np.asarray(expected))
    assert 2 <= len(passes) <= 6
    assert f"tiled ({TILE}×{TILE} tiles) with whole-image statistics ({len(passes)} passes)" in status
    assert dict(chart["value"]["data"]) == {"noise": 0, "rain": 1, "haze": 0, "blur": 0, "low-light": 0}
    # Low light in tiles: restored with whole-image statistics (the default), so no advice to upload less.
    passes = []
    _, png, _, status = call(client, images["tiled"], degradation="low-light")
    expected = restore(str(images["tiled"]), model=folder, tile=TILE, degradation="low-light", batch_size=1,
                       statistics_callback=lambda number, change: passes.append(number))
    np.testing.assert_array_equal(png_array(png), np.asarray(expected))
    assert "from the whole image's brightness" not in status and f"({len(passes)} passes)" in status

    # A model whose config names inference_tile runs on its own tiles, even below SPACE_TILE.
    tiled_folder = str(checkpoints["pip-tiled"])
    _, png, _, status = call(client, images["good"], model=tiled_folder, degradation="rain")
    expected = restore(str(images["good"]), model=tiled_folder, tile=16, degradation="rain", batch_size=1)
    np.testing.assert_array_equal(png_array(png), np.asarray(expected))
    assert "tiled (16×16 tiles)" in status


def test_progress_bar_follows_restore_and_its_tiles(server, client, images):
    """tqdm bars of restore(progress=True) reach the client as progress updates (gr.Progress(track_tqdm=True))."""
    _, space, _ = server
    model = space.get_model(None).model
    forward = model.forward

    wanted = {("tiles", "batch"), ("restoring", "img")}
    seen = set()
    both_seen = threading.Event()

    def slow_forward(*args, **kwargs):
        # Each forward waits until the client has seen both bars, at most 1.5 s (long enough for several progress
        # updates, on any machine): once they have arrived, the remaining tiles need not wait.
        both_seen.wait(1.5)
        return forward(*args, **kwargs)

    model.forward = slow_forward
    try:
        job = client.submit(handle_file(str(images["tiled"])), "", "rain", "soft", api_name="/restore")
        deadline = time.monotonic() + 240
        while not job.done() and time.monotonic() < deadline:
            for unit in job.status().progress_data or []:
                seen.add((unit.desc, unit.unit))
            if wanted <= seen:
                both_seen.set()
            time.sleep(0.01)
        job.result(timeout=60)
    finally:
        del model.forward  # back to the class's forward
    assert ("tiles", "batch") in seen and ("restoring", "img") in seen, f"progress the client saw: {seen}"


BAD_INPUTS = {
    # name: (image key, expected message part); None = served with a warning
    "one-pixel": ("tiny", "needs at least 16 px on each side"),
    "non-image": ("fake", "not an image this demo can read"),
    "text-file": ("text", "not an image this demo can read"),
    "over-megapixels": ("big_mp", f"this demo accepts up to {MAX_MEGAPIXELS:g} megapixels"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_through_the_api_gets_a_message(client, images, checkpoints, case):
    key, message = BAD_INPUTS[case]
    with pytest.raises(AppError, match=re.escape(message)):
        call(client, images[key])
    assert_serving(client, images, checkpoints)


def test_file_over_the_size_limit_is_refused_by_client_and_server(server, client, images, checkpoints):
    with pytest.raises(ValueError, match="exceeds the maximum file size"):
        call(client, images["big_mb"])
    with open(images["big_mb"], "rb") as handle:  # a client that does not check: the server refuses the upload
        response = httpx.post(server[2] + "gradio_api/upload", files={"files": handle}, timeout=60)
    assert response.status_code == 413 and "maximum allowed size" in response.text
    assert_serving(client, images, checkpoints)


def test_rgba_and_16_bit_are_restored_with_a_warning(client, images, checkpoints):
    folder = str(checkpoints["pip"])
    _, png, _, status = call(client, images["rgba"])
    restored = restore(str(images["rgba"]), model=folder)
    assert restored.mode == "RGBA" and "alpha channel" in status
    np.testing.assert_array_equal(png_array(png), np.asarray(restored))

    _, png, _, status = call(client, images["png16"])
    restored = restore(str(images["png16"]), model=folder)
    assert restored.dtype == np.uint16 and "16-bit image" in status
    downloaded = png_array(png)
    assert downloaded.dtype == np.uint16
    np.testing.assert_array_equal(downloaded, restored)
    assert_serving(client, images, checkpoints)


def test_non_browser_formats_get_a_faithful_preview_and_their_notes(client, images, checkpoints, tmp_path):
    """A 16-bit gray TIFF: the slider's "before" image is the picture scaled to 8 bits (Pillow's convert("RGB")
    would clip it to white). A 16-bit colour PPM, which Pillow reads at 8 bits: restored at 8 bits, and the status
    says so. A gray PNG with a transparent colour (tRNS): restored with its alpha, and the status says it is kept."""
    gray16 = (smooth_image(40, 56, seed=8)[..., 0].astype(np.uint16) * 257)
    Image.fromarray(gray16).save(tmp_path / "gray16.tif")
    (before, _), png, _, status = call(client, tmp_path / "gray16.tif")
    np.testing.assert_array_equal(np.asarray(Image.open(before))[..., 0], (gray16 / 257).round().astype(np.uint8))
    assert "16-bit image" in status

    colour16 = smooth_image(40, 56, seed=9).astype(">u2") * 257
    (tmp_path / "colour16.ppm").write_bytes(b"P6\n56 40\n65535\n" + colour16.tobytes())
    _, png, _, status = call(client, tmp_path / "colour16.ppm")
    assert "16-bit colour samples, which are read at 8 bits here" in status
    assert png_array(png).dtype == np.uint8

    keyed = Image.fromarray(smooth_image(40, 56, seed=10)[..., 0])
    keyed.save(tmp_path / "keyed.png", transparency=int(np.asarray(keyed)[0, 0]))
    _, png, _, status = call(client, tmp_path / "keyed.png")
    assert "alpha channel" in status
    assert png_array(png).shape == (40, 56, 4) and png_array(png)[0, 0, 3] == 0
    assert_serving(client, images, checkpoints)


def test_model_picker_errors(client, images, checkpoints, tmp_path):
    with pytest.raises(AppError, match="'swin2sr' model; this Space runs cpl, dppd, pip, promptir, restormer models"):
        call(client, images["good"], model=checkpoints["not-ours"])
    with pytest.raises(AppError, match="does not exist"):
        call(client, images["good"], model=tmp_path / "missing")
    (tmp_path / "photos").mkdir()  # a folder, but no checkpoint (it used to be called "a 'None' model")
    with pytest.raises(AppError, match="has no config.json; is it a saved checkpoint"):
        call(client, images["good"], model=tmp_path / "photos")
    with pytest.raises(AppError, match="does not take degradation labels"):
        call(client, images["good"], model=checkpoints["restormer"], degradation="rain")
    with pytest.raises(AppError, match="snowstorm is not in the list of choices"):  # gradio checks the choices
        call(client, images["good"], degradation="snowstorm")
    damaged = tmp_path / "damaged"  # a processor config that is JSON but not an object: a message, not a crash
    shutil.copytree(checkpoints["pip"], damaged)
    (damaged / "preprocessor_config.json").write_text("[1]")
    with pytest.raises(AppError, match="must hold a JSON object"):
        call(client, images["good"], model=damaged)
    assert_serving(client, images, checkpoints)


def test_model_picker_offers_each_models_degradations(server, checkpoints):
    _, space, _ = server
    pip = space.model_changed(str(checkpoints["pip"]))
    assert [value for _, value in pip.choices] == ["auto", "noise", "rain", "haze", "blur", "low-light"]
    restormer = space.model_changed(str(checkpoints["restormer"]))
    assert [value for _, value in restormer.choices] == ["auto"] and restormer.interactive is False


def test_model_cache_loads_once_and_is_bounded(app, checkpoints):
    cache = app.ModelCache(capacity=2, device=torch.device("cpu"))
    keys = [str(checkpoints[name]) for name in ("pip", "restormer", "promptir")]
    threads = [threading.Thread(target=cache.get, args=(keys[0],)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert cache.loads == 1
    assert cache.get(keys[0]) is cache.get(keys[0]) and cache.loads == 1
    cache.get(keys[1])
    cache.get(keys[0])  # most recently used: the restormer is evicted next
    cache.get(keys[2])
    assert cache.keys() == [keys[0], keys[2]] and cache.loads == 3
    with pytest.raises(gr.Error, match="this Space runs"):
        cache.get(str(checkpoints["not-ours"]))
    assert cache.keys() == [keys[0], keys[2]] and not cache._loading  # a failed load leaves nothing behind


def test_output_folders_are_pruned_after_their_time(app, tmp_path):
    outputs = app.OutputFolder(tmp_path, ttl_s=60)
    old, recent = outputs.new(), outputs.new()
    mine = tmp_path / "operator-data"  # an operator's own folder in SPACE_OUTPUT_DIR: never the Space's to delete
    (mine / "sub").mkdir(parents=True)
    (mine / "sub" / "important.txt").write_text("keep")
    for folder in (old, mine):
        os.utime(folder, (time.time() - 120, time.time() - 120))
    outputs._last_prune = 0.0  # pruning runs at most once a minute
    newest = outputs.new()
    assert not old.exists() and recent.is_dir() and newest.is_dir()
    assert (mine / "sub" / "important.txt").read_text() == "keep"
    # An output folder that cannot be one stops the Space when it starts, not on every request.
    (tmp_path / "a-file").write_text("")
    with pytest.raises(ValueError, match="cannot hold the restored images"):
        app.OutputFolder(tmp_path / "a-file", ttl_s=60).check()


def test_fifty_concurrent_requests_all_succeed(server, images, checkpoints):
    client = make_client(server[2], max_workers=50)
    expected = np.asarray(restore(str(images["good"]), model=str(checkpoints["pip"])))
    started = time.monotonic()
    jobs = [client.submit(handle_file(str(images["good"])), "", "auto", DEFAULT_AUTO_MODE, api_name="/restore") for _ in range(50)]
    results = [job.result(timeout=600) for job in jobs]
    elapsed = time.monotonic() - started
    assert len(results) == 50 and elapsed < 600
    for _, png, _, status in results:
        assert status.startswith("Restored 64×48 px")
        np.testing.assert_array_equal(png_array(png), expected)


def test_shipped_demo_weights_and_examples_are_the_default(app, checkpoints, tmp_path, monkeypatch):
    demo_dir = tmp_path / "demo"
    shutil.copytree(checkpoints["pip"], demo_dir)
    (demo_dir / "examples").mkdir()
    Image.fromarray(smooth_image(24, 24)).save(demo_dir / "examples" / "hazy.png")
    monkeypatch.setattr(app, "DEMO_CHECKPOINT_DIR", demo_dir)
    space = app.RestorationSpace(app.SpaceSettings(device="cpu", preload=False))
    assert space.get_model(None).source == str(demo_dir) and space.get_model("demo") is space.get_model("")
    assert space.example_paths() == [str(demo_dir / "examples" / "hazy.png")]

    monkeypatch.setattr(app, "DEMO_CHECKPOINT_DIR", tmp_path / "not-installed")
    space = app.RestorationSpace(app.SpaceSettings(device="cpu"))
    with pytest.raises(gr.Error, match="demo weights are not installed"):
        space.get_model(None)
    assert isinstance(space.build(), gr.Blocks) and space.example_paths() == []  # the Space still starts


# ------------------------------------------------------------------------------------------------ the browser
def test_browser_upload_restore_and_bad_inputs(server, images, tmp_path):
    if CHROMIUM is None:
        pytest.skip("Debian chromium is not installed (apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    url = server[2]
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            str(tmp_path / "user-data"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 1000},
        )
        try:
            page = browser.new_page()
            page.set_default_timeout(120_000)
            page.goto(url, wait_until="networkidle")
            upload = page.locator("#degraded-image input[type=file]")
            restore_button = page.get_by_role("button", name="Restore")
            status = page.locator("#status")

            def restored(text: str) -> None:
                page.wait_for_function(
                    "t => document.querySelector('#status').innerText.includes(t)", arg=text, timeout=120_000
                )

            def upload_image(key: str) -> None:
                upload.set_input_files(str(images[key]))
                # Restore reads the component's value: wait until the upload is in it.
                page.locator(f"#degraded-image img[src*='{images[key].name}']").first.wait_for(state="attached")

            def toast(text: str) -> None:
                page.locator(".toast-body", has_text=text).first.wait_for(state="visible", timeout=120_000)

            # Pick the first example from the gallery, restore it.
            page.locator("button.gallery-item").first.click()
            page.locator("#degraded-image img[src*='noisy_example']").first.wait_for(state="attached")
            restore_button.click()
            restored("Restored 56×40 px")

            # Upload, restore, see the slider with both images.
            upload_image("good")
            restore_button.click()
            restored("Restored 64×48 px")
            slider_images = page.locator("#before-after img")
            page.wait_for_function(
                "() => [...document.querySelectorAll('#before-after img')].filter(i => i.complete && i.naturalWidth > 0).length >= 2"
            )
            page.wait_for_timeout(500)
            screenshot = tmp_path / "space.png"
            page.screenshot(path=str(screenshot), full_page=True)
            assert page.locator("#before-after").is_visible() and slider_images.count() >= 2
            assert all(slider_images.nth(i).is_visible() for i in range(2))
            assert page.locator("#download a[href*='good_restored.png']").first.is_visible()
            assert Image.open(screenshot).size[0] >= 1000

            # Bad inputs: each gets a visible message, then the next request works.
            upload.set_input_files(str(images["text"]))  # refused by the browser (not image/*)
            toast("Invalid file type")
            upload.set_input_files(str(images["big_mb"]))  # refused by the browser (max_file_size)
            toast("exceed the maximum allowed size")
            for key, message in (("fake", "not an image this demo can read"), ("tiny", "needs at least 16 px"),
                                 ("big_mp", "this demo accepts up to")):
                upload_image(key)
                restore_button.click()
                toast(message)
            upload_image("rgba")
            restore_button.click()
            toast("alpha channel")
            restored("Restored 56×40 px")
            upload_image("png16")
            restore_button.click()
            toast("16-bit image")
            restored("Restored 40×32 px")
            upload_image("good2")
            restore_button.click()
            restored("Restored 60×44 px")
            assert "Restored 60×44 px" in status.inner_text()
        except Exception:
            page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)  # for whoever debugs it
            raise
        finally:
            browser.close()


# ------------------------------------------------------------------------------------------------ packaging
def front_matter(path: Path) -> dict:
    import yaml

    text = path.read_text(encoding="utf-8")
    assert text.startswith("---\n"), f"{path} must start with the Spaces YAML header"
    return yaml.safe_load(text.split("---\n", 2)[1])


def test_space_readme_header_matches_the_installed_gradio():
    header = front_matter(SPACE_DIR / "README.md")
    assert header["sdk"] == "gradio" and str(header["sdk_version"]) == gr.__version__
    assert header["app_file"] == "app.py" and (SPACE_DIR / header["app_file"]).is_file()
    assert header["license"] == "apache-2.0"
    assert isinstance(header["models"], list) and header["models"]


def test_space_requirements_cover_the_package_dependencies():
    def names(lines):
        return {re.split(r"[<>=!~\[ ;]", line.strip(), maxsplit=1)[0].lower().replace("_", "-")
                for line in lines if line.strip() and not line.strip().startswith("#")}

    parser = configparser.ConfigParser()
    parser.read(REPO_ROOT / "setup.cfg")
    install_requires = names(parser["options"]["install_requires"].splitlines())
    requirements = names((SPACE_DIR / "requirements.txt").read_text().splitlines())
    assert install_requires <= requirements, f"missing on the Space: {install_requires - requirements}"
    assert "gradio" not in requirements  # the Space's sdk_version installs gradio


def test_build_space_folder_is_self_contained(tmp_path):
    spec = importlib.util.spec_from_file_location("prompt_restoration_build_space", SPACE_DIR / "build_space.py")
    build_space = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build_space)
    folder = build_space.build(tmp_path / "space")
    for name in ("app.py", "README.md", "requirements.txt", "modeling/__init__.py", "modeling/inference.py"):
        assert (folder / name).is_file(), name
    assert not list(folder.rglob("__pycache__"))
    with pytest.raises(ValueError, match="separate folder"):
        build_space.build(SPACE_DIR / "build")


def test_settings_from_environment(app):
    settings = app.SpaceSettings.from_env(
        {"SPACE_MODEL": "org/model", "SPACE_MODELS": "a/b, c/d", "SPACE_MAX_MEGAPIXELS": "2.5", "SPACE_TILE": "256",
         "SPACE_CONCURRENCY": "3", "SPACE_EXAMPLES_DIR": "/nowhere", "SPACE_OUTPUT_DIR": "/srv/out"},
        queue_size=8,
    )
    assert settings.model == "org/model" and settings.extra_models == ("a/b", "c/d")
    assert settings.max_pixels == 2_500_000 and settings.tile == 256 and settings.concurrency == 3
    assert settings.queue_size == 8 and settings.examples_dir == Path("/nowhere")
    assert settings.output_dir == Path("/srv/out")
    assert app.SpaceSettings.from_env({}).model == app.DEMO_MODEL
    # Every other variable is read too, and unset ones give the defaults space/README.md states.
    tuned = app.SpaceSettings.from_env(
        {"SPACE_MAX_FILE_MB": "7.5", "SPACE_QUEUE_SIZE": "5", "SPACE_MODEL_CACHE_SIZE": "3", "SPACE_DEVICE": " cpu ",
         "SPACE_DTYPE": "fp32", "SPACE_STATISTICS_PASSES": "2"})
    assert (tuned.max_file_mb, tuned.queue_size, tuned.model_cache_size) == (7.5, 5, 3)
    assert (tuned.device, tuned.dtype, tuned.statistics_passes) == ("cpu", "fp32", 2)
    defaults = app.SpaceSettings.from_env({})
    assert (defaults.max_megapixels, defaults.max_file_mb, defaults.tile, defaults.queue_size) == (4, 20, 1024, 64)
    assert (defaults.model_cache_size, defaults.concurrency, defaults.device, defaults.dtype) == (2, None, None, None)
    assert app.SpaceSettings.from_env({}).statistics_passes is None  # restore()'s default
    assert app.SpaceSettings.from_env({"SPACE_STATISTICS_PASSES": "0"}).statistics_passes == 0
    assert app.SpaceSettings.from_env({}).statistics_tolerance is None
    assert app.SpaceSettings.from_env({"SPACE_STATISTICS_TOLERANCE": "0"}).statistics_tolerance == 0
    assert app.SpaceSettings.from_env({"SPACE_STATISTICS_TOLERANCE": "0.05"}).statistics_tolerance == 0.05
    # The CPU fast path: library default unless switched; a typo is an error, not silently "on".
    assert app.SpaceSettings.from_env({}).channels_last is None
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    default, off = app.SpaceSettings.from_env({}), app.SpaceSettings.from_env({"SPACE_REUSE_FREED_MEMORY": "0"})
    assert (default.reuses_freed_memory(cpu), default.reuses_freed_memory(gpu)) == (True, False)
    assert (off.reuses_freed_memory(cpu), off.reuses_freed_memory(gpu)) == (False, False)
    assert app.SpaceSettings.from_env({"SPACE_REUSE_FREED_MEMORY": "1"}).reuses_freed_memory(gpu) is True
    assert app.SpaceSettings.from_env({"SPACE_CHANNELS_LAST": "0"}).channels_last is False
    assert app.SpaceSettings.from_env({"SPACE_CHANNELS_LAST": " Yes"}).channels_last is True
    with pytest.raises(ValueError, match="SPACE_CHANNELS_LAST"):
        app.SpaceSettings.from_env({"SPACE_CHANNELS_LAST": "of"})
    # Numbers and the dtype are checked when the Space starts, naming the variable (not on every request).
    for name, value in (("SPACE_MAX_MEGAPIXELS", "-1"), ("SPACE_MAX_MEGAPIXELS", "nan"), ("SPACE_MAX_FILE_MB", "inf"),
                        ("SPACE_MAX_FILE_MB", "abc"), ("SPACE_TILE", "-1"), ("SPACE_TILE", "4"),
                        ("SPACE_QUEUE_SIZE", "-5"), ("SPACE_CONCURRENCY", "0"), ("SPACE_MODEL_CACHE_SIZE", "x"),
                        ("SPACE_DTYPE", "fp8"), ("SPACE_STATISTICS_PASSES", "-1"),
                        ("SPACE_STATISTICS_TOLERANCE", "-0.1"), ("SPACE_STATISTICS_TOLERANCE", "nan")):
        with pytest.raises(ValueError, match=name):
            app.SpaceSettings.from_env({name: value})


def test_status_gives_the_size_after_exif_rotation(client, checkpoints, tmp_path):
    """A JPEG stored 64×48 with EXIF orientation 6 is a 48×64 photo: the status says the size it was restored at
    (it used to give the header's), and the download has that size."""
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.random.default_rng(7).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(
        tmp_path / "turned.jpg", exif=exif)
    _, png, _, status = call(client, tmp_path / "turned.jpg", model=checkpoints["pip"])
    assert status.startswith("Restored 48×64 px")
    assert png_array(png).shape[:2] == (64, 48)


def test_images_up_to_space_tile_run_whole_whatever_the_librarys_auto_tiling(app, checkpoints, tmp_path, monkeypatch):
    """SPACE_TILE decides alone: an image no side of which exceeds it is restored whole, as the status says, even
    above restore()'s own auto-tiling threshold (4 megapixels; shrunk here so that a tiny image crosses it). With
    SPACE_TILE=4096 a 3000×2000 photo used to be restored in 1024-px tiles with statistics passes while the status
    said "whole image"."""
    import modeling.inference as inference

    monkeypatch.setattr(inference, "AUTO_TILE_ABOVE_PIXELS", 16 * 16)
    monkeypatch.setattr(inference, "AUTO_TILE", 16)
    tiled = []
    monkeypatch.setattr(inference, "tiled_apply", lambda *args, **kwargs: tiled.append(args[2]) or pytest.fail("tiled"))
    Image.fromarray(smooth_image(24, 32, seed=11)).save(tmp_path / "small.png")
    space = app.RestorationSpace(app.SpaceSettings(model=str(checkpoints["pip"]), device="cpu", tile=4096,
                                                   output_dir=tmp_path / "outputs", preload=False))
    _, png, _, status = space.restore_image(str(tmp_path / "small.png"), "", "rain", DEFAULT_AUTO_MODE)
    assert "whole image" in status and not tiled
    expected = restore(str(tmp_path / "small.png"), model=str(checkpoints["pip"]), tile=0, degradation="rain")
    np.testing.assert_array_equal(png_array(png), np.asarray(expected))


def test_before_image_is_turned_like_the_restored_one(app, checkpoints, tmp_path):
    """An EXIF-rotated WebP: browsers (Chromium 150) show a WebP as stored, ignoring its EXIF orientation, so the
    slider's "before" used to lie on its side next to the turned "after". Rotated files get a turned PNG preview."""
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(smooth_image(24, 32, seed=12)).save(tmp_path / "turned.webp", exif=exif, lossless=True)
    space = app.RestorationSpace(app.SpaceSettings(model=str(checkpoints["pip"]), device="cpu",
                                                   output_dir=tmp_path / "outputs", preload=False))
    (before, after), _, _, status = space.restore_image(str(tmp_path / "turned.webp"), "", "rain", DEFAULT_AUTO_MODE)
    assert status.startswith("Restored 24×32 px")
    assert Image.open(after).size == (24, 32)
    assert Image.open(before).format == "PNG" and Image.open(before).size == (24, 32)
    turned = np.asarray(Image.open(tmp_path / "turned.webp").transpose(Image.Transpose.ROTATE_270))
    np.testing.assert_array_equal(np.asarray(Image.open(before)), turned)


def test_plain_tiles_note_advises_a_smaller_upload_only_where_it_would_run_whole(app, checkpoints, tmp_path):
    """SPACE_STATISTICS_PASSES=0 and a low-light label: tiles split what is corrected globally, and the status says so.
    A smaller upload helps where SPACE_TILE tiled the image; a model that names its own tile restores every upload in
    those tiles, so it used to send a 32×24 image's owner off to upload "at most 1024 px a side, restored whole"."""
    Image.fromarray(smooth_image(24, 32, seed=13)).save(tmp_path / "dark.png")

    def status_of(model: str, tile: int) -> str:
        space = app.RestorationSpace(app.SpaceSettings(model=model, device="cpu", tile=tile, statistics_passes=0,
                                                       output_dir=tmp_path / "outputs", preload=False))
        return space.restore_image(str(tmp_path / "dark.png"), "", "low-light", DEFAULT_AUTO_MODE)[3]

    status = status_of(str(checkpoints["pip"]), tile=16)
    assert "tiled (16×16 tiles)" in status and "low-light is corrected from the whole image's brightness" in status
    assert "a smaller upload (at most 16 px a side, restored whole)" in status
    status = status_of(str(checkpoints["pip-tiled"]), tile=1024)
    assert "tiled (16×16 tiles)" in status and "low-light is corrected from the whole image's brightness" in status
    assert "smaller upload" not in status and "this model restores every image in its own 16×16 tiles" in status


def test_build_space_never_replaces_a_folder_it_did_not_build(tmp_path, monkeypatch):
    """--output names the folder to replace: a folder holding the sources (with `modeling` installed elsewhere, as
    a non-editable install puts it) or any other folder with files was deleted whole, the project with it."""
    spec = importlib.util.spec_from_file_location("prompt_restoration_build_space", SPACE_DIR / "build_space.py")
    build_space = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build_space)
    project = tmp_path / "project"
    shutil.copytree(SPACE_DIR, project / "space", ignore=shutil.ignore_patterns("screenshot.png"))
    (project / "notes.txt").write_text("keep")
    monkeypatch.setattr(build_space, "SPACE_DIR", project / "space")
    with pytest.raises(ValueError, match="separate folder"):
        build_space.build(project)
    other = tmp_path / "photos"
    other.mkdir()
    (other / "holiday.jpg").write_bytes(b"keep")
    with pytest.raises(ValueError, match="not a Space folder"):
        build_space.build(other)
    assert (project / "notes.txt").read_text() == "keep" and (project / "space" / "app.py").is_file()
    assert (other / "holiday.jpg").read_bytes() == b"keep"
    with pytest.raises(ValueError, match="is not a folder"):  # it used to end in mkdir's NotADirectoryError
        build_space.build(project / "notes.txt" / "space")
    # A folder it built (or an empty one) is replaced.
    folder = build_space.build(tmp_path / "space")
    (folder / "stale.txt").write_text("from an earlier build")
    assert build_space.build(folder) == folder and not (folder / "stale.txt").exists()
    (tmp_path / "empty").mkdir()
    assert (build_space.build(tmp_path / "empty") / "app.py").is_file()
    # An interrupted build leaves its hidden .partial folder, not a half-built output the next run would refuse.
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(build_space.shutil, "copytree", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build_space.build(tmp_path / "fresh")
    assert not (tmp_path / "fresh").exists() and (tmp_path / ".fresh.partial" / "app.py").is_file()
    monkeypatch.undo()
    assert (build_space.build(tmp_path / "fresh") / "modeling" / "__init__.py").is_file()
    assert not (tmp_path / ".fresh.partial").exists()


def test_damaged_later_frames_are_refused_with_the_usual_message(app, tmp_path):
    """check_upload counts frames, which parses every later frame of a GIF or TIFF: damage there is refused with
    the unreadable-file message, not a bare IndexError / TypeError (which the browser shows as "Error")."""
    from test_image_processing import damaged_multi_frame_files

    for path in damaged_multi_frame_files(tmp_path).values():
        with pytest.raises(gr.Error, match="not an image this demo can read"):
            app.check_upload(str(path), app.SpaceSettings())


def test_build_space_push_failures_are_one_line_and_keep_the_folder(tmp_path, monkeypatch, capsys):
    """`python space/build_space.py --push you/name` (the README's command) ended offline, without a token or on a
    Hub error in huggingface_hub's traceback; it now prints one line naming the reason and the built folder and
    exits with status 1, as `training.model_card push` does."""
    import huggingface_hub

    spec = importlib.util.spec_from_file_location("prompt_restoration_build_space", SPACE_DIR / "build_space.py")
    build_space = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build_space)
    output = tmp_path / "space"

    def push_fails(reason: str) -> str:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            build_space.main(["--output", str(output), "--push", "you/prompt-restoration"])
        assert exit_info.value.code == 1 and (output / "app.py").is_file()
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err and reason in err and str(output) in err, err
        return err

    push_fails("offline mode is on")  # the test suite runs with HF_HUB_OFFLINE=1
    monkeypatch.setattr(huggingface_hub.constants, "is_offline_mode", lambda: False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    push_fails("no Hugging Face token")
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_test")

    def refused(self, *args, **kwargs):
        raise ConnectionError("403 Forbidden:\nyou cannot write to this namespace")

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", refused)
    assert "ConnectionError: 403 Forbidden: you cannot write to this namespace" in push_fails("403 Forbidden")
