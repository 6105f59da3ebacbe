"""Pack the training photos of the photo pools into one small folder (longest side 512 px,
JPEG quality 85) for a machine without the Debian packages, e.g. the GPU machine of
configs/gpu_recipe.sh. Held-out (test) photos are never packed.

    .venv/bin/python configs/pack_photos.py .gpu_photos        # ~300 photos, ~12 MB
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2

from stablemotion.data.synthesis import resolve_photos

POOLS = "debian-train+gcompris-train+opencv-train+mate-train+plasma-train+lomiri-train+palapeli-train"
MAX_SIDE = 512


def main(out: str) -> int:
    dest = Path(out)
    dest.mkdir(parents=True, exist_ok=True)
    paths = sorted(set(resolve_photos(POOLS)))
    for i, path in enumerate(paths):
        image = cv2.imread(path, cv2.IMREAD_COLOR)
        if image is None:
            print(f"skipped (unreadable): {path}", file=sys.stderr)
            continue
        scale = MAX_SIDE / max(image.shape[:2])
        if scale < 1:
            image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(dest / f"{i:04d}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 85])
    print(f"packed {len(paths)} photos into {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else ".gpu_photos"))
