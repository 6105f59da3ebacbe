"""Start-up and one-image latency of the command line (issue: one input contract, one CLI layer).

    python benchmarks/startup.py [--repeats 5]

Each row is a fresh process, timed wall-clock, the median of ``--repeats`` interleaved
runs (the rows take turns, so a busy moment hits them alike). ``import torch`` and
``import diffusers`` are the floor the model-loading commands cannot go under: a one-image
``rectify`` needs both. Rows:

* ``python -c pass`` -- the interpreter alone;
* ``stablemotion --help`` -- every command's parser, no torch (target < 0.5 s);
* ``import torch`` / ``import torch, diffusers`` -- the floor of any command that runs a model;
* ``stablemotion rectify`` -- one 512x384 stitched image with the bundled SIR model (mask
  derived, outputs written; target < 3 s), and the pipeline call alone inside it.

``--compare-src DIR`` adds the ``--help`` and ``rectify`` rows of another checkout's ``src``
(e.g. a ``git worktree`` of an older commit), run by the same interpreter, interleaved.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import markdown_table, write_section  # noqa: E402

BIN = Path(sys.executable).parent


def _image(folder: Path) -> Path:
    import numpy as np
    from PIL import Image
    from skimage import data

    im = np.array(Image.fromarray(data.astronaut()).resize((512, 384)))
    im[:40] = 0
    im[:, :30] = 0  # an empty border, so a mask is derived
    path = folder / "pano.jpg"
    Image.fromarray(im).save(path, quality=95)
    return path


def _time(cmd: list[str], env: dict[str, str] | None = None) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env=env)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    ap.add_argument("--compare-src", type=Path, default=None, help="another checkout's src/ to time alongside")
    ap.add_argument("--compare-label", default="before", help="name of --compare-src in the table")
    args = ap.parse_args()
    py = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        image = _image(folder)
        call = ("import time, numpy as np, torch; from PIL import Image; "
                "from stablemotion.model import load_bundled_pipeline; "
                "from stablemotion.core.image_processing import derive_mask; "
                f"im = np.array(Image.open({str(image)!r})); p = load_bundled_pipeline('sir'); "
                "p.set_progress_bar_config(disable=True); m = derive_mask(im); "
                "t = time.perf_counter(); p(im, mask=m, generator=torch.Generator().manual_seed(0)); "
                "print(time.perf_counter() - t)")
        rows = {
            "python -c pass": [py, "-c", "pass"],
            "stablemotion --help": [str(BIN / "stablemotion"), "--help"],
            "python -c 'import torch'": [py, "-c", "import torch"],
            "python -c 'from diffusers import AutoencoderKL, UNet2DConditionModel, ...'": [
                py, "-c", "from diffusers import AutoencoderKL, UNet2DConditionModel, DDIMScheduler, DiffusionPipeline"],
            "stablemotion rectify (1 image, bundled SIR)": None,
        }
        env = None
        if args.compare_src is not None:
            import os

            env = {**os.environ, "PYTHONPATH": str(args.compare_src.resolve())}
            rows[f"{args.compare_label}: stablemotion --help"] = [py, "-m", "stablemotion", "--help"]
            rows[f"{args.compare_label}: stablemotion rectify"] = None
        times: dict[str, list[float]] = {k: [] for k in rows}
        inner: list[float] = []
        for i in range(args.repeats):
            for label, cmd in rows.items():
                other = label.startswith(f"{args.compare_label}: ")
                if cmd is None:
                    out = folder / f"out{i}{'_cmp' if other else ''}"
                    cmd = [py, "-m", "stablemotion", "rectify", str(image), "--out", str(out)]
                times[label].append(_time(cmd, env if other else None))
            res = subprocess.run([py, "-c", call], check=True, capture_output=True, text=True)
            inner.append(float(res.stdout.strip().splitlines()[-1]))
    med = {k: statistics.median(v) for k, v in times.items()}
    base = med["python -c pass"]
    table = [[k, f"{v:.2f}", f"{v / base:.1f}x"] for k, v in med.items()]
    table.append(["  of which the pipeline call (in-process)", f"{statistics.median(inner):.2f}", "-"])
    for row in table:
        print(f"{row[0]:48s} {row[1]:>7s} s  {row[2]}")
    if args.no_write:
        return
    help_t, rect_t = med["stablemotion --help"], med["stablemotion rectify (1 image, bundled SIR)"]
    floor = med["python -c 'from diffusers import AutoencoderKL, UNet2DConditionModel, ...'"]
    body = (
        f"Median of {args.repeats} interleaved fresh processes each (wall-clock seconds; ratio to `python -c pass`).\n\n"
        + markdown_table(["command", "seconds", "vs python"], table)
        + f"\n\nTargets: `--help` under 0.5 s: {help_t:.2f} s ({'met' if help_t < 0.5 else 'missed'}); one-image "
        f"bundled `rectify` under 3 s: {rect_t:.2f} s ({'met' if rect_t < 3 else 'missed'}). Importing the "
        f"diffusers classes a pipeline is made of costs {floor:.2f} s here (torch, torch._dynamo, every autoencoder "
        "of diffusers, transformers through its quantizers), so a command that loads a model cannot start faster "
        "than that on this machine; the command line imports them only in the commands that run a model."
    )
    write_section("startup", "Command-line start-up and one-image latency", body)


if __name__ == "__main__":
    main()
