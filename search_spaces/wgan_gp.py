"""Search space for the WGAN-GP (Gulrajani et al. 2017; no seed system): the shared GAN space (`search_spaces.gan`)."""
from __future__ import annotations

from search_spaces.gan import PBT_MUTATIONS, first_points, space, to_config

__all__ = ["PBT_MUTATIONS", "first_points", "space", "to_config"]
