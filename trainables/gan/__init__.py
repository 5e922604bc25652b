"""GAN training for chest X-rays: config, presets, models, the training loop, checkpoints."""
from trainables.gan.build import build_models, build_optimizer, build_scheduler
from trainables.gan.checkpoint import load_checkpoint, load_generator
from trainables.gan.config import GANConfig
from trainables.gan.presets import preset
from trainables.gan.sampling import sample
from trainables.gan.train import train_gan

__all__ = ["GANConfig", "preset", "train_gan", "build_models", "build_optimizer",
           "build_scheduler", "load_generator", "load_checkpoint", "sample"]
