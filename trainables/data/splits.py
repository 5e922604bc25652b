"""Patient-level, stratified, seeded train/val/test splits."""
from __future__ import annotations

import numpy as np
import pandas as pd

from .errors import DataError


def check_patient_disjoint(frame: pd.DataFrame) -> None:
    """Raise if any patient has images in two splits (names the patient and the files)."""
    per_patient = frame.groupby("patient_id")["split"].nunique()
    shared = per_patient[per_patient > 1]
    if len(shared):
        pid = shared.index[0]
        rows = frame[frame["patient_id"] == pid]
        where = ", ".join(f"{p} ({s})" for p, s in zip(rows["path"][:4], rows["split"][:4]))
        raise DataError(f"patient {pid!r} is in two splits ({sorted(set(rows['split']))}): "
                        f"{where}; {len(shared)} patient(s) in all. Fix the source lists so each "
                        "patient is in one split only")


def assign_patient_splits(frame: pd.DataFrame, fractions: dict[str, float], seed: int,
                          ) -> pd.Series:
    """Split ``frame``'s patients into ``fractions`` (e.g. {"train": .7, "val": .15, "test": .15}).

    Stratified by each patient's majority label; every split named with a non-zero fraction
    gets at least one patient of a class that has three or more. Returns the split per row.
    """
    if abs(sum(fractions.values()) - 1.0) > 1e-9:
        raise ValueError(f"split fractions must sum to 1, got {fractions}")
    patient_label = frame.groupby("patient_id")["label"].agg(lambda s: s.value_counts().index[0])
    rng = np.random.default_rng(seed)
    assignment: dict[str, str] = {}
    names = list(fractions)
    for label in sorted(patient_label.unique()):
        patients = np.array(sorted(patient_label.index[patient_label == label]))
        rng.shuffle(patients)
        counts = _counts(len(patients), [fractions[n] for n in names])
        start = 0
        for name, count in zip(names, counts):
            for pid in patients[start:start + count]:
                assignment[pid] = name
            start += count
    return frame["patient_id"].map(assignment)


def _counts(n: int, fractions: list[float]) -> list[int]:
    """Integer split sizes for ``n`` items; the first split takes the remainder."""
    sizes = [int(round(n * f)) for f in fractions]
    if n >= len(fractions):
        sizes = [max(1, s) if f > 0 else 0 for s, f in zip(sizes, fractions)]
    sizes[0] = n - sum(sizes[1:])
    if sizes[0] < 0:
        raise DataError(f"cannot split {n} patients into fractions {fractions}")
    return sizes


def split_frame(frame: pd.DataFrame, *, seed: int, val_fraction: float,
                test_fraction: float) -> tuple[pd.DataFrame, str]:
    """Give every row a split; keep the source's own splits. Returns (frame, how)."""
    frame = frame.copy()
    given = frame["split"].notna()
    if given.any() and not given.all():
        row = frame[~given].iloc[0]
        raise DataError(f"{row['path']}: has no split while other rows do; a source must give "
                        "a split for every image or for none")
    if given.all():
        check_patient_disjoint(frame)
        present = set(frame["split"])
        if "val" not in present and "train" in present and val_fraction > 0:
            # Only train/test exist: carve val out of train, at patient level.
            train = frame["split"] == "train"
            frac = {"train": 1 - val_fraction, "val": val_fraction}
            frame.loc[train, "split"] = assign_patient_splits(frame[train], frac, seed)
            return frame, "source splits; val carved out of train at patient level"
        return frame, "source splits"
    fractions = {"train": 1 - val_fraction - test_fraction, "val": val_fraction,
                 "test": test_fraction}
    frame["split"] = assign_patient_splits(frame, fractions, seed)
    return frame, f"seeded patient-level stratified split {fractions} (seed {seed})"
