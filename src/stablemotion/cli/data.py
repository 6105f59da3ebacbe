"""Data commands: ``synth`` (synthetic datasets) and ``label-flows`` (pseudo flows).

Examples::

    stablemotion synth rectangling /tmp/dird --num 500 --size 384x512 --split training
    stablemotion synth rolling-shutter /tmp/rs --num 200 --size 480x640 --npz-size 256x256 --split test
    stablemotion synth rotation /tmp/rot --num 200 --max-angle 15
    stablemotion synth lens /tmp/lens --num 200 --max-strength 0.4

The ``synth`` kinds and their declared options come from the generator registry
(:mod:`stablemotion.data.synthesis`): a generator module that declares a generator gets its
sub-command without changes here. Options that need more than a declared number or choice
(sir's ``--mesh``, rsc's ``--npz-size`` / ``--full-res-jpg``) are added by :data:`SYNTH_EXTRAS`.

    stablemotion label-flows /data/DIR-D --split training --out /data/DIR-D/training/flow
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.constants import DIS_PRESET_NAMES
from ._options import MAX_SIDE, float_arg, int_arg, seed_arg, size_arg

if TYPE_CHECKING:
    from ..data.synthesis import SynthOption, SynthSpec

#: Bounds of the data commands' counts (far above any real run; a typo fails at once).
MAX_SAMPLES = 10_000_000
MAX_WORKERS = 256


def _min_size(minimum: int, what: str) -> Any:
    """``size_arg`` (the one size rule of the command line) with a lower bound per side."""
    parse = size_arg(what)

    def check(text: str) -> tuple[int, int]:
        size = parse(text)
        if min(size) < minimum:
            raise argparse.ArgumentTypeError(f"{what} must be at least {minimum}x{minimum}, got {text!r}")
        return size

    return check


_size = _min_size(8, "--size")  # at most MAX_SIDE (8192) a side: size_arg's bound


# --------------------------------------------------------------------------- per-generator options
def _sir_arguments(parser: argparse.ArgumentParser) -> None:
    from ..data.synthesis.sir import COLS, ROWS, STITCHED_MESH

    mesh = _min_size(1, "--mesh")
    parser.add_argument("--mesh", type=mesh, default=None,
                        help=f"mesh cells ROWSxCOLS (default {ROWS}x{COLS} for inset, "
                             f"{STITCHED_MESH[0]}x{STITCHED_MESH[1]} for stitched)")


def _sir_options(args: argparse.Namespace) -> dict[str, Any]:
    from ..data.synthesis.sir import COLS, ROWS, STITCHED_MESH

    mesh = args.mesh or ((ROWS, COLS) if args.style == "inset" else STITCHED_MESH)
    return {"rows": mesh[0], "cols": mesh[1]}


def _rsc_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--npz-size", type=_min_size(8, "--npz-size"), default=None,
                        help="HxW of the arrays in the npz files (default: --size); flows are rescaled")
    parser.add_argument("--full-res-jpg", action=argparse.BooleanOptionalAction, default=None,
                        help="also write jpg/ and jpg_gt/ full-resolution images (default: for split 'test')")


def _rsc_options(args: argparse.Namespace) -> dict[str, Any]:
    return {"npz_size": args.npz_size, "full_res_jpg": args.full_res_jpg}


#: Command-line options of a generator beyond its declared ones, by generator name:
#: ``(add_arguments(parser), to_options(args) -> generator / layout options)``.
SYNTH_EXTRAS: dict[
    str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], dict[str, Any]]]
] = {
    "rectangling": (_sir_arguments, _sir_options),
    "rolling_shutter": (_rsc_arguments, _rsc_options),
}


def _option_type(opt: SynthOption) -> Any:
    """argparse ``type=`` of a generator's declared number option: a finite number (``nan`` and
    ``inf`` would pass every bound); its own bounds (``SynthOption.low``/``high``) are checked by
    the generator before anything is written, in one line naming the option (exit 2)."""
    if opt.type is float:
        return float_arg(-math.inf)
    if opt.type is int:
        return int_arg(-(2**63), 2**63 - 1)
    return opt.type


def _add_kinds(parser: argparse.ArgumentParser, parser_class: type[argparse.ArgumentParser]) -> None:
    """The ``synth`` sub-commands: one per declared generator, in the order of their streams."""
    from ..data.synthesis import get_generator, synth_tasks

    kinds = parser.add_subparsers(dest="kind", metavar="KIND", required=True, parser_class=parser_class)
    for name in synth_tasks():
        _add_kind(kinds, get_generator(name))


def _lazy_synth_parser(parser: argparse.ArgumentParser) -> None:
    """Make ``parser`` (``stablemotion synth``) add its kinds when it is first used: building the
    command line then imports no generator (numpy, OpenCV, torch), and a generator declared after
    the parser was built still gets its sub-command."""
    base = type(parser)

    class SynthParser(base):  # type: ignore[valid-type, misc]
        kinds_added = False

        def parse_known_args(  # type: ignore[override]
            self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
        ) -> tuple[argparse.Namespace, list[str]]:
            if not self.kinds_added:
                self.kinds_added = True
                _add_kinds(self, base)
            return super().parse_known_args(args, namespace)

    parser.__class__ = SynthParser


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="make a synthetic dataset with exact flows from ordinary photos")
    _lazy_synth_parser(p)
    _register_label_flows(sub)


def _add_kind(kinds: argparse._SubParsersAction, synth: SynthSpec) -> None:
    """``stablemotion synth NAME``: the common options, the generator's declared options and its
    :data:`SYNTH_EXTRAS`."""
    k = kinds.add_parser(synth.cli_name, help=synth.help)
    k.add_argument("out", type=Path, help="dataset root to write (the split folder goes inside)")
    k.add_argument("--num", type=int_arg(1, MAX_SAMPLES), default=100, help="number of samples (default 100)")
    default_size = f"{synth.size[0]}x{synth.size[1]}"
    k.add_argument("--size", type=_size, default=_size(default_size), help=f"HxW in pixels (default {default_size})")
    k.add_argument("--split", default=synth.split, help=f"split folder name (default {synth.split})")
    k.add_argument("--seed", type=seed_arg, default=0, help="sample i depends only on (seed, i)")
    k.add_argument("--start", type=int_arg(0, MAX_SAMPLES), default=0,
                   help="index of the first sample (to extend a dataset)")
    k.add_argument("--photos", default=None,
                   help="a photo folder, or sources joined by '+': bundled, bundled-train, bundled-test, "
                        "procedural, urban, or an installed photo pool (debian, debian-train, debian-test, ...: "
                        "see `stablemotion photos` and configs/install_photos.sh); weight with '*N', e.g. "
                        "debian-train+procedural*10; default: bundled")
    k.add_argument("--ext", choices=("jpg", "png"), default="jpg", help="image format (jpg as the real datasets)")
    k.add_argument("--quality", type=int_arg(1, 100), default=95, help="JPEG quality, 1 to 100 (default 95)")
    k.add_argument("--workers", type=int_arg(1, MAX_WORKERS), default=2, help="processes (default 2)")
    k.add_argument("--force", action="store_true", help="write into non-empty folders")
    if synth.identity is not None:
        k.add_argument("--identity-fraction", type=float_arg(0.0, 1.0), default=0.0,
                       help="share of identity samples: the same scene with nothing to correct (target as "
                            "input, zero flow), so a model learns to leave a correct image alone (default 0)")
    for opt in synth.options:  # the generator's declared options
        if not opt.cli_flag:
            continue
        extra: dict[str, Any] = {"action": opt.action} if opt.action is not None else {"type": _option_type(opt)}
        if opt.choices is not None:
            extra["choices"] = opt.choices
        k.add_argument(opt.cli_flag, dest=opt.name, default=opt.default, help=opt.help, **extra)
    if synth.name in SYNTH_EXTRAS:
        SYNTH_EXTRAS[synth.name][0](k)
    k.set_defaults(func=_synth, generator=synth.name)


def _register_label_flows(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("label-flows", help="estimate pseudo flows (.npy) for (input, gt) pairs, with a quality report")
    p.add_argument("dataset", type=Path, help="folder with input/ and gt/ (and mask/), or a DIR-D root")
    p.add_argument("--out", type=Path, required=True, help="flow folder to write NNNNN.npy into")
    p.add_argument("--split", default=None, help="split inside DATASET (default: DATASET itself, else training)")
    p.add_argument("--workers", type=int_arg(1, MAX_WORKERS), default=2, help="processes (default 2)")
    p.add_argument("--overwrite", action="store_true", help="re-label pairs whose flow exists (default: skip them)")
    p.add_argument("--limit", type=int_arg(1), default=None, help="label only the first N pairs")
    p.add_argument("--preset", choices=DIS_PRESET_NAMES, default="medium",
                   help="DIS optical-flow preset (default medium)")
    p.add_argument("--cell", type=int_arg(1, MAX_SIDE), default=32, help="final mesh cell size in pixels (default 32)")
    p.add_argument("--padding", choices=("border", "zeros"), default="border", help="warp padding for scoring")
    p.add_argument("--report", type=Path, default=None, help="CSV report path (default OUT/labelling_report.csv)")
    p.set_defaults(func=_label)


def _synth(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..data.synthesis import get_generator, write_dataset

    if args.workers < 1:
        raise ValueError(f"--workers must be at least 1, got {args.workers}")
    def progress(it: Iterable[str], total: int) -> Iterable[str]:
        return tqdm(it, total=total, desc=f"synth {args.kind}", unit="sample")

    synth = get_generator(args.generator)
    options = {o.name: getattr(args, o.name) for o in synth.options if o.cli_flag}
    if synth.name in SYNTH_EXTRAS:
        options.update(SYNTH_EXTRAS[synth.name][1](args))
    names = write_dataset(
        synth.name, args.out, args.num, size=args.size, split=args.split, seed=args.seed, photos=args.photos,
        ext=args.ext, quality=args.quality, start=args.start, workers=args.workers, overwrite=args.force,
        progress=progress, identity_fraction=getattr(args, "identity_fraction", 0.0), **options,
    )
    layout = synth.layout.describe.format(out=args.out, split=args.split)
    print(f"wrote {len(names)} samples ({names[0]}..{names[-1]}) to {layout}")
    return 0


def _label(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..data.labelling import LabelConfig, label_flows

    if args.workers < 1:
        raise ValueError(f"--workers must be at least 1, got {args.workers}")
    config = LabelConfig(preset=args.preset, cell=args.cell, padding=args.padding)
    def progress(it: Iterable[dict[str, object]], total: int) -> Iterator[dict[str, object]]:
        with tqdm(it, total=total, desc="labelling", unit="img") as bar:
            for row in bar:
                bar.set_postfix(psnr=f"{float(row['psnr']):.2f}")  # type: ignore[arg-type]
                yield row

    report = label_flows(args.dataset, args.out, split=args.split, config=config, workers=args.workers,
                         overwrite=args.overwrite, limit=args.limit, progress=progress, report=args.report)
    s = report.summary()
    print(f"{s['images']} pairs ({s['labelled']} labelled, {s['skipped']} already done) -> {args.out}")
    print(f"warp(input, flow) vs gt: PSNR {report.mean_psnr:.2f} dB, SSIM {report.mean_ssim:.4f}  "
          f"(identity: {report.mean_identity_psnr:.2f} dB, {report.mean_identity_ssim:.4f})")
    report_path = args.report if args.report is not None else args.out / "labelling_report.csv"
    print(f"report: {report_path}")
    return 0
