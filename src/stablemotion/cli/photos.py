"""``stablemotion photos``: list the named photo pools installed from Debian packages.

See :mod:`stablemotion.data.photos` and ``docs/photo_pools.md``; ``configs/install_photos.sh``
installs the packages.
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("photos", help="show the photo pools (Debian packages), their sizes and train/test split")
    p.add_argument("pools", nargs="*", default=None, help="pool names (default: every pool)")
    p.add_argument("--list", action="store_true", help="print every photo path with its split")
    p.add_argument("--install-command", action="store_true", help="print the apt-get line and exit")
    p.set_defaults(func=_photos)


def _photos(args: argparse.Namespace) -> int:
    from ..data.photos import POOLS, SOURCES, install_command, pool_files, split_of

    if args.install_command:
        print(install_command(*(args.pools[:1] or [])))
        return 0
    names = args.pools or ["debian", "astro", *(s.name for s in SOURCES)]
    for name in names:
        if name not in POOLS:
            raise ValueError(f"unknown photo pool {name!r}; choose from {sorted(POOLS)}")
    for name in names:
        try:
            files = pool_files(name)
        except FileNotFoundError as exc:
            print(f"{name}: not installed ({exc})")
            continue
        n_test = sum(split_of(f) == "test" for f in files)
        print(f"{name}: {len(files)} photos ({len(files) - n_test} train, {n_test} test)")
        if args.list:
            for f in files:
                print(f"  {split_of(f):5s} {f}")
    return 0
