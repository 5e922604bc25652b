"""The classifier trainable: `train_classifier(cfg, ctx)`, one report per epoch.

Selection (early stopping, the best epoch) uses the validation split only; the test split
is read by `evaluate_final`, once per final model, and by nothing else here.
Checkpoints (checkpoint/state.pt, best.pt) hold only tensors and plain Python types, so
both load with `torch.load(weights_only=True)`, which refuses pickled objects (code).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trainables.atomic import atomic_path
from trainables.classifier.config import GAN_STRATEGIES, ClassifierConfig
from trainables.classifier.gradcam import gradcam, pick_per_class, save_gradcam_png
from trainables.classifier.metrics import (bootstrap_ci, classification_metrics, confusion,
                                           macro_f1, accuracy, report_text, save_confusion_png)
from trainables.classifier.stats import auroc_per_class, macro_auroc
from trainables.classifier.strategies import (Synth, TrainSet, build_train_set,
                                              composition, synth_from_checkpoint)
from trainables.context import RunContext
from trainables.data import PositionalAugment, load_image_set, selection, to_tensor
from trainables.data.selection import stratified_folds
from trainables.models.classifiers import WEIGHT_URLS, build_classifier

STATE_FILE = "state.pt"
BEST_FILE = "best.pt"
# What the run trains on per class (`strategies.composition`): rows, synthetic rows and the
# augmented share, so a reader can check that no class is marked by augmentation or synthesis.
COMPOSITION_FILE = "composition.csv"
EVAL_BATCH = 256


def data_options(cfg: ClassifierConfig) -> dict:
    """The data loader's options of ``cfg`` besides the size: which copies, which classes."""
    return dict(duplicates=cfg.duplicates, exclude_labels=cfg.exclude_labels,
                label_map=cfg.label_map, classes=cfg.classes)


def _data_kwargs(cfg: ClassifierConfig) -> dict:
    return dict(resolution=cfg.resolution, channels=cfg.channels, **data_options(cfg))


def split_roles(cfg: ClassifierConfig) -> tuple[tuple[str, ...], str]:
    """(splits read for training/selection, split used as the test set); the rule is
    `trainables.data.selection.split_roles`, shared with the GAN search's evaluation.
    Only the manifest is read here, no images."""
    try:
        return selection.split_roles(selection.source_splits(cfg.source, **data_options(cfg)))
    except ValueError as exc:
        raise ValueError(f"{cfg.source}: {exc}") from None


def load_selection_data(cfg: ClassifierConfig, published=None):
    """(train images, train labels, val images, val labels, classes) -- never the test split
    (see `split_roles`).  With cfg.folds = k, the selection data are pooled and fold
    cfg.fold is the validation part (S1's 4-fold cross-validation).  `published`: the
    (fit, val) ImageSets a search's driver published for its trials (`data.bundle`, the same
    selection rule), read instead of cfg.source so that a trial needs no data of its own."""
    if published is not None and not cfg.folds:
        fit, val = published
        return fit.images, fit.labels, val.images, val.labels, fit.classes
    if published is not None:
        sets = list(published)
    else:
        roles, _ = split_roles(cfg)
        sets = [load_image_set(cfg.source, s, **_data_kwargs(cfg)) for s in roles]
    classes = sets[0].classes
    if len(sets) == 2 and not cfg.folds:
        return sets[0].images, sets[0].labels, sets[1].images, sets[1].labels, classes
    images = np.concatenate([np.asarray(s.images) for s in sets])
    labels = np.concatenate([s.labels for s in sets])
    groups = selection.pooled_groups(sets)  # a patient / near-copy group stays on one side
    if cfg.folds:
        # Folds over the pooled images in path order: the same folds whether the pool was
        # read from the source's splits or from a published (fit, val) pair.
        order = np.argsort(np.array([p for s in sets for p in s.paths], dtype=object), kind="stable")
        images, labels = images[order], labels[order]
        groups = None if groups is None else groups[order]
        fold = stratified_folds(labels, cfg.folds, seed=0, groups=groups)  # fixed across seeds
        v = fold == cfg.fold
    else:
        v = selection.holdout_mask(labels, groups=groups)  # the 15 % the GAN search validates on
    return images[~v], labels[~v], images[v], labels[v], classes


def build_optimizer(cfg: ClassifierConfig, model: nn.Module) -> torch.optim.Optimizer:
    """Adam (S0, S3) or SGD with Nesterov momentum (S1), over trainable parameters only."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                           weight_decay=cfg.weight_decay)


def train_epoch(model: nn.Module, opt: torch.optim.Optimizer, ts: TrainSet, *,
                batch_size: int, device: torch.device, augment: nn.Module,
                gen: torch.Generator, rank: int = 0, world_size: int = 1) -> dict[str, float]:
    """One pass over this rank's share of this epoch's rows of ``ts`` (`TrainSet.epoch_rows`)
    in a seeded order -> train loss/accuracy.  With ts.augment every row is augmented."""
    model.train()
    weight = torch.as_tensor(ts.class_weights, dtype=torch.float32, device=device) \
        if ts.class_weights is not None else None
    rows = ts.epoch_rows(gen)
    order = rows[torch.randperm(len(rows), generator=gen).numpy()]
    # Equal shares per rank (DDP needs the same number of steps on every rank).
    order = order[: len(order) // world_size * world_size][rank::world_size]
    total, correct, seen = 0.0, 0, 0
    for start in range(0, len(order), batch_size):
        idx = np.sort(order[start:start + batch_size])  # sorted: memmap reads are sequential
        x = to_tensor(ts.images[idx], value_range="[0,1]")
        if ts.augment:  # every row of every class, or none: never a class marker
            x = augment(x, generator=gen)
        x = x.to(device)
        y = torch.from_numpy(ts.labels[idx]).to(device)
        logits = model(x)
        loss = F.cross_entropy(logits, y, weight=weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += loss.item() * len(idx)
        correct += int((logits.argmax(1) == y).sum())
        seen += len(idx)
    return {"train_loss": total / max(seen, 1), "train_accuracy": correct / max(seen, 1)}


@torch.no_grad()
def predict(model: nn.Module, images: np.ndarray, device: torch.device,
            batch_size: int = EVAL_BATCH) -> np.ndarray:
    """Class probabilities (N, K) for uint8 NHWC ``images``."""
    model.eval()
    out = [F.softmax(model(to_tensor(images[s:s + batch_size], "[0,1]").to(device)), 1).cpu()
           for s in range(0, len(images), batch_size)]
    return torch.cat(out).numpy()


def evaluate(model: nn.Module, images: np.ndarray, labels: np.ndarray, num_classes: int,
             device: torch.device) -> dict[str, float]:
    """Unweighted cross-entropy, accuracy and macro F1 on a labelled set."""
    probs = predict(model, images, device)
    nll = -np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None))
    pred = probs.argmax(1)
    return {"loss": float(nll.mean()), "accuracy": accuracy(labels, pred),
            "macro_f1": macro_f1(labels, pred, num_classes)}


def uses_imagenet(cfg: ClassifierConfig) -> bool:
    """Whether the run starts from ImageNet weights (custom CNNs never do)."""
    return bool(cfg.pretrained and cfg.model in WEIGHT_URLS)


def _save_atomic(obj: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


def train_classifier(cfg: ClassifierConfig | dict, ctx: RunContext, *,
                     synth: Synth | None = None, published=None) -> list[dict]:
    """Train one classifier; report once per epoch (with a checkpoint dir); stop early when
    the validation loss has not improved for ``cfg.patience`` epochs.  The best epoch's
    weights go to run_dir/best.pt.  With cfg.evaluate_test the best model is then evaluated
    on the test split once (`evaluate_final`) and its metrics join the last history row.
    ``synth`` makes GAN images for the GAN strategies; ``published`` is the search's
    published (fit, val) pair (see `load_selection_data`).  Returns the per-epoch metrics."""
    cfg = ClassifierConfig.from_dict(cfg) if isinstance(cfg, dict) else cfg
    torch.manual_seed(cfg.seed)
    x_tr, y_tr, x_va, y_va, classes = load_selection_data(cfg, published)
    k = len(classes)
    if synth is None and cfg.strategy in GAN_STRATEGIES and cfg.gan_checkpoint:
        synth = synth_from_checkpoint(cfg.gan_checkpoint, resolution=cfg.resolution,
                                      channels=cfg.channels, classes=classes)
    ts = build_train_set(x_tr, y_tr, k, cfg.strategy, synth=synth, gan_ratio=cfg.gan_ratio,
                         seed=cfg.seed)
    model = build_classifier(cfg.model, k, in_channels=cfg.channels, resolution=cfg.resolution,
                             dropout=cfg.dropout, pretrained=cfg.pretrained,
                             weights_path=cfg.weights_path, head=cfg.head).to(ctx.device)
    model = ctx.wrap_model(model)
    opt = build_optimizer(cfg, model)
    augment = PositionalAugment(hflip=cfg.hflip, value_range=(0.0, 1.0))
    gen = torch.Generator().manual_seed(cfg.seed)
    state = {"epoch": 0, "best_val_loss": float("inf"), "bad_epochs": 0, "history": []}
    if ctx.resume_dir is not None:
        ck = torch.load(Path(ctx.resume_dir) / STATE_FILE, map_location=ctx.device,
                        weights_only=True)
        _unwrap(model).load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        gen.set_state(ck["generator"].cpu())  # map_location moved it; the sampler is on the CPU
        state = {key: ck[key] for key in state}
    if ctx.is_main:
        ctx.run_dir.mkdir(parents=True, exist_ok=True)
        composition(ts, classes, cfg.strategy).to_csv(ctx.run_dir / COMPOSITION_FILE, index=False)
    fixed = {"strategy": cfg.strategy, "model": cfg.model, "pretrained": uses_imagenet(cfg),
             "n_train": len(ts), "n_synthetic": int(ts.synthetic.sum())}
    while state["epoch"] < cfg.epochs and state["bad_epochs"] < cfg.patience:
        t0 = time.perf_counter()
        row = train_epoch(model, opt, ts, batch_size=cfg.batch_size, device=ctx.device,
                          augment=augment, gen=gen, rank=ctx.rank, world_size=ctx.world_size)
        val = evaluate(_unwrap(model), x_va, y_va, k, ctx.device)
        state["epoch"] += 1
        improved = val["loss"] < state["best_val_loss"]
        if improved:
            state["best_val_loss"], state["bad_epochs"] = val["loss"], 0
        else:
            state["bad_epochs"] += 1
        row.update({f"val_{m}": v for m, v in val.items()})
        row.update(fixed, epoch=state["epoch"], best_val_loss=state["best_val_loss"],
                   early_stopped=state["bad_epochs"] >= cfg.patience,
                   epoch_time_s=time.perf_counter() - t0)
        state["history"].append(row)
        ckpt_dir = None
        if ctx.is_main:
            payload = {"model": _unwrap(model).state_dict(), "config": cfg.to_dict(),
                       "classes": tuple(classes), "epoch": state["epoch"], "metrics": row}
            if improved:
                _save_atomic(payload, ctx.run_dir / BEST_FILE)
            ckpt_dir = ctx.run_dir / "checkpoint"
            _save_atomic({**payload, "optimizer": opt.state_dict(), "generator": gen.get_state(),
                          **state}, ckpt_dir / STATE_FILE)
        ctx.report(dict(row), ckpt_dir)
    history = list(state["history"])
    if cfg.evaluate_test and ctx.is_main:
        final = evaluate_final(ctx.run_dir, device=ctx.device)
        history[-1] = {**history[-1], **{f"test_{m}": v for m, v in final["metrics"].items()}}
    return history


def load_test_set(cfg: ClassifierConfig):
    """The held-out test ImageSet of cfg.source (see `split_roles`)."""
    return load_image_set(cfg.source, split_roles(cfg)[1], **_data_kwargs(cfg))


def load_best(run_dir: str | Path, device: str | torch.device = "cpu"
              ) -> tuple[nn.Module, ClassifierConfig, tuple[str, ...], int]:
    """(model in eval mode, config, classes, best epoch) from run_dir/best.pt."""
    path = Path(run_dir) / BEST_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: train_classifier writes it after the first "
                                "epoch; train first (or point at the run's directory)")
    ck = torch.load(path, map_location=device, weights_only=True)
    cfg = ClassifierConfig.from_dict(ck["config"])
    # The weights come from best.pt, so no ImageNet file is needed to rebuild the model.
    model = build_classifier(cfg.model, len(ck["classes"]), in_channels=cfg.channels,
                             resolution=cfg.resolution, dropout=cfg.dropout, pretrained=False,
                             head=cfg.head)
    model.load_state_dict(ck["model"])
    return model.to(device).eval(), cfg, tuple(ck["classes"]), int(ck["epoch"])


def evaluate_final(run_dir: str | Path, *, test_set=None, device: str | torch.device = "cpu",
                   out_dir: str | Path | None = None) -> dict:
    """Evaluate run_dir's best model on the test split -- once per final model.

    Writes (to ``out_dir``, default run_dir) test_metrics.json, classification_report.txt,
    confusion_matrix.png and gradcam.png.  ``test_set`` (an ImageSet) lets a caller that
    evaluates many models read the test split once.  Returns {"metrics", "y_true",
    "y_pred", "y_score", "classes", "best_epoch"}; y_score: the (N, K) softmax probabilities
    (for AUROC), y_pred their argmax; metrics include bootstrap 95 % CIs.
    """
    device = torch.device(device)
    model, cfg, classes, best_epoch = load_best(run_dir, device)
    if test_set is None:
        test_set = load_test_set(cfg)
    if tuple(test_set.classes) != classes:
        raise ValueError(f"test set classes {test_set.classes} differ from the model's {classes}")
    y_true = test_set.labels
    y_score = predict(model, test_set.images, device)
    y_pred = y_score.argmax(1)
    metrics = classification_metrics(y_true, y_pred, classes)
    k = len(classes)
    for name, fn in (("accuracy", accuracy), ("macro_f1", lambda t, p: macro_f1(t, p, k))):
        _, lo, hi = bootstrap_ci(y_true, y_pred, fn, n_boot=cfg.n_boot, seed=cfg.seed)
        metrics[f"{name}_ci_low"], metrics[f"{name}_ci_high"] = lo, hi
    metrics["macro_auroc"] = macro_auroc(y_true, y_score)
    metrics.update({f"auroc/{c}": float(a) for c, a in zip(classes, auroc_per_class(y_true, y_score))})
    metrics.update(best_epoch=best_epoch, n_test=int(len(y_true)), pretrained=uses_imagenet(cfg))
    out = Path(out_dir or run_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "test_metrics.json").write_text(json.dumps(metrics, indent=2))
    (out / "classification_report.txt").write_text(report_text(y_true, y_pred, classes))
    save_confusion_png(confusion(y_true, y_pred, k), classes, out / "confusion_matrix.png",
                       title=f"{cfg.model} / {cfg.strategy} (test)")
    if cfg.gradcam_per_class:
        idx = pick_per_class(y_true, cfg.gradcam_per_class, k)
        x = to_tensor(test_set.images[np.sort(idx)], "[0,1]")
        cams = gradcam(model, x.to(device))
        titles = [f"{classes[t]} -> {classes[p]}"
                  for t, p in zip(y_true[np.sort(idx)], y_pred[np.sort(idx)])]
        save_gradcam_png(x, cams, titles, out / "gradcam.png")
    return {"metrics": metrics, "y_true": y_true, "y_pred": y_pred, "y_score": y_score,
            "classes": classes, "best_epoch": best_epoch}
