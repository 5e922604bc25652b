"""Per-epoch GAN evaluation from a fixed noise-and-label set, with cached real statistics.

The GAN loop builds one `GanEvaluator` per trial and calls it on a schedule
(`evaluator.due(epoch)`), never every batch.  A metric that cannot be computed (no FID
weights, no logits, no real training images for the reference classifier) is left out of
the returned dict and its reason is kept in `protocol["skipped"]`: nothing is faked.
"""
from __future__ import annotations

import logging
from pathlib import Path
import time
from typing import Callable

import numpy as np
import torch

from . import cas as cas_mod
from . import visual
from .features import InceptionExtractor, WeightsNotFoundError, load_extractor, to_uint8
from .frechet import frechet_distance_from_features
from .inception_score import inception_score
from .kid import kid
from .stats_cache import StatsCache, stats_key

log = logging.getLogger(__name__)

METRICS = ("fid", "kid", "intra_fid", "is", "cas", "visual")
_FEATURE_METRICS = ("fid", "kid", "intra_fid", "is")


class GanEvaluator:
    """`evaluator(G, epoch) -> dict[str, float]`; `protocol` says how every number was made.

    real: the real images the fakes are compared with (normally the validation split).
    n_fake: fakes per evaluation (default len(real): FID is only comparable at equal N).
    real_train: real training images for the reference classifier of the class check.
    every: evaluate every `every` epochs (see `due`).
    """

    def __init__(self, real, *, metrics=METRICS, n_fake: int | None = None,
                 extractor: str = "auto", dims: int | None = None, weights_path=None,
                 cache_dir=None, seed: int = 0, device=None, latent_dim: int = 100,
                 real_train=None, every: int = 1, cas_epochs: int = 15, cas_size: int = 32,
                 batch_size: int = 50, hub_dir=None, torchscript_dir=None):
        unknown = set(metrics) - set(METRICS)
        if unknown:
            raise ValueError(f"unknown metric(s) {sorted(unknown)}; choose from {METRICS}")
        if len(real) < 3:
            raise ValueError(f"real image set {getattr(real, 'split', '')!r} has {len(real)} "
                             "images; evaluation needs at least 3")
        self.real, self.real_train, self.metrics = real, real_train, tuple(metrics)
        self.n_fake, self.every, self.seed = int(n_fake or len(real)), int(every), seed
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.cas_epochs, self.cas_size, self.batch_size = cas_epochs, cas_size, batch_size
        self.n_classes = len(real.classes)
        self.z, self.labels = fixed_inputs(self.n_fake, latent_dim, real.labels, seed)
        self.cache = StatsCache(cache_dir)
        self.protocol: dict = {"n_real": len(real), "n_fake": self.n_fake, "seed": seed,
                               "real_split": real.split, "real_fingerprint": real.fingerprint,
                               "resolution": int(real.images.shape[1]), "skipped": {}}
        self.extractor = self._load_extractor(extractor, dims, weights_path, hub_dir,
                                              torchscript_dir)
        self._real_float = _float_images(real.images)
        self._ref_classifier = self._train_reference() if "visual" in self.metrics else None

    # -- set-up -------------------------------------------------------------------------
    def _skip(self, metric: str, reason: str) -> None:
        self.protocol["skipped"][metric] = reason
        log.warning("metric %s skipped: %s", metric, reason)

    def _load_extractor(self, name, dims, weights_path, hub_dir, ts_dir) -> InceptionExtractor | None:
        wanted = [m for m in _FEATURE_METRICS if m in self.metrics]
        if not wanted:
            return None
        try:
            ex = load_extractor(name, dims, n_samples=min(len(self.real), self.n_fake),
                                weights_path=weights_path, hub_dir=hub_dir,
                                torchscript_dir=ts_dir, device=self.device)
        except WeightsNotFoundError as err:
            for m in wanted:
                self._skip(m, f"WeightsNotFoundError: {err}")
            return None
        self.protocol.update(ex.protocol())
        if "is" in wanted and not ex.has_logits:
            self._skip("is", f"{ex.name} ({ex.weights_path.name}) "
                       "has no 1008-way classifier head, so no Inception Score; put pytorch-fid's "
                       "weights in the torch hub cache to get it")
        return ex

    def _real_stats(self) -> dict[str, np.ndarray]:
        ex = self.extractor
        key = stats_key(fingerprint=self.real.fingerprint, split=self.real.split,
                        resolution=int(self.real.images.shape[1]), extractor=ex.name,
                        weights_sha256=ex.weights_sha256, dims=ex.dims, n=len(self.real))
        self.protocol["real_stats_cache"] = str(self.cache.path(key))

        def compute():
            f, _ = ex.features(np.asarray(self.real.images), self.batch_size)
            return {"features": f, "labels": np.asarray(self.real.labels),
                    "mu": f.mean(0), "sigma": np.cov(f, rowvar=False)}
        return self.cache.get(key, compute)

    def _train_reference(self):
        if self.real_train is None:
            self._skip("class_confusion", "no real_train images given: the reference "
                       "classifier for the class check is trained on real training images")
            return None
        return cas_mod.train_classifier(_float_images(self.real_train.images),
                                        torch.as_tensor(self.real_train.labels),
                                        self.n_classes, epochs=self.cas_epochs,
                                        size=self.cas_size, seed=self.seed, device=self.device)

    # -- evaluation ----------------------------------------------------------------------
    def due(self, epoch: int, last_epoch: int | None = None) -> bool:
        """Evaluate at every `every`-th epoch (1-based) and at the last one."""
        return (epoch + 1) % self.every == 0 or (last_epoch is not None and epoch == last_epoch)

    @torch.no_grad()
    def generate(self, G: torch.nn.Module) -> np.ndarray:
        """The fixed noise-and-label set through G, quantised to uint8 NHWC."""
        was_training = G.training
        G.eval()
        try:
            out = [to_uint8(G(z.to(self.device), y.to(self.device)))
                   for z, y in zip(self.z.split(self.batch_size), self.labels.split(self.batch_size))]
        finally:
            G.train(was_training)
        return np.concatenate(out)

    def __call__(self, G: torch.nn.Module, epoch: int, *,
                 aux_classifier: Callable[[torch.Tensor], torch.Tensor] | None = None
                 ) -> dict[str, float]:
        """Metrics of G at `epoch`; `aux_classifier(images) -> logits` is the AC-GAN's head."""
        t0 = time.perf_counter()
        fake = self.generate(G)
        labels = self.labels.numpy()
        out: dict[str, float] = {}
        if self.extractor is not None:
            out.update(self._feature_metrics(fake, labels))
        fake_f = _float_images(fake)
        if "cas" in self.metrics:
            s = cas_mod.classification_accuracy_score(
                fake_f, self.labels, self._real_float, self.real.labels, self.n_classes,
                epochs=self.cas_epochs, size=self.cas_size, seed=self.seed, device=self.device)
            out.update({f"cas_{k}": v for k, v in s.items()})
        if "visual" in self.metrics:
            out.update(self._visual(fake_f, labels, aux_classifier))
        out["eval_seconds"] = time.perf_counter() - t0
        return out

    def _feature_metrics(self, fake: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        real = self._real_stats()
        want_logits = "is" in self.metrics and self.extractor.has_logits
        f, logits = self.extractor.features(fake, self.batch_size, with_logits=want_logits)
        rf, rl = real["features"], real["labels"]
        out = {"fid_n_real": float(len(rf)), "fid_n_fake": float(len(f)),
               "fid_dims": float(self.extractor.dims)}
        if "fid" in self.metrics:
            out["fid"] = frechet_distance_from_features(rf, f, self.device)
        if "intra_fid" in self.metrics:
            usable = [c for c in range(self.n_classes)
                      if (rl == c).sum() >= 2 and (labels == c).sum() >= 2]
            per_class = [frechet_distance_from_features(rf[rl == c], f[labels == c], self.device)
                         for c in usable]
            if per_class:
                out["intra_fid"] = float(np.mean(per_class))
                out["intra_fid_n_classes"] = float(len(per_class))
                # The smallest class sets the bias of the mean: report its N beside the value.
                out["intra_fid_min_n_real"] = float(min((rl == c).sum() for c in usable))
                out["intra_fid_min_n_fake"] = float(min((labels == c).sum() for c in usable))
            else:
                self._skip("intra_fid", "no class has >= 2 real and >= 2 fake images")
        if "kid" in self.metrics:
            k = kid(rf, f, device=self.device)
            out.update(kid=k.kid, kid_se=k.se, kid_ci_low=k.ci_low, kid_ci_high=k.ci_high)
        if want_logits:
            out["is"], out["is_std"] = inception_score(logits, splits=min(10, len(f)))
        return out

    def _visual(self, fake: torch.Tensor, labels: np.ndarray, aux) -> dict[str, float]:
        out = {"diversity_ratio": visual.diversity_ratio(fake, labels, self._real_float,
                                                         self.real.labels),
               "constant_frac": visual.constant_fraction(fake)}
        if self._ref_classifier is not None:
            ref = cas_mod.predict(self._ref_classifier, fake, size=self.cas_size)
            out["ref_class_acc"] = visual.class_agreement(ref, labels)
            if aux is not None:
                with torch.no_grad():
                    pred = torch.cat([aux(b.to(self.device)).argmax(1).cpu()
                                      for b in fake.split(self.batch_size)]).numpy()
                # Not "aux_class_acc": the loop already reports that, on *real* batches.
                out["aux_fake_class_acc"] = visual.class_agreement(pred, labels)
                # High when D's own head "sees" the class but an independent classifier does not.
                out["class_confusion"] = out["aux_fake_class_acc"] - out["ref_class_acc"]
        return out

    def tsne(self, G: torch.nn.Module, out_png, title: str = "") -> Path:
        """t-SNE PNG of real vs this G's fixed-set features (needs the extractor)."""
        from .tsne import tsne_plot
        if self.extractor is None:
            raise RuntimeError("t-SNE needs Inception features: " +
                               "; ".join(self.protocol["skipped"].values()))
        f, _ = self.extractor.features(self.generate(G), self.batch_size)
        return tsne_plot(self._real_stats()["features"], f, out_png, seed=self.seed,
                         title=title or f"t-SNE, {self.extractor.name} {self.extractor.dims}-d")


def fixed_inputs(n: int, latent_dim: int, real_labels: np.ndarray,
                 seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded z ~ N(0, I) and labels in the real set's class proportions (tiled, shuffled)."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, latent_dim, generator=gen)
    labels = torch.as_tensor(np.resize(np.sort(np.asarray(real_labels)), n), dtype=torch.long)
    return z, labels[torch.randperm(n, generator=gen)]


def _float_images(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC -> float NCHW in [-1, 1]."""
    x = torch.from_numpy(np.array(images)).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0
