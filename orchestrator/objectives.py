"""Which per-epoch metrics can drive a search, and in which direction."""
from __future__ import annotations

# "min" metrics get better as they fall; "max" as they rise.
DIRECTIONS: dict[str, str] = {
    "fid": "min",
    "intra_fid": "min",
    "kid": "min",
    "cas_acc": "max",
    "cas_f1": "max",
    "inception_score": "max",
    "g_loss": "min",
    "d_fake_acc": "min",
    "val_loss": "min",
    "val_accuracy": "max",
    "val_macro_f1": "max",
}

DEFAULT_OBJECTIVE = {"acgan": "fid", "dcgan": "fid", "cgan": "fid", "classifier": "val_macro_f1"}


def parse_objectives(text: str | None, experiment: str) -> list[tuple[str, str]]:
    """`"fid,cas_acc"` -> [("fid", "min"), ("cas_acc", "max")]; None -> the experiment's default."""
    names = [n.strip() for n in (text or DEFAULT_OBJECTIVE[experiment]).split(",") if n.strip()]
    if not names:
        raise ValueError("--objective is empty; give a metric such as 'fid' or 'fid,cas_acc'")
    unknown = [n for n in names if n not in DIRECTIONS]
    if unknown:
        raise ValueError(
            f"unknown objective {unknown[0]!r}; choose from {', '.join(sorted(DIRECTIONS))}"
        )
    return [(n, DIRECTIONS[n]) for n in names]
