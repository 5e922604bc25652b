"""The registered generator as an MLflow pyfunc "model from code": nothing is unpickled.

`orchestrator.store.models.register_generator` logs this file as the model's code and the
best epoch's generator.pt as its artifact "generator".  MLflow runs this file (under a
module name of its own) to rebuild the model, and `load_context` reads generator.pt with
`trainables.gan.load_generator`, i.e. `torch.load(weights_only=True)`.

    images = mlflow.pyfunc.load_model("models:/cxr-acgan-generator@champion").predict(
        pd.DataFrame({"label": ["Normal", "Normal"], "seed": [0, 1]}))
"""
from typing import Optional

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.models import ModelSignature
from mlflow.types.schema import AnyType, ColSpec, Schema, TensorSpec

from trainables.gan.checkpoint import load_generator
from trainables.gan.sampling import draw_latent

ARTIFACT = "generator"


def signature(resolution: int, channels: int) -> ModelSignature:
    """`GeneratorModel.predict`'s contract, shown in the MLflow UI: `label` (a name or an
    index, hence "any"), optional `seed`, uint8 (rows, H, W, C) out."""
    inputs = Schema([ColSpec(AnyType(), "label"), ColSpec("long", "seed", required=False)])
    outputs = Schema([TensorSpec(np.dtype(np.uint8), (-1, resolution, resolution, channels))])
    return ModelSignature(inputs=inputs, outputs=outputs)


class GeneratorModel(mlflow.pyfunc.PythonModel):
    """Images from the registered generator, one per input row, on the CPU.

    Input: a DataFrame with a `label` column (a class name, or the class's index in the
    `classes` model-version tag) and an optional integer `seed` column (default: the row's
    position, so the same frame always gives the same images).  Output: uint8 array
    (rows, H, W, C) at the generator's resolution and channels, 0 = black.  Row i is the
    image `trainables.classifier.synth_from_generator` (GAN oversampling, `export_synthetic`)
    makes first for that class with noise seed seed_i.
    """

    def load_context(self, context) -> None:
        self.G, self.cfg, self.classes = load_generator(context.artifacts[ARTIFACT])
        # Per-class families hold generators for some classes only.
        self.class_indices = tuple(getattr(self.G, "class_indices", range(len(self.classes))))

    def predict(self, context, model_input: pd.DataFrame,
                params: Optional[dict] = None) -> np.ndarray:
        if "label" not in model_input.columns:
            raise ValueError(f"input needs a 'label' column (class name or index of "
                             f"{self.classes}); got columns {list(model_input.columns)}")
        labels = [self._class_index(v) for v in model_input["label"]]
        seeds = (model_input["seed"] if "seed" in model_input.columns
                 else range(len(model_input)))
        shape = (0, self.cfg.resolution, self.cfg.resolution, self.cfg.channels)
        images = [self._image(c, int(s)) for c, s in zip(labels, seeds)]
        return np.stack(images) if images else np.zeros(shape, np.uint8)

    def _class_index(self, value) -> int:
        index = self.classes.index(value) if value in self.classes else value
        if isinstance(index, str) or int(index) not in self.class_indices:
            known = [f"{i}={self.classes[i]}" for i in self.class_indices]
            raise ValueError(f"label {value!r}: this generator makes {', '.join(known)}")
        return int(index)

    @torch.no_grad()
    def _image(self, class_index: int, seed: int) -> np.ndarray:
        # One G call per row, z from its own seeded generator: the draw of
        # synth_from_generator(...)(class_index, 1, seed), bit for bit.
        z = draw_latent(1, self.cfg.latent_dim, self.cfg.latent_dist,
                        generator=torch.Generator().manual_seed(seed))
        x = self.G(z, torch.tensor([class_index])).float().clamp(-1, 1)
        x = ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
        return x[0].permute(1, 2, 0).numpy()


# MLflow executes this file under its own module name and takes the model set here; a plain
# `import trainables.gan.mlflow_model` (tests, register_generator) leaves MLflow untouched.
if __name__ != "trainables.gan.mlflow_model":
    mlflow.models.set_model(GeneratorModel())
