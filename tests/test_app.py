"""The web app (:mod:`stablemotion.app`, ``stablemotion serve``): API validation, queueing, and an
end-to-end run in headless Chromium against the bundled SIR model.

The browser test uses Debian's ``chromium`` (``.ci/run`` installs ``chromium chromium-driver``
with apt-get) driven by Playwright with ``executable_path``: no browser is ever downloaded.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import uvicorn
from fastapi.testclient import TestClient
from PIL import Image

from stablemotion.app import create_app
from stablemotion.cli import main
from stablemotion.flow import read_flo, read_flow
from stablemotion.metrics import psnr
from stablemotion.synth import bundled_photo_paths, make_sample

CHROMIUM = os.environ.get("STABLEMOTION_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


# --------------------------------------------------------------------------- helpers
class FakePipe:
    """Stands in for a pipeline: shifts the image by one pixel; ``gate`` (an Event) makes it wait."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.gate, self.started, self.calls = gate, threading.Event(), []

    def __call__(self, image: np.ndarray, mask=None, num_inference_steps=None, ensemble_size=None, **kw):
        self.calls.append({"mask": mask, "steps": num_inference_steps, "ensemble": ensemble_size, **kw})
        self.started.set()
        if self.gate is not None:
            assert self.gate.wait(30), "test gate never opened"
        h, w = image.shape[:2]
        flow = np.zeros((1, h, w, 2), np.float32)
        flow[..., 0] = 1.0
        e = ensemble_size or 1
        return SimpleNamespace(
            image=np.roll(image, 1, axis=1)[None].astype(np.float32) / 255.0,
            flow=flow,
            flow_colored=np.full((1, h, w, 3), 200, np.uint8),
            uncertainty=np.linspace(0, 2, h * w, dtype=np.float32).reshape(1, h, w, 1) if e > 1 else None,
        )


def encode(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt)
    return buf.getvalue()


def decode(data: bytes) -> np.ndarray:
    return np.array(Image.open(io.BytesIO(data)))


@pytest.fixture
def picture() -> np.ndarray:
    """A 48x64 RGB test picture with a black border at the top (so SIR masks can be derived)."""
    rng = np.random.default_rng(0)
    im = rng.integers(30, 255, (48, 64, 3), dtype=np.uint8)
    im[:6] = 0
    return im


@pytest.fixture
def fake() -> FakePipe:
    return FakePipe()


@pytest.fixture
def client(fake: FakePipe, tmp_path: Path) -> Iterator[TestClient]:
    app = create_app({"sir": fake, "rsc": fake}, max_upload_bytes=64 * 1024, max_side=256, max_steps=10,
                     max_ensemble=4, result_root=tmp_path)
    with TestClient(app) as c:
        yield c


def post(client: TestClient, image: bytes | None, mask: bytes | None = None, name: str = "x.png", **fields):
    files = {}
    if image is not None:
        files["image"] = (name, image, "application/octet-stream")
    if mask is not None:
        files["mask"] = ("mask.png", mask, "image/png")
    return client.post("/api/rectify", data={k: str(v) for k, v in fields.items()}, files=files)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def live_server(app) -> Iterator[str]:
    """Run ``app`` with uvicorn on 127.0.0.1 (a free port) in a thread; yields its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def http(url: str, data: bytes | None = None, headers: dict | None = None, timeout: float = 30) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def multipart(fields: dict[str, str], files: dict[str, bytes]) -> tuple[bytes, dict[str, str]]:
    boundary = "----stablemotion-test"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    for k, data in files.items():
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"; filename="{k}.png"\r\n' \
               "Content-Type: image/png\r\n\r\n"
        parts.append(head.encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), {"Content-Type": f"multipart/form-data; boundary={boundary}"}


# --------------------------------------------------------------------------- page and info
def test_page_and_info(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    for element in ('id="image"', 'id="mask"', 'id="task"', 'id="steps"', 'id="ensemble"', 'id="rectify"',
                    'id="result-image"', 'id="flow-image"', 'id="uncertainty-image"', 'id="download-flo"'):
        assert element in page.text
    assert "http://" not in page.text and "https://" not in page.text  # no external resources: works offline
    info = client.get("/api/info").json()
    assert [t["name"] for t in info["tasks"]] == ["sir", "rsc"]
    assert [t["mask"] for t in info["tasks"]] == [True, False]
    assert info["limits"]["max_upload_bytes"] == 64 * 1024 and info["limits"]["max_side"] == 256
    assert info["formats"] == ["PNG", "JPEG", "WebP", "BMP", "TIFF"]
    assert client.get("/api/status").json() == {"busy": False, "pending": 0, "max_queue": 8}


# --------------------------------------------------------------------------- validation
@pytest.mark.parametrize("fmt", ["GIF", "text"])
def test_wrong_type_is_415(client: TestClient, picture: np.ndarray, fake: FakePipe, fmt: str) -> None:
    data = encode(picture, "GIF") if fmt == "GIF" else b"just some text, not a picture\n" * 10
    r = post(client, data, name="x.png")  # the name says png: the content decides
    assert r.status_code == 415
    assert ("GIF images are not accepted" if fmt == "GIF" else "not an image") in r.json()["detail"]
    assert "PNG, JPEG, WebP, BMP, TIFF" in r.json()["detail"]
    assert not fake.calls


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP", "BMP", "TIFF"])
def test_accepted_types(client: TestClient, picture: np.ndarray, fmt: str) -> None:
    r = post(client, encode(picture, fmt), task="rsc")
    assert r.status_code == 200, r.text
    assert (r.json()["width"], r.json()["height"]) == (64, 48)


def test_too_large_file_is_413(client: TestClient, fake: FakePipe) -> None:
    noisy = np.random.default_rng(1).integers(0, 255, (200, 200, 3), dtype=np.uint8)  # ~120 KB as PNG > 64 KB
    r = post(client, encode(noisy))
    assert r.status_code == 413
    assert "larger than the 64 KB limit" in r.json()["detail"]
    assert not fake.calls


def test_too_large_body_refused_before_reading(client: TestClient) -> None:
    r = client.post("/api/rectify", content=b"x" * (200 * 1024), headers={"Content-Type": "multipart/form-data; b=1"})
    assert r.status_code == 413 and "request is larger than" in r.json()["detail"]


def test_too_large_streamed_body_is_413(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked transfer
        for _ in range(40):
            yield b"y" * 8192

    r = client.post("/api/rectify", content=chunks(), headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert r.status_code == 413


def test_too_big_resolution_is_413(client: TestClient, fake: FakePipe) -> None:
    big = np.zeros((20, 300, 3), np.uint8)  # tiny file, 300 px wide > max_side 256
    r = post(client, encode(big))
    assert r.status_code == 413
    assert r.json()["detail"] == "the image is 300x20 px; the limit is 256x256 px (W x H)"
    r = post(client, encode(np.zeros((4, 40, 3), np.uint8)))
    assert r.status_code == 400 and "at least 8 px" in r.json()["detail"]
    assert not fake.calls


def test_corrupt_file_is_400(client: TestClient, picture: np.ndarray) -> None:
    data = encode(picture)
    r = post(client, data[: len(data) // 2])  # valid header, truncated data
    assert r.status_code == 400
    assert "corrupt or truncated" in r.json()["detail"]


def test_grey_and_rgba_refused_with_library_message(client: TestClient, picture: np.ndarray) -> None:
    r = post(client, encode(picture[..., 0]))
    assert r.status_code == 400 and "RGB image (3 channels)" in r.json()["detail"]
    rgba = np.concatenate([picture, np.full((*picture.shape[:2], 1), 255, np.uint8)], axis=-1)
    r = post(client, encode(rgba))
    assert r.status_code == 400 and "RGBA" in r.json()["detail"]


def test_missing_or_empty_image(client: TestClient) -> None:
    r = post(client, None, steps=1)
    assert r.status_code == 400 and "no image uploaded" in r.json()["detail"]
    r = post(client, b"")
    assert r.status_code == 400 and "empty" in r.json()["detail"]


def test_mask_size_mismatch(client: TestClient, picture: np.ndarray, fake: FakePipe) -> None:
    r = post(client, encode(picture), mask=encode(np.full((40, 64), 255, np.uint8)))
    assert r.status_code == 400
    assert r.json()["detail"] == "the mask is 64x40 px but the image is 64x48 px"
    r = post(client, encode(picture), mask=encode(np.zeros((48, 64), np.uint8)))
    assert r.status_code == 400 and "no valid pixel" in r.json()["detail"]
    assert not fake.calls


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"steps": 0}, "steps must be between 1 and 10, got 0"),
        ({"steps": 11}, "steps must be between 1 and 10, got 11"),
        ({"steps": "two"}, "steps must be a whole number, got 'two'"),
        ({"ensemble": 5}, "ensemble size must be between 1 and 4, got 5"),
        ({"ensemble": "1.5"}, "ensemble size must be a whole number"),
        ({"seed": -1}, "seed must be between 0 and"),
        ({"task": "dehaze"}, "unknown task 'dehaze'; this server has sir, rsc"),
    ],
)
def test_bad_parameters(client: TestClient, picture: np.ndarray, fake: FakePipe, fields: dict, message: str) -> None:
    r = post(client, encode(picture), **fields)
    assert r.status_code == 400
    assert message in r.json()["detail"]
    assert not fake.calls


def test_rsc_with_mask_is_refused(client: TestClient, picture: np.ndarray, fake: FakePipe) -> None:
    r = post(client, encode(picture), mask=encode(np.full((48, 64), 255, np.uint8)), task="rsc")
    assert r.status_code == 400
    assert r.json()["detail"] == "the rsc task takes no mask; remove the mask file"
    assert not fake.calls


def test_unknown_result_is_404(client: TestClient) -> None:
    assert client.get("/api/results/0123456789abcdef/rectified.png").status_code == 404
    assert client.get("/api/results/0123456789abcdef/..%2f..%2fetc%2fpasswd").status_code == 404


# --------------------------------------------------------------------------- results
def test_success_json_and_files(client: TestClient, picture: np.ndarray, fake: FakePipe) -> None:
    mask = np.full((48, 64), 255, np.uint8)
    mask[:10] = 0
    r = post(client, encode(picture), mask=encode(mask), task="sir", steps=2, ensemble=3, seed=5)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["task"] == "sir" and (out["width"], out["height"]) == (64, 48)
    assert (out["steps"], out["ensemble"], out["seed"], out["queued_behind"]) == (2, 3, 5, 0)
    assert out["mask"] == "uploaded mask (20.8% empty)" and out["flow_max_px"] == 1.0
    assert out["uncertainty_max_px"] == pytest.approx(2.0)
    assert set(out["urls"]) == {"rectified.png", "flow.png", "flow.npy", "flow.flo", "uncertainty.png", "mask.png"}
    call = fake.calls[-1]
    assert (call["steps"], call["ensemble"], call["output_type"]) == (2, 3, "np")
    np.testing.assert_array_equal(call["mask"], mask)
    assert call["generator"].initial_seed() == 5

    rect = client.get(out["urls"]["rectified.png"])
    assert rect.headers["content-type"] == "image/png"
    np.testing.assert_array_equal(decode(rect.content), np.roll(picture, 1, axis=1))
    assert decode(client.get(out["urls"]["flow.png"]).content).shape == (48, 64, 3)
    assert decode(client.get(out["urls"]["uncertainty.png"]).content).shape == (48, 64, 3)
    np.testing.assert_array_equal(decode(client.get(out["urls"]["mask.png"]).content), mask)
    for name in ("flow.npy", "flow.flo"):
        resp = client.get(out["urls"][name])
        assert resp.status_code == 200 and "attachment" in resp.headers["content-disposition"]
        path = Path(client.app.state.results.root) / f"check_{name}"
        path.write_bytes(resp.content)
        flow = read_flo(path) if name.endswith(".flo") else read_flow(path)
        assert flow.shape == (48, 64, 2) and np.all(flow[..., 0] == 1) and np.all(flow[..., 1] == 0)


def test_sir_mask_derived_and_defaults(client: TestClient, picture: np.ndarray, fake: FakePipe) -> None:
    r = post(client, encode(picture), steps="", ensemble="")
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["mask"].startswith("mask derived from the black border")
    assert (out["steps"], out["ensemble"]) == (None, None) and "uncertainty.png" not in out["urls"]
    assert (fake.calls[-1]["mask"][:6] == 0).all() and (fake.calls[-1]["mask"][6:] == 255).all()
    r = post(client, encode(picture), task="rsc")
    assert r.status_code == 200 and fake.calls[-1]["mask"] is None and "mask.png" not in r.json()["urls"]


def test_old_results_are_dropped(picture: np.ndarray, fake: FakePipe, tmp_path: Path) -> None:
    with TestClient(create_app({"rsc": fake}, max_results=2, result_root=tmp_path)) as c:
        urls = [post(c, encode(picture)).json()["urls"]["rectified.png"] for _ in range(3)]
        assert [c.get(u).status_code for u in urls] == [404, 200, 200]
    assert not any(tmp_path.iterdir())  # shutdown removes the result folder


def test_pipeline_value_error_is_400(picture: np.ndarray, tmp_path: Path) -> None:
    def refuse(*args, **kwargs):
        raise ValueError("processing_resolution (7, 7) must be positive multiples of 8")

    with TestClient(create_app({"rsc": refuse}, result_root=tmp_path)) as c:
        r = post(c, encode(picture))
    assert r.status_code == 400 and "multiples of 8" in r.json()["detail"]


# --------------------------------------------------------------------------- queueing
def test_slow_request_does_not_block_the_server(picture: np.ndarray, tmp_path: Path) -> None:
    gate = threading.Event()
    slow = FakePipe(gate)
    app = create_app({"sir": slow}, max_queue=2, result_root=tmp_path)
    body, headers = multipart({"task": "sir"}, {"image": encode(picture)})
    with live_server(app) as url:
        results: list[tuple[int, bytes]] = []
        first = threading.Thread(target=lambda: results.append(http(f"{url}/api/rectify", body, headers)))
        second = threading.Thread(target=lambda: results.append(http(f"{url}/api/rectify", body, headers)))
        try:
            first.start()
            assert slow.started.wait(30), "the first inference never started"
            # the gate stays shut: a server blocked by the inference would never answer these
            status, page = http(f"{url}/", timeout=15)
            assert status == 200 and b"StableMotion" in page
            bad, bad_headers = multipart({"task": "sir"}, {"image": b"not an image"})
            status, detail = http(f"{url}/api/rectify", bad, bad_headers, timeout=15)
            assert status == 415 and b"not an image of an accepted type" in detail
            assert json.loads(http(f"{url}/api/status", timeout=15)[1]) == {"busy": True, "pending": 1, "max_queue": 2}
            second.start()  # waits behind the first
            deadline = time.monotonic() + 15
            while json.loads(http(f"{url}/api/status")[1])["pending"] < 2:
                assert time.monotonic() < deadline, "the second request never queued"
                time.sleep(0.05)
            status, busy = http(f"{url}/api/rectify", body, headers, timeout=15)  # queue full (2)
            assert status == 503 and b"busy" in busy
            assert not results  # the slow requests are still waiting
        finally:
            gate.set()
            first.join(30)
            second.join(30)
    assert [r[0] for r in results] == [200, 200]
    assert sorted(json.loads(r[1])["queued_behind"] for r in results) == [0, 1]


# --------------------------------------------------------------------------- the bundled model
HELD_OUT = 7  # synth seed of the test examples (photos never used in training)


def sir_example(index: int = 0) -> SimpleNamespace:
    photos = [str(p) for p in bundled_photo_paths("bundled-test")]
    return make_sample("rectangling", HELD_OUT, index, (96, 128), photos)


def test_bundled_sir_model_through_the_api(tmp_path: Path) -> None:
    s = sir_example(1)
    with TestClient(create_app(result_root=tmp_path)) as c:  # the bundled models, loaded on first use
        r = post(c, encode(s.input), task="sir", ensemble=2)  # mask derived from the black border
        assert r.status_code == 200, r.text
        pred = decode(c.get(r.json()["urls"]["rectified.png"]).content)
    assert "derived from the black border" in r.json()["mask"]
    assert pred.shape == s.gt.shape
    assert psnr(pred, s.gt) > psnr(s.input, s.gt) + 3.0


# --------------------------------------------------------------------------- the browser
@pytest.fixture
def browser():
    if not (Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK)):
        pytest.skip(f"no Chromium at {CHROMIUM}: install Debian's `chromium chromium-driver` (.ci/run does as root)")
    playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright (the browser driver) is not installed")
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def test_end_to_end_in_chromium(browser, tmp_path: Path) -> None:
    s = sir_example(0)
    (tmp_path / "upload").mkdir()
    image_file, mask_file = tmp_path / "upload" / "stitched.png", tmp_path / "upload" / "stitched_mask.png"
    image_file.write_bytes(encode(s.input))
    mask_file.write_bytes(encode(s.mask))
    with live_server(create_app(result_root=tmp_path)) as url:
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url)
        page.wait_for_selector("#task option[value=sir]", state="attached")
        assert page.is_visible("#mask-row")
        page.select_option("#task", "rsc")
        assert not page.is_visible("#mask-row")  # RSC takes no mask
        page.select_option("#task", "sir")
        page.set_input_files("#image", str(image_file))
        page.set_input_files("#mask", str(mask_file))
        page.fill("#ensemble", "2")
        page.click("#rectify")
        page.wait_for_function(
            "() => ['result-image', 'flow-image', 'uncertainty-image'].every("
            "id => { const i = document.getElementById(id); return i.complete && i.naturalWidth > 0; })",
            timeout=120_000,
        )
        assert not page.is_visible("#error")
        assert page.is_visible("#uncertainty-image") and not page.is_visible("#uncertainty-placeholder")
        sizes = page.evaluate("['result-image', 'flow-image'].map(id => { const i = document.getElementById(id); "
                              "return [i.naturalWidth, i.naturalHeight]; })")
        assert sizes == [[128, 96], [128, 96]]
        assert "uploaded mask" in page.inner_text("#meta")
        src = page.get_attribute("#result-image", "src")
        flo_href = page.get_attribute("#download-flo", "href")
        assert page.get_attribute("#download-flo", "download") == "stitched_flow.flo"
        status, png = http(url + src)
        assert status == 200
        pred = decode(png)
        status, flo = http(url + flo_href)
        (tmp_path / "flow.flo").write_bytes(flo)
        assert read_flo(tmp_path / "flow.flo").shape == (96, 128, 2)

        # a bad upload shows the server's message on the page
        bad = tmp_path / "upload" / "notes.png"
        bad.write_text("not an image")
        page.set_input_files("#image", str(bad))
        page.set_input_files("#mask", [])
        page.click("#rectify")
        page.wait_for_selector("#error:not([hidden])")
        assert "not an image of an accepted type" in page.inner_text("#error")
        assert not errors, errors
    assert pred.shape == s.gt.shape
    gain = psnr(pred, s.gt) - psnr(s.input, s.gt)
    assert gain > 3.0, f"rectified PSNR gain {gain:.2f} dB"


# --------------------------------------------------------------------------- command line
def test_serve_cli_defaults_and_missing_extra(monkeypatch, capsys) -> None:
    from stablemotion.cli import build_parser
    from stablemotion.cli import serve as serve_cli

    args = build_parser().parse_args(["serve"])
    assert (args.host, args.port, args.model) == ("127.0.0.1", 7860, [])
    assert serve_cli.missing_app_packages() == []
    find_spec = serve_cli.importlib.util.find_spec
    monkeypatch.setattr(serve_cli.importlib.util, "find_spec",
                        lambda name, *a: None if name in ("fastapi", "multipart", "python_multipart") else find_spec(name, *a))
    assert serve_cli.missing_app_packages() == ["fastapi", "python-multipart"]
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == ("error: stablemotion serve needs the web app extra (fastapi, python-multipart not "
                           "installed): pip install 'stablemotion[app]'")


def test_serve_cli_bad_model_fails_before_serving(tmp_path: Path, capsys) -> None:
    assert main(["serve", "--model", str(tmp_path)]) == 2
    assert "not a pipeline folder" in capsys.readouterr().err


def test_core_library_does_not_import_web_packages() -> None:
    import subprocess
    import sys

    code = ("import sys, stablemotion, stablemotion.pipeline, stablemotion.cli; stablemotion.cli.build_parser(); "
            "print(sorted(m for m in ('fastapi', 'uvicorn', 'starlette') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert out.stdout.strip() == "[]"


def test_rectify_cli_still_reads_palette_images(tmp_path: Path, picture: np.ndarray) -> None:
    from stablemotion.cli.rectify import _read_rgb

    Image.fromarray(picture).convert("P").save(tmp_path / "p.png")
    assert _read_rgb(tmp_path / "p.png").shape == (48, 64, 3)
    Image.fromarray(picture[..., 0]).save(tmp_path / "g.png")
    with pytest.raises(ValueError, match="RGB image"):
        _read_rgb(tmp_path / "g.png")


def test_serve_cli_model_replaces_its_task(monkeypatch, capsys) -> None:
    from stablemotion.model import bundled_model_path

    served = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: served.update(app=app, **kw))
    path = str(bundled_model_path("rsc"))
    assert main(["serve", "--model", path, "--device", "cpu", "--port", "7999", "--max-side", "512"]) == 0
    assert (served["host"], served["port"]) == ("127.0.0.1", 7999)
    assert "http://127.0.0.1:7999/" in capsys.readouterr().out
    with TestClient(served["app"]) as c:
        info = c.get("/api/info").json()
    models = {t["name"]: t["model"] for t in info["tasks"]}
    assert models == {"sir": "stablemotion-mini-sir (bundled)", "rsc": path}
    assert info["limits"]["max_side"] == 512
