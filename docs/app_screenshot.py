"""Regenerate docs/app.png: the web app's page after rectifying a held-out SIR example.

Starts the app (bundled models) on a free loopback port, drives Debian's Chromium with
Playwright (no browser download) and saves a screenshot::

    python docs/app_screenshot.py [--chromium /usr/bin/chromium] [--out docs/app.png]
"""

from __future__ import annotations

import argparse
import socket
import tempfile
import threading
import time
from pathlib import Path

import uvicorn
from PIL import Image
from playwright.sync_api import sync_playwright

from stablemotion.app import create_app
from stablemotion.data.synth import bundled_photo_paths, make_sample

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("app.png"))
    args = parser.parse_args()
    photos = [str(p) for p in bundled_photo_paths("bundled-test")]
    sample = make_sample("rectangling", 7, 2, (192, 256), photos)
    with tempfile.TemporaryDirectory() as tmp:
        upload = Path(tmp) / "stitched.png"
        Image.fromarray(sample.input).save(upload)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(create_app(), host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.05)
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=args.chromium, args=ARGS)
                page = browser.new_page(viewport={"width": 1180, "height": 560}, device_scale_factor=1)
                page.goto(f"http://127.0.0.1:{port}/")
                page.wait_for_selector("#task option[value=sir]", state="attached")
                page.set_input_files("#image", str(upload))
                page.fill("#ensemble", "4")
                page.click("#rectify")
                page.wait_for_function("() => ['result-image', 'flow-image', 'uncertainty-image'].every(id => "
                                       "{ const i = document.getElementById(id); return i.complete && i.naturalWidth > 0; })")
                page.screenshot(path=str(args.out), full_page=True)
                browser.close()
        finally:
            server.should_exit = True
            thread.join(10)
    im = Image.open(args.out)
    im.convert("P", palette=Image.Palette.ADAPTIVE, colors=256).save(args.out, optimize=True)
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KB, {im.size[0]}x{im.size[1]})")


if __name__ == "__main__":
    main()
