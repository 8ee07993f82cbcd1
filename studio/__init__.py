"""studio: a local Stable Diffusion studio whose first promise is reproducibility."""

__version__ = "0.1.0"
