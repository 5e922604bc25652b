"""Where a training loop runs: standalone, as a Tune function trial, or as a Ray Train worker.

The training loops (GAN and classifier) are written once against `RunContext`; only the
context knows about Ray.  This keeps the CPU smoke path and the GPU/DDP path the same code.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

import torch
from torch import nn

if TYPE_CHECKING:  # annotation only: trainables.gan imports this module
    from trainables.gan.checkpoint import StateStore


@dataclass
class RunContext:
    """Everything a training loop needs from its environment.

    run_dir: a local directory the loop may write grids/checkpoints into (rank 0 only).
    report: called once per epoch with (metrics, checkpoint_dir or None).
    resume_dir: a checkpoint directory to resume from, or None.
    states: where the GAN loop writes its full training states (None: beside its epoch
        folders in run_dir); resume_states: where to look for the state of a resume_dir that
        has none (None: the folders beside resume_dir).  See `trainables.gan.checkpoint`.
    about_to_stop: True when the environment is about to end the run (Ray Train's
        preemption notice), so the loop writes its full state now; called once per epoch on
        every rank (it may be a collective).
    """

    run_dir: Path
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    rank: int = 0
    world_size: int = 1
    report: Callable[[dict, Optional[Path]], None] = lambda metrics, ckpt: None
    resume_dir: Optional[Path] = None
    wrap_model: Callable[[nn.Module], nn.Module] = lambda m: m
    states: Optional["StateStore"] = None
    resume_states: Optional["StateStore"] = None
    about_to_stop: Callable[[], bool] = lambda: False
    # What `report` received, epoch by epoch (filled by the standalone context).
    history: list = field(default_factory=list)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def standalone_context(run_dir: Path | str, device: str | None = None,
                       resume_dir: Path | str | None = None) -> RunContext:
    """A context for plain function calls (tests, notebooks): no Ray, one process."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    ctx = RunContext(run_dir=run_dir, device=dev,
                     resume_dir=Path(resume_dir) if resume_dir else None)
    ctx.report = lambda metrics, ckpt: ctx.history.append(dict(metrics))
    return ctx
