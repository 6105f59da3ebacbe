"""Files: reading and writing images and flows atomically, and ``rectify``'s output folder
(lock, manifest). Depends only on :mod:`stablemotion.core`."""
