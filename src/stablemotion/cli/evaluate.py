"""``stablemotion evaluate``, ``stablemotion study steps|ensemble`` and ``stablemotion judge``.

``evaluate`` and ``study`` run data-parallel unchanged under ``accelerate launch``: each
process rectifies every N-th test image, the main process merges the scores. All outputs
are resumable (finished images are skipped) and written atomically.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..tasks import available_tasks
from ._options import (
    MAX_ENSEMBLE,
    MAX_SIDE,
    MAX_STEPS,
    Dist,
    add_device_options,
    add_inference_options,
    float_arg,
    inference_kwargs,
    int_arg,
    seed_arg,
)

#: judge: most retries of a request, longest wait for one answer (seconds).
MAX_RETRIES = 100
MAX_TIMEOUT = 3600.0


def _common(p: argparse.ArgumentParser, study: bool = False) -> None:
    p.add_argument("--model", required=True, help="pipeline folder (see import-checkpoint / tiny-model)")
    p.add_argument("--dataset", required=True, type=Path, help="DIR-D / RS-Real / task-folder test split (or its root)")
    p.add_argument("--task", choices=available_tasks(), default=None, help="check the model is for this task (a multi-task model: which of its tasks to evaluate)")
    p.add_argument("--split", default=None, help="split folder (default: the task's protocol: testing for DIR-D, test for RS-Real and task folders)")
    p.add_argument("--format", dest="kind", choices=("auto", "dird", "rsreal", "folder"), default="auto",
                   help="dataset layout (default: the task's protocol when the folder has it, else detected)")
    p.add_argument("--out", type=Path, required=True, help="output folder (rerun with the same folder to resume)")
    add_inference_options(p, steps=not study, ensemble=not study)
    add_device_options(p)
    p.add_argument("--seed", type=seed_arg, default=0, help="noise seed of every image")
    p.add_argument("--limit", type=int_arg(1), default=None, help="only the first N test images (sorted by name)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="run a model over a test split by its task's protocol: results, per-image PSNR/SSIM(/EPE) CSV, markdown summary with the identity baseline",
        description=(
            "Writes OUT/results/NAME.png, OUT/per_image.csv, OUT/summary.md and OUT/summary.json; EPE (pixels, over the "
            "protocol's region) when the test set has gt flows (flow/, RS-Real npz). Finished images are "
            "skipped on a rerun. Under `accelerate launch` every process takes its shard and the main process merges."
        ),
    )
    _common(p)
    p.add_argument("--save-flow", action="store_true", help="also write OUT/flows/NAME.npy (H, W, 2), pixels")
    p.add_argument("--extra-metrics", nargs="+", choices=("fid", "lpips"), default=(),
                   help="also FID / LPIPS (needs pytorch-fid / lpips and their weights in the torch hub cache)")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("study", help="the paper's ablations: steps (SSD curve) or ensemble (AES size and mode)")
    ssub = p.add_subparsers(dest="study", metavar="STUDY", required=True)
    s = ssub.add_parser("steps", help="PSNR/SSIM versus DDIM steps -> OUT/steps.{csv,md,png}")
    _common(s, study=True)
    s.add_argument("--steps", type=int_arg(1, MAX_STEPS), nargs="+", default=[1, 2, 4, 8, 16, 50],
                   help=f"step counts, 1 to {MAX_STEPS} (default 1 2 4 8 16 50)")
    s.set_defaults(func=_study_steps)
    s = ssub.add_parser("ensemble", help="PSNR/SSIM and time versus AES size per mode -> OUT/ensemble.{csv,md,png}")
    _common(s, study=True)
    s.add_argument("--sizes", type=int_arg(1, MAX_ENSEMBLE), nargs="+", default=list(range(1, 9)),
                   help=f"ensemble sizes, 1 to {MAX_ENSEMBLE} (default 1..8)")
    s.add_argument("--modes", nargs="+", choices=("image", "flow", "latent"), default=["image", "flow", "latent"])
    s.set_defaults(func=_study_ensemble)

    p = sub.add_parser(
        "judge",
        help="rule-based perceptual score with a vision-language model as judge (OpenAI-Responses-compatible API)",
        description=(
            "Scores each (input, output) pair, matched by file stem, on the task's rubric (docs/method.md, \"Evaluation protocol\"). The endpoint comes "
            "from --provider FILE (JSON: base_url, model, api_key_env, ...) or the environment: STABLEMOTION_JUDGE_BASE_URL, "
            "STABLEMOTION_JUDGE_MODEL and STABLEMOTION_JUDGE_API_KEY (or OPENAI_API_KEY / OPENAI_BASE_URL). The key is never "
            "printed or written. Outputs: OUT/judgements.jsonl (one line per answer, written as it arrives), "
            "OUT/judgements.csv, OUT/summary.md, OUT/summary.json; with --compare also the per-image win/tie/loss. "
            "Exit status 3 when some pairs have no valid answer (they are listed, never averaged)."
        ),
    )
    p.add_argument("inputs", type=Path, help="folder of input images")
    p.add_argument("results", type=Path, help="folder of the method's outputs (matched by file stem)")
    p.add_argument("--task", choices=("sir", "rsc"), required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--compare", type=Path, default=None, metavar="RESULTS_B",
                   help="a second method's outputs: each scored against the input in its own request; win/tie/loss")
    p.add_argument("--provider", type=Path, default=None, help="provider JSON file (see above)")
    p.add_argument("--model-name", dest="judge_model", default=None, help="override the judge model name")
    p.add_argument("--dry-run", action="store_true", help="list the pairs and write the prompts; no requests")
    p.add_argument("--resume", action="store_true", help="skip pairs already answered (valid) in OUT/judgements.jsonl")
    p.add_argument("--retries", type=int_arg(0, MAX_RETRIES), default=4,
                   help="retries on 408/429/5xx and network errors (default 4)")
    p.add_argument("--timeout", type=float_arg(0.0, MAX_TIMEOUT, open_low=True), default=120.0,
                   help="seconds per request (default 120)")
    p.add_argument("--max-side", type=int_arg(1, MAX_SIDE), default=1024,
                   help="downscale images so the longer side is at most N px")
    p.add_argument("--limit", type=int_arg(1), default=None, help="only the first N pairs")
    p.set_defaults(func=_judge)


# --------------------------------------------------------------------------- helpers
def _setup(args: argparse.Namespace) -> tuple[Any, Any, Any, Dist]:
    from ..evaluation.runner import EvalSettings, open_eval_set
    from ._options import load_model, prepare_for_inference, resolve_dtype, settle_dtype

    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {args.limit}")
    kwargs = inference_kwargs(args)
    dist = Dist(args.device)
    if not args.dataset.exists():
        raise FileNotFoundError(f"--dataset {args.dataset}: no such folder")
    settle_dtype(args, dist.device, show=dist.main)  # the settings record the dtype that ran
    pipe = load_model(args.model, args.task, resolve_dtype(args.dtype), quiet=True)
    task = pipe.resolve_task(args.task).name  # a multi-task model: --task picks which
    eval_set = open_eval_set(args.dataset, task, split=args.split, kind=args.kind)
    prepare_for_inference(pipe, dist.device, args.channels_last)
    settings = EvalSettings(
        steps=kwargs["num_inference_steps"],
        ensemble=kwargs["ensemble_size"],
        ensemble_mode=kwargs["ensemble_mode"],
        processing_resolution=kwargs["processing_resolution"],
        decode_scale=kwargs["decode_scale"],
        seed=args.seed,
        dtype=args.dtype,
        final_step=kwargs["final_step"],
        flow_regularization=kwargs["flow_regularization"],
        task=task if len(pipe.tasks) > 1 else None,
    )
    return pipe, eval_set, settings, dist


def _progress(dist: Dist, desc: str) -> Any:
    from tqdm import tqdm

    return lambda it: tqdm(it, desc=f"{desc} [{dist.rank}/{dist.world}]" if dist.world > 1 else desc, unit="img",
                           disable=not dist.main)


def _evaluate(args: argparse.Namespace) -> int:
    from ..evaluation.runner import evaluate

    pipe, eval_set, settings, dist = _setup(args)
    summary = evaluate(pipe, eval_set, args.out, settings, model_name=str(args.model), rank=dist.rank,
                       world=dist.world, barrier=dist.barrier, limit=args.limit, save_flow=args.save_flow,
                       extra_metrics=args.extra_metrics, progress=_progress(dist, "evaluate"))
    if summary is not None:
        m = summary.means
        with_epe = "epe" in summary.columns()
        epe = f"  EPE {m['epe']:.4f} px" if with_epe else ""
        epe_id = f"  EPE {m['identity_epe']:.4f} px" if with_epe else ""
        print(f"{len(summary.rows)} images  PSNR {m['psnr']:.4f} dB  SSIM {m['ssim']:.4f}{epe}  "
              f"(identity: PSNR {m['identity_psnr']:.4f} dB  SSIM {m['identity_ssim']:.4f}{epe_id})")
        for name, v in summary.extra.items():
            print(f"{name.upper()}: {v.get('note') or v}")
        print(f"wrote {args.out / 'per_image.csv'}, {args.out / 'summary.md'}")
    return 0


def _study_steps(args: argparse.Namespace) -> int:
    from ..evaluation.runner import study_steps

    if any(s < 1 for s in args.steps):
        raise ValueError(f"--steps must be >= 1, got {args.steps}")
    pipe, eval_set, settings, dist = _setup(args)
    res = study_steps(pipe, eval_set, args.out, steps=args.steps, base=settings, model_name=str(args.model),
                      limit=args.limit, rank=dist.rank, world=dist.world, barrier=dist.barrier,
                      progress=_progress(dist, "study steps"))
    if res is not None:
        print(res.markdown.read_text())
        print(f"wrote {res.csv}, {res.markdown}, {res.plot}")
    return 0


def _study_ensemble(args: argparse.Namespace) -> int:
    from ..evaluation.runner import study_ensemble

    if any(s < 1 for s in args.sizes):
        raise ValueError(f"--sizes must be >= 1, got {args.sizes}")
    pipe, eval_set, settings, dist = _setup(args)
    res = study_ensemble(pipe, eval_set, args.out, sizes=args.sizes, modes=args.modes, base=settings,
                         model_name=str(args.model), limit=args.limit, rank=dist.rank, world=dist.world,
                         barrier=dist.barrier, progress=_progress(dist, "study ensemble"))
    if res is not None:
        print(res.markdown.read_text())
        print(f"wrote {res.csv}, {res.markdown}, {res.plot}")
    return 0


def _judge(args: argparse.Namespace) -> int:
    from ..evaluation import judge as J

    pairs = J.match_pairs(args.inputs, args.results, compare=args.compare, limit=args.limit)
    rubric = J.RUBRICS[args.task]
    if args.dry_run:
        path = J.write_dry_run(pairs, rubric, args.out)
        print(f"{len(pairs)} pairs ({', '.join(sorted({p.method for p in pairs}))}); prompts written to {path}")
        for p in pairs[:10]:
            print(f"  {p.method}: {p.name}: {p.input_path} -> {p.output_path}")
        return 0
    provider = J.Provider.load(args.provider, model=args.judge_model)
    client = J.JudgeClient(provider, retries=args.retries, timeout=args.timeout)
    print(f"judge: {provider.describe()}", file=sys.stderr)
    report = J.judge_pairs(client, pairs, rubric, args.out, resume=args.resume, max_side=args.max_side,
                           log=lambda msg: print(msg, file=sys.stderr))
    print(report.markdown)
    return 0 if not report.failures else 3
