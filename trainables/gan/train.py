"""`train_gan`: the GAN trainable, written once against `RunContext` (standalone or Ray Train)."""
from __future__ import annotations

import inspect
import itertools
import random
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from trainables import disk
from trainables.context import RunContext
from trainables.data import to_tensor
from trainables.data.augment import PositionalAugment
from trainables.gan.build import build_models, build_optimizer, build_scheduler, trained_classes
from trainables.gan.checkpoint import (STATE_FORMAT, StateStore, resume_state, rng_state,
                                       save_generator, set_rng_state, write_resume_note)
from trainables.gan.config import GANConfig
from trainables.gan.families import FAMILIES
from trainables.gan.guard import DivergenceGuard
from trainables.gan.loop import compiled, train_epoch
from trainables.gan.sampling import grid_labels, sample, save_grid

Evaluate = Callable[[nn.Module, int], dict[str, float]]


class ImageSetDataset(Dataset):
    """(uint8 HWC image, label) pairs of an ImageSet, restricted to some rows."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, rows: np.ndarray):
        self.images, self.labels, self.rows = images, labels, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        r = self.rows[i]
        return np.asarray(self.images[r]), int(self.labels[r])


def _collate(items: Sequence[tuple[np.ndarray, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    images = np.stack([x for x, _ in items])
    return to_tensor(images, value_range="[-1,1]"), torch.tensor([y for _, y in items])


def make_loader(cfg: GANConfig, data: Any, class_indices: Sequence[int], ctx: RunContext
                ) -> DataLoader:
    """Shuffled, drop_last loader over the trained classes; the order is a function of
    (seed, epoch) via `set_epoch` (also with one process) so resume is exact.  A per-class
    family (DCGAN) gets batches of one class at a time (S1: each class's pair trains on its
    own batches of `batch_size` images, as many per epoch as its class has)."""
    labels = np.asarray(data.labels)
    rows = np.flatnonzero(np.isin(labels, list(class_indices)))
    ds = ImageSetDataset(data.images, labels, rows)
    common = dict(num_workers=cfg.num_workers, collate_fn=_collate,
                  pin_memory=ctx.device.type == "cuda")
    if FAMILIES[cfg.family].per_class:
        sampler = PerClassBatchSampler(labels[rows], class_indices, cfg.batch_size, ctx.rank,
                                       ctx.world_size, cfg.seed)
        return DataLoader(ds, batch_sampler=sampler, **common)
    per_rank = len(rows) // max(ctx.world_size, 1)
    if per_rank < cfg.batch_size:
        raise ValueError(f"{len(rows)} training images for classes {list(class_indices)} give "
                         f"{per_rank} per process, fewer than batch_size={cfg.batch_size}: "
                         "lower batch_size or use more data")
    sampler = DistributedSampler(ds, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True,
                                 seed=cfg.seed)
    return DataLoader(ds, batch_size=cfg.batch_size, sampler=sampler, drop_last=True, **common)


class PerClassBatchSampler:
    """Batches of a single class each, classes taking turns (round robin), every class's
    images shuffled by (seed, epoch, class).  A class with fewer images than `batch_size`
    is one batch of all its images per epoch.  Under DDP each rank takes an equal share of
    every class, so all ranks train the same class's pair at the same step."""

    def __init__(self, labels: np.ndarray, class_indices: Sequence[int], batch_size: int,
                 rank: int = 0, world_size: int = 1, seed: int = 0):
        self.labels, self.classes = np.asarray(labels), tuple(class_indices)
        self.rank, self.world, self.seed = rank, world_size, seed
        self.epoch = 0
        self.shares = {c: int((self.labels == c).sum()) // world_size for c in self.classes}
        small = {c: n for c, n in self.shares.items() if n < 2}
        if small:
            raise ValueError(f"classes {sorted(small)} have fewer than 2 training images per "
                             f"process ({small}); a per-class DCGAN needs at least 2 per class "
                             "(BatchNorm): add images or train fewer classes (dcgan_classes)")
        self.batch = {c: min(batch_size, n) for c, n in self.shares.items()}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _class_batches(self, c: int) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch, c])
        idx = rng.permutation(np.flatnonzero(self.labels == c))
        share, b = self.shares[c], self.batch[c]
        mine = idx[self.rank * share:(self.rank + 1) * share]
        return [mine[i * b:(i + 1) * b].tolist() for i in range(len(mine) // b)]

    def __iter__(self):
        per_class = [self._class_batches(c) for c in self.classes]
        for j in range(max(len(b) for b in per_class)):
            for batches in per_class:
                if j < len(batches):
                    yield batches[j]

    def __len__(self) -> int:
        return sum(self.shares[c] // self.batch[c] for c in self.classes)


def _set_epoch(loader: DataLoader, epoch: int) -> None:
    """Reshuffle for `epoch`: whichever of the loader's samplers shuffles has `set_epoch`
    (DistributedSampler, or the per-class DCGAN's batch sampler)."""
    for s in (loader.sampler, loader.batch_sampler):
        if hasattr(s, "set_epoch"):
            s.set_epoch(epoch)


def _to_device(loader: DataLoader, device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for x, y in loader:
        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def _seed_epoch(seed: int, epoch: int, rank: int) -> None:
    # The noise/dropout stream of an epoch depends only on (seed, epoch, rank): a resumed run
    # repeats it exactly and DDP ranks draw different z.
    s = (seed * 1_000_003 + epoch * 9_973 + rank) % (2 ** 63)
    torch.manual_seed(s)
    random.seed(s)
    np.random.seed(s % (2 ** 32))


def real_augment(cfg: GANConfig) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """S0's shear/zoom of the real images during GAN training (None when both are 0).
    Draws from the global RNG, which is seeded per epoch: resume stays exact."""
    if not (cfg.real_shear or cfg.real_zoom):
        return None
    return PositionalAugment(translate=0.0, degrees=0.0, zoom=cfg.real_zoom, intensity=0.0,
                             shear=cfg.real_shear)


def train_gan(cfg: GANConfig, data: Any, ctx: RunContext,
              evaluate: Evaluate | None = None) -> list[dict]:
    """Train `cfg` on `data` (an ImageSet: .images uint8 NHWC, .labels, .classes).

    Each epoch: train, sample the fixed grid, apply the divergence guard, call `evaluate`
    (rank 0, every `eval_every` epochs and at the last), write `epoch_XXXX/{grid.png,
    generator.pt, resume.json}` (rank 0) and `ctx.report(metrics, epoch_dir)`.  The full
    training state goes to `ctx.states` (default: `epoch_XXXX/state.pt`, the newest two kept)
    every `state_every` epochs, at the last and at a stop.  Stops early with `stop_reason` /
    diverged=1.0 when the guard fires.  Returns the per-epoch reports."""
    classes = tuple(data.classes)
    _check_data(cfg, data)
    cls_idx = trained_classes(cfg, classes, np.asarray(data.labels))
    torch.manual_seed(cfg.seed)  # initial weights: a function of the seed (same on every rank)
    G, D = build_models(cfg, len(classes), classes, cls_idx)
    dev = ctx.device
    fmt = torch.channels_last if (cfg.channels_last and dev.type == "cuda") else torch.contiguous_format
    G, D = G.to(dev, memory_format=fmt), D.to(dev, memory_format=fmt)
    opt_g, opt_d = build_optimizer(cfg, G.parameters(), cfg.lr_g), build_optimizer(cfg, D.parameters(), cfg.lr_d)
    sched_g, sched_d = build_scheduler(cfg, opt_g), build_scheduler(cfg, opt_d)
    guard = DivergenceGuard.for_config(cfg)
    start_epoch, iteration = 0, 0
    resumed, resume_note = _load_resume(ctx)
    if resumed is not None:
        start_epoch, iteration = _resume(resumed, cfg, classes, G, D, opt_g, opt_d,
                                         sched_g, sched_d, guard)
    states = ctx.states or StateStore(ctx.run_dir)
    state_epoch = None
    if resumed is not None and ctx.is_main:
        # The run's own store restarts from the state it resumed (PBT may have taken another
        # trial's): an older state of an abandoned line must never be its fallback.
        state_epoch = start_epoch - 1
        states.save(resumed, state_epoch, keep=1)
    # Wrap after loading: DDP broadcasts rank 0's (restored) weights at construction.
    # Compiled after DDP's wrap (its optimizer splits the graph at bucket boundaries).
    Gw, Dw = compiled(ctx.wrap_model(G), cfg, dev), compiled(ctx.wrap_model(D), cfg, dev)
    loader = make_loader(cfg, data, cls_idx, ctx)
    augment = real_augment(cfg)
    fixed_labels = grid_labels(cls_idx, cfg.grid_per_class)
    reports: list[dict] = []
    clock = Stopwatch(dev)
    for epoch in range(start_epoch, cfg.epochs):
        clock.lap()
        _seed_epoch(cfg.seed, epoch, ctx.rank)
        _set_epoch(loader, epoch)
        Gw.train(); Dw.train()
        lrs = {"lr_g": opt_g.param_groups[0]["lr"], "lr_d": opt_d.param_groups[0]["lr"]}
        batches = itertools.islice(_to_device(loader, dev), cfg.steps_per_epoch)
        m = train_epoch(Gw, Dw, opt_g, opt_d, batches, cfg, iteration, augment)
        n_batches = int(m.pop("batches"))
        iteration += n_batches
        m = _mean_across_ranks(m, ctx)
        seen = images_seen(iteration, cfg, ctx.world_size)
        m = {"epoch": float(epoch), **m, **lrs, "world_size": float(ctx.world_size),
             "images_seen": float(seen), "time_train_s": clock.lap()}
        # The budget is epochs or images, whichever ends first (--max-images: a search costs
        # the same on 1k and 30k training images).
        last = epoch == cfg.epochs - 1 or (cfg.max_images > 0 and seen >= cfg.max_images)
        _step_schedulers(sched_g, sched_d)
        samples = sample(G, fixed_labels, cfg.latent_dim, seed=cfg.seed, dist=cfg.latent_dist)
        reason = guard.update(m, samples, fixed_labels)
        if reason is None and evaluate is not None and ctx.is_main and (
                eval_due(cfg, epoch, seen, images_seen(iteration - n_batches, cfg, ctx.world_size))
                or last):
            G.eval(); D.eval()
            m.update({k: float(v) for k, v in _evaluate(evaluate, G, D, epoch, cfg).items()})
            G.train(); D.train()
            reason = guard.after_eval(m)
        m["time_eval_s"] = clock.lap()  # with the fixed samples and the guard's checks
        reason = _agree(reason, ctx)
        m["diverged"] = 1.0 if reason else 0.0
        if reason:
            m["stop_reason"] = reason
        # Ranking needs the generator of every epoch, resume only the newest full state
        # (G, D, optimisers: ~3x the generator's bytes): every `state_every` epochs, at the
        # last and whenever the run stops.
        full = (epoch + 1) % cfg.state_every == 0 or last or bool(reason)
        full = ctx.about_to_stop() or full  # every rank calls it, every epoch
        epoch_dir = None
        if resume_note:  # a fallback or a fresh start after a resume: on the trial's record
            m["resume_warning"], resume_note = resume_note, None
        if ctx.is_main:
            # Before anything of this epoch is written: stop on a full disk with a reason
            # (and a reserve left for Ray's own files), not half-way with torn files.
            _require_space(ctx, states, G, D, full)
            epoch_dir = Path(ctx.run_dir) / f"epoch_{epoch:04d}"
            epoch_dir.mkdir(parents=True, exist_ok=True)
            save_grid(samples, epoch_dir / "grid.png", per_row=cfg.grid_per_class,
                      row_names=[classes[c] for c in cls_idx], title=f"epoch {epoch}")
            # NaN weights are worth nothing as a checkpoint; other stops keep theirs.
            if reason and reason.startswith("non-finite"):
                epoch_dir = None
            else:
                if full:
                    states.save(dict(
                        format=STATE_FORMAT, epoch=epoch, iteration=iteration,
                        config=cfg.to_dict(), classes=list(classes), class_indices=list(cls_idx),
                        generator=G.state_dict(), discriminator=D.state_dict(),
                        opt_g=opt_g.state_dict(), opt_d=opt_d.state_dict(),
                        sched_g=sched_g.state_dict() if sched_g else None,
                        sched_d=sched_d.state_dict() if sched_d else None,
                        guard=guard.state_dict(), rng=rng_state(), metrics=dict(m)), epoch)
                    state_epoch = epoch
                save_generator(epoch_dir, G, cfg, classes, cls_idx)
                write_resume_note(epoch_dir, epoch, state_epoch)
        m["time_write_s"] = clock.lap()  # grid, generator, full state (not Ray's upload)
        with disk.translating(states.local_root or ctx.run_dir):  # Ray copies epoch_dir there
            ctx.report(m, epoch_dir)
        reports.append(m)
        if reason or last:
            break
    return reports


class Stopwatch:
    """Seconds per phase of an epoch, reported as `time_train_s`, `time_eval_s` and
    `time_write_s`: what evaluation and checkpoints cost beside the training itself (on CUDA
    after a synchronize, or the asynchronous kernels would land in the wrong phase)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.last = time.perf_counter()

    def lap(self) -> float:
        """Seconds since the previous lap."""
        if self.cuda:
            torch.cuda.synchronize()
        now = time.perf_counter()
        spent, self.last = now - self.last, now
        return spent


def _load_resume(ctx: RunContext) -> tuple[Optional[dict], Optional[str]]:
    """(the full state to resume from or None, what went wrong on the way or None).  A
    corrupt newest state falls back to the one before it; when none is usable the run starts
    over from epoch 0.  Either is said (as a warning and in the first report's
    `resume_warning`), never silent."""
    if ctx.resume_dir is None:
        return None, None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            state = resume_state(ctx.resume_dir, ctx.resume_states)
        except ValueError as exc:  # states exist, none readable
            state = None
            warnings.warn(f"{exc}; training starts over from epoch 0", RuntimeWarning)
        else:
            if state is None:
                warnings.warn(f"{ctx.resume_dir}: no full training state at or before its "
                              "epoch; training starts over from epoch 0", RuntimeWarning)
    notes = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    for note in notes:
        warnings.warn(note, RuntimeWarning, stacklevel=3)
    return state, "; ".join(notes) or None


def _require_space(ctx: RunContext, states: StateStore, G: nn.Module, D: nn.Module,
                   full: bool) -> None:
    """Free space for this epoch's writes: the generator (in the run folder, then copied
    into the trial's storage) and, on a full-state epoch, G + D with both optimisers' moments
    (~3x their weights)."""
    gen = disk.nbytes(G.state_dict())
    state = 3 * (gen + disk.nbytes(D.state_dict())) if full else 0
    disk.require([ctx.run_dir], gen)
    if states.local_root is not None:
        disk.require([states.local_root.parent], gen + state)


def images_seen(iteration: int, cfg: GANConfig, world_size: int) -> int:
    """Real training images drawn so far: batches per process x batch size x processes."""
    return int(iteration) * cfg.batch_size * int(world_size)


def eval_due(cfg: GANConfig, epoch: int, seen: int, seen_before: int) -> bool:
    """Evaluate every `eval_every` epochs, or, with `eval_every_images`, each time the
    images seen cross a multiple of it (a schedule that does not depend on the data's size).
    `min_evals` shortens that period to the trial's budget in images / min_evals (the budget:
    `max_images`, else epochs x this epoch's images): a trial whose whole budget is a few
    thousand images (few epochs, a small batch) would otherwise be evaluated only at its
    end, with no epoch to choose and nothing for ASHA's rungs."""
    if cfg.eval_every_images <= 0:
        return (epoch + 1) % cfg.eval_every == 0
    period = cfg.eval_every_images
    if cfg.min_evals > 0:
        budget = cfg.epochs * (seen - seen_before)  # whichever budget ends first
        budget = min(budget, cfg.max_images) if cfg.max_images else budget
        period = max(1, min(period, budget // cfg.min_evals))
    return _crossed(seen, seen_before, period)


def _crossed(seen: int, seen_before: int, period: int) -> bool:
    return seen // period > seen_before // period


def _evaluate(evaluate: Evaluate, G: nn.Module, D: nn.Module, epoch: int,
              cfg: GANConfig) -> dict[str, float]:
    """Call `evaluate`, handing it D's class head when its family has one (AC-GAN), so the
    class check can compare what D "sees" in the fakes with an independent classifier."""
    if not FAMILIES[cfg.family].class_head or not _accepts_aux(evaluate):
        return evaluate(G, epoch)
    return evaluate(G, epoch, aux_classifier=lambda x: D(x)[1])


def _accepts_aux(fn: Callable) -> bool:
    try:
        return "aux_classifier" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _resume(ck: dict, cfg: GANConfig, classes: tuple[str, ...], G: nn.Module,
            D: nn.Module, opt_g, opt_d, sched_g, sched_d, guard: DivergenceGuard) -> tuple[int, int]:
    """Restore everything from a full training state; returns (next epoch, global batch count)."""
    _check_resume(ck, cfg, classes)
    G.load_state_dict(ck["generator"])
    D.load_state_dict(ck["discriminator"])
    opt_g.load_state_dict(ck["opt_g"])
    opt_d.load_state_dict(ck["opt_d"])
    for sched, key in ((sched_g, "sched_g"), (sched_d, "sched_d")):
        if sched is not None:
            sched.load_state_dict(ck[key])
    guard.load_state_dict(ck["guard"])
    set_rng_state(ck["rng"])
    saved = GANConfig.from_dict(ck["config"])
    for opt, sched, old, new in ((opt_g, sched_g, saved.lr_g, cfg.lr_g),
                                 (opt_d, sched_d, saved.lr_d, cfg.lr_d)):
        if new != old:  # PBT exploit/explore: continue from the weights with the new rate
            _rescale_lr(opt, sched, new / old)
    return int(ck["epoch"]) + 1, int(ck["iteration"])


def _rescale_lr(opt: torch.optim.Optimizer, sched, factor: float) -> None:
    """Multiply the current and base learning rates, keeping the scheduler's phase."""
    for group in opt.param_groups:
        group["lr"] *= factor
        if "initial_lr" in group:
            group["initial_lr"] *= factor
    if sched is not None:
        sched.base_lrs = [lr * factor for lr in sched.base_lrs]
        sched._last_lr = [group["lr"] for group in opt.param_groups]


def _mean_across_ranks(m: dict[str, float], ctx: RunContext) -> dict[str, float]:
    """Under DDP, average the epoch numbers over ranks (images_per_s is summed), so every
    rank reports and guards on the same values and they all stop together."""
    if ctx.world_size <= 1 or not (dist.is_available() and dist.is_initialized()):
        return m
    keys = sorted(m)
    t = torch.tensor([m[k] for k in keys], dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t)
    out = dict(zip(keys, (t / ctx.world_size).tolist()))
    out["images_per_s"] *= ctx.world_size
    return out


def _agree(reason: str | None, ctx: RunContext) -> str | None:
    """Under DDP only rank 0 evaluates, so a stop it decides there is broadcast: all ranks
    stop at the same epoch (a rank left training alone would hang in its next all-reduce)."""
    if ctx.world_size <= 1 or not (dist.is_available() and dist.is_initialized()):
        return reason
    flag = torch.tensor([1.0 if reason else 0.0], device=ctx.device)
    dist.broadcast(flag, src=0)
    if flag.item() and reason is None:
        return "stopped with rank 0 (its guard fired after evaluation; see rank 0's report)"
    return reason


def _step_schedulers(*scheds) -> None:
    """Per-epoch scheduler step.  With a slow D (K > batches per epoch) an epoch can end
    without a D step; PyTorch then warns about the call order, but the per-epoch schedule
    is still what we want, so that one warning is silenced."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)`")
        for s in scheds:
            if s is not None:
                s.step()


def _check_data(cfg: GANConfig, data: Any) -> None:
    images = data.images
    if images.ndim != 4 or images.shape[1] != cfg.resolution or images.shape[2] != cfg.resolution \
            or images.shape[3] != cfg.channels:
        raise ValueError(f"data images have shape {tuple(images.shape)} (N,H,W,C) but the GAN "
                         f"config wants {cfg.resolution}x{cfg.resolution}x{cfg.channels}: load the "
                         "image set with the config's resolution and channels")
    if len(data.labels) != images.shape[0]:
        raise ValueError(f"data has {images.shape[0]} images but {len(data.labels)} labels")


def _check_resume(ck: dict, cfg: GANConfig, classes: tuple[str, ...]) -> None:
    if ck.get("format") != STATE_FORMAT:
        raise ValueError("resume_dir holds a generator-only checkpoint; resume needs state.pt")
    saved = GANConfig.from_dict(ck["config"])
    arch = ("family", "variant", "resolution", "channels", "latent_dim", "width", "embed_dim")
    diff = [k for k in arch if getattr(saved, k) != getattr(cfg, k)]
    if diff or tuple(ck["classes"]) != classes:
        raise ValueError(f"cannot resume: checkpoint differs in {diff or ['classes']} "
                         "(resume with the config and data it was trained with)")
