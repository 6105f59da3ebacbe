"""StableMotion: one-step single-image motion estimation with a diffusion prior."""

__version__ = "0.1.0"
