"""Files: reading and writing images and flows atomically, and ``rectify``'s output folder
(lock, manifest). The lowest layer: it imports nothing else of the package."""
