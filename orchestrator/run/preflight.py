"""Checks and one-off work before Ray starts: the data are read, cached and fingerprinted
once here, so every trial memory-maps the same cache and a bad data set fails in seconds."""
from __future__ import annotations

import dataclasses

from orchestrator.config import ConfigError
from trainables.data import DataError
from trainables.data.default import resolve_default
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
        train, _ = load_selection(settings, resolution, channels)
    except (DataError, FileNotFoundError, ValueError) as exc:
        hint = " (on the command line: --duplicates keep)" if "duplicates=" in str(exc) else ""
        raise ConfigError(f"data {data!r}: {exc}{hint}") from exc
    return dataclasses.replace(settings, data_fingerprint=train.fingerprint,
                               classes=tuple(train.classes))
