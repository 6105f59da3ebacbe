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
import torch
import uvicorn
from fastapi.testclient import TestClient
from PIL import Image

from stablemotion.app import allowed_hosts_for, create_app, memory_bound, working_size
from stablemotion.cli import build_parser, main
from stablemotion.core import large_image
from stablemotion.core.flow import flow_to_color, read_flo, read_flow, warp
from stablemotion.core.metrics import psnr
from stablemotion.data.synth import bundled_photo_paths, make_sample
from stablemotion.model.task_choice import TaskChoice
from stablemotion.tasks import get_task

CHROMIUM = os.environ.get("STABLEMOTION_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


# --------------------------------------------------------------------------- helpers
class FakePipe:
    """Stands in for a pipeline: shifts the image by one pixel; ``gate`` (an Event) makes it wait.

    Its flow is 1 px to the right at the size it is called with; its config says what a
    bundled model's says about ensembles and masks.
    """

    config = {"default_ensemble_mode": "image", "mask_encoding": "binary"}

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.gate, self.started, self.calls = gate, threading.Event(), []

    def __call__(self, image: np.ndarray, mask=None, num_inference_steps=None, ensemble_size=None, **kw):
        self.calls.append({"mask": mask, "steps": num_inference_steps, "ensemble": ensemble_size,
                           "size": image.shape[:2], **kw})
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


class MultiPipe(FakePipe):
    """A multi-task pipeline double: serves ``tasks`` (the first is its default) and is called with ``task=``."""

    def __init__(self, *tasks: str, name: str = "multi-double") -> None:
        super().__init__()
        self.tasks = {t: get_task(t) for t in tasks}
        self.task = self.tasks[tasks[0]]
        self.name_or_path = name

    def set_progress_bar_config(self, **kw) -> None:
        pass

    def to(self, device) -> MultiPipe:
        return self


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


#: The Host FastAPI's TestClient sends; apps under test allow it explicitly (the default is loopback only).
TEST_HOSTS = ["testserver"]


@pytest.fixture
def client(fake: FakePipe, tmp_path: Path) -> Iterator[TestClient]:
    app = create_app({"sir": fake, "rsc": fake}, max_upload_bytes=64 * 1024, max_side=256, max_steps=10,
                     max_ensemble=4, result_root=tmp_path, allowed_hosts=TEST_HOSTS)
    with TestClient(app) as c:
        yield c


def post(client: TestClient, image: bytes | None, mask: bytes | None = None, name: str = "x.png",
         headers: dict[str, str] | None = None, **fields):
    files = {}
    if image is not None:
        files["image"] = (name, image, "application/octet-stream")
    if mask is not None:
        files["mask"] = ("mask.png", mask, "image/png")
    return client.post("/api/rectify", data={k: str(v) for k, v in fields.items()}, files=files, headers=headers)


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
    assert info["auto"]["name"] == "auto" and info["auto"]["label"] == "auto (detect the task)"
    assert info["limits"]["max_upload_bytes"] == 64 * 1024 and info["limits"]["max_side"] == 256
    assert info["formats"] == ["PNG", "JPEG", "WebP", "BMP", "TIFF", "GIF"]
    assert client.get("/api/status").json() == {"busy": False, "pending": 0, "max_queue": 8}


# --------------------------------------------------------------------------- validation
@pytest.mark.parametrize("fmt", ["PPM", "text"])
def test_wrong_type_is_415(client: TestClient, picture: np.ndarray, fake: FakePipe, fmt: str) -> None:
    data = encode(picture, "PPM") if fmt == "PPM" else b"just some text, not a picture\n" * 10
    r = post(client, data, name="x.png")  # the name says png: the content decides
    assert r.status_code == 415
    assert ("PPM images are not accepted" if fmt == "PPM" else "not an image") in r.json()["detail"]
    assert "PNG, JPEG, WebP, BMP, TIFF, GIF" in r.json()["detail"]
    assert not fake.calls


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP", "BMP", "TIFF", "GIF"])
def test_accepted_types(client: TestClient, picture: np.ndarray, fmt: str) -> None:
    r = post(client, encode(picture, fmt), task="rsc")
    assert r.status_code == 200, r.text
    assert (r.json()["width"], r.json()["height"]) == (64, 48)


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "TIFF"])
def test_files_of_several_frames_are_refused(client: TestClient, picture: np.ndarray, fake: FakePipe,
                                             fmt: str) -> None:
    """The CLI's rule (``_io.check_single_frame``): a one-frame GIF is read, an animation or multi-page file is not."""
    frames = [Image.fromarray(np.roll(picture, k, axis=1)) for k in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, format=fmt, save_all=True, append_images=frames[1:])
    r = post(client, buf.getvalue(), task="rsc")
    assert r.status_code == 400
    assert r.json()["detail"] == (f"the image file holds 3 frames ({fmt} animation or multi-page file); "
                                  "save the frame to rectify as its own image (PNG or JPEG)")
    assert not fake.calls


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


def test_grey_and_rgba_refused_in_the_pages_words(client: TestClient, picture: np.ndarray) -> None:
    """The app reads uploads by the package's one rule (grey and real transparency refused, opaque alpha
    dropped), but says what to do on the page, never which command-line option to use."""
    alpha = np.full((*picture.shape[:2], 1), 255, np.uint8)
    alpha[0, 0] = 0
    cases = [
        (picture[..., 0], "the image is a grey (single-channel) picture; the models take colour (RGB) images: "
                          "save it as RGB and upload it again"),
        (np.concatenate([picture, alpha], axis=-1),
         "the image has transparent pixels (an alpha channel); save it without transparency and upload it again "
         "(for SIR, upload the empty area as the mask file: white = content, black = empty)"),
        (np.concatenate([picture[..., :1], alpha], axis=-1),
         "the image is a grey picture with transparent pixels; save it as RGB without transparency and upload it "
         "again"),
    ]
    for array, message in cases:
        r = post(client, encode(array))
        assert r.status_code == 400 and r.json()["detail"] == message
        assert "--" not in message and "command line" not in message
    opaque = np.concatenate([picture, np.full_like(alpha, 255)], axis=-1)
    assert post(client, encode(opaque)).status_code == 200


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
    with TestClient(create_app({"rsc": fake}, max_results=2, result_root=tmp_path, allowed_hosts=TEST_HOSTS)) as c:
        urls = [post(c, encode(picture)).json()["urls"]["rectified.png"] for _ in range(3)]
        assert [c.get(u).status_code for u in urls] == [404, 200, 200]
    assert not any(tmp_path.iterdir())  # shutdown removes the result folder


def test_pipeline_value_error_is_400(picture: np.ndarray, tmp_path: Path) -> None:
    def refuse(*args, **kwargs):
        raise ValueError("processing_resolution (7, 7) must be positive multiples of 8")

    with TestClient(create_app({"rsc": refuse}, result_root=tmp_path, allowed_hosts=TEST_HOSTS)) as c:
        r = post(c, encode(picture))
    assert r.status_code == 400 and "multiples of 8" in r.json()["detail"]


# --------------------------------------------------------------------------- large images: working size, strips
def full_size_warp(image: np.ndarray, flow: np.ndarray, padding: str) -> np.ndarray:
    """What the pipeline does at full size: ``warp`` of the image in [0, 1], clamped, as uint8."""
    out = warp(torch.from_numpy(image).permute(2, 0, 1).float() / 255.0, torch.from_numpy(flow).permute(2, 0, 1),
               padding=padding)
    return (out.clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()


def smooth_picture(h: int, w: int) -> np.ndarray:
    """A textured but compressible RGB picture (PNG of a few KB) with a black top border."""
    yy, xx = np.mgrid[0:h, 0:w]
    im = np.stack([xx % 256, yy * 255 // (h - 1), 30 + 60 * ((xx // 4 + yy // 4) % 2)], axis=-1).astype(np.uint8)
    im[: h // 10] = 0
    return im


def test_working_size() -> None:
    assert working_size(48, 64, 4096) == (48, 64)  # within the cap: as it is
    assert working_size(4096, 4096, 1024 * 1024) == (1024, 1024)
    h, w = working_size(3000, 4000, 1_000_000)
    assert 0.99e6 < h * w <= 1_000_000 and abs(w / h - 4 / 3) < 2e-3
    assert working_size(192, 256, 4096) == (55, 73)
    with pytest.raises(ValueError, match=r"max_work_pixels must be >= 4096 \(64 x 64\), got 100"):
        create_app({"rsc": FakePipe()}, max_work_pixels=100)


def test_large_image_runs_at_the_working_size(fake: FakePipe, tmp_path: Path) -> None:
    picture = smooth_picture(192, 256)
    mask = np.full((192, 256), 255, np.uint8)
    mask[:20] = 0
    app = create_app({"sir": fake}, max_upload_bytes=64 * 1024, max_side=256, max_ensemble=4, max_work_pixels=4096,
                     result_root=tmp_path, allowed_hosts=TEST_HOSTS)
    with TestClient(app) as c:
        assert c.get("/api/info").json()["limits"]["max_work_pixels"] == 4096
        r = post(c, encode(picture), mask=encode(mask), task="sir", ensemble=3, seed=1)
        assert r.status_code == 200, r.text
        out = r.json()
        files = {name: c.get(url).content for name, url in out["urls"].items()}
    call = fake.calls[-1]
    assert call["size"] == (55, 73)  # 4015 px <= 4096, aspect kept
    assert (out["width"], out["height"], out["work_width"], out["work_height"]) == (256, 192, 73, 55)
    assert call["ensemble"] == 3 and call["ensemble_mode"] == "flow"  # the member warps would be thrown away
    assert call["mask"].shape == (55, 73) and set(np.unique(call["mask"])) == {0, 255}  # shrunk, still binary
    assert (call["mask"][:5] == 0).all() and (call["mask"][6:] == 255).all()  # 20 of 192 rows empty

    (tmp_path / "flow.npy").write_bytes(files["flow.npy"])
    (tmp_path / "flow.flo").write_bytes(files["flow.flo"])
    flow = read_flow(tmp_path / "flow.npy")
    assert flow.shape == (192, 256, 2)  # full size, in its pixels: the fake's 1 px at width 73 is 256/73 px
    np.testing.assert_allclose(flow[..., 0], 256 / 73, rtol=1e-6)
    assert (flow[..., 1] == 0).all() and out["flow_max_px"] == round(256 / 73, 3)
    np.testing.assert_array_equal(read_flo(tmp_path / "flow.flo"), flow)
    rectified = decode(files["rectified.png"])
    assert rectified.shape == (192, 256, 3)
    assert np.abs(rectified.astype(int) - full_size_warp(picture, flow, "border")).max() <= 1
    np.testing.assert_array_equal(decode(files["flow.png"]), flow_to_color(flow))
    assert decode(files["uncertainty.png"]).shape == (192, 256, 3)
    assert out["uncertainty_max_px"] == pytest.approx(2.0 * (192 / 55 + 256 / 73) / 2, abs=1e-3)
    np.testing.assert_array_equal(decode(files["mask.png"]), mask)  # the mask used, at full size


@pytest.mark.parametrize("padding", ["border", "zeros", "reflection"])
def test_strip_warp_matches_the_pipelines_warp(padding: str) -> None:
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:70, 0:90].astype(np.float32)
    # large vertical motion that varies along the rows, samples outside the frame on every side
    flow = np.stack([12 * np.sin(yy / 9) + 0.3 * xx - 10, 25 * np.cos(xx / 13) - 0.2 * yy + 5], axis=-1)
    got = large_image.warp_strips(image, flow.astype(np.float32), padding, strip_pixels=90 * 4)  # 18 strips
    diff = np.abs(got.astype(int) - full_size_warp(image, flow.astype(np.float32), padding))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3  # float32 rounding of the sample coordinates only
    flow[5, 5, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        large_image.warp_strips(image, flow.astype(np.float32), padding)


def test_full_size_work_is_done_in_strips(fake: FakePipe, tmp_path: Path, monkeypatch) -> None:
    """The full-size float work (warp, flow colours, uncertainty colours) never sees more than a strip."""
    monkeypatch.setattr(large_image, "STRIP_PIXELS", 512 * 8)  # 8 rows of the 512 px wide image
    seen: dict[str, list[tuple[int, ...]]] = {"warp input": [], "warp grid": [], "flow colours": [], "uncertainty": []}
    grid_sample, to_color, color_map = torch.nn.functional.grid_sample, large_image.flow_to_color, large_image.cv2.applyColorMap

    def spy_grid_sample(x, grid, *args, **kwargs):
        seen["warp input"].append(tuple(x.shape))
        seen["warp grid"].append(tuple(grid.shape))
        return grid_sample(x, grid, *args, **kwargs)

    def spy_color(flow, *args, **kwargs):
        seen["flow colours"].append(flow.shape)
        return to_color(flow, *args, **kwargs)

    def spy_map(values, *args):
        seen["uncertainty"].append(values.shape)
        return color_map(values, *args)

    monkeypatch.setattr(large_image.F, "grid_sample", spy_grid_sample)
    monkeypatch.setattr(large_image, "flow_to_color", spy_color)
    monkeypatch.setattr(large_image.cv2, "applyColorMap", spy_map)
    app = create_app({"rsc": fake}, max_upload_bytes=256 * 1024, max_side=512, max_work_pixels=4096,
                     result_root=tmp_path, allowed_hosts=TEST_HOSTS)
    with TestClient(app) as c:
        r = post(c, encode(smooth_picture(384, 512)), task="rsc", ensemble=2)
    assert r.status_code == 200, r.text
    assert fake.calls[-1]["size"] == working_size(384, 512, 4096) == (55, 73)
    assert (r.json()["width"], r.json()["height"]) == (512, 384)
    assert len(seen["warp grid"]) == len(seen["flow colours"]) == len(seen["uncertainty"]) == 384 // 8
    assert all(g == (1, 8, 512, 2) for g in seen["warp grid"])
    assert all(x[0] == 1 and x[2] <= 8 + 1 for x in seen["warp input"])  # the strip + the row below it
    assert all(f[:2] == (8, 512) for f in seen["flow colours"] + seen["uncertainty"])


MEMORY_SCRIPT = """
import io, json, sys
import cv2, numpy as np
from fastapi.testclient import TestClient
from PIL import Image
from stablemotion.app import create_app
from stablemotion.data.synth import bundled_photo_paths, make_sample

def status(key):
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith(key))

side, ensemble, cap = (int(a) for a in sys.argv[1:4])
s = make_sample("rectangling", 7, 0, (384, 512), [str(p) for p in bundled_photo_paths("bundled-test")])  # a border the strict detector finds
big = io.BytesIO()
Image.fromarray(cv2.resize(s.input, (side, side), interpolation=cv2.INTER_LINEAR)).save(big, format="JPEG")
small = io.BytesIO()
Image.fromarray(s.input).save(small, format="PNG")
app = create_app({"sir": None}, allowed_hosts=["testserver"], max_work_pixels=cap)
with TestClient(app) as c:  # the first request loads the model
    assert c.post("/api/rectify", data={"ensemble": "2"}, files={"image": ("s.png", small.getvalue())}).status_code == 200
    before = status("VmRSS:")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets the peak RSS (VmHWM) to the current RSS
    r = c.post("/api/rectify", data={"ensemble": str(ensemble)}, files={"image": ("big.jpg", big.getvalue())})
    assert r.status_code == 200, r.text
    print(json.dumps({"growth": status("VmHWM:") - before, "work": [r.json()["work_width"], r.json()["work_height"]]}))
"""


def test_peak_memory_of_a_large_ensemble_request(tmp_path: Path) -> None:
    """Measured in a fresh process with the bundled SIR model: 1024 x 1024, ensemble 8, a 256 x 256 cap.

    Uncapped, this request grows the process by 530-630 MB (70 B per pixel and member, over
    the bound); capped, by 110-165 MB, within :func:`memory_bound` (238 MB here).
    """
    import subprocess
    import sys

    if not os.access("/proc/self/clear_refs", os.W_OK):
        pytest.skip("needs Linux's /proc/self/clear_refs to reset the peak RSS")
    side, ensemble, cap = 1024, 8, 256 * 256
    script = tmp_path / "memory.py"
    script.write_text(MEMORY_SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "2"}
    done = subprocess.run([sys.executable, str(script), str(side), str(ensemble), str(cap)], capture_output=True,
                          text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["work"] == [256, 256]
    bound = memory_bound(side, side, ensemble, cap)
    assert 0 < result["growth"] < bound, f"peak RSS grew by {result['growth'] / 2**20:.0f} MB > {bound / 2**20:.0f} MB"


# --------------------------------------------------------------------------- Host header (DNS rebinding)
def test_unknown_host_is_400(client: TestClient, picture: np.ndarray, fake: FakePipe) -> None:
    r = client.get("/api/info", headers={"Host": "evil.example"})
    assert r.status_code == 400
    assert r.json()["detail"] == ("this server does not answer to the host name 'evil.example' (it answers to "
                                  "testserver); if that is how you reach it, start it with --allowed-hosts evil.example")
    assert post(client, encode(picture), task="rsc", headers={"Host": "evil.example:80"}).status_code == 400
    assert client.get("/", headers={"Host": "testserver.evil.example"}).status_code == 400
    assert not fake.calls
    assert client.get("/api/info", headers={"Host": "TestServer:8000"}).status_code == 200  # port and case ignored


def test_default_hosts_are_the_loopback_names(tmp_path: Path) -> None:
    with TestClient(create_app({"rsc": FakePipe()}, result_root=tmp_path)) as c:
        r = c.get("/api/status")  # TestClient sends Host: testserver, which is not allowed by default
        assert r.status_code == 400 and "it answers to 127.0.0.1, localhost, [::1]" in r.json()["detail"]
        for host in ("localhost:7860", "127.0.0.1", "[::1]:7860", "LOCALHOST.", "127.0.0.1:1"):
            assert c.get("/api/status", headers={"Host": host}).status_code == 200, host
        for host in ("evil.example", "127.0.0.1.evil.example", "localhost.evil.example:7860", "[::2]", "[::1"):
            assert c.get("/api/status", headers={"Host": host}).status_code == 400, host


def test_host_check_over_http(tmp_path: Path) -> None:
    with live_server(create_app({"rsc": FakePipe()}, result_root=tmp_path)) as url:
        assert http(f"{url}/api/status")[0] == 200  # urllib sends Host: 127.0.0.1:PORT
        status, body = http(f"{url}/api/status", headers={"Host": "rebound.example"})
    assert status == 400 and "--allowed-hosts rebound.example" in json.loads(body)["detail"]


@pytest.mark.parametrize(
    ("bind", "extra", "expected"),
    [
        ("127.0.0.1", [], ["127.0.0.1", "localhost", "::1"]),
        ("localhost", ["App.Example."], ["localhost", "127.0.0.1", "::1", "app.example"]),
        ("::1", ["[fe80::1]"], ["::1", "127.0.0.1", "localhost", "fe80::1"]),
        ("0.0.0.0", ["gpu-box.lan", "192.168.1.20"], ["127.0.0.1", "localhost", "::1", "gpu-box.lan", "192.168.1.20"]),
        ("::", [], ["127.0.0.1", "localhost", "::1"]),
        ("192.168.1.20", [], ["192.168.1.20"]),
        ("192.168.1.20", ["*"], ["192.168.1.20", "*"]),
    ],
)
def test_allowed_hosts_rule(bind: str, extra: list[str], expected: list[str]) -> None:
    assert allowed_hosts_for(bind, extra) == expected


@pytest.mark.parametrize("bad", ["http://a.example", "a.example:8080", "a.example/x", "[a.example]", ""])
def test_allowed_hosts_must_be_bare_names(bad: str) -> None:
    with pytest.raises(ValueError, match="allowed host"):
        allowed_hosts_for("127.0.0.1", [bad])


def test_any_host_with_star(tmp_path: Path) -> None:
    with TestClient(create_app({"rsc": FakePipe()}, result_root=tmp_path, allowed_hosts=["*"])) as c:
        assert c.get("/api/status", headers={"Host": "anything.example"}).status_code == 200
    with pytest.raises(ValueError, match="allowed_hosts is empty"):
        create_app({"rsc": FakePipe()}, allowed_hosts=[])


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
    with TestClient(create_app(result_root=tmp_path, allowed_hosts=TEST_HOSTS)) as c:  # bundled models, loaded on use
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
        assert page.input_value("#task") == "sir"  # the first task stays the default; auto is listed after the tasks
        assert page.inner_text("#task option[value=auto]") == "auto (detect the task)"
        page.select_option("#task", "rsc")
        assert not page.is_visible("#mask-row")  # RSC takes no mask
        assert page.inner_text("#task-hint") == get_task("rsc").description
        page.select_option("#task", "auto")
        assert page.is_visible("#mask-row") and "only if the task detected is SIR" in page.inner_text("#mask-hint")
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
        assert page.inner_text("#meta").startswith("task SIR \u00b7 model stablemotion-mini-sir (bundled)")

        # auto: the black border says SIR (the real choice, no classifier needed); the mask is derived
        page.select_option("#task", "auto")
        page.set_input_files("#mask", [])
        page.click("#rectify")
        page.wait_for_function("() => document.getElementById('meta').textContent.includes('detected')",
                               timeout=120_000)
        assert not page.is_visible("#error")
        meta = page.inner_text("#meta")
        assert meta.startswith("task SIR detected (100%: ") and "border" in meta and "mask derived from" in meta

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

    code = ("import sys, stablemotion, stablemotion.model.pipeline, stablemotion.cli; stablemotion.cli.build_parser(); "
            "print(sorted(m for m in ('fastapi', 'uvicorn', 'starlette') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert out.stdout.strip() == "[]"


def test_palette_images_read_by_the_one_reader(tmp_path: Path, picture: np.ndarray) -> None:
    from stablemotion.io.images import read_rgb

    Image.fromarray(picture).convert("P").save(tmp_path / "p.png")
    assert read_rgb(tmp_path / "p.png")[0].shape == (48, 64, 3)
    Image.fromarray(picture[..., 0]).save(tmp_path / "g.png")
    with pytest.raises(ValueError, match="grey image"):
        read_rgb(tmp_path / "g.png")


def test_serve_cli_model_replaces_its_task(monkeypatch, capsys) -> None:
    from stablemotion.model import bundled_model_path

    served = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: served.update(app=app, **kw))
    path = str(bundled_model_path("rsc"))
    assert main(["serve", "--model", path, "--device", "cpu", "--port", "7999", "--max-side", "512"]) == 0
    assert (served["host"], served["port"]) == ("127.0.0.1", 7999)
    assert "http://127.0.0.1:7999/" in capsys.readouterr().out
    with TestClient(served["app"], base_url="http://127.0.0.1:7999") as c:  # the address it is bound to
        info = c.get("/api/info").json()
        assert c.get("/api/info", headers={"Host": "testserver"}).status_code == 400  # not a name it answers to
    from stablemotion.model.catalog import BUNDLED_MODELS

    models = {t["name"]: t["model"] for t in info["tasks"]}
    assert models == {**{t: f"{BUNDLED_MODELS[t]} (bundled)" for t in BUNDLED_MODELS}, "rsc": path}
    assert models["sir"] == "stablemotion-mini-sir (bundled)"
    assert info["limits"]["max_side"] == 512


def test_serve_cli_hosts_and_work_size(monkeypatch, capsys) -> None:
    served = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: served.update(app=app, **kw))
    assert main(["serve", "--host", "0.0.0.0", "--allowed-hosts", "gpu-box.lan", "192.168.1.20", "--port", "7998",
                 "--max-work-pixels", "500000"]) == 0
    out = capsys.readouterr().out
    assert "answering requests addressed to 127.0.0.1, localhost, [::1], gpu-box.lan, 192.168.1.20" in out
    assert served["host"] == "0.0.0.0"
    with TestClient(served["app"], base_url="http://gpu-box.lan:7998") as c:
        assert c.get("/api/info").json()["limits"]["max_work_pixels"] == 500_000
        for host, status in [("localhost:7998", 200), ("192.168.1.20:7998", 200), ("0.0.0.0:7998", 400),
                             ("192.168.1.21:7998", 400), ("evil.example", 400)]:
            assert c.get("/api/status", headers={"Host": host}).status_code == status, host


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--allowed-hosts", "http://a.example"], "error: allowed host 'http://a.example' must be a host name"),
        (["--host", "a.example:80"], "error: --host 'a.example:80' must be a host name"),
        (["--max-work-pixels", "100"],
         "error: --max-work-pixels must be a number from 4096 to 268435456 (pixels; 4096 = 64 x 64), got 100"),
    ],
)
def test_serve_cli_bad_host_options(monkeypatch, capsys, args: list[str], message: str) -> None:
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: pytest.fail("served despite a bad option"))
    assert main(["serve", *args]) == 2
    assert capsys.readouterr().err.strip().startswith(message)


def test_serve_inference_options_reach_every_request(picture: np.ndarray, tmp_path: Path) -> None:
    """serve registers the shared inference options; the app passes them to the pipeline on each request."""
    fake = FakePipe()
    app = create_app({"rsc": fake}, result_root=tmp_path, allowed_hosts=TEST_HOSTS,
                     inference={"final_step": "prev_sample", "decode_scale": 2, "processing_resolution": None})
    with TestClient(app) as c:
        r = post(c, encode(picture), task="rsc")
        assert r.status_code == 200, r.text
    call = fake.calls[-1]
    assert call["final_step"] == "prev_sample" and call["decode_scale"] == 2 and "processing_resolution" not in call
    parser = build_parser()
    args = parser.parse_args(["serve", "--final-step", "x0", "--processing-resolution", "64x96", "--decode-scale", "2",
                              "--no-channels-last", "--dtype", "bf16"])
    assert (args.final_step, args.processing_resolution, args.channels_last) == ("x0", (64, 96), False)


def test_sir_without_an_empty_border_is_returned_unchanged(client: TestClient, fake: FakePipe) -> None:
    """Nothing to rectangle: the app says so and never warps the image (an uploaded mask forces a run)."""
    rng = np.random.default_rng(3)
    plain = rng.integers(30, 255, (48, 64, 3), dtype=np.uint8)
    before = len(fake.calls)
    r = post(client, encode(plain), task="sir")
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["mask"].startswith("no empty border found") and len(fake.calls) == before
    np.testing.assert_array_equal(decode(client.get(out["urls"]["rectified.png"]).content), plain)
    r = post(client, encode(plain), mask=encode(np.full((48, 64), 255, np.uint8)), task="sir")
    assert r.status_code == 200 and len(fake.calls) == before + 1


# --------------------------------------------------------------------------- task=auto and multi-task models
@pytest.fixture
def choose(monkeypatch) -> SimpleNamespace:
    """Replaces the automatic task choice: set ``.result`` (a TaskChoice); ``.calls`` records each call."""
    from stablemotion.model import task_choice
    state = SimpleNamespace(result=None, calls=[])

    def fake_choose(image, classifier=None, threshold=0.6, **kw):
        state.calls.append({"shape": image.shape, "threshold": threshold, "thread": threading.current_thread().name})
        return state.result

    monkeypatch.setattr(task_choice, "choose_task", fake_choose)
    return state


def test_info_and_page_list_every_task_and_auto(tmp_path: Path) -> None:
    multi = MultiPipe("rotation", "lens")
    app = create_app({"sir": FakePipe(), "rsc": FakePipe(), "rotation": multi, "lens": multi}, result_root=tmp_path,
                     allowed_hosts=TEST_HOSTS, task_threshold=0.7)
    with TestClient(app) as c:
        info = c.get("/api/info").json()
        page = c.get("/").text
    assert [t["name"] for t in info["tasks"]] == ["sir", "rsc", "rotation", "lens"]
    assert [t["mask"] for t in info["tasks"]] == [True, False, False, False]
    assert [t["description"] for t in info["tasks"]] == [get_task(t).description
                                                         for t in ("sir", "rsc", "rotation", "lens")]
    assert [t["model"] for t in info["tasks"]][2:] == ["multi-double", "multi-double"]
    assert info["auto"]["name"] == "auto" and info["auto"]["threshold"] == 0.7 and info["auto"]["mask"] is True
    assert "info.auto" in page and 'id="task-hint"' in page  # the selector adds auto after the tasks


def test_auto_picks_the_task_on_the_worker(picture: np.ndarray, tmp_path: Path, choose: SimpleNamespace) -> None:
    fake, multi = FakePipe(), MultiPipe("rotation", "lens")
    app = create_app({"sir": fake, "rsc": fake, "rotation": multi, "lens": multi}, result_root=tmp_path,
                     allowed_hosts=TEST_HOSTS, task_threshold=0.7)
    choose.result = TaskChoice("lens", 0.834, "classifier (lens)", {"lens": 0.834}, "lens")
    with TestClient(app) as c:
        r = post(c, encode(picture), task="auto", ensemble=2)
        assert r.status_code == 200, r.text
        out = r.json()
        assert (out["task"], out["model"]) == ("lens", "multi-double")
        assert out["auto"] == {"confidence": 0.834, "reason": "classifier (lens)"} and out["mask"] == ""
        assert "mask.png" not in out["urls"]
        np.testing.assert_array_equal(decode(c.get(out["urls"]["rectified.png"]).content), np.roll(picture, 1, axis=1))
        explicit = post(c, encode(picture), task="rsc").json()
    assert [(call["shape"], call["threshold"]) for call in choose.calls] == [((48, 64, 3), 0.7)]
    assert choose.calls[0]["thread"].startswith("stablemotion-inference")  # not the event loop, not the validation pool
    assert multi.calls[-1]["task"] == "lens" and multi.calls[-1]["mask"] is None and multi.calls[-1]["ensemble"] == 2
    assert (explicit["task"], explicit["auto"]) == ("rsc", None) and len(choose.calls) == 1
    assert "task" not in fake.calls[-1]  # a double without ``tasks`` is called as before


def test_auto_sir_uses_the_derived_or_uploaded_mask(client: TestClient, picture: np.ndarray, fake: FakePipe,
                                                    choose: SimpleNamespace) -> None:
    choose.result = TaskChoice("sir", 1.0, "flat empty border (12.5% of the pixels)", {"sir": 1.0}, "sir")
    r = post(client, encode(picture), task="auto")
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["task"] == "sir" and out["auto"]["reason"].startswith("flat empty border")
    assert out["mask"].startswith("mask derived from the black border") and "mask.png" in out["urls"]
    assert (fake.calls[-1]["mask"][:6] == 0).all() and (fake.calls[-1]["mask"][6:] == 255).all()
    mask = np.full((48, 64), 255, np.uint8)
    mask[:10] = 0
    r = post(client, encode(picture), mask=encode(mask), task="auto")
    assert r.status_code == 200 and r.json()["mask"] == "uploaded mask (20.8% empty)"
    np.testing.assert_array_equal(fake.calls[-1]["mask"], mask)


def test_auto_refuses_a_mask_for_a_task_without_one(client: TestClient, picture: np.ndarray, fake: FakePipe,
                                                    choose: SimpleNamespace) -> None:
    choose.result = TaskChoice("rsc", 0.9, "classifier (rsc)", {"rsc": 0.9}, "rsc")
    r = post(client, encode(picture), mask=encode(np.full((48, 64), 255, np.uint8)), task="auto")
    assert r.status_code == 400
    assert r.json()["detail"] == ("the rsc task takes no mask; remove the mask file "
                                  "(the task was chosen automatically: classifier (rsc))")
    assert not fake.calls and len(choose.calls) == 1


@pytest.mark.parametrize(
    ("choice", "reason"),
    [
        (TaskChoice(None, 0.48, "classifier unsure: best guess lens at 48% < 60%", {"lens": 0.48}, "lens"),
         "cannot tell the task (best guess lens at 48%): the image is returned unchanged; choose a task to rectify it"),
        (TaskChoice("none", 0.9, "classifier (no distortion seen)", {"none": 0.9}, "none"),
         "no correction needed (classifier (no distortion seen)): the image is returned unchanged; choose a task "
         "to rectify it anyway"),
    ],
    ids=["undecided", "none"],
)
def test_auto_with_nothing_to_correct_returns_the_image_unchanged(
        client: TestClient, picture: np.ndarray, fake: FakePipe, choose: SimpleNamespace, choice: TaskChoice,
        reason: str) -> None:
    """Do no harm: an image the choice finds no task for is copied unchanged and reported, not refused."""
    choose.result = choice
    r = post(client, encode(picture), task="auto")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["unchanged"] is True and body["reason"] == reason and body["confidence"] is None
    assert body["task"] == choice.task and body["model"] is None
    assert not fake.calls and len(choose.calls) == 1
    out = np.array(Image.open(io.BytesIO(client.get(body["urls"]["rectified.png"]).content)))
    assert np.array_equal(out, picture)
    assert not np.load(io.BytesIO(client.get(body["urls"]["flow.npy"]).content)).any()


@pytest.mark.parametrize(
    ("choice", "message"),
    [
        (TaskChoice("rotation", 0.91, "classifier (rotation)", {"rotation": 0.91}, "rotation"),
         "the image looks like a rotation task (91%) but this server has no rotation model (it has sir, rsc); "
         "choose a task to rectify it anyway"),
    ],
    ids=["no-model"],
)
def test_auto_without_a_task_to_run_is_422(client: TestClient, picture: np.ndarray, fake: FakePipe,
                                           choose: SimpleNamespace, choice: TaskChoice, message: str) -> None:
    choose.result = choice
    r = post(client, encode(picture), task="auto")
    assert r.status_code == 422
    assert r.json()["detail"] == message
    assert not fake.calls and len(choose.calls) == 1
    assert not any(p.is_dir() for p in Path(client.app.state.results.root).iterdir())  # no result for a refused request


def test_multi_task_model_is_loaded_once(picture: np.ndarray, tmp_path: Path, monkeypatch) -> None:
    """Tasks given one folder share one loaded pipeline, called with the request's task; so do bundled
    tasks mapped to one folder; a model that does not serve its task is refused."""
    import stablemotion.model.catalog as catalog
    import stablemotion.model.loading as model_module

    loaded: list[str] = []
    doubles = {"mini-sir": MultiPipe("sir"), "mini-multi": MultiPipe("rotation", "lens")}

    def load_pipeline(path, dtype=None, progress=True):
        loaded.append(Path(path).name)
        return doubles[Path(path).name]

    monkeypatch.setattr(model_module, "load_pipeline", load_pipeline)
    for name in doubles:
        (tmp_path / name).mkdir()
    folder = str(tmp_path / "mini-multi")
    app = create_app({"rotation": folder, "lens": tmp_path / "mini-sir" / ".." / "mini-multi", "sir": str(tmp_path / "mini-sir")},
                     result_root=tmp_path, allowed_hosts=TEST_HOSTS)
    multi = doubles["mini-multi"]
    with TestClient(app) as c:
        for task in ("rotation", "lens", "rotation"):
            assert post(c, encode(picture), task=task).status_code == 200
        assert c.app.state.models.loads == 1 and loaded == ["mini-multi"]
        assert [call["task"] for call in multi.calls] == ["rotation", "lens", "rotation"]

    # the default: every bundled task; rotation and lens share one bundled folder
    loaded.clear()
    monkeypatch.setattr(catalog, "BUNDLED_MODELS", {"sir": "mini-sir", "rotation": "mini-multi", "lens": "mini-multi"})
    monkeypatch.setattr(catalog, "bundled_model_path", lambda task: tmp_path / catalog.BUNDLED_MODELS[task])
    with TestClient(create_app(result_root=tmp_path, allowed_hosts=TEST_HOSTS)) as c:
        info = c.get("/api/info").json()
        assert [(t["name"], t["model"]) for t in info["tasks"]] == [
            ("sir", "mini-sir (bundled)"), ("rotation", "mini-multi (bundled)"), ("lens", "mini-multi (bundled)")]
        for task in ("lens", "sir", "rotation"):
            assert post(c, encode(picture), task=task).status_code == 200
        assert sorted(loaded) == ["mini-multi", "mini-sir"]
        assert doubles["mini-sir"].calls[-1]["task"] == "sir" and multi.calls[-1]["task"] == "rotation"

    # a folder whose model does not serve the task it was given for
    with TestClient(create_app({"rsc": folder}, result_root=tmp_path, allowed_hosts=TEST_HOSTS)) as c:
        r = post(c, encode(picture), task="rsc")
    assert r.status_code == 500
    assert f"the model {folder} is a model of the tasks ['rotation', 'lens'], not 'rsc'" in r.json()["detail"]
    with pytest.raises(ValueError, match=r"the model multi-double is a 'sir' model, not 'lens'"):
        create_app({"lens": MultiPipe("sir")})  # a ready pipeline is checked at once
    with pytest.raises(ValueError, match="automatic task choice"):
        create_app({"auto": FakePipe()})


def test_serve_cli_multi_task_model_serves_all_its_tasks(monkeypatch, capsys) -> None:
    from stablemotion.cli import _options
    from stablemotion.model.catalog import BUNDLED_MODELS

    multi = MultiPipe("rotation", "lens", name="models/multi")
    served = {}
    monkeypatch.setattr(_options, "load_model", lambda spec, task, dtype, quiet=False: multi)
    monkeypatch.setattr(_options, "prepare_for_inference", lambda pipe, device, channels_last=True: None)
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: served.update(app=app, **kw))
    assert main(["serve", "--model", "models/multi", "--device", "cpu", "--task-threshold", "0.8"]) == 0
    assert "rotation, lens: serving models/multi" in capsys.readouterr().out
    with TestClient(served["app"], base_url="http://127.0.0.1:7860") as c:
        info = c.get("/api/info").json()
        registry = c.app.state.models
        assert registry.get("rotation") is multi and registry.get("lens") is multi
    models = {t["name"]: t["model"] for t in info["tasks"]}
    assert models["rotation"] == models["lens"] == "models/multi"
    assert set(models) == {*BUNDLED_MODELS, "rotation", "lens"} and info["auto"]["threshold"] == 0.8
    assert main(["serve", "--task-threshold", "1.5"]) == 2
    assert "--task-threshold must be a number from 0 to 1 (a confidence), got 1.5" in capsys.readouterr().err
