"""What a search prints while it runs: one line per trial epoch (the epoch, numbered from 0 as
everywhere else, and how many of the budget have run; the objective and
its best so far, g_loss, d_fake_acc), one line when a trial ends (finished, stopped by ASHA,
diverged with the reason, failed), and a progress line for the whole search with an ETA and
the best so far.  Ray's own status tables are switched off (`RunConfig(verbose=0)`, Ray's
supported way to silence them in 2.60; a passed `ProgressReporter` is ignored while its new
output engine is on).
"""
from __future__ import annotations

import math
import sys
import time
from typing import Callable, Optional, TextIO

from ray.tune import Callback

# Shown after the objective when a trial reports them (GAN; the classifier has none).
EXTRA_KEYS = ("g_loss", "d_fake_acc")


def _number(value) -> Optional[float]:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _fmt(value) -> str:
    number = _number(value)
    return "-" if number is None else f"{number:.4g}"


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else \
        f"{seconds // 60}m{seconds % 60:02d}s"


class ConsoleCallback(Callback):
    """Compact console for a search of `num_samples` trials x `epochs` epochs.  With an image
    budget (`max_images` > 0, --max-images) trials end at whichever comes first, so progress
    and the ETA count training images (`images_seen`) instead of epochs."""

    def __init__(self, objective: str, mode: str, epochs: int, num_samples: int,
                 out: TextIO | None = None, clock: Callable[[], float] = time.monotonic,
                 progress_every_s: float = 20.0, max_images: int = 0):
        self.objective, self.mode = objective, mode
        self.epochs, self.num_samples = max(epochs, 1), num_samples
        self.max_images = max(int(max_images or 0), 0)
        self.images_done: dict[str, int] = {}
        self.out = out
        self.clock = clock
        self.progress_every_s = progress_every_s
        self.start = clock()
        # The ETA's clock starts at the first result this process sees: what comes before it
        # (Ray's start, the data, the real images' Inception statistics) is setup, not a rate.
        self.first_at: Optional[float] = None
        self.ran_at_first = 0
        self.last_progress = -math.inf
        self.epochs_done: dict[str, int] = {}
        self.ended: dict[str, str] = {}
        self.best: Optional[tuple[float, str, int]] = None  # (value, trial, epoch)

    # Tune pickles callbacks with its experiment state: the stream is not picklable.
    def __getstate__(self):
        return {**self.__dict__, "out": None, "clock": None}

    def __setstate__(self, state):
        """A resumed search: a new clock, and the ETA from the epochs run in this process."""
        # a search pickled before image budgets existed has neither attribute
        self.__dict__.update({"max_images": 0, "images_done": {}, **state,
                              "clock": time.monotonic})
        self.start, self.last_progress = time.monotonic(), -math.inf
        self.first_at, self.ran_at_first = None, 0

    def _print(self, line: str) -> None:
        print(line, file=self.out or sys.stdout, flush=True)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        epoch = int(result.get("epoch", result.get("training_iteration", 1) - 1))
        self.epochs_done[trial.trial_id] = epoch + 1
        if _number(result.get("images_seen")) is not None:
            self.images_done[trial.trial_id] = int(result["images_seen"])
        if self.first_at is None:
            self.first_at, self.ran_at_first = self.clock(), self._ran()
        value = _number(result.get(self.objective))
        if value is not None and (self.best is None or
                                  (value < self.best[0] if self.mode == "min" else value > self.best[0])):
            self.best = (value, trial.trial_id, epoch)
        extras = "  ".join(f"{k} {_fmt(result[k])}" for k in EXTRA_KEYS if k in result)
        # Epochs are numbered from 0 on every screen (MLflow steps, tags, registry, files):
        # "epoch 2 (3/3)" is the third and last of three.
        self._print(f"trial {trial.trial_id}  epoch {epoch} ({self._budget_done(trial.trial_id)})  {self.objective} "
                    f"{_fmt(result.get(self.objective))} (best {_fmt(result.get('best_' + self.objective))})"
                    f"  {extras}".rstrip())
        if self.clock() - self.last_progress >= self.progress_every_s:
            self._print(self.progress())

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._ended(trial, self._ending(trial))

    def on_trial_error(self, iteration, trials, trial, **info):
        where = getattr(trial, "error_file", None) or "its MLflow run's `error` tag"
        self._ended(trial, f"failed after its retries (traceback: {where})")

    def _ending(self, trial) -> str:
        last = trial.last_result or {}
        if last.get("diverged") == 1.0:
            return f"diverged: {last.get('stop_reason', '')}".rstrip(": ")
        done = self.epochs_done.get(trial.trial_id, 0)
        images = self.images_done.get(trial.trial_id, 0)
        if self.max_images and images >= self.max_images:
            return "finished"
        return "finished" if done >= self.epochs else (
            f"stopped by the scheduler after epoch {done - 1} ({done} of {self.epochs} epochs)")

    def _budget_done(self, trial_id: str) -> str:
        """`3/3` epochs, or with an image budget `96000/100000 images`."""
        if self.max_images:
            return f"{self.images_done.get(trial_id, 0)}/{self.max_images} images"
        return f"{self.epochs_done.get(trial_id, 0)}/{self.epochs}"

    def _ended(self, trial, how: str) -> None:
        self.ended[trial.trial_id] = how
        self._print(f"trial {trial.trial_id} {how}")
        self._print(self.progress())

    def progress(self) -> str:
        """`[#####-----] 12/40 epochs, 1/4 trials ended, 2m10s, ETA 6m30s; best fid 3.1 (trial
        t, epoch 2)`.  The ETA is the work left (the remaining trials at their full budget:
        ASHA stops make it shorter) at the rate measured since the first result of this
        process, from epochs (images) actually run; none before a second result.  With an
        image budget the units are images."""
        total = self.num_samples * self._per_trial()
        done = self._done()
        self.last_progress = self.clock()
        elapsed = self.last_progress - self.start
        started = self.first_at is not None
        ran = self._ran() - self.ran_at_first if started else 0
        eta = (self.last_progress - self.first_at) / ran * (total - done) if ran > 0 else math.nan
        bar = "#" * round(20 * done / total) + "-" * (20 - round(20 * done / total))
        best = (f"; best {self.objective} {self.best[0]:.4g} (trial {self.best[1]}, epoch "
                f"{self.best[2]})" if self.best else "")
        return (f"[{bar}] {done}/{total} {self._unit()}, {len(self.ended)}/{self.num_samples} trials "
                f"ended, {_duration(elapsed)}" + (f", ETA {_duration(eta)}" if ran > 0 else "")
                + best)

    def _per_trial(self) -> int:
        return self.max_images or self.epochs

    def _unit(self) -> str:
        return "images" if self.max_images else "epochs"

    def _ran(self) -> int:
        """Epochs (images) run in this process's view, without the budgets of ended trials."""
        ran = self.images_done if self.max_images else self.epochs_done
        return sum(min(n, self._per_trial()) for n in ran.values())

    def _done(self) -> int:
        """Epochs (images) run, counting an ended trial as its whole budget (it will run no
        more)."""
        ran = self.images_done if self.max_images else self.epochs_done
        done = sum(self._per_trial() if t in self.ended else min(ran.get(t, 0), self._per_trial())
                   for t in set(self.epochs_done) | set(self.ended))
        return min(done, self.num_samples * self._per_trial())
