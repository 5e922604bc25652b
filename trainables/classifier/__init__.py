"""Classifier training for chest X-rays: config, imbalance strategies, metrics, Grad-CAM."""
from trainables.classifier.config import GAN_STRATEGIES, STRATEGIES, ClassifierConfig
from trainables.classifier.strategies import (build_train_set, synth_from_checkpoint,
                                              synth_from_generator)
from trainables.classifier.train import evaluate_final, load_best, train_classifier

__all__ = ["ClassifierConfig", "STRATEGIES", "GAN_STRATEGIES", "build_train_set",
           "synth_from_checkpoint", "synth_from_generator", "train_classifier",
           "evaluate_final", "load_best"]
