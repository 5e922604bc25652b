"""Search space for the AC-GAN (S0 CXR-ACGAN, S3 CovidGAN): the shared GAN space (`search_spaces.gan`)."""
from __future__ import annotations

from search_spaces.gan import PBT_MUTATIONS, first_points, space, to_config

__all__ = ["PBT_MUTATIONS", "first_points", "space", "to_config"]
