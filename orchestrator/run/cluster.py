"""The Ray cluster a search runs on: joining it, checking its storage, waiting for an
autoscaler's GPUs, and placing trials (GPUs and workers per trial, trials per GPU,
concurrency)."""
from __future__ import annotations

import logging
import math
import os
import sys
import time
from typing import Callable, Optional

import ray
from ray.autoscaler.sdk import request_resources

from orchestrator.config import ConfigError, SearchConfig
from trainables import gpu_memory
from trainables.trial import Placement

WaitForGpus = Callable[[float, int, float], float]
FreeGpuMib = Callable[[], Optional[float]]
# --trials-per-gpu auto counts G and D for this many classes before the data is read (the
# class count moves the estimate little: embeddings and class heads; the trial checks with
# its real classes).
AUTO_CLASSES = 3
# The custom resource cluster.yaml gives the head node only (`resources: {cxr_driver: ...}`).
DRIVER_RESOURCE = "cxr_driver"


class _DefaultTokenNote(logging.Filter):
    """Drops Ray's note that a new local cluster turned token authentication on by default
    (auth stays on; the line says only that).  Its warning that auth is *off* stays."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Token authentication is enabled for this")


def init_ray() -> None:
    if ray.is_initialized():
        return
    logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(
        _DefaultTokenNote())
    # On a cluster (`ray up` + `ray submit`, or RAY_ADDRESS) join it; otherwise a local Ray.
    ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=False,
             log_to_driver=True, configure_logging=False)


def check_shared_storage(storage: str, nodes: list[dict]) -> None:
    """Checkpoints of trials on other machines must land where the ranking can read them."""
    hosts = {n.get("NodeManagerAddress") for n in nodes if n.get("Alive")}
    if len(hosts) > 1 and "://" not in storage:
        raise ConfigError(
            f"--storage {storage!r} is a local path but the cluster spans {len(hosts)} machines: "
            "Ray does not sync checkpoints to the head, so the ranking could not read them. "
            "Use --storage s3://BUCKET/… or gs://…, or file:///PATH on a file system every node "
            "mounts")


def wait_for_gpus(per_worker: float, workers: int, timeout_s: float) -> float:
    """Ask the autoscaler for one trial's GPUs and wait (up to timeout_s) until they exist."""
    need = per_worker * workers
    request_resources(bundles=[{"GPU": per_worker}] * workers)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            gpus = ray.cluster_resources().get("GPU", 0.0)
            if gpus >= need or time.monotonic() >= deadline:
                return gpus
            print(f"waiting for the autoscaler: {gpus:g} of {need:g} GPUs up", file=sys.stderr)
            time.sleep(10)
    finally:
        # Tune's own pending trials drive further scaling; drop the standing request so
        # idle nodes can be released after the search.
        request_resources(bundles=[])


def place(cfg: SearchConfig, resources: dict, wait: Optional[WaitForGpus] = None,
          free_gpu_mib: FreeGpuMib = gpu_memory.visible_free_mib) -> Placement:
    """GPUs and workers per trial, checked against what the cluster has (or, with
    --gpu-wait, what an autoscaling cluster brings up via `wait`).  With GPUs and no
    --gpus-per-worker, each worker asks for 1/N GPU, N = --trials-per-gpu (see
    `trials_per_gpu`), and CPUs per worker shrink (fractionally) until N per GPU fit."""
    gpus, cpus = resources.get("GPU", 0.0), resources.get("CPU", 1.0)
    packed = trials_per_gpu(cfg, gpus, free_gpu_mib) if gpus else 1
    per_worker = cfg.gpus_per_worker if cfg.gpus_per_worker is not None else (
        gpu_share(packed) if gpus else 0.0)
    need = per_worker * cfg.workers_per_trial
    autoscaling = need > gpus and cfg.gpu_wait > 0 and wait is not None
    if autoscaling:
        gpus = wait(per_worker, cfg.workers_per_trial, cfg.gpu_wait)
    if need > gpus:
        hint = (f" after waiting {cfg.gpu_wait:g} s for the autoscaler" if autoscaling else
                "; on an autoscaling cluster (GPU nodes from zero) add --gpu-wait 900")
        raise ConfigError(f"a trial needs {need:g} GPUs ({cfg.workers_per_trial} workers x "
                          f"{per_worker:g}) but the cluster has {gpus:g}{hint}")
    if cfg.workers_per_trial > cpus and not autoscaling:
        raise ConfigError(f"--workers-per-trial {cfg.workers_per_trial} exceeds the cluster's "
                          f"{cpus:g} CPUs")
    execution = _execution(cfg, per_worker)
    # With a Train trial the trial actor itself only coordinates: a sliver of a CPU.
    cpus_per_worker = 0.99 if execution == "train" and cpus <= 2 else 1.0
    if per_worker > 0 and not autoscaling:
        cpus_per_worker = cpu_share(cpus_per_worker, cpus, gpus / per_worker, execution)
    concurrent = _concurrency(cfg, autoscaling, gpus, cpus, need, cpus_per_worker)
    if lone_cpu_trial(cfg, execution, per_worker, concurrent, cpus):
        cpus_per_worker = float(math.floor(cpus))
    return Placement(execution=execution, workers_per_trial=cfg.workers_per_trial,
                     use_gpu=per_worker > 0, gpus_per_worker=per_worker,
                     cpus_per_worker=cpus_per_worker, trials_per_gpu=packed,
                     driver_resource=DRIVER_RESOURCE if resources.get(DRIVER_RESOURCE) else "",
                     max_concurrent=concurrent)


def lone_cpu_trial(cfg: SearchConfig, execution: str, gpus_per_worker: float,
                   concurrent: Optional[int], cpus: float) -> bool:
    """Whether trials run one at a time, on CPUs, on this machine alone (the smoke budget on
    a laptop or CI): then each asks Ray for every core instead of one (a smoke search of 4
    trials on 2 cores, cold caches: 531 s -> 456 s).  A search of one trial is one at a time
    whatever its concurrency: it asked for one core and evaluated on one thread (FID of 48
    fakes: 20.7 s in the trial, 12 s on both cores).  Not on a cluster: a trial asking for
    all the cluster's CPUs would fit on no node."""
    one_at_a_time = concurrent == 1 or cfg.num_samples == 1
    return (execution == "function" and gpus_per_worker == 0 and cfg.workers_per_trial == 1
            and one_at_a_time and 1 < cpus <= (os.cpu_count() or 1))


def trials_per_gpu(cfg: SearchConfig, gpus: float, free_gpu_mib: FreeGpuMib) -> int:
    """--trials-per-gpu N, or for auto: N = clamp(floor(free MiB x 0.8 / per-trial MiB), 1, 8)
    with the free memory of the GPU this driver sees and `trainables.gpu_memory`'s estimate
    for the search's base config (parameters of G and D x 16 B + activations at the batch
    size + 1 GiB).  auto is 1 without a visible CUDA device (a head node without GPUs), for
    DDP trials (two ranks on one GPU break NCCL) and for the classifier."""
    if cfg.packing() is not None:
        return cfg.packing()
    if not gpus or cfg.gpus_per_worker is not None or cfg.workers_per_trial > 1 or not cfg.is_gan:
        return 1
    free = free_gpu_mib()
    if not free:
        return 1
    from orchestrator.run.settings import gan_base_config
    from trainables.gan import GANConfig

    need = gpu_memory.trial_estimate_mib(GANConfig.from_dict(gan_base_config(cfg)), AUTO_CLASSES)
    packed = gpu_memory.trials_per_gpu(free, need)
    print(f"--trials-per-gpu auto: {packed} ({free:.0f} MiB free on the visible GPU, "
          f"~{need} MiB per trial)", file=sys.stderr)
    return packed


def gpu_share(trials: int) -> float:
    """1/N GPU, rounded down to Ray's resource precision (1e-4) so that N fit on one GPU."""
    return math.floor(10_000 / trials) / 10_000


def cpu_share(default: float, cpus: float, gpu_slots: float, execution: str) -> float:
    """CPUs per worker so that every worker the GPUs hold (`gpu_slots`) can run at once:
    `default`, or the cluster's CPUs split among the slots when they are fewer (Ray takes
    fractional CPUs).  Train trials leave a sliver per slot for their coordinating actor."""
    share = math.floor(cpus / max(gpu_slots, 1) * 100) / 100
    if execution == "train":
        share -= 0.01
    return max(0.01, min(default, round(share, 2)))


def _concurrency(cfg: SearchConfig, autoscaling: bool, gpus: float, cpus: float, need: float,
                 cpus_per_worker: float) -> Optional[int]:
    if autoscaling:  # the cluster grows as trials wait: let Tune queue them
        return cfg.max_concurrent
    if cfg.smoke and cfg.scheduler == "asha" and cfg.max_concurrent is None:
        # ASHA compares a trial with those that reached the rung before it, so concurrent
        # trials make its stops depend on which process finished an epoch first. The smoke
        # run is a check anyone reruns: one trial at a time gives the same stops every time.
        return 1
    # floor(x + 1e-9): 1 GPU / 0.25 is 4 trials, whatever the float rounding
    return cfg.max_concurrent or max(
        1, math.floor(gpus / need + 1e-9) if need else
        math.floor(cpus / (cpus_per_worker * cfg.workers_per_trial) + 1e-9))


def _execution(cfg: SearchConfig, per_worker: float) -> str:
    """function: the loop runs in the Tune trial (one process, CPU or GPU); train: a Ray
    Train TorchTrainer per trial (DDP over several workers)."""
    if cfg.scheduler == "pbt":
        # PBT exploits by restarting a trial from another trial's Tune checkpoint; Train V2
        # keeps checkpoints in the Train run's own storage, where Tune cannot hand them over.
        if cfg.workers_per_trial > 1 or cfg.execution == "train":
            raise ConfigError("--scheduler pbt needs one worker per trial (--execution function;"
                              " it may use a GPU): Ray Train trials keep their checkpoints where "
                              "PBT cannot exploit them. Use --scheduler asha for DDP trials")
        return "function"
    execution = cfg.execution
    if execution == "auto":
        execution = "train" if (per_worker > 0 or cfg.workers_per_trial > 1) else "function"
    if execution == "function" and cfg.workers_per_trial > 1:
        raise ConfigError("--execution function runs one worker per trial; use --execution "
                          "train for --workers-per-trial > 1")
    return execution
