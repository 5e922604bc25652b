"""Evaluation metrics for GAN checkpoints: FID/intra-FID/KID/IS on the TF Inception
2015-12-05 features, CAS, visual checks, t-SNE, cached real statistics, `GanEvaluator`.

Submodules import torch; nothing is computed at import.
"""
from .cas import TinyCNN, classification_accuracy_score
from .evaluator import GanEvaluator, fixed_inputs
from .features import InceptionExtractor, WeightsNotFoundError, load_extractor, to_uint8
from .frechet import feature_statistics, frechet_distance, frechet_distance_from_features
from .inception_score import inception_score
from .kid import KidResult, kid
from .stats_cache import StatsCache, stats_key

__all__ = ["GanEvaluator", "fixed_inputs", "InceptionExtractor", "WeightsNotFoundError",
           "load_extractor", "to_uint8", "feature_statistics", "frechet_distance",
           "frechet_distance_from_features", "inception_score", "kid", "KidResult",
           "StatsCache", "stats_key", "TinyCNN", "classification_accuracy_score"]
