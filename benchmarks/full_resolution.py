"""Peak memory and time of ``stablemotion rectify`` on one very large panorama, per megapixel.

    python benchmarks/full_resolution.py [--sizes 2000x8000 5000x20000] [--bits 8 16] [--model FOLDER]

Each size is a stitched-looking panorama (smooth random content, a wavy black border top and
bottom, JPEG quality 90 for 8 bits, a 16-bit PNG for 16 bits) written by a first process. A
second, fresh process loads the model, notes its resident memory, then rectifies the file
exactly as ``stablemotion rectify`` does (:func:`stablemotion.model.rectify_files.read_input`
then :func:`~stablemotion.model.rectify_files.rectify_decoded`: the mask derived from the
border, the network at ``--max-work-pixels``' 1 Mpx in windows, the flow upsampled and the
image warped at full size a strip at a time, the PNG and flow picture written) and reports its
peak resident memory (``ru_maxrss``) above the loaded model, and the wall time. The
documented budget (README, "Very large images"): at most 2 GB above the model for 100
megapixels of 8-bit input.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import command_line, machine_description, markdown_table, write_section  # noqa: E402

BUDGET_BYTES = 2 * 10**9  # above the loaded model, for 100 megapixels of 8-bit input

_MAKE = r"""
import sys, numpy as np, cv2
h, w, bits, path = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
rng = np.random.default_rng(0)
small = rng.random((max(2, h // 16), max(2, w // 16), 3)).astype(np.float32)
img = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
top = (h * 0.04 * (1 + np.sin(np.arange(w) / w * 12))).astype(int)
bottom = h - 1 - (h * 0.04 * (1 + np.cos(np.arange(w) / w * 9))).astype(int)
rows = np.arange(h)[:, None]
scale = 65535 if bits == 16 else 255
img = (np.clip(img, 0, 1) * scale).astype(np.uint16 if bits == 16 else np.uint8)
img[(rows < top) | (rows > bottom)] = 0
params = [cv2.IMWRITE_JPEG_QUALITY, 90] if path.endswith(".jpg") else [cv2.IMWRITE_PNG_COMPRESSION, 1]
assert cv2.imwrite(path, img, params)
"""

_RUN = r"""
import json, resource, sys, time
from pathlib import Path
import torch
torch.set_num_threads(int(sys.argv[4]))
from stablemotion.model import bundled_model_path, load_pipeline
from stablemotion.model.rectify_files import FileOptions, output_paths, read_input, rectify_decoded

def rss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
pipe = load_pipeline(sys.argv[2] or bundled_model_path("sir"), torch.float32, progress=False)
pipe.set_progress_bar_config(disable=True)
base = rss()
t0 = time.perf_counter()
options = FileOptions(max_pixels=None)
outputs = output_paths(Path(sys.argv[3]), "pano", options, with_mask=True, ensemble=1)
res = rectify_decoded(pipe, pipe.resolve_task("sir"), read_input(sys.argv[1], options), outputs, options)
print(json.dumps({"base": base, "peak": rss(), "seconds": time.perf_counter() - t0,
                  "dtype": str(res.image.dtype), "unchanged": res.unchanged, "work": list(res.work_size)}))
"""


def measure(height: int, width: int, bits: int, model: str | None, threads: int) -> dict:
    """Make the panorama in one process and rectify it in a fresh one -> its figures."""
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / ("pano.png" if bits == 16 else "pano.jpg"))
        subprocess.run([sys.executable, "-c", _MAKE, str(height), str(width), str(bits), path], check=True)
        out = subprocess.run([sys.executable, "-c", _RUN, path, model or "", str(Path(tmp) / "out"), str(threads)],
                             check=True, capture_output=True, text=True)
    rec = json.loads(out.stdout.strip().splitlines()[-1])
    rec.update(height=height, width=width, bits=bits)
    return rec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", nargs="+", default=["2000x8000", "5000x20000"], help="HxW panoramas")
    ap.add_argument("--bits", nargs="+", type=int, default=[8, 16], choices=(8, 16),
                    help="input bit depths (16-bit inputs only up to 30 megapixels)")
    ap.add_argument("--model", default=None, help="SIR pipeline folder (default: the bundled mini)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    args = ap.parse_args()
    rows, recs = [], []
    for size in args.sizes:
        h, w = (int(v) for v in size.lower().split("x"))
        for bits in args.bits:
            if bits == 16 and h * w > 30_000_000:
                continue  # writing a 100-megapixel 16-bit PNG alone takes minutes; the 8-bit row bounds it
            rec = measure(h, w, bits, args.model, args.threads)
            recs.append(rec)
            mp = h * w / 1e6
            above = rec["peak"] - rec["base"]
            rows.append([f"{w} x {h}", f"{mp:.0f}", bits, rec["dtype"], f"{above / 1e9:.2f}", f"{above / mp / 1e6:.1f}",
                         f"{rec['seconds']:.0f}", f"{rec['seconds'] / mp:.2f}",
                         f"{rec['work'][1]} x {rec['work'][0]}"])
            print(" | ".join(str(v) for v in rows[-1]), flush=True)
    if args.no_write:
        return
    table = markdown_table(["panorama (W x H)", "Mpx", "input bits", "output dtype", "peak above model, GB",
                            "B / px", "seconds", "s / Mpx", "network ran at"], rows)
    largest = max(recs, key=lambda r: r["height"] * r["width"])
    verdict = ("met" if largest["peak"] - largest["base"] <= BUDGET_BYTES * largest["height"] * largest["width"] / 1e8
               else "missed")
    body = (f"`{command_line()}` on {machine_description()}.\n\n{table}\n\n"
            f"Peak resident memory of a fresh process above the loaded model (bundled SIR mini unless `--model`), "
            f"rectifying one file as `stablemotion rectify` does (derived mask, 1-megapixel working size in "
            f"windows, flow upsampled and image warped a strip at a time, PNG and flow picture written). "
            f"Budget: 2 GB above the model for 100 megapixels of 8-bit input, scaled by size for the largest row "
            f"here: **{verdict}**.")
    write_section("full_resolution", "Full resolution within bounded memory", body)


if __name__ == "__main__":
    main()
