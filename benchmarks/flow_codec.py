"""The VAE as a flow codec: round-trip error of gamma-encoded flows, stock vs fine-tuned.

    python benchmarks/flow_codec.py                      # tiny VAE here: stock vs fine-tuned (trains it)
    python benchmarks/flow_codec.py --vae stabilityai/stable-diffusion-2 --subfolder vae \\
        --size 384x512 --device cuda [--finetuned runs/vae/vae]   # the SD2 VAE on a GPU

For synthetic SIR and RSC samples (held-out seeds) it encodes ``[u, v, 1] / 50`` with the
VAE encoder mean, decodes it, and reports the end-point error of the decoded flow and
the PSNR of the input warped with it against the ground truth, next to the identity and
the exact flow, and the roughness (mean |5-point Laplacian|, px, as ``benchmarks/roughness.py``)
of the decoded flow in the outer 8% band and in the centre, next to the ground truth's. The
fine-tuned codec is ``stablemotion train`` with ``train.stage: vae`` (decoder only; the encoder
is frozen so image latents stay valid); ``--flow-smooth W`` adds the smoothness term
(``loss.weights.flow_smooth``) to the fine-tune here.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine_description, markdown_table, write_section  # noqa: E402
from stablemotion.core.flow import decode_flow, encode_flow, end_point_error, warp  # noqa: E402
from stablemotion.core.metrics import psnr_torch  # noqa: E402
from stablemotion.data.synth import make_sample  # noqa: E402


def synthetic_set(task: str, num: int, size: tuple[int, int], seed: int) -> list[dict[str, torch.Tensor]]:
    """Held-out samples as tensors: image, gt in [-1, 1] (1, 3, H, W), flow (1, 2, H, W) px."""
    from stablemotion.io.images import image_to_tensor

    out = []
    for i in range(num):
        s = make_sample("rectangling" if task == "sir" else "rolling_shutter", seed, i, size)
        image, gt = (s.input, s.gt) if task == "sir" else (s.rs, s.gs)
        out.append({"image": image_to_tensor(image)[None], "gt": image_to_tensor(gt)[None],
                    "flow": torch.from_numpy(s.flow).permute(2, 0, 1)[None].float()})
    return out


@torch.no_grad()
def round_trip(vae, samples, padding: str, device: str) -> list[float]:
    from roughness import roughness

    epe, psnr, exact, ident, rough, gt_rough = [], [], [], [], [], []
    for s in samples:
        flow = s["flow"].to(device)
        z = vae.encode(encode_flow(flow).to(vae.dtype)).latent_dist.mean
        rec = decode_flow(vae.decode(z).sample.float())
        rough.append(roughness(rec[0].cpu()))
        gt_rough.append(roughness(flow[0].cpu()))
        img, gt = s["image"].to(device), s["gt"].to(device)
        epe.append(float(end_point_error(rec, flow)[0]))
        psnr.append(float(psnr_torch(warp(img, rec, padding=padding), gt)))
        exact.append(float(psnr_torch(warp(img, flow, padding=padding), gt)))
        ident.append(float(psnr_torch(img, gt)))
    r, g = np.mean(rough, axis=0), np.mean(gt_rough, axis=0)
    return [float(np.mean(epe)), float(np.mean(psnr)), float(np.mean(exact)), float(np.mean(ident)),
            f"{r[0]:.3f} / {r[1]:.3f}", f"{g[0]:.3f} / {g[1]:.3f}"]


def finetune_tiny(size: tuple[int, int], steps: int, workdir: Path, train_encoder: bool = False,
                  flow_smooth: float = 0.0) -> Path:
    """Train the tiny VAE's decoder (and encoder) on synthetic SIR flows; returns the vae folder."""
    from stablemotion.data.synth import write_rectangling_dataset
    from stablemotion.training import Trainer
    from stablemotion.training.config import load_config

    data = workdir / "data"
    if not data.exists():
        write_rectangling_dataset(data, 64, size=size, split="training", seed=1, ext="png")
    cfg = {
        "task": "sir",
        "data": {"format": "dird", "train": str(data / "training"), "resolution": list(size), "num_workers": 0},
        "model": {"base": "tiny"},
        "loss": {"vgg_weights": None, "weights": {"flow_smooth": flow_smooth}},
        "optim": {"lr": 1e-3},
        "train": {"stage": "vae", "batch_size": 8, "max_steps": steps, "device": "cpu", "ema_decay": 0.99,
                  "vae_train_encoder": train_encoder},
        "checkpoint": {"output_dir": str(workdir / f"run-{int(train_encoder)}"), "every": 10**9},
        "logging": {"every": 10**9, "tensorboard": False},
        "validation": {"every": 0},
    }
    (workdir / "vae.yaml").write_text(yaml.safe_dump(cfg))
    result = Trainer(load_config(workdir / "vae.yaml")).train(show_progress=True)
    assert result.pipeline_dir is not None
    return result.pipeline_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vae", default=None, help="AutoencoderKL folder or hub id (default: the tiny test VAE)")
    parser.add_argument("--subfolder", default=None)
    parser.add_argument("--finetuned", default=None, help="fine-tuned VAE folder (default: fine-tune the tiny one here)")
    parser.add_argument("--size", default="64x64", help="HxW of the synthetic samples")
    parser.add_argument("--num", type=int, default=24, help="held-out samples per task")
    parser.add_argument("--train-steps", type=int, default=300)
    parser.add_argument("--flow-smooth", type=float, default=0.0,
                        help="loss.weights.flow_smooth of the fine-tune here (default 0: off)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    size = tuple(int(v) for v in args.size.lower().split("x"))
    from diffusers import AutoencoderKL

    from stablemotion.model import tiny_components

    if args.vae is None:
        stock = tiny_components("sir")["vae"]
        label = "tiny test VAE (random weights)"
    else:
        stock = AutoencoderKL.from_pretrained(args.vae, subfolder=args.subfolder)
        label = f"{args.vae}" + (f"/{args.subfolder}" if args.subfolder else "")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        variants: list[tuple[str, object]] = [("stock", stock)]
        if args.finetuned:
            variants.append(("fine-tuned", AutoencoderKL.from_pretrained(args.finetuned)))
            train_note = f"fine-tuned: {args.finetuned}"
        elif args.vae is None:
            dec = finetune_tiny(size, args.train_steps, Path(tmp), flow_smooth=args.flow_smooth)
            both = finetune_tiny(size, args.train_steps, Path(tmp), train_encoder=True, flow_smooth=args.flow_smooth)
            variants += [("fine-tuned decoder", AutoencoderKL.from_pretrained(dec)),
                         ("fine-tuned encoder + decoder", AutoencoderKL.from_pretrained(both))]
            train_note = (f"fine-tuned here: {args.train_steps} steps x batch 8 on 64 synthetic SIR samples, decoder "
                          f"only and (train.vae_train_encoder) encoder + decoder ({time.perf_counter() - t0:.0f} s)")
        else:
            train_note = "no fine-tuned VAE given"
        rows = []
        for task, padding in (("sir", "border"), ("rsc", "zeros")):
            samples = synthetic_set(task, args.num, size, seed=12345)
            for name, vae in variants:
                vae = vae.to(args.device).eval()
                epe, p, exact, ident, rough, gt_rough = round_trip(vae, samples, padding, args.device)
                rows.append([task.upper(), name, epe, p, exact, ident, rough, gt_rough])
    table = markdown_table(
        ["task", "VAE", "round-trip EPE (px)", "warp PSNR, decoded flow (dB)", "warp PSNR, exact flow (dB)",
         "identity PSNR (dB)", "round-trip roughness band / centre (px)", "gt roughness band / centre (px)"], rows)
    print(machine_description())
    print(f"VAE: {label}; {train_note}; {args.num} held-out samples per task at {size[0]}x{size[1]}")
    print(table)
    if not args.no_write:
        body = (f"VAE: {label}; {train_note}. {args.num} held-out synthetic samples per task at {size[0]}x{size[1]} "
                "(SIR flows were in the fine-tuning distribution, RSC flows were not).\n\n" + table +
                "\n\nOn a GPU, the SD2 VAE: `python benchmarks/flow_codec.py --vae stabilityai/stable-diffusion-2 "
                "--subfolder vae --size 384x512 --device cuda` (add `--finetuned runs/vae/vae` after "
                "`stablemotion train configs/vae_sir.yaml`).")
        print(f"updated {write_section('flow_codec', 'The VAE as a flow codec', body)}")


if __name__ == "__main__":
    main()
