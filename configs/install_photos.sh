#!/bin/sh
# Install the Debian packages behind the named photo pools of `stablemotion synth --photos`
# (debian, debian-train, debian-test, astro, gcompris, ...; see docs/photo_pools.md) and print
# the pool sizes. Nothing else is downloaded; tests never need these packages.
#   usage: configs/install_photos.sh [PYTHON]     (PYTHON defaults to .venv/bin/python)
set -eu
PY=${1:-.venv/bin/python}
CMD=$("$PY" -c "from stablemotion.data.photos import install_command; print(install_command())")
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update
# shellcheck disable=SC2086
$SUDO $CMD
"$PY" -m stablemotion photos
