"""Search space for the conditional GAN with a slow discriminator (S2): the shared GAN space (`search_spaces.gan`)."""
from __future__ import annotations

from search_spaces.gan import PBT_MUTATIONS, first_points, space, to_config

FAMILY = "cgan"
PRESETS = ("s2",)  # the seed systems of this family; the first is the default

__all__ = ["FAMILY", "PRESETS", "PBT_MUTATIONS", "first_points", "space", "to_config"]
