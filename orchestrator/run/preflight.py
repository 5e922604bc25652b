"""Checks and one-off work before Ray or MLflow start: stores writable, the data read,
cached and fingerprinted once (so every trial memory-maps the same cache), at least two
classes, and a warning for each class with too few validation images for an evaluation.
Every failure is a ConfigError naming the thing and the fix, within seconds."""
from __future__ import annotations

import dataclasses
import os
import sys
import tempfile
from pathlib import Path

from orchestrator.config import ConfigError
from trainables import disk
from trainables.data import DataError, bundle
from trainables.data.default import resolve_default
from trainables.gan.families import FAMILIES
from trainables.trial import TrialSettings, load_selection


def preflight_data(settings: TrialSettings) -> TrialSettings:
    """Build the manifest and the decoded cache; returns the settings with the resolved data
    source, its fingerprint and its classes."""
    resolution, channels = settings.resolution_channels
    data = settings.data
    try:
        if data == "default":
            # Resolve once here (cache, download or stand-in): trials get the file itself,
            # and MLflow records which one it was.
            data = str(resolve_default(resolution))
        settings = dataclasses.replace(settings, data=data)
        train, val = load_selection(settings, resolution, channels)
    except (DataError, FileNotFoundError, ValueError) as exc:
        hints = [f"{flag} sets {keyword}" for keyword, flag in PYTHON_ONLY.items()
                 if keyword in str(exc) and flag not in str(exc)]
        hint = f" (on the command line: {'; '.join(hints)})" if hints else ""
        raise ConfigError(f"data {data!r}: {exc}{hint}") from exc
    settings = dataclasses.replace(settings, data_fingerprint=train.fingerprint,
                                   classes=tuple(train.classes))
    check_classes(settings)
    for line in few_validation_images(settings, val.class_counts()):
        print(f"warning: {line}", file=sys.stderr)
    return settings


# Data messages that name a Python keyword only, and the search's option that sets it.
PYTHON_ONLY = {"skip_bad=True": "--skip-bad"}

# What each evaluation needs of every class in the validation images, and what it is called:
# intra-FID and the diversity ratio (the collapse guard) need two images of a class (its
# covariance, its pairwise distances); CAS and a classifier's validation scores need one.
PER_CLASS_NEEDS = {
    "intra_fid": (2, "intra-FID"),
    "visual": (2, "the diversity check (collapse guard)"),
    "cas": (1, "CAS"),
    "classifier": (1, "the validation scores (val_macro_f1)"),
}


def few_validation_images(settings: TrialSettings, counts: dict[str, int]) -> list[str]:
    """One line per class with fewer validation images than one of the search's
    evaluations needs: the class, its count, and what leaves it out."""
    uses = settings.eval.get("metrics", ()) if settings.is_gan else ("classifier",)
    lines = []
    for name, n in counts.items():
        short = [(need, label) for use, (need, label) in PER_CLASS_NEEDS.items()
                 if use in uses and n < need]
        if short:
            labels = [label for _, label in short]
            lines.append(f"class {name!r} has {n} validation image{'s' * (n != 1)} (fewer than "
                         f"{max(need for need, _ in short)}): {_and(labels)} "
                         f"leave{'s' * (len(labels) == 1)} it out of every evaluation; add "
                         "images of it, or leave it out with --exclude-classes")
    return lines


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def publish_data(settings: TrialSettings, storage: str) -> TrialSettings:
    """Publish the search's fit/val images under the storage (`trainables.data.bundle`), so
    that trials on any node read them from there and never from this machine's data path."""
    resolution, channels = settings.resolution_channels
    fit, val = load_selection(settings, resolution, channels)  # the decoded cache: no decoding
    try:
        if "://" not in storage:  # the bundle is the search's first big write
            disk.require([storage], sum(x.images.nbytes for x in (fit, val)))
        uri = bundle.publish(fit, val, storage)
    except disk.DiskFull as exc:
        raise ConfigError(f"--storage {storage!r}: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"--storage {storage!r}: cannot publish the search's data there "
                          f"({type(exc).__name__}: {exc}); every trial reads its images from "
                          "the storage, so it must be writable from here") from exc
    return dataclasses.replace(settings, data_bundle=uri)


def check_storage(storage: str) -> None:
    """A local --storage must be a folder this process can create and write (Tune's results,
    the Optuna study); checked before Ray or MLflow start, nothing left behind."""
    if "://" in storage:
        # Remote stores are checked by their client when the first trial writes; the Optuna
        # study then lives in ./ray_results, which must be writable here.
        storage = "ray_results"
    writable_folder(Path(storage), "--storage", "pass --storage PATH to a folder you can "
                    "write, or s3://BUCKET/… on a cluster")
    enough_free(Path(storage), "--storage")


def enough_free(folder: Path, flag: str) -> None:
    """At least the reserve free (`trainables.disk`): a search on a full disk stops at its
    first checkpoint; better to say so before Ray starts."""
    try:
        disk.require([folder], 0)
    except disk.DiskFull as exc:
        raise ConfigError(f"{flag}: {exc}") from None
    except ValueError as exc:  # a bad $CXR_MIN_FREE_MB
        raise ConfigError(str(exc)) from None


def check_artifact_root(root: str | None) -> None:
    """A local --artifact-root must be a folder this process can write (remote ones are
    checked by MLflow's artefact client at the first upload)."""
    if root and "://" not in root:
        writable_folder(Path(root).expanduser(), "--artifact-root",
                        "pass --artifact-root a folder you can write, or leave it out")


def check_tracking_store(uri: str) -> None:
    """A sqlite MLflow store: its folder creatable and writable and the file writable, before
    MLflow is asked (it retries a read-only database for minutes)."""
    if not uri.startswith("sqlite:///"):
        return
    db = Path(uri[len("sqlite:///"):])
    fix = "pass --mlflow-uri sqlite:///PATH/mlflow.db in a folder you can write"
    writable_folder(db.parent, "--mlflow-uri", fix)
    enough_free(db.parent, "--mlflow-uri")
    if db.exists() and not os.access(db, os.W_OK):
        raise ConfigError(f"--mlflow-uri {uri!r}: {db} is read-only; {fix}")


def writable_folder(folder: Path, flag: str, fix: str) -> None:
    """Create `folder` if needed and prove it writable with a probe file (removed again)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".cxr-write-probe-"):
            pass
    except OSError as exc:
        raise ConfigError(f"{flag}: cannot write to {folder} ({exc.strerror or exc}); {fix}") from exc


def check_classes(settings: TrialSettings) -> None:
    """Two classes at least: a conditional GAN or a classifier learns nothing from one (it
    would "train", and CAS would read 1.0).  A per-class family trains one class happily."""
    if len(settings.classes) >= 2:
        return
    if settings.is_gan and FAMILIES[settings.experiment].per_class:
        return
    found = ", ".join(settings.classes) or "none"
    raise ConfigError(f"data {settings.data!r} has {len(settings.classes)} class ({found}); "
                      f"{settings.experiment} needs at least two. Point --data at a folder with "
                      "one sub-folder per class (or use dcgan, which trains one class)")
