"""Screenshot of the Space restoring a shipped example with the shipped weights (the picture in the README).

    python space/take_screenshot.py --output space/screenshot.png      # needs Debian chromium and playwright

Starts the app on 127.0.0.1 (a free port) with its defaults (the shipped demo weights and examples), picks the
first example of the gallery, clicks Restore, waits for the before/after slider and saves a full-page screenshot.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import socket
import sys
from pathlib import Path

SPACE_DIR = Path(__file__).resolve().parent
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=SPACE_DIR / "screenshot.png")
    parser.add_argument("--example", type=int, default=0, help="index of the gallery example to restore")
    args = parser.parse_args()
    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("Debian chromium is needed (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    spec = importlib.util.spec_from_file_location("space_app", SPACE_DIR / "app.py")
    app = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = app  # dataclasses look their module up while the app defines its settings
    spec.loader.exec_module(app)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    demo, space = app.build_demo(app.SpaceSettings(device="cpu"))
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, share=False,
                **space.launch_kwargs())
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.set_default_timeout(180_000)
            page.goto(demo.local_url, wait_until="networkidle")
            page.locator("button.gallery-item").nth(args.example).click()
            page.locator("#degraded-image img").first.wait_for(state="attached")
            page.get_by_role("button", name="Restore").click()
            page.wait_for_function("() => document.querySelector('#status').innerText.includes('Restored')")
            page.wait_for_function(
                "() => [...document.querySelectorAll('#before-after img')]"
                ".filter(i => i.complete && i.naturalWidth > 0).length >= 2"
            )
            page.wait_for_timeout(500)
            page.screenshot(path=str(args.output), full_page=True)
            browser.close()
    finally:
        demo.close()
    print(args.output)


if __name__ == "__main__":
    main()
