"""Writing a search (parent run + a Tune callback for the trials) and a classifier study.

Everything is logged from the driver (Ray's head), because on a cluster the tracking server
listens on the head's 127.0.0.1 only.  A trial's records go through a `retry.WriteQueue`: when
the server is away they wait, in order, and Tune's loop goes on (`orchestrator.store.retry`).
"""
from __future__ import annotations

import functools
import io
import json
import tempfile
import time
from pathlib import Path

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from PIL import Image
from ray.tune import Callback

from orchestrator.store.layout import (CONSTANT_PARAMS, LAST_EPOCH, PARENT, ROLE, STATUS,
                                       TRIAL_ID, dataset_input, epoch_tag, experiment_id,
                                       flatten,
                                       grid_artifact, log_params, metric_key, numeric,
                                       read_checkpoint_file, remove_checkpoint_file, short,
                                       source_tags, trial_runs)
from orchestrator.store.retry import MlflowOutage, Outage, RetryingClient, WriteQueue

# The image key of the per-epoch sample grids (MLflow's image slider, one step per epoch).
GRID_IMAGE_KEY = "grid"

# Full training states (G, D, optimisers: ~380 MB an epoch at S0's size) kept per trial, for
# resume; older checkpoints keep only generator.pt, the grid and the scores.
FULL_STATES_KEPT = 2
STATE_FILE = "state.pt"

# Numeric result keys that are Tune bookkeeping, not metrics of the experiment.
_TUNE_KEYS = {"training_iteration", "time_this_iter_s", "time_total_s", "timestamp", "pid",
              "time_since_restore", "iterations_since_restore", "done", "timesteps_total",
              "episodes_total", "timesteps_since_restore", "node_ip", "date", "hostname",
              "trial_id", "experiment_id", "config", "checkpoint_dir_name", "should_checkpoint"}


def start_parent_run(client, search_name: str, params: dict, tags: dict,
                     role: str = "search", artifact_root: str | None = None) -> str:
    """Create (or, on --resume, find) the search's parent run; returns its id.  A new
    experiment keeps its artefacts under `artifact_root` when given."""
    experiment = experiment_id(client, search_name, artifact_root)
    existing = client.search_runs([experiment], f"tags.`{ROLE}` = '{role}'", max_results=1)
    if existing and role == "search":
        return existing[0].info.run_id
    run = client.create_run(experiment, run_name=search_name,
                            tags={ROLE: role, **{k: str(v) for k, v in tags.items()}})
    log_params(client, run.info.run_id, params)
    return run.info.run_id


# A search ended by Ctrl-C: the search run's reason, and its trials' stop_reason.
INTERRUPTED = "interrupted by the user"
STOP_REASON = "cxr.stop_reason"
RESUME_COMMAND = "cxr.resume_command"
_TRIAL_INTERRUPTED = f"{INTERRUPTED} (Ctrl-C); --resume continues this trial"
# ... and by a tracking server that stayed away (`retry.MlflowOutage`).
_TRIAL_OUTAGE = "the MLflow tracking server was unreachable; --resume continues this trial"
# ... and by a full disk (`trainables.disk.DiskFull`).
TRIAL_DISK_FULL = "the disk was full; --resume continues this trial"
_REOPENED = (_TRIAL_INTERRUPTED, _TRIAL_OUTAGE, TRIAL_DISK_FULL)


def end_interrupted(client, search_name: str, parent_run_id: str, resume_command: str,
                    reason: str = INTERRUPTED, status: str = "KILLED",
                    trial_reason: str | None = None) -> list[str]:
    """A search that stopped half-way (Ctrl-C; an MLflow outage or a full disk: `reason`,
    the search run `status` FAILED): trial runs still RUNNING (Tune stopped their trials
    without a callback) end KILLED and the search run `status`, with the reason; the search
    run keeps the command that resumes it.  Returns the stopped trials' ids."""
    trial_reason = trial_reason or (_TRIAL_INTERRUPTED if reason == INTERRUPTED else _TRIAL_OUTAGE)
    stopped = []
    for run in trial_runs(client, experiment_id(client, search_name), parent_run_id):
        if run.info.status == "RUNNING":
            client.set_tag(run.info.run_id, STATUS, "killed")
            client.set_tag(run.info.run_id, "stop_reason", trial_reason)
            client.set_terminated(run.info.run_id, "KILLED")
            stopped.append(run.data.tags.get(TRIAL_ID, run.info.run_id))
    client.set_tag(parent_run_id, STOP_REASON, short(reason))
    client.set_tag(parent_run_id, RESUME_COMMAND, short(resume_command))
    client.set_terminated(parent_run_id, status)
    return stopped


def reopen_interrupted(client, search_name: str, parent_run_id: str) -> None:
    """--resume: the search run and the trial runs a Ctrl-C or an outage ended are RUNNING
    again (Tune continues their trials), without the stop's tags."""
    client.update_run(parent_run_id, status="RUNNING")
    tags = client.get_run(parent_run_id).data.tags
    for key in (STOP_REASON, RESUME_COMMAND):
        if key in tags:
            client.delete_tag(parent_run_id, key)
    for run in trial_runs(client, experiment_id(client, search_name), parent_run_id):
        if run.data.tags.get("stop_reason") in _REOPENED:
            client.update_run(run.info.run_id, status="RUNNING")
            client.delete_tag(run.info.run_id, "stop_reason")
            client.delete_tag(run.info.run_id, STATUS)


def _naming_open_runs(hook):
    """A Tune hook that, when the server stayed away too long, says which runs it left open."""
    @functools.wraps(hook)
    def wrapped(self, *args, **kwargs):
        try:
            return hook(self, *args, **kwargs)
        except MlflowOutage as exc:
            exc.open_runs = {**self.open_runs(), **exc.open_runs}
            exc.writer = self
            raise
    return wrapped


class MlflowSearchCallback(Callback):
    """Driver-side Tune callback: child runs, per-epoch metrics, grids, checkpoint paths.

    Reads and run creation wait for the server (bounded, `RetryingClient`); writes go through
    a `WriteQueue`, so an outage holds neither Tune nor the trials: the records wait in order,
    are written when the server answers again (tried at every Tune step after the back-off),
    and are saved with Tune's experiment state (`get_state`), so --resume writes what a
    search that gave up could not.  An outage longer than the bound ends the search with
    `MlflowOutage`, raised at the end of a Tune step, just after that state was saved."""

    def __init__(self, tracking_uri: str, search_name: str, parent_run_id: str,
                 epochs: int | None = None, dataset: tuple[str, str] | None = None):
        self.tracking_uri = tracking_uri
        self.dataset = dataset  # (data, fingerprint): each trial run's Dataset column
        self.search_name = search_name
        self.parent_run_id = parent_run_id
        self.epochs = epochs  # a trial's budget: a complete trial short of it stopped early
        self._diverged: set[str] = set()
        self._stripped: set[tuple[str, int]] = set()
        self._client = None
        self._queue = None
        self._restored: list[tuple] = []  # pending writes from Tune's saved state
        self._closed: set[str] = set()  # runs whose end was written
        self._runs: dict[str, str] = {}
        self._last_step: dict[str, int] = {}
        self.checkpoints: dict[tuple[str, int], str] = {}
        self._protocols: dict[str, str] = {}
        self._params: dict[str, set[str]] = {}  # per run: the param keys already logged

    # The run map of the callback Tune runs now (one search per driver process), read by the
    # Optuna searcher: Tune pickles the searcher and the callbacks apart, so a reference the
    # searcher held would be a stale copy after --resume.
    _live_runs: dict[str, str] = {}

    def setup(self, **info):
        super().setup(**info)
        MlflowSearchCallback._live_runs = self._runs

    @staticmethod
    def live_run_ids() -> dict[str, str]:
        """Tune trial id -> MLflow run id, as the running search's callback knows them."""
        return MlflowSearchCallback._live_runs

    # Tune pickles callbacks into its experiment state: keep the client out of it (the
    # pending writes travel through get_state).
    def __getstate__(self):
        state = dict(self.__dict__)
        state["_client"] = None
        state["_queue"] = None
        state["_restored"] = []
        return state

    def __setstate__(self, state):  # a tuner.pkl written before the queue existed
        self.__dict__.update({"_queue": None, "_restored": [], "_closed": set(), **state})

    def get_state(self) -> dict:
        """Saved by Tune at every step: the writes still waiting for the server."""
        return {"pending": list(self._queue.pending if self._queue else self._restored)}

    def set_state(self, state: dict) -> None:
        # A restored write may have been applied after Tune saved it (the server came back
        # before the search gave up): images, which MLflow names anew each time, are checked.
        self._restored = [op[:5] + (True,) if op[0] == "image" else op
                          for op in state.get("pending") or []]
        self._queue = None

    @property
    def client(self) -> RetryingClient:
        if self._client is None:
            self._client = RetryingClient(MlflowClient(self.tracking_uri))
        return self._client

    @property
    def queue(self) -> WriteQueue:
        if self._queue is None:
            self._queue = WriteQueue(self._apply, self.client.outage, self._restored)
            self._restored = []
        return self._queue

    def write_pending(self, seconds: float) -> bool:
        """Try, for up to `seconds`, to write what waits (a search that gave up, ending);
        True when nothing waits any more."""
        queue = WriteQueue(self._apply, Outage(self.tracking_uri, seconds, quiet=True),
                           self.queue.pending)
        try:
            queue.drain()
        except Exception:  # still away, or a write it refuses: --resume writes them
            return False
        return True

    def open_runs(self) -> dict[str, str]:
        """trial id -> run id of the trial runs this callback has not ended (yet)."""
        return {t: r for t, r in self._runs.items() if r not in self._closed}

    @property
    def run_ids(self) -> dict[str, str]:
        """Tune trial id -> MLflow run id of every trial run this callback opened or found."""
        return self._runs

    @_naming_open_runs
    def run_for(self, trial) -> str:
        if trial.trial_id in self._runs:
            return self._runs[trial.trial_id]
        experiment = experiment_id(self.client, self.search_name)
        found = trial_runs(self.client, experiment, self.parent_run_id, trial.trial_id, 1)
        if found:  # a resumed search: continue the trial's run, never duplicate it
            run_id = found[0].info.run_id
            self._last_step[run_id] = max(int(found[0].data.tags.get(LAST_EPOCH, -1)),
                                          self._pending_epoch(run_id))
        else:
            run = self.client.create_run(
                experiment, run_name=f"trial-{trial.trial_id}",
                tags={ROLE: "trial", TRIAL_ID: trial.trial_id, PARENT: self.parent_run_id,
                      **source_tags("orchestrator.search")})
            run_id = run.info.run_id
            params = flatten("", trial.config)
            log_params(self.client, run_id, params)
            self._params[run_id] = set(params)  # no read for them later
            if self.dataset:
                self.client.log_inputs(run_id, datasets=[dataset_input(*self.dataset)])
            self._last_step[run_id] = -1
        self._runs[trial.trial_id] = run_id
        return run_id

    def _pending_epoch(self, run_id: str) -> int:
        """The last epoch of `run_id` whose records still wait for the server (-1: none)."""
        pending = self._queue.pending if self._queue else self._restored
        return max((int(tag.value) for op in pending if op[0] == "batch" and op[1] == run_id
                    for tag in op[4] if tag.key == LAST_EPOCH), default=-1)

    # Writes: one op per MLflow call, applied in order by the queue (see `_apply`).
    def _write(self, *op) -> None:
        self.queue.put(op)

    def _apply(self, op: tuple, retrying: bool) -> None:
        """One write.  `retrying`: it failed before, and may have been half applied."""
        kind, run_id, *args = op
        client = self.client.raw
        if kind == "batch":
            metrics, params, tags = args
            client.log_batch(run_id, metrics=metrics, params=params, tags=tags)
        elif kind == "tag":
            client.set_tag(run_id, *args)
        elif kind == "end":
            client.set_terminated(run_id, *args)
            self._closed.add(run_id)
        elif kind == "text":
            client.log_text(run_id, *args)
        elif kind == "params":
            log_params(client, run_id, args[0])
        elif kind == "file":
            folder, name, data = args
            with tempfile.TemporaryDirectory() as tmp:
                (Path(tmp) / name).write_bytes(data)
                client.log_artifact(run_id, str(Path(tmp) / name), artifact_path=folder)
        elif kind == "image":
            key, step, data, maybe_done = args
            if (retrying or maybe_done) and _image_logged(client, run_id, key, step):
                return  # the failed try had written it: MLflow names each image anew
            with Image.open(io.BytesIO(data)) as image:
                client.log_image(run_id, image.convert("RGB"), key=key, step=step)
        else:
            raise ValueError(f"unknown MLflow write {kind!r}")

    def on_step_begin(self, iteration, trials, **info):
        self._flush()

    @_naming_open_runs
    def on_step_end(self, iteration, trials, **info):
        # After Tune saved its state (with the pending writes): the place to give up.
        self._flush()
        self.queue.check()

    @_naming_open_runs
    def on_experiment_end(self, trials, **info):
        if all(t.status in ("TERMINATED", "ERROR") for t in trials):
            self.queue.drain()  # the search is done: write everything, or give up
        else:  # Ctrl-C or an error is ending it: one try, never a new error on top
            try:
                self._flush()
            except Exception:
                pass

    def _flush(self) -> None:
        if self._queue is not None or self._restored:
            self.queue.flush()

    def on_trial_start(self, iteration, trials, trial, **info):
        self.run_for(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        run_id = self.run_for(trial)
        epoch = int(result.get("epoch", result.get("training_iteration", 1) - 1))
        if isinstance(result.get("resumed_from"), str):
            # PBT exploit: from here on this trial continues another trial's weights;
            # epochs it had already logged are superseded, not replays.
            self._write("tag", run_id, epoch_tag("lineage", epoch), result["resumed_from"])
            self._last_step[run_id] = min(self._last_step.get(run_id, -1), epoch - 1)
            for key in [k for k in self.checkpoints if k[0] == trial.trial_id and k[1] >= epoch]:
                del self.checkpoints[key]
        if epoch <= self._last_step.get(run_id, -1):
            return  # replayed after a resume: already recorded
        self._last_step[run_id] = epoch
        self._log_metrics(run_id, result, epoch)
        if isinstance(result.get("stop_reason"), str) and result["stop_reason"]:
            self._write("tag", run_id, "stop_reason", result["stop_reason"])
        if result.get("diverged") == 1.0:
            self._diverged.add(trial.trial_id)
            self._write("tag", run_id, STATUS, "diverged")
        if isinstance(result.get("resume_warning"), str):  # a corrupt state was skipped
            self._write("tag", run_id, epoch_tag("resume_warning", epoch), result["resume_warning"])
        if isinstance(result.get("eval_protocol"), str):
            self._log_protocol(run_id, result["eval_protocol"])
        if result.get("checkpoint_path"):  # Ray Train path: the checkpoint is in Train storage
            self._record_checkpoint(trial, run_id, epoch, result["checkpoint_path"], None)

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        run_id = self.run_for(trial)
        epoch = int((trial.last_result or {}).get("epoch", -1))
        if epoch >= 0:
            self._record_checkpoint(trial, run_id, epoch, checkpoint.path, checkpoint.filesystem)

    def on_trial_complete(self, iteration, trials, trial, **info):
        run_id = self.run_for(trial)
        self._write("tag", run_id, STATUS, self._ending(trial))
        self._write("end", run_id, "FINISHED")

    def _ending(self, trial) -> str:
        if trial.trial_id in self._diverged or (trial.last_result or {}).get("diverged") == 1.0:
            return "diverged"
        last = (trial.last_result or {}).get("epoch")
        if self.epochs is not None and last is not None and last + 1 < self.epochs:
            return "stopped_early"
        return "finished"

    def on_trial_error(self, iteration, trials, trial, **info):
        run_id = self.run_for(trial)
        # What it died of first, then where the traceback is.
        where = getattr(trial, "error_file", "") or ""
        self._write("tag", run_id, "error",
                    short(" ".join(filter(None, [error_line(trial), f"({where})" if where else ""]))
                          or "failed"))
        self._write("tag", run_id, STATUS, "failed")
        self._write("end", run_id, "FAILED")

    def _log_protocol(self, run_id: str, text: str) -> None:
        """The evaluation protocol, once per trial: params `fid_protocol.*` + a JSON file."""
        if self._protocols.get(run_id) == text:
            return
        self._protocols[run_id] = text
        self._write("text", run_id, text, "eval_protocol.json")
        existing = self._logged_params(run_id)
        fresh = {k: v for k, v in flatten("fid_protocol", json.loads(text)).items()
                 if k not in existing}  # params are immutable; the first protocol stands
        if fresh:
            self._write("params", run_id, fresh)
        existing.update(fresh)

    def _log_metrics(self, run_id: str, result: dict, epoch: int) -> None:
        """One batch per epoch: curves as `<group>/<name>` metrics at step `epoch`, constants
        as params the first time they appear, and the run's last epoch as a tag."""
        now = int(time.time() * 1000)
        numbers = {k: v for k, v in numeric(result).items() if k not in _TUNE_KEYS and v == v}
        metrics = [Metric(metric_key(k), v, now, epoch) for k, v in numbers.items()
                   if k not in CONSTANT_PARAMS]
        logged = self._logged_params(run_id)
        params = [Param(CONSTANT_PARAMS[k], short(result[k])) for k in numbers
                  if CONSTANT_PARAMS.get(k) and CONSTANT_PARAMS[k] not in logged]
        logged.update(p.key for p in params)
        self._write("batch", run_id, metrics, params, [RunTag(LAST_EPOCH, str(epoch))])

    @_naming_open_runs
    def _logged_params(self, run_id: str) -> set[str]:
        if run_id not in self._params:  # a resumed search: the run may have params already
            self._params[run_id] = set(self.client.get_run(run_id).data.params)
        return self._params[run_id]

    def _record_checkpoint(self, trial, run_id, epoch, path, filesystem) -> None:
        if (trial.trial_id, epoch) in self.checkpoints:
            return
        self.checkpoints[(trial.trial_id, epoch)] = path
        self._write("tag", run_id, epoch_tag("ckpt", epoch), path)
        self._strip_old_states(trial.trial_id, filesystem)
        grid = read_checkpoint_file(path, "grid.png", filesystem)
        if grid is not None:  # read now: Tune may delete the folder before the server is back
            self._write("file", run_id, "grids", Path(grid_artifact(epoch)).name, grid)
            # ... and as an image series: the UI's image slider walks the epochs
            self._write("image", run_id, GRID_IMAGE_KEY, epoch, grid, False)

    def _strip_old_states(self, trial_id: str, filesystem) -> None:
        """Keep the full training state only in the trial's last FULL_STATES_KEPT checkpoints
        (resume reads the latest); Tune keeps the best epochs' folders for their generator."""
        epochs = sorted(e for t, e in self.checkpoints if t == trial_id)
        for epoch in epochs[:-FULL_STATES_KEPT]:
            if (trial_id, epoch) not in self._stripped:
                remove_checkpoint_file(self.checkpoints[(trial_id, epoch)], STATE_FILE, filesystem)
                self._stripped.add((trial_id, epoch))


def _image_logged(client, run_id: str, key: str, step: int) -> bool:
    """Whether `log_image(key=key, step=step)` already wrote its file (images/KEY+step+N+...)."""
    prefix = f"images/{key.replace('/', '~')}+step+{step}+"
    return any(a.path.startswith(prefix) and a.path.endswith("+compressed.webp")
               for a in client.list_artifacts(run_id, "images"))


def error_line(trial) -> str:
    """The exception line at the end of a failed trial's error file (what it died of)."""
    path = getattr(trial, "error_file", None)
    try:
        lines = [ln.strip() for ln in Path(path).read_text(errors="replace").splitlines()
                 if ln.strip()] if path else []
    except OSError:
        return ""
    for line in reversed(lines):
        if ": " in line and not line.startswith(("File ", "^", "~")):
            name, _, message = line.partition(": ")
            return f"{name.rsplit('.', 1)[-1]}: {message}" if " " not in name else line
    return lines[-1] if lines else ""
