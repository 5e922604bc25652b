"""Per-epoch GAN evaluation from a fixed noise-and-label set, with cached real statistics.

The GAN loop builds one `GanEvaluator` per trial and calls it on a schedule (every
`eval_every` epochs), never every batch.  A metric that cannot be computed (no FID weights,
no logits, a one-class generator for CAS, a reference classifier at chance) is left out of
the returned dict and its reason is kept in `protocol["skipped"]`: nothing is faked.

CAS (Ravuri & Vinyals 2019) trains a small classifier on as many fakes per class as the
real validation set has images of that class, and reports beside it the same classifier's
accuracy when trained on as many *real* training images (`cas_real_acc`, the ceiling).  A
ceiling whose 95 % interval reaches chance (the majority-class rate) means CAS cannot
measure anything at this budget: CAS is then skipped with that reason.

Memorisation (issue 23): each fake's distance to its nearest *training* image in pixel space
(32 px standardised thumbnails, no network needed), against the q-quantile of the real
validation images' nearest-training distances (`trainables.metrics.memorisation`):
`memorised_share` is the share of fakes closer to a training image than almost any real
image the generator never saw.  With Inception features, precision / recall / density /
coverage (Naeem et al. 2020) of the fakes against the real set come beside it.
"""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path
import time
from typing import Callable

import numpy as np
import torch

from trainables.data.selection import subset
from trainables.figures import save as save_figure
from trainables.gan.sampling import draw_latent

from . import cas as cas_mod
from . import memorisation as memo
from . import visual
from .features import InceptionExtractor, WeightsNotFoundError, load_extractor, to_uint8
from .frechet import frechet_distance_from_features
from .inception_score import inception_score
from .kid import kid
from .registry import EVALUATIONS, INCEPTION_EVALUATIONS
from .stats_cache import StatsCache, stats_key
from .tsne import tsne_plot

log = logging.getLogger(__name__)

METRICS = EVALUATIONS
_FEATURE_METRICS = ("fid", "kid", "intra_fid", "is")


class GanEvaluator:
    """`evaluator(G, epoch) -> dict[str, float]`; `protocol` says how every number was made.

    real: the real images the fakes are compared with (the selection hold-out, never test).
    n_fake: fakes per evaluation for the feature metrics (default len(real): FID is only
    comparable at equal N).
    classes: the class indices G was trained for (None = all); the real set is restricted to
    them, and a one-class generator gets no CAS and no class check (with the reason).
    real_train: real training images for the reference classifier (CAS ceiling, class check).
    latent_dist: the distribution G was trained with ("normal" | "uniform").
    """

    def __init__(self, real, *, metrics=METRICS, n_fake: int | None = None,
                 extractor: str = "auto", dims: int | None = None, weights_path=None,
                 cache_dir=None, seed: int = 0, device=None, latent_dim: int = 100,
                 latent_dist: str = "normal", classes=None, real_train=None,
                 cas_epochs: int = 15, cas_size: int = 32, cas_min_steps: int = 200,
                 batch_size: int = 50,
                 hub_dir=None, torchscript_dir=None):
        unknown = set(metrics) - set(METRICS)
        if unknown:
            raise ValueError(f"unknown metric(s) {sorted(unknown)}; choose from {METRICS}")
        self.n_classes = len(real.classes)
        real, real_train = _only_classes(real, classes), _only_classes(real_train, classes)
        if len(real) < 3:
            raise ValueError(f"real image set {getattr(real, 'split', '')!r} has {len(real)} "
                             "images; evaluation needs at least 3")
        self.real, self.real_train, self.metrics = real, real_train, tuple(metrics)
        self.n_fake, self.seed = int(n_fake or len(real)), seed
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.cas_epochs, self.cas_size, self.batch_size = cas_epochs, cas_size, batch_size
        self.cas_min_steps = cas_min_steps
        self.one_class = len(np.unique(real.labels)) < 2
        self.z, self.labels = fixed_inputs(self.n_fake, latent_dim, real.labels, seed, latent_dist)
        # CAS trains on as many fakes per class as the real set has (its own fixed inputs).
        self.cas_z, self.cas_labels = fixed_inputs(len(real), latent_dim, real.labels, seed + 1,
                                                   latent_dist)
        self.cache = StatsCache(cache_dir)
        self._real_stats_loaded: dict[str, np.ndarray] | None = None  # read once, not per epoch
        self.protocol: dict = {"n_real": len(real), "n_fake": self.n_fake, "seed": seed,
                               "real_split": real.split, "real_fingerprint": real.fingerprint,
                               "resolution": int(real.images.shape[1]), "latent": latent_dist,
                               "cas_n_train": len(real), "cas_min_steps": cas_min_steps,
                               "skipped": {}}
        self.extractor = self._load_extractor(extractor, dims, weights_path, hub_dir,
                                              torchscript_dir)
        if self.extractor is None and "visual" in self.metrics:
            if set(self.metrics) & set(INCEPTION_EVALUATIONS):
                self._skip("diversity_ratio", "needs Inception features (see the FID skip reason)")
            else:  # the user's choice, not a fault: recorded in the protocol, no warning
                self._skip("diversity_ratio", "needs Inception features: none of "
                           f"{','.join(_FEATURE_METRICS)} was asked for", warn=False)
        self._real_float = _float_images(real.images)
        self._reference = self._train_reference() if {"cas", "visual"} & set(self.metrics) else None
        self._memo = self._memorisation_reference() if "memorisation" in self.metrics else None
        self._memo_inception_ok = ("memorisation_inception" in self.metrics
                                   and self._memo_inception_possible())
        self._memo_inception = None  # built at the first evaluation that has fake features

    # -- set-up -------------------------------------------------------------------------
    def _skip(self, metric: str, reason: str, warn: bool = True) -> None:
        self.protocol["skipped"][metric] = reason
        (log.warning if warn else log.info)("metric %s skipped: %s", metric, reason)

    def _load_extractor(self, name, dims, weights_path, hub_dir, ts_dir) -> InceptionExtractor | None:
        wanted = [m for m in INCEPTION_EVALUATIONS if m in self.metrics]
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
        if self._real_stats_loaded is None:
            self._real_stats_loaded = self._load_real_stats()
        return self._real_stats_loaded

    def _load_real_stats(self) -> dict[str, np.ndarray]:
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

    def _train_reference(self) -> dict | None:
        """The CAS ceiling: the CAS classifier trained with the same budget on real training
        images (as many per class as CAS gets fakes), scored on the real set.  Also the
        independent classifier of the class check.  Skips CAS when it is at chance."""
        if self.one_class:
            reason = "a one-class generator: CAS and the class check need two or more classes"
            for m in ("cas", "class_check"):
                self._skip(m, reason)
            return None
        if self.real_train is None:
            self._skip("class_check", "no real_train images given: the reference classifier "
                       "(CAS ceiling, class check) is trained on real training images")
            return None
        rows = _like_counts(np.asarray(self.real_train.labels), self.cas_labels.numpy(), self.seed)
        model = cas_mod.train_classifier(
            _float_images(np.asarray(self.real_train.images[rows])),
            torch.as_tensor(np.asarray(self.real_train.labels)[rows]), self.n_classes,
            epochs=self.cas_epochs, size=self.cas_size, seed=self.seed,
            min_steps=self.cas_min_steps, device=self.device)
        y_pred = cas_mod.predict(model, self._real_float, size=self.cas_size)
        ceiling = cas_mod.bootstrap_scores(np.asarray(self.real.labels), y_pred, self.n_classes,
                                           seed=self.seed)
        chance = float(np.bincount(np.asarray(self.real.labels)).max() / len(self.real))
        self.protocol.update(cas_real_n_train=int(len(rows)), cas_chance=chance,
                             cas_real_acc=ceiling["acc"])
        if "cas" in self.metrics and ceiling["acc_ci_low"] <= chance:
            self._skip("cas", f"the CAS classifier trained on {len(rows)} real images reaches "
                       f"accuracy {ceiling['acc']:.3f} [{ceiling['acc_ci_low']:.3f}, "
                       f"{ceiling['acc_ci_high']:.3f}] on the real set, not above chance "
                       f"({chance:.3f}): CAS cannot measure anything at this budget "
                       "(raise cas_epochs / cas_size, or use more validation images)")
        return {"model": model, "ceiling": ceiling, "chance": chance}

    def _memorisation_reference(self, q: float = memo.DEFAULT_Q) -> dict | None:
        """Training images' thumbnails and the "not a copy" threshold: the q-quantile of the
        real validation images' nearest-training distances (computed once per trial)."""
        if self.real_train is None:
            self._skip("memorised_share", "no real_train images given: memorisation compares "
                       "each fake with the training images")
            return None
        if len(self.real) < memo.min_heldout(q):
            self._skip("memorised_share", f"the real validation set has {len(self.real)} "
                       f"images; the {q:g}-quantile of their distances needs at least "
                       f"{memo.min_heldout(q)}")
            return None
        train = memo.pixel_features(np.asarray(self.real_train.images))
        held, _ = memo.nearest_distances(memo.pixel_features(np.asarray(self.real.images)), train)
        threshold = float(np.quantile(held, q))
        self.protocol.update(memorised_space=f"pixel {memo.SIDE}x{memo.SIDE} standardised",
                             memorised_q=q, memorised_threshold=threshold,
                             memorised_n_train=int(len(train)))
        return {"train": train, "threshold": threshold}

    def _memo_inception_possible(self, q: float = memo.DEFAULT_Q) -> bool:
        why = ("no real_train images given" if self.real_train is None else
               "needs Inception features (see the FID skip reason)" if self.extractor is None
               else f"the real validation set has {len(self.real)} images; the {q:g}-quantile "
                    f"needs at least {memo.min_heldout(q)}"
               if len(self.real) < memo.min_heldout(q) else "")
        if why:
            self._skip("memorised_share_inception", why)
        return not why

    def _inception_memo_reference(self, q: float = memo.DEFAULT_Q) -> dict:
        """The same reference in Inception space: training images' features (cached like the
        real statistics, once per data set) and the q-quantile of the validation images'
        nearest-training distances.  Pixels catch copies; features catch copies that were
        shifted, flipped or re-contrasted, which pixel distances miss."""
        if self._memo_inception is None:
            ex, train = self.extractor, self.real_train
            key = stats_key(fingerprint=train.fingerprint, split=train.split,
                            resolution=int(train.images.shape[1]), extractor=ex.name,
                            weights_sha256=ex.weights_sha256, dims=ex.dims, n=len(train))
            feats = self.cache.get(key, lambda: {
                "features": ex.features(np.asarray(train.images), self.batch_size)[0]})["features"]
            held, _ = memo.nearest_distances(self._real_stats()["features"], feats)
            threshold = float(np.quantile(held, q))
            self.protocol.update(memorised_inception_threshold=threshold)
            self._memo_inception = {"train": feats, "threshold": threshold}
        return self._memo_inception

    def _inception_memorisation(self, fake_feats: np.ndarray) -> dict[str, float]:
        ref = self._inception_memo_reference()
        dist, _ = memo.nearest_distances(fake_feats, ref["train"])
        return {"memorised_share_inception": float(np.mean(dist < ref["threshold"])),
                "nn_train_distance_inception": float(np.median(dist))}

    # -- evaluation ----------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, G: torch.nn.Module, z: torch.Tensor | None = None,
                 labels: torch.Tensor | None = None) -> np.ndarray:
        """Fixed noise and labels (default: the feature metrics' set) through G in eval
        mode, quantised to uint8 NHWC."""
        z = self.z if z is None else z
        labels = self.labels if labels is None else labels
        was_training = G.training
        G.eval()
        try:
            out = [to_uint8(G(zb.to(self.device), yb.to(self.device)))
                   for zb, yb in zip(z.split(self.batch_size), labels.split(self.batch_size))]
        finally:
            G.train(was_training)
        return np.concatenate(out)

    def __call__(self, G: torch.nn.Module, epoch: int, *,
                 aux_classifier: Callable[[torch.Tensor], torch.Tensor] | None = None
                 ) -> dict[str, float]:
        """Metrics of G at `epoch`; `aux_classifier(images) -> logits` is the AC-GAN's head."""
        t0 = time.perf_counter()
        out: dict[str, float] = {}
        timed = _PartTimer(out, self.device)
        with timed("generate"):
            fake = self.generate(G)
        labels = self.labels.numpy()
        if self.extractor is not None:
            with timed("features"):  # the Inception pass and every metric of its features
                out.update(self._feature_metrics(fake, labels))
        fake_f = _float_images(fake)
        if "cas" in self.metrics and "cas" not in self.protocol["skipped"]:
            with timed("cas"):
                out.update(self._cas(G))
        if "visual" in self.metrics:
            with timed("visual"):
                out.update(self._visual(fake_f, labels, aux_classifier))
        if self._memo is not None:
            with timed("memorisation"):
                out.update(self.memorisation(fake))
        out["eval_seconds"] = time.perf_counter() - t0
        return out

    def memorisation(self, fake: np.ndarray) -> dict[str, float]:
        """memorised_share of uint8 NHWC fakes and their median nearest-training distance."""
        dist, _ = memo.nearest_distances(memo.pixel_features(fake), self._memo["train"])
        return {"memorised_share": float(np.mean(dist < self._memo["threshold"])),
                "nn_train_distance": float(np.median(dist))}

    def most_copied(self, G: torch.nn.Module, top: int = 8) -> list[tuple[int, int, float]]:
        """(fake index, training index, distance) of G's fixed-set fakes nearest a training
        image, closest first (what the champion's copy view shows)."""
        if self._memo is None:
            return []
        return self._nearest_pairs(self.generate(G), top)

    def _nearest_pairs(self, fakes: np.ndarray, top: int) -> list[tuple[int, int, float]]:
        dist, idx = memo.nearest_distances(memo.pixel_features(fakes), self._memo["train"])
        order = np.argsort(dist, kind="stable")[:top]
        return [(int(i), int(idx[i]), float(dist[i])) for i in order]

    def copy_view(self, G: torch.nn.Module, out_png, top: int = 8) -> Path:
        """PNG of G's fakes nearest a training image beside those images, with distances."""
        if self._memo is None:
            raise RuntimeError("memorisation was not measured: " + self.protocol["skipped"].get(
                "memorised_share", "'memorisation' is not among the metrics"))
        fakes = self.generate(G)
        found = self._nearest_pairs(fakes, top)
        pairs = [{"training_index": t, "distance": d, "copy": d < self._memo["threshold"]}
                 for _, t, d in found]
        fig = memo.most_copied_figure(fakes[[i for i, _, _ in found]],
                                      np.asarray(self.real_train.images), pairs,
                                      self._memo["threshold"])
        return save_figure(fig, out_png)

    def fid_of(self, images: np.ndarray) -> float:
        """FID of any uint8 NHWC images against the real set (e.g. real-vs-real: the floor
        that FID at this N cannot go below)."""
        if self.extractor is None:
            raise RuntimeError("FID needs Inception features: " +
                               "; ".join(self.protocol["skipped"].values()))
        f, _ = self.extractor.features(np.asarray(images), self.batch_size)
        return frechet_distance_from_features(self._real_stats()["features"], f, self.device)

    def _cas(self, G: torch.nn.Module) -> dict[str, float]:
        fake = _float_images(self.generate(G, self.cas_z, self.cas_labels))
        s = cas_mod.classification_accuracy_score(
            fake, self.cas_labels, self._real_float, self.real.labels, self.n_classes,
            epochs=self.cas_epochs, size=self.cas_size, seed=self.seed,
            min_steps=self.cas_min_steps, device=self.device)
        out = {f"cas_{k}": v for k, v in s.items()}
        if self._reference is not None:
            ceiling = self._reference["ceiling"]
            out.update(cas_real_acc=ceiling["acc"], cas_real_f1=ceiling["f1"],
                       cas_chance=self._reference["chance"])
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
        if "visual" in self.metrics:
            out["diversity_ratio"] = visual.diversity_ratio(f, labels, rf, rl)
        if "memorisation" in self.metrics and min(len(rf), len(f)) > memo.DEFAULT_K:
            out.update(memo.prdc(rf, f, k=memo.DEFAULT_K))
        if self._memo_inception_ok:
            out.update(self._inception_memorisation(f))
        return out

    def _visual(self, fake: torch.Tensor, labels: np.ndarray, aux) -> dict[str, float]:
        out = {"constant_frac": visual.constant_fraction(fake)}
        if self._reference is not None:
            ref = cas_mod.predict(self._reference["model"], fake, size=self.cas_size)
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
        if self.extractor is None:
            raise RuntimeError("t-SNE needs Inception features: " +
                               "; ".join(self.protocol["skipped"].values()))
        f, _ = self.extractor.features(self.generate(G), self.batch_size)
        return tsne_plot(self._real_stats()["features"], f, out_png, seed=self.seed,
                         title=title or f"t-SNE, {self.extractor.name} {self.extractor.dims}-d")


class _PartTimer:
    """`with timer("cas"): ...` adds `time_eval_cas_s` to `out` (MLflow: time/eval_cas_s): the
    parts of an evaluation's seconds, to see which one to make cheaper on a given device."""

    def __init__(self, out: dict[str, float], device: torch.device):
        self.out, self.cuda = out, device.type == "cuda"

    @contextlib.contextmanager
    def __call__(self, part: str):
        if self.cuda:
            torch.cuda.synchronize()  # kernels still running belong to the part before
        start = time.perf_counter()
        yield
        if self.cuda:
            torch.cuda.synchronize()
        self.out[f"time_eval_{part}_s"] = time.perf_counter() - start


def fixed_inputs(n: int, latent_dim: int, real_labels: np.ndarray, seed: int,
                 dist: str = "normal") -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded z (from `dist`) and labels in the real set's class proportions (shuffled):
    n = len(real_labels) gives exactly the real set's count per class, any other n the same
    shares, rounded (evenly spaced picks from the sorted labels, so a smaller n never drops
    the last classes)."""
    gen = torch.Generator().manual_seed(seed)
    z = draw_latent(n, latent_dim, dist, generator=gen)
    ordered = np.sort(np.asarray(real_labels))
    labels = torch.as_tensor(ordered[np.arange(n) * len(ordered) // n], dtype=torch.long)
    return z, labels[torch.randperm(n, generator=gen)]


def _only_classes(image_set, classes):
    """`image_set` restricted to the class indices `classes` (None or all: unchanged)."""
    if image_set is None or classes is None:
        return image_set
    keep = np.isin(np.asarray(image_set.labels), list(classes))
    if keep.all():
        return image_set
    return subset(image_set, keep, f"{image_set.split}[classes {','.join(map(str, classes))}]")


def _like_counts(pool_labels: np.ndarray, want_labels: np.ndarray, seed: int) -> np.ndarray:
    """Seeded rows of `pool_labels` with as many of each class as `want_labels` has (fewer
    where the pool has fewer)."""
    rng = np.random.default_rng(seed)
    rows = [rng.permutation(np.flatnonzero(pool_labels == c))[:int((want_labels == c).sum())]
            for c in np.unique(want_labels)]
    return np.sort(np.concatenate(rows))


def _float_images(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC -> float NCHW in [-1, 1]."""
    x = torch.from_numpy(np.array(images)).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0
