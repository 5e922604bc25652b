"""The Tune side of a search: the trainable, the searcher (Optuna TPE / random, or seeded
random starts under PBT), the scheduler (ASHA, PBT or FIFO) and the Tuner itself."""
from __future__ import annotations

import contextlib
import functools
import logging
import math
import signal
import threading
import warnings
from pathlib import Path

import optuna
from ray import tune
from ray.tune import Callback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining
from ray.tune.search.basic_variant import BasicVariantGenerator
from ray.tune.search.optuna import OptunaSearch

from orchestrator import registry
from orchestrator.config import ConfigError, SearchConfig
from orchestrator.console import ConsoleCallback
from orchestrator.store import optuna_notes
from orchestrator.store.writer import MlflowSearchCallback, error_line
from trainables import disk
from trainables.ray_glue import checkpoints_kept, trial, trial_resources
from trainables.trial import TrialSettings, best_key


def make_trainable(settings: TrialSettings):
    bound = tune.with_parameters(_trial_entry, settings=settings)
    return tune.with_resources(bound, trial_resources(settings.placement))


def _trial_entry(config: dict, settings: TrialSettings) -> None:
    """Searched parameters -> trial config (space.to_config), then the shared trial runner."""
    space = registry.experiment_space(settings.experiment)
    trial(space.to_config(config), settings)


def build_tuner(cfg: SearchConfig, settings: TrialSettings, storage: str, callback):
    trainable = make_trainable(settings)
    path = f"{storage.rstrip('/')}/{cfg.name}"
    if cfg.resume:
        if not tune.Tuner.can_restore(path):
            raise ConfigError(f"--resume: nothing to resume at {path}")
        return tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True,
                                  resume_errored=True)
    objectives = [(best_key(name), mode) for name, mode in cfg.objectives()]
    metric, mode = objectives[0]
    space_module = registry.experiment_space(cfg.experiment)
    search_alg, param_space = searcher(cfg, space_module, settings, objectives, storage)
    tune_config = tune.TuneConfig(
        num_samples=cfg.num_samples,
        max_concurrent_trials=settings.placement.max_concurrent,
        search_alg=search_alg,
        scheduler=scheduler(cfg, metric, mode, settings.epochs, space_module,
                            own_metric=len(objectives) > 1,
                            max_images=int(settings.base.get("max_images") or 0)),
        # Multi-objective Optuna gets metric/mode itself; Tune then must not (the scheduler
        # gets the first objective instead).
        **({"metric": metric, "mode": mode} if len(objectives) == 1 else {}),
    )
    console = ConsoleCallback(cfg.objectives()[0][0], mode, settings.epochs, cfg.num_samples,
                              max_images=int(settings.base.get("max_images") or 0))
    run_config = tune.RunConfig(
        name=cfg.name, storage_path=storage,
        callbacks=[callback, console, InterruptWatch(),
                   DiskWatch(watched_folders(storage, cfg.mlflow_uri))],
        failure_config=tune.FailureConfig(max_failures=2),
        checkpoint_config=tune.CheckpointConfig(**checkpoints_kept(settings)),
        verbose=0,  # Ray's status tables off: `console` prints one line per trial epoch
    )
    return tune.Tuner(trainable, param_space=param_space, tune_config=tune_config,
                      run_config=run_config)


def searcher(cfg: SearchConfig, space_module, settings: TrialSettings, objectives, storage):
    """OptunaSearch (TPE or random sampler) over the define-by-run space; none under PBT.
    `objectives` are the result keys it reads (`best_<metric>`, with their modes)."""
    if cfg.scheduler == "pbt":
        # seeded random starting points, so a PBT search is reproducible like an Optuna one
        return BasicVariantGenerator(random_state=cfg.seed), pbt_mutations(space_module)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # "A new study created ..." is noise
    sampler = (optuna.samplers.TPESampler(seed=cfg.seed) if cfg.searcher == "optuna"
               else optuna.samplers.RandomSampler(seed=cfg.seed))
    epochs = settings.epochs
    names = [m for m, _ in objectives]
    modes = [d for _, d in objectives]
    search = BestEpochOptunaSearch(
        space=functools.partial(space_module.space, max_epochs=epochs),
        metric=names[0] if len(names) == 1 else names,
        mode=modes[0] if len(modes) == 1 else modes,
        points_to_evaluate=space_module.first_points(dict(settings.base), epochs),
        sampler=sampler,
        study_name=cfg.name,
        storage=optuna_storage(cfg, storage),
    )
    return search, None


def optuna_storage(cfg: SearchConfig, storage: str):
    """A study optuna-dashboard can open: sqlite beside the Tune results (or ./ray_results)."""
    optuna_notes.study_path(storage, cfg.name).parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.RDBStorage(optuna_notes.study_url(storage, cfg.name))


def pbt_mutations(space_module) -> dict:
    """PBT's perturbation ranges (also its random starting space); learning rates span
    decades, so they are perturbed on a log scale."""
    return {key: tune.loguniform(lo, hi) if key.startswith("lr") else tune.uniform(lo, hi)
            for key, (lo, hi) in space_module.PBT_MUTATIONS.items()}


def scheduler(cfg: SearchConfig, metric: str, mode: str, epochs: int, space_module,
              own_metric: bool = False, max_images: int = 0):
    """ASHA's rungs count epochs, or training images under an image budget (`max_images`:
    then a search decides at the same points whatever the data set's size)."""
    if cfg.scheduler == "asha":
        extra = {"metric": metric, "mode": mode} if own_metric else {}
        if max_images > 0:
            return ASHAScheduler(time_attr="images_seen", max_t=max_images,
                                 grace_period=asha_grace_period(cfg, max_images),
                                 reduction_factor=2, **extra)
        return ASHAScheduler(time_attr="training_iteration", max_t=max(epochs, 1),
                             grace_period=asha_grace_period(cfg, epochs), reduction_factor=2,
                             **extra)
    if cfg.scheduler == "pbt":
        return PopulationBasedTraining(
            time_attr="training_iteration", perturbation_interval=max(1, epochs // 4),
            hyperparam_mutations=pbt_mutations(space_module))
    return FIFOScheduler()


def asha_grace_period(cfg: SearchConfig, epochs: int) -> int:
    """Epochs (or images) before ASHA may stop a trial: a share of the budget (a GAN's first
    epochs say little about its last), at least one."""
    return max(1, min(epochs, round(cfg.asha_grace * epochs)))


def _nan_to_none(value):
    return None if isinstance(value, float) and math.isnan(value) else value


class BestEpochOptunaSearch(OptunaSearch):
    """OptunaSearch that learns from every trial, whatever its end.

    Its results carry `best_<metric>` (NaN until the objective is first evaluated; see
    `trainables.trial.SearchScores`), so Optuna is told the trial's best epoch.  A trial that
    never produced a value (diverged before its first evaluation, say) is told as PRUNED,
    not COMPLETE with a made-up worst value: TPE ranks pruned trials without values below
    every trial with one (`optuna.samplers._tpe.sampler._split_trials`), so it learns to
    avoid that region without a fake number entering the study.  A trial that errored is
    FAIL (the stock rule)."""

    def on_trial_result(self, trial_id: str, result: dict):
        if isinstance(self.metric, str) and _nan_to_none(result.get(self.metric)) is None:
            return  # nothing evaluated yet: no intermediate value for Optuna
        super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        self._label(trial_id, error)
        if result:
            names = self.metric if isinstance(self.metric, list) else [self.metric]
            values = [_nan_to_none(result.get(name)) for name in names]
            if any(v is None for v in values):  # a partial point is not a result either
                result = None
        super().on_trial_complete(trial_id, result, error)

    def _label(self, trial_id: str, error: bool = False) -> None:
        """optuna-dashboard shows the objectives by name and each trial's Tune id (the id in
        the console, MLflow's `cxr.trial_id` tag and the ranking) and MLflow run id, so its
        trial numbers can be matched with the product's, and marks a trial that failed; set
        while the trial is still running (Optuna freezes a finished trial).  The ranking's
        verdicts come later, so they are study attributes (`optuna_notes.annotate`)."""
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is None:
            return
        names = self.metric if isinstance(self.metric, list) else [self.metric]
        if self._ot_study.metric_names is None:
            with warnings.catch_warnings():  # "set_metric_names is experimental": noise
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                self._ot_study.set_metric_names([str(n) for n in names])
        ot_trial.set_user_attr("tune_trial_id", trial_id)
        # the running callback's map: a reference held here would be pickled apart from it
        # and go stale after --resume
        run_id = MlflowSearchCallback.live_run_ids().get(trial_id)
        if run_id:
            ot_trial.set_user_attr("mlflow_run_id", run_id)
        if error:
            ot_trial.set_user_attr("cxr.excluded", "the trial failed (see its MLflow run's "
                                   "`error` tag)")


class InterruptWatch(Callback):
    """Notes a Ctrl-C that Tune turns into a graceful stop.

    Ray Tune 2.60 installs its own SIGINT handler when `fit()` starts (before the callbacks'
    `setup`); the first SIGINT makes it save the experiment state, stop the live trials and
    return an ordinary ResultGrid: no error, no "interrupted" flag, the trials it stopped
    TERMINATED like finished ones and without an `on_trial_*` call.  So `setup` wraps that
    handler, and the driver reads `InterruptWatch.caught`.  The flag is the class's (one
    search per driver process): on --resume Tune uses the callbacks pickled in tuner.pkl."""

    caught = threading.Event()

    def setup(self, **info):
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers belong to the main thread; Tune installed none either
        tune_handler = signal.getsignal(signal.SIGINT)

        def note(signum, frame):
            InterruptWatch.caught.set()
            if callable(tune_handler):
                tune_handler(signum, frame)
            else:  # no Python handler to hand over to: stop like Python's default
                raise KeyboardInterrupt

        signal.signal(signal.SIGINT, note)


def watched_folders(storage: str, mlflow_uri: str) -> list[str]:
    """The local folders a search writes to: its --storage and a sqlite MLflow store's."""
    folders = [] if "://" in storage else [storage]
    if mlflow_uri.startswith("sqlite:///"):
        folders.append(str(Path(mlflow_uri[len("sqlite:///"):]).parent))
    return folders


class DiskWatch(Callback):
    """Ends the search when its disk is full, before Ray's own writes start failing.

    A trial stops with `trainables.disk.DiskFull` before a checkpoint that would leave less
    than the reserve free; Tune would retry it into the same wall and start the next trial,
    so the first such error (on retry or for good) ends the search here.  The search's own
    folders are checked after every step too (MLflow artefacts, another program).  Raised
    from a callback, the error leaves `tuner.fit()` with Tune's state as of the last step
    (written every step): the driver ends the search FAILED, and `--resume` continues the
    interrupted trials from their last complete checkpoint."""

    def __init__(self, folders: list[str]):
        self.folders = folders

    def on_step_end(self, iteration, trials, **info):
        disk.require(self.folders, 0)

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._check(trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._check(trial)

    @staticmethod
    def _check(trial) -> None:
        line = error_line(trial)
        if disk.mentions_disk_full(line):
            raise disk.DiskFull("", 0, 0, message=f"trial {trial.trial_id}: {line}")


class _NoRestoreHint(logging.Filter):
    """Tune's "Resume experiment with: Tuner.restore(...)": the product says its own."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tuner.restore(" not in record.getMessage()


@contextlib.contextmanager
def watching_interrupts():
    """Around `tuner.fit()`: yields an Event set when a Ctrl-C stopped it (InterruptWatch).

    Tune leaves its SIGINT handler installed after a normal end; the previous one is put
    back, so that a Ctrl-C after fit() (during the ranking) interrupts the driver."""
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT) if main else None
    InterruptWatch.caught.clear()
    hint_filter = _NoRestoreHint()
    tune_log = logging.getLogger("ray.tune.tune")
    tune_log.addFilter(hint_filter)
    level = tune_log.level
    # Its INFO lines ("Wrote the latest version of all result files ...") are bookkeeping;
    # warnings and errors still show.
    tune_log.setLevel(logging.WARNING)
    try:
        yield InterruptWatch.caught
    finally:
        tune_log.setLevel(level)
        tune_log.removeFilter(hint_filter)
        if main and previous is not None:
            signal.signal(signal.SIGINT, previous)
