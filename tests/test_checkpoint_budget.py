"""Checkpoints that cost what they are worth (issue 22): the generator every epoch, the full
training state (G, D, optimisers) every `state_every` epochs, at the last and at a stop, at
most two of them on disk; resume from any epoch goes to the newest full state; a Ray Train
worker's local checkpoint folders are deleted once uploaded."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.distributed as dist

from ddp_harness import run_two_gloo_workers
from trainables.context import standalone_context
from trainables.data import load_image_set
from trainables.gan import GANConfig, train_gan
from trainables.gan.checkpoint import (RESUME_FILE, STATE_FORMAT, STATE_SEAL, StateStore,
                                       resume_state)
from trainables.trial import TrialSettings, run_gan_trial

TINY = dict(family="acgan", resolution=32, channels=1, width=0.0625, batch_size=16,
            steps_per_epoch=1, grid_per_class=2)


def _states(folder: Path) -> list[int]:
    return sorted(int(p.parent.name.split("_")[1]) for p in Path(folder).rglob("state.pt"))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One decoded-image cache for this module's data loads (the trials' CXR_CACHE_DIR)."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def covid3_small(covid3_dir, cache):
    """64 real training images at 32x32x1 (all three classes)."""
    full = load_image_set(covid3_dir, "train", resolution=32, channels=1, cache_dir=cache,
                          duplicates="keep")
    rows = np.sort(np.random.default_rng(0).permutation(len(full))[:64])
    return SimpleNamespace(images=np.asarray(full.images[rows]), labels=full.labels[rows],
                           classes=full.classes)


@pytest.fixture(scope="module")
def four_epochs(covid3_small, tmp_path_factory):
    """An uninterrupted 4-epoch run with a full state every 2 epochs: (run dir, reports)."""
    run = tmp_path_factory.mktemp("four") / "run"
    cfg = GANConfig(**TINY, epochs=4, state_every=2)
    return run, train_gan(cfg, covid3_small, standalone_context(run, device="cpu"))


# ------------------------------------------------------------------------------ standalone
def test_a_standalone_trial_never_holds_more_than_two_full_states(covid3_dir, cache, tmp_path,
                                                                  monkeypatch):
    """run_gan_trial without Ray and without its retention: a state every epoch (K=1) for 6
    epochs, yet never more than two state.pt files on disk, the newest two at the end."""
    monkeypatch.setenv("CXR_CACHE_DIR", str(cache))
    settings = TrialSettings(experiment="acgan", data=str(covid3_dir), search_name="budget",
                             storage=str(tmp_path / "storage"),
                             base={**TINY, "epochs": 6, "state_every": 1},
                             data_options={"duplicates": "keep"})
    run = tmp_path / "run"
    ctx = standalone_context(run, device="cpu")
    held = []
    ctx.report = lambda metrics, epoch_dir: held.append(_states(run))
    reports = run_gan_trial({}, settings, ctx)
    assert len(reports) == 6
    assert held == [[0], [0, 1], [1, 2], [2, 3], [3, 4], [4, 5]], held
    assert not list(run.rglob("*.tmp.pt"))  # written through a temporary, renamed
    assert len(list(run.glob("epoch_*/generator.pt"))) == 6  # ranking's part: every epoch


def test_the_full_state_is_written_every_k_epochs_and_at_the_last(four_epochs, covid3_small,
                                                                 tmp_path):
    run, reports = four_epochs
    assert [r["epoch"] for r in reports] == [0, 1, 2, 3]
    assert _states(run) == [1, 3]  # (epoch + 1) % 2 == 0; 3 is also the last
    notes = [json.loads((run / f"epoch_{e:04d}" / RESUME_FILE).read_text()) for e in range(4)]
    assert notes == [{"epoch": 0, "state_epoch": None}, {"epoch": 1, "state_epoch": 1},
                     {"epoch": 2, "state_epoch": 1}, {"epoch": 3, "state_epoch": 3}]
    # an odd budget still ends with a state: epochs 1, 3 and the last, 4 (then 3, 4 kept)
    written = []
    ctx = standalone_context(tmp_path / "five", device="cpu")
    ctx.report = lambda m, d: written.append(int(m["epoch"])) if (d / "state.pt").exists() else None
    train_gan(GANConfig(**TINY, epochs=5, state_every=2), covid3_small, ctx)
    assert written == [1, 3, 4] and _states(tmp_path / "five") == [3, 4]


# ------------------------------------------------------------------------------ resume
def test_resume_from_an_epoch_without_state_continues_from_the_newest_full_state(
        four_epochs, covid3_small, tmp_path):
    run, full = four_epochs
    assert not (run / "epoch_0002" / "state.pt").exists()
    resumed = train_gan(GANConfig(**TINY, epochs=4, state_every=2), covid3_small,
                        standalone_context(tmp_path / "b", device="cpu",
                                           resume_dir=run / "epoch_0002"))
    # epoch 1's state: epochs 2 and 3 again, exactly as the uninterrupted run trained them
    assert [r["epoch"] for r in resumed] == [2, 3]
    for k in ("g_loss", "d_loss", "aux_class_acc"):
        assert [r[k] for r in resumed] == [r[k] for r in full[2:]], k


def test_a_corrupt_newest_state_falls_back_to_the_previous(four_epochs, covid3_small, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(four_epochs[0], run)
    newest = run / "epoch_0003" / "state.pt"
    newest.write_bytes(newest.read_bytes()[:1000])  # torn
    with pytest.warns(RuntimeWarning, match="unreadable training state"):
        resumed = train_gan(GANConfig(**TINY, epochs=4, state_every=2), covid3_small,
                            standalone_context(run, device="cpu", resume_dir=run / "epoch_0003"))
    assert [r["epoch"] for r in resumed] == [2, 3]
    assert resumed[-1]["g_loss"] == four_epochs[1][-1]["g_loss"]
    assert _states(run) == [1, 3]  # the torn one rewritten


def test_a_state_altered_after_it_was_written_fails_its_seal_and_falls_back(
        four_epochs, covid3_small, tmp_path):
    """A state.pt that torch reads without complaint but that is not the file written (here:
    epoch 1's state copied over epoch 3's) is caught by its size/sha256 seal; the fallback is
    on the trial's record, not only a warning."""
    run = tmp_path / "run"
    shutil.copytree(four_epochs[0], run)
    seal = json.loads((run / "epoch_0003" / STATE_SEAL).read_text())
    assert seal["bytes"] == (run / "epoch_0003" / "state.pt").stat().st_size
    shutil.copy(run / "epoch_0001" / "state.pt", run / "epoch_0003" / "state.pt")
    with pytest.warns(RuntimeWarning, match="sha256 differs|bytes"):
        resumed = train_gan(GANConfig(**TINY, epochs=4, state_every=2), covid3_small,
                            standalone_context(run, device="cpu", resume_dir=run / "epoch_0003"))
    assert [r["epoch"] for r in resumed] == [2, 3]
    assert "epoch_0003" in resumed[0]["resume_warning"]
    assert "resume_warning" not in resumed[1]
    assert resumed[-1]["g_loss"] == four_epochs[1][-1]["g_loss"]


def test_no_full_state_at_or_before_the_epoch_starts_over(four_epochs, covid3_small, tmp_path):
    shutil.copytree(four_epochs[0] / "epoch_0000", tmp_path / "run" / "epoch_0000")
    with pytest.warns(RuntimeWarning, match="starts over from epoch 0"):
        again = train_gan(GANConfig(**TINY, epochs=1), covid3_small, standalone_context(
            tmp_path / "new", device="cpu", resume_dir=tmp_path / "run" / "epoch_0000"))
    assert [r["epoch"] for r in again] == [0]
    assert "starts over from epoch 0" in again[0]["resume_warning"]  # on the trial's record


def test_the_store_keeps_two_drops_abandoned_epochs_and_reads_a_ray_layout(tmp_path):
    def state(epoch):
        return {"format": STATE_FORMAT, "epoch": epoch}

    store = StateStore(tmp_path / "trial" / "states")
    for epoch in range(4):
        store.save(state(epoch), epoch)
    assert store.epochs() == [2, 3]
    assert sorted(p.name for p in store_dirs(store)) == ["epoch_0002", "epoch_0003"]
    store.save(state(1), 1)  # a resume from an older state abandons 2 and 3
    assert store.epochs() == [1]
    store.save(state(3), 3)
    store.save(state(5), 5, keep=1)
    assert store.epochs() == [5]
    # A Ray trial: checkpoint folders hold no state.pt; resume looks in states/ beside them.
    checkpoint = tmp_path / "trial" / "checkpoint_000007"
    checkpoint.mkdir()
    (checkpoint / RESUME_FILE).write_text(json.dumps({"epoch": 7, "state_epoch": 5}))
    local = tmp_path / "downloaded"
    shutil.copytree(checkpoint, local)
    beside = StateStore.beside(str(checkpoint))
    assert beside.root == store.root
    assert resume_state(local, beside)["epoch"] == 5
    (checkpoint / RESUME_FILE).write_text(json.dumps({"epoch": 4, "state_epoch": None}))
    assert resume_state(checkpoint, beside) is None  # nothing at or before epoch 4


def store_dirs(store: StateStore) -> list[Path]:
    return [p for p in Path(store.root).iterdir() if p.is_dir()]


# ------------------------------------------------------------------------------ DDP (Ray Train)
def _fake_ray_train(rank: int, world: int, storage: Path, seen: dict) -> None:
    """Ray Train's worker API as `ray_glue.train_loop_per_worker` uses it, doing what Ray
    2.60's SYNC upload does: copy the folder into the storage, delete the local one only
    when asked to, and wait for every worker."""
    import pyarrow.fs as pafs
    import ray.train
    import ray.train.torch

    uploads = []

    def report(metrics, checkpoint=None, delete_local_checkpoint_after_upload=None, **_):
        if checkpoint is not None:
            shutil.copytree(checkpoint.path, storage / f"checkpoint_{len(uploads):06d}")
            uploads.append(bool(delete_local_checkpoint_after_upload))
            if delete_local_checkpoint_after_upload:
                shutil.rmtree(checkpoint.path)
        dist.barrier()  # report is a barrier across the workers
        local = Path(tempfile.gettempdir())
        seen["local_states"].append(len(list(local.glob("cxr-worker*/**/state.pt"))))
        seen["local_epochs"].append(len(list(local.glob("cxr-worker*/epoch_*"))))
        seen["stored_states"].append(StateStore(storage / "states").epochs())
        seen["deleted"] = list(uploads)

    storage_context = SimpleNamespace(storage_filesystem=pafs.LocalFileSystem(),
                                      experiment_fs_path=str(storage))
    ray.train.report = report
    ray.train.get_checkpoint = lambda: None
    ray.train.get_preemption_info = lambda: None
    ray.train.get_context = lambda: SimpleNamespace(
        get_world_rank=lambda: rank, get_world_size=lambda: world,
        get_storage=lambda: storage_context)
    ray.train.torch.get_device = lambda: torch.device("cpu")
    ray.train.torch.prepare_model = lambda module, parallel_strategy=None, \
        parallel_strategy_kwargs=None: torch.nn.parallel.DistributedDataParallel(
            module, **(parallel_strategy_kwargs or {}))


def _ddp_glue_worker(rank: int, world: int, port: int, queue) -> None:
    from trainables.ray_glue import train_loop_per_worker

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    try:
        storage = Path(os.environ["CXR_TEST_STORAGE"])
        seen = {"local_states": [], "local_epochs": [], "stored_states": [], "deleted": []}
        _fake_ray_train(rank, world, storage, seen)
        settings = TrialSettings(experiment="acgan", data=os.environ["CXR_TEST_DATA"],
                                 search_name="s", storage=str(storage.parent),
                                 base={**TINY, "epochs": 5, "state_every": 2},
                                 data_options={"duplicates": "keep"})
        train_loop_per_worker({"config": {}, "settings": settings})
        queue.put((rank, seen))
    finally:
        dist.destroy_process_group()


def test_a_ddp_trial_deletes_its_uploaded_folders_and_keeps_two_states(covid3_dir, cache,
                                                                       tmp_path, monkeypatch):
    """ray_glue's Train path under two gloo workers: each epoch's local folder goes once it
    is uploaded (Ray 2.60's SYNC mode keeps it unless asked), the full states go to the
    run's `states/` (never into a checkpoint, never more than two), every 2 epochs + the last."""
    storage = tmp_path / "storage" / "s-train-x"
    storage.mkdir(parents=True)
    (tmp_path / "tmp").mkdir()
    for key, value in (("CXR_TEST_STORAGE", storage), ("CXR_TEST_DATA", covid3_dir),
                       ("CXR_CACHE_DIR", cache), ("TMPDIR", tmp_path / "tmp")):
        monkeypatch.setenv(key, str(value))
    seen = run_two_gloo_workers(_ddp_glue_worker)[0]
    assert seen["deleted"] == [True] * 5
    assert seen["local_states"] == [0] * 5 and seen["local_epochs"] == [0] * 5, seen
    assert seen["stored_states"] == [[], [1], [1], [1, 3], [3, 4]], seen
    checkpoints = sorted(storage.glob("checkpoint_*"))
    assert len(checkpoints) == 5 and not list(storage.glob("checkpoint_*/state.pt"))
    assert all((c / "generator.pt").is_file() and (c / RESUME_FILE).is_file()
               for c in checkpoints)
    assert not list((tmp_path / "tmp").glob("cxr-worker*"))  # the run folders went at the end
    # Ray resumes the latest checkpoint: its state is the newest in states/ beside it
    assert resume_state(checkpoints[-1], StateStore.beside(str(checkpoints[-1])))["epoch"] == 4
