"""Search space for the per-class DCGAN (S1 64x64, S4 128x128 minority class): the shared GAN space (`search_spaces.gan`)."""
from __future__ import annotations

from search_spaces.gan import PBT_MUTATIONS, first_points, space, to_config

__all__ = ["PBT_MUTATIONS", "first_points", "space", "to_config"]
