"""``stablemotion serve``: the web app (see :mod:`stablemotion.app`).

Serves a page on http://HOST:PORT/ where you upload an image (and, for SIR, optionally a
mask), pick the task (or "auto": detected from the image, as rectify --task auto does),
steps and ensemble size, and get the rectified image, the flow colours and the uncertainty
map, with downloads of the image and the flow. Runs offline with the bundled models (every
task that has one); --model replaces the model of its task, or of all its tasks for a
multi-task model (loaded once). Binds to 127.0.0.1 (this machine only) unless --host says
otherwise. Needs the web extra: pip install 'stablemotion[app]'.

Memory: an image over --max-work-pixels (default 1048576 = 1024 x 1024) runs the model
and its ensemble at the largest size with its aspect ratio that fits in that many pixels;
the ensemble's flow is then upsampled to the full size and applied there in strips. The
model runs at its own processing resolution anyway (96 x 128 for the bundled models,
384 x 512 for the released ones), but the ensemble's per-member flows and warps cost about
70 bytes per pixel and member: without the cap a 4096 x 4096 upload with an ensemble of 8
took 8 GB, with it 0.5-0.65 GB. The cost: an ensemble's rectified image of a capped upload
is one warp with the members' median flow, not the released per-pixel median of the member
warps, and (measured with the bundled SIR model) the flow differs from an uncapped run by
less than a change of seed does. All downloads are at the uploaded size (the flow in its
pixels). Budget: about 100 B x N x ensemble + 60 B x pixels + 128 MB above the model
(1.8 GB with the default limits).

Load limits: a request is admitted before its upload is read, at most --max-queue at once
(uploading, decoding, waiting or running; more get 503 with Retry-After), and at most two
uploads are decoded at once, so the worst admitted mix (--max-queue requests of the largest
size) stays within about 3.2 GiB above the models with the default limits. An upload must
arrive within --body-timeout seconds with no pause over --body-idle-timeout (else 408, the
connection is closed); a connection must send its request headers within --header-timeout
seconds; at most --max-connections connections are open (a request on one more gets 503).
On start, the result folders left by servers that were killed are removed.

Cross-site requests: a POST sent by a page of another site (its Origin or Referer names a
host the server does not answer to, or "null") is refused with 403; the app's own page and
clients that send neither header (curl, scripts) are served.

Host check: against DNS rebinding (a page on another site making your browser talk to this
server), requests are answered only if their Host header names the server as allowed:
bound to a loopback address (the default), that address, localhost, 127.0.0.1 and [::1];
bound to 0.0.0.0 or ::, only those loopback names; bound to another address, that address;
plus the names given with --allowed-hosts (list the names and addresses people use to reach
the server, e.g. --host 0.0.0.0 --allowed-hosts gpu-box.lan 192.168.1.20). Other requests
get HTTP 400 with a message naming the option. --allowed-hosts '*' turns the check off
(behind a reverse proxy that checks the host itself).
"""

from __future__ import annotations

import argparse
import importlib.util
import math
from typing import Any

from ._options import add_device_options, add_inference_options, inference_kwargs

#: import name -> package to install, for the check that the extra is there.
_APP_MODULES = {"fastapi": "fastapi", "uvicorn": "uvicorn", "python_multipart|multipart": "python-multipart"}
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="web app: upload an image, see it rectified with its flow and uncertainty (needs stablemotion[app])",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", action="append", default=[], metavar="M",
                   help="pipeline folder or hub id; replaces the bundled model of its task (every task of a "
                        "multi-task model); repeat for models of other tasks")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 exposes the app)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    add_device_options(p)
    add_inference_options(p, steps=False, ensemble=False)  # steps and ensemble are chosen per request
    p.add_argument("--max-upload-mb", type=float, default=10.0, help="largest accepted file, MB (default 10)")
    p.add_argument("--max-side", type=int, default=4096, help="largest accepted width/height, px (default 4096)")
    p.add_argument("--max-steps", type=int, default=50, help="most denoising steps a request may ask (default 50)")
    p.add_argument("--max-ensemble", type=int, default=8, help="largest ensemble a request may ask (default 8)")
    p.add_argument("--max-queue", type=int, default=8,
                   help="requests waiting or running before new ones are refused with 503 (default 8)")
    p.add_argument("--max-work-pixels", type=int, default=1024 * 1024, metavar="N",
                   help="larger images run the model at N pixels (aspect kept) and are warped at full size: "
                        "bounds memory per request (default 1048576 = 1024x1024; see above)")
    p.add_argument("--max-connections", type=int, default=64, metavar="N",
                   help="open connections; a request on one more is answered 503 (default 64; must exceed "
                        "--max-queue + 1)")
    p.add_argument("--body-timeout", type=float, default=60.0, metavar="S",
                   help="seconds for a whole upload to arrive; slower ones get 408 and are closed (default 60)")
    p.add_argument("--body-idle-timeout", type=float, default=20.0, metavar="S",
                   help="seconds an upload may send nothing before it gets 408 and is closed (default 20)")
    p.add_argument("--header-timeout", type=float, default=10.0, metavar="S",
                   help="seconds for a request's headers to arrive once connected; then the connection is "
                        "closed (default 10)")
    p.add_argument("--task-threshold", type=float, default=None,
                   help="task 'auto': the task classifier's least calibrated confidence to act on (default: the "
                        "classifier's own)")
    p.add_argument("--allowed-hosts", nargs="+", action="extend", default=[], metavar="HOST",
                   help="more host names/addresses (no port) the app answers to, besides the bound address "
                        "(and localhost when bound to loopback or 0.0.0.0); '*' = any (see above)")
    p.set_defaults(func=_serve)


#: serve's numeric options: option -> (lowest, highest, what the range means); both ends allowed.
OPTION_RANGES: dict[str, tuple[float, float, str]] = {
    "--port": (1, 65535, "a port number"),
    "--max-upload-mb": (0.01, 1024, "MB"),
    "--max-side": (8, 32768, "px"),
    "--max-steps": (1, 1000, "steps"),
    "--max-ensemble": (1, 64, "members"),
    "--max-queue": (1, 1024, "requests"),
    "--max-work-pixels": (64 * 64, 2**28, "pixels; 4096 = 64 x 64"),
    "--max-connections": (3, 65536, "connections"),
    "--body-timeout": (0.1, 3600, "seconds"),
    "--body-idle-timeout": (0.1, 3600, "seconds"),
    "--header-timeout": (0.1, 3600, "seconds"),
    "--task-threshold": (0, 1, "a confidence"),
}


def _shown(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def check_options(args: argparse.Namespace) -> None:
    """Refuse an out-of-range, infinite or NaN numeric option with one line naming it (before anything loads)."""
    for option, (low, high, unit) in OPTION_RANGES.items():
        value = getattr(args, option[2:].replace("-", "_"))
        if value is None:  # an option whose default is "decided elsewhere" (--task-threshold)
            continue
        if not (math.isfinite(value) and low <= value <= high):  # NaN fails every comparison
            raise ValueError(f"{option} must be a number from {_shown(low)} to {_shown(high)} ({unit}), got {value}")
    if args.max_connections <= args.max_queue + 1:
        raise ValueError(f"--max-connections ({args.max_connections}) must be more than --max-queue + 1 "
                         f"({args.max_queue + 1}): a page polls the status while its request waits")


def missing_app_packages() -> list[str]:
    """Packages of the ``app`` extra that are not installed (pip names)."""
    missing = []
    for modules, package in _APP_MODULES.items():
        if not any(importlib.util.find_spec(m) is not None for m in modules.split("|")):
            missing.append(package)
    return missing


def _serve(args: argparse.Namespace) -> int:
    missing = missing_app_packages()
    if missing:
        raise ValueError(
            f"stablemotion serve needs the web app extra ({', '.join(missing)} not installed): "
            "pip install 'stablemotion[app]'"
        )
    check_options(args)
    from ..app.server import allowed_hosts_for, create_app

    hosts = allowed_hosts_for(args.host, args.allowed_hosts)  # a bad --host / --allowed-hosts fails here
    import uvicorn

    from ..app.server_options import server_options
    from ..model.catalog import BUNDLED_LIMITS, BUNDLED_MODELS
    from ._options import load_model, prepare_for_inference, resolve_device, resolve_dtype, settle_dtype

    kwargs = inference_kwargs(args)
    device = resolve_device(args.device)
    dtype = resolve_dtype(settle_dtype(args, device), device)
    models: dict[str, Any] = dict.fromkeys(BUNDLED_MODELS)
    for spec in args.model:  # loaded now, so that a bad --model fails before serving
        pipe = load_model(spec, None, dtype, quiet=True)
        prepare_for_inference(pipe, device, args.channels_last)
        served = list(getattr(pipe, "tasks", None) or [pipe.task.name])  # a multi-task model serves all its tasks
        for task in served:
            models[task] = pipe  # one object: the app loads and keeps it once
        print(f"{', '.join(served)}: serving {spec}")
    for task, spec in models.items():
        if spec is None and task in BUNDLED_LIMITS:
            print(f"note: {BUNDLED_LIMITS[task]}")
    app = create_app(
        models,
        max_upload_bytes=int(args.max_upload_mb * 2**20),
        max_side=args.max_side,
        max_steps=args.max_steps,
        max_ensemble=args.max_ensemble,
        max_queue=args.max_queue,
        max_work_pixels=args.max_work_pixels,
        max_connections=args.max_connections,
        body_timeout=args.body_timeout,
        body_idle_timeout=args.body_idle_timeout,
        header_timeout=args.header_timeout,
        device=device,
        torch_dtype=dtype,
        allowed_hosts=hosts,
        inference={k: kwargs[k] for k in ("processing_resolution", "decode_scale", "final_step", "flow_regularization")},
        task_threshold=args.task_threshold,
    )
    if args.host not in _LOOPBACK:
        print(f"warning: binding to {args.host}: anyone who can reach this port can use the app (no authentication)")
    shown = ", ".join(f"[{h}]" if ":" in h else h for h in hosts)
    print("answering requests addressed to any host" if "*" in hosts
          else f"answering requests addressed to {shown} (add names with --allowed-hosts)")
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"StableMotion app on http://{host}:{args.port}/  (Ctrl+C to stop)")
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", **server_options(app))
    return 0
