"""Nothing the project loads back is unpickled: classifier checkpoints are read with
`weights_only=True`, and the registered generator is an MLflow "model from code" whose
weights are a generator.pt read by `trainables.gan.load_generator`."""
from __future__ import annotations

import pickle

import cloudpickle
import mlflow
import numpy as np
import pandas as pd
import pytest
import torch

from orchestrator.config import SearchConfig
from orchestrator.store.models import generator_artifact, register_generator
from trainables.classifier import ClassifierConfig, load_best, train_classifier
from trainables.classifier.strategies import synth_from_generator
from trainables.context import standalone_context
from trainables.gan import GANConfig, load_generator
from trainables.gan.build import build_generator
from trainables.gan.checkpoint import save_generator
from trainables.models.classifiers import build_classifier

CLASSES = ("COVID-19", "Normal", "Viral Pneumonia")
CHAMPION = "models:/cxr-acgan-generator@champion"

_RAN: list[str] = []


def _run_on_unpickling() -> str:
    _RAN.append("ran")
    return "ran"


class _Hostile:
    """Unpickling it calls a function of its choosing, as a hostile checkpoint would."""

    def __reduce__(self):
        return (_run_on_unpickling, ())


def _best_pt(path, **extra) -> None:
    """A valid best.pt (tiny S0 CNN), plus ``extra`` entries."""
    cfg = ClassifierConfig(resolution=32, channels=1, pretrained=False)
    model = build_classifier(cfg.model, len(CLASSES), in_channels=1, resolution=32,
                             pretrained=False)
    torch.save({"model": model.state_dict(), "config": cfg.to_dict(), "classes": CLASSES,
                "epoch": 1, "metrics": {"val_loss": float("inf")}, **extra}, path)


def test_load_best_refuses_a_pickled_object(tmp_path):
    _best_pt(tmp_path / "best.pt")
    assert load_best(tmp_path)[2] == CLASSES  # the file itself is fine
    _best_pt(tmp_path / "best.pt", note=_Hostile())
    _RAN.clear()
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load_best(tmp_path)
    assert _RAN == []


def test_resume_refuses_a_pickled_object(covid3_dir, tmp_path):
    (tmp_path / "ckpt").mkdir()
    torch.save({"note": _Hostile()}, tmp_path / "ckpt" / "state.pt")
    cfg = ClassifierConfig(source=str(covid3_dir), resolution=32, epochs=1, duplicates="keep")
    _RAN.clear()
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        train_classifier(cfg, standalone_context(tmp_path / "run", resume_dir=tmp_path / "ckpt"))
    assert _RAN == []


@pytest.fixture
def store(tmp_path):
    """(tracking URI, id of a finished run) in a fresh sqlite store; the global tracking URI
    that register_generator sets is put back afterwards."""
    previous = mlflow.get_tracking_uri()
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment("safe-loading",
                                          artifact_location=str(tmp_path / "artifacts"))
    with mlflow.start_run(experiment_id=experiment) as run:
        pass
    yield uri, run.info.run_id
    mlflow.set_tracking_uri(previous)


def _register(tmp_path, uri: str, run_id: str, family: str = "acgan", **gan) -> dict:
    """Register an untrained but non-trivial generator (random weights, so that seeds and
    classes give different images) as the best epoch 3 of a search."""
    cfg = GANConfig(family=family, resolution=16, channels=1, width=0.125, **gan)
    torch.manual_seed(0)
    G = build_generator(cfg, len(CLASSES), CLASSES)
    with torch.no_grad():
        for p in G.parameters():
            p.normal_(0, 0.5)
    epoch_dir = tmp_path / "trial" / "epoch_0003"
    epoch_dir.mkdir(parents=True)
    save_generator(epoch_dir, G, cfg, CLASSES,
                   getattr(G, "class_indices", tuple(range(len(CLASSES)))))
    search = SearchConfig(experiment=family, preset="s0", name="safe", mlflow_uri=uri)
    return register_generator(search, run_id, str(epoch_dir), 3)


def _forbid_unpickling(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("something was unpickled")

    for module in (pickle, cloudpickle):
        monkeypatch.setattr(module, "load", refuse)
        monkeypatch.setattr(module, "loads", refuse)
    weights_only_load = torch.load

    def load(*args, weights_only=None, **kwargs):
        if weights_only is not True:
            raise AssertionError(f"torch.load(weights_only={weights_only})")
        return weights_only_load(*args, weights_only=True, **kwargs)

    monkeypatch.setattr(torch, "load", load)


def test_registered_generator_loads_without_unpickling(tmp_path, store, monkeypatch):
    uri, run_id = store
    assert _register(tmp_path, uri, run_id) == {"name": "cxr-acgan-generator", "version": "1",
                                                "alias": "champion"}
    info = mlflow.models.get_model_info(CHAMPION)
    assert set(info.flavors) == {"python_function"}
    assert info.flavors["python_function"]["loader_module"] == "mlflow.pyfunc.loaders.code_model"

    _forbid_unpickling(monkeypatch)
    model = mlflow.pyfunc.load_model(CHAMPION)
    images = model.predict(pd.DataFrame({"label": ["Normal", 1, "Viral Pneumonia", 2],
                                         "seed": [7, 7, 7, 8]}))
    assert images.shape == (4, 16, 16, 1) and images.dtype == np.uint8
    assert images.min() < images.max()
    assert np.array_equal(images[0], images[1])  # a class's name and its index
    assert not np.array_equal(images[1], images[2]) and not np.array_equal(images[2], images[3])
    no_seed = pd.DataFrame({"label": ["COVID-19", "COVID-19"]})
    assert np.array_equal(model.predict(no_seed), model.predict(no_seed))
    with pytest.raises(Exception, match="this generator makes 0=COVID-19"):
        model.predict(pd.DataFrame({"label": ["Bacterial"]}))

    # The project's own path still works, and gives the same images for the same seeds.
    G, cfg, classes = load_generator(generator_artifact("cxr-acgan-generator", uri))
    assert classes == CLASSES
    synth = synth_from_generator(G, cfg.latent_dim, resolution=16, channels=1,
                                 latent_dist=cfg.latent_dist)
    assert np.array_equal(images[3], synth(2, 1, 8)[0])


def test_a_per_class_generator_makes_only_its_classes(tmp_path, store, monkeypatch):
    uri, run_id = store
    _register(tmp_path, uri, run_id, family="dcgan", dcgan_classes=("Normal",))
    _forbid_unpickling(monkeypatch)
    model = mlflow.pyfunc.load_model("models:/cxr-dcgan-generator@champion")
    assert model.predict(pd.DataFrame({"label": ["Normal"], "seed": [1]})).shape == (1, 16, 16, 1)
    with pytest.raises(Exception, match="this generator makes 1=Normal"):
        model.predict(pd.DataFrame({"label": ["COVID-19"]}))
