"""The only place where trainables meet Ray.

A Tune trial is `trial(config, settings)`:
- `settings` are the search's fixed settings (experiment, data, budget, evaluation,
  resources), bound with `tune.with_parameters`;
- `config` holds the hyper-parameters the searcher chose.

Two execution paths run the *same* training loop (`trainables.gan.train_gan` or
`trainables.classifier.train_classifier`) and differ only in their `RunContext`:
- "function": the loop runs inside the Tune trial process (fast path for 1 CPU worker);
- "train": the trial builds a Ray Train `TorchTrainer` (Train V2) with
  `ScalingConfig(num_workers, use_gpu)`; each worker runs the loop under DDP and metrics
  reach Tune through `TuneReportCallback`.  Checkpoints then live in the Train run's
  storage; the metric `checkpoint_path` says where.

On both paths an epoch's local checkpoint folder is deleted once Ray has copied it to the
storage, and the GAN loop's full training states go straight to `states/` beside the trial's
(or Train run's) checkpoints, the newest two kept (`trainables.gan.checkpoint.StateStore`):
Ray's retention keeps checkpoints by score and would delete the state resume needs.
"""
from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Optional

import torch

import ray
import ray.train
import ray.train.torch
from ray import tune
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from trainables.context import RunContext
from trainables.gan.checkpoint import STATES_DIR, StateStore
from trainables.trial import KEEP_SCORE, Placement, TrialSettings, run_trial


def _quiet_ray() -> None:
    """Ray Train logs every persisted checkpoint and report at INFO, per worker and epoch:
    noise in the driver's console (the search prints its own line per epoch)."""
    logging.getLogger("ray.train").setLevel(logging.WARNING)


def trial(config: dict, settings: TrialSettings) -> None:
    """The Tune trainable: dispatches to the in-process or the Ray Train path."""
    _quiet_ray()
    if settings.placement.execution == "train":
        _run_with_torch_trainer(config, settings)
    else:
        _run_in_process(config, settings)


# --------------------------------------------------------------------------- function path
def _run_in_process(config: dict, settings: TrialSettings) -> None:
    checkpoint = tune.get_checkpoint()
    run_dir = Path(tempfile.mkdtemp(prefix="cxr-trial-"))
    resume_dir = None
    if checkpoint is not None:
        resume_dir = Path(checkpoint.to_directory(str(run_dir / "resume")))
    storage = tune.get_context().get_storage()  # the trial's folder in the search's storage
    # PBT restarts a trial from *another* trial's checkpoint: say so once, so the epoch
    # ranking can follow the lineage.  (A trial resuming its own checkpoint is no news.)
    origin = [checkpoint.path] if checkpoint is not None and \
        tune.get_context().get_trial_id() not in checkpoint.path else []
    node_id = ray.get_runtime_context().get_node_id()  # where the trial ran (multi-node view)

    def report(metrics: dict, epoch_dir: Optional[Path]) -> None:
        metrics = {**_reportable(metrics), "node_id": node_id}
        if origin:
            metrics["resumed_from"] = origin.pop()
        if epoch_dir is None:
            tune.report(metrics)
            return
        # tune.report copies the folder into the storage before it returns.
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(epoch_dir)))
        if disposable(epoch_dir):
            shutil.rmtree(epoch_dir, ignore_errors=True)

    device = torch.device("cuda" if settings.placement.use_gpu and torch.cuda.is_available()
                          else "cpu")
    ctx = RunContext(run_dir=run_dir, device=device, report=report, resume_dir=resume_dir,
                     states=trial_states(storage.trial_fs_path, storage.storage_filesystem),
                     resume_states=states_of(checkpoint))
    try:
        run_trial(config, settings, ctx)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


# ------------------------------------------------------------------------------ train path
def _run_with_torch_trainer(config: dict, settings: TrialSettings) -> None:
    placement = settings.placement
    trial_name = tune.get_context().get_trial_id()
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": config, "settings": settings},
        scaling_config=ScalingConfig(
            num_workers=placement.workers_per_trial,
            use_gpu=placement.use_gpu,
            resources_per_worker=worker_resources(placement),
        ),
        # The same name on restore makes Train V2 resume from the run's latest checkpoint.
        run_config=RunConfig(
            name=f"{settings.search_name}-train-{trial_name}",
            storage_path=settings.storage,
            callbacks=[TuneReportCallback()],
            failure_config=FailureConfig(max_failures=1),
            checkpoint_config=CheckpointConfig(**checkpoints_kept(settings)),
        ),
    )
    trainer.fit()


def disposable(checkpoint_dir: Path) -> bool:
    """Whether a reported checkpoint folder is deleted once Ray has copied it: the GAN loop
    writes a new one per epoch (the classifier rewrites one folder in place)."""
    return checkpoint_dir.name.startswith("epoch_")


def trial_states(folder: str, filesystem) -> StateStore:
    """The full training states of the trial (or Train run) whose checkpoints are in
    `folder` on `filesystem`."""
    return StateStore(f"{folder.rstrip('/')}/{STATES_DIR}", filesystem)


def states_of(checkpoint) -> Optional[StateStore]:
    """Where the states behind a persisted checkpoint are (another trial's, under PBT)."""
    return None if checkpoint is None else StateStore.beside(checkpoint.path,
                                                             checkpoint.filesystem)


def checkpoints_kept(settings: TrialSettings) -> dict:
    """`CheckpointConfig` arguments (Tune's and Train's) for bounded disk: the checkpoints
    of the `keep_epochs` best epochs by the first objective (`keep_score`; epochs without it
    go first), and always the latest one.  They hold generators, not full training states:
    those live in the trial's `states/` folder (two kept; see `trial_states`)."""
    mode = settings.objectives[0][1] if settings.objectives else "max"
    return dict(num_to_keep=settings.keep_epochs, checkpoint_score_attribute=KEEP_SCORE,
                checkpoint_score_order=mode)


def worker_resources(placement: Placement) -> dict:
    """What one process of a trial holds: a function trial's, or each Train worker's."""
    resources = {"CPU": placement.cpus_per_worker}
    if placement.use_gpu:
        resources["GPU"] = placement.gpus_per_worker
    return resources


def trial_resources(placement: Placement) -> dict:
    """Tune's reservation for the trial process: with a Train trial the trial actor itself
    only coordinates (a sliver of a CPU; its workers hold the rest)."""
    if placement.execution == "train":
        if placement.driver_resource:  # kept on the head (see Placement.driver_resource)
            return {"CPU": 0, placement.driver_resource: 0.01}
        return {"CPU": 0.01}
    return worker_resources(placement)


def train_loop_per_worker(loop_config: dict) -> None:
    """Ray Train worker: the same loop, under DDP, rank 0 writes checkpoints."""
    _quiet_ray()
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    run_dir = Path(tempfile.mkdtemp(prefix=f"cxr-worker{rank}-"))
    checkpoint = ray.train.get_checkpoint()
    resume_dir = None
    if checkpoint is not None:
        resume_dir = Path(checkpoint.to_directory(str(run_dir / "resume")))
    storage = context.get_storage()  # the Train run's folder in the search's storage

    def report(metrics: dict, epoch_dir: Optional[Path]) -> None:
        # Every rank must call report once per epoch; only rank 0 carries a checkpoint.  In
        # Ray 2.60's default SYNC upload the local folder stays unless we ask for its deletion
        # (`delete_local_checkpoint_after_upload` defaults to True for ASYNC only).
        ckpt = ray.train.Checkpoint.from_directory(str(epoch_dir)) if epoch_dir else None
        ray.train.report(_reportable(metrics), checkpoint=ckpt,
                         delete_local_checkpoint_after_upload=bool(epoch_dir)
                         and disposable(epoch_dir))

    ctx = RunContext(
        run_dir=run_dir,
        device=ray.train.torch.get_device(),
        rank=rank,
        world_size=world,
        report=report,
        resume_dir=resume_dir,
        wrap_model=_ddp_wrapper(world),
        states=trial_states(storage.experiment_fs_path, storage.storage_filesystem),
        resume_states=states_of(checkpoint),
        about_to_stop=_preempted,
    )
    try:
        run_trial(loop_config["config"], loop_config["settings"], ctx)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def _preempted() -> bool:
    """Ray Train's notice that a node of this run is about to be reclaimed (a collective:
    every worker calls it once per epoch)."""
    return ray.train.get_preemption_info() is not None


def _ddp_wrapper(world: int) -> Callable[[torch.nn.Module], torch.nn.Module]:
    def wrap(module: torch.nn.Module) -> torch.nn.Module:
        # prepare_model moves to the worker's device and wraps in DDP when world > 1.  A
        # per-class DCGAN leaves the sub-network of a class absent from a rank's batch
        # without gradients, hence find_unused_parameters.
        if world == 1:
            return ray.train.torch.prepare_model(module, parallel_strategy=None)
        return ray.train.torch.prepare_model(
            module, parallel_strategy="ddp",
            parallel_strategy_kwargs={"find_unused_parameters": True})

    return wrap


def _reportable(metrics: dict) -> dict:
    """Tune results: numbers as floats, strings (e.g. stop_reason) kept as they are."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, (bool, int, float)):
            out[key] = float(value)
        elif isinstance(value, str):
            out[key] = value
    return out
