"""ESPnet's `Trainer`, safe to kill: checkpoints are whole or absent, and a resume mends what a
kill between two of ESPnet's writes leaves behind.

ESPnet writes ``checkpoint.pth``, ``<N>epoch.pth`` and the averaged models with `torch.save`
straight under their final names, so a ``kill -9`` during a write leaves a truncated file, and
``--resume true`` then dies loading it. Here every `torch.save` to a path during training
writes a hidden temporary file and renames it when complete (`espnet_alignchat.atomic`).
Before a resume, a ``checkpoint.pth`` that cannot be read (cut short by a kill in a run
without this trainer) is set aside with one line and training starts over, and an epoch whose
``checkpoint.pth`` was written but whose ``<N>epoch.pth`` was not (ESPnet writes the two one
after the other) gets it back from the checkpoint, which holds the same weights.
"""

import datetime
import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Sequence

import numpy as np
import torch
from espnet2.train.reporter import Reporter
from espnet2.train.trainer import Trainer

from espnet_alignchat.atomic import atomic_path

CHECKPOINT = "checkpoint.pth"
# What ESPnet's reporter keeps in a checkpoint besides tensors: numpy scalars of the
# statistics and the epochs' durations. Allowed, the checkpoint loads with weights_only.
CHECKPOINT_GLOBALS = [
    np._core.multiarray.scalar,
    np.dtype,
    *{type(np.dtype(kind)) for kind in (np.float32, np.float64, np.int64, np.bool_)},
    datetime.timedelta,
]


def load_checkpoint(path: Path, mmap: bool = False) -> Dict[str, Any]:
    """ESPnet's ``checkpoint.pth`` (weights, reporter, optimizers), loaded with
    ``weights_only=True``; `mmap` leaves the tensors on disk until they are read."""
    with torch.serialization.safe_globals(CHECKPOINT_GLOBALS):
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)


@contextmanager
def whole_file_saves() -> Iterator[None]:
    """`torch.save` to a path writes the file whole or not at all while the block runs.

    ESPnet's trainer and its model averaging call `torch.save` themselves and offer no hook,
    so the function is replaced for the duration of training."""
    save = torch.save

    def save_whole(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        if not isinstance(f, (str, os.PathLike)):  # a buffer or an open file
            save(obj, f, *args, **kwargs)
            return
        with atomic_path(f) as partial:
            save(obj, partial, *args, **kwargs)

    torch.save = save_whole
    try:
        yield
    finally:
        torch.save = save


def relink(output_dir: Path, name: str, target: str) -> None:
    link = output_dir / name
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(target)


def mend_checkpoint(
    output_dir: Path, best_model_criterion: Sequence[Sequence[str]]
) -> None:
    """Make ``output_dir`` fit to resume from: see the module's docstring."""
    checkpoint = output_dir / CHECKPOINT
    if not checkpoint.exists():
        return
    try:
        states = load_checkpoint(checkpoint, mmap=True)
    except Exception as error:  # torch raises RuntimeError, pickle errors, EOFError...
        aside = checkpoint.with_name(f"{CHECKPOINT}.unreadable")
        checkpoint.replace(aside)
        reason = " ".join(str(error).split())[:200]
        logging.warning(
            f"{checkpoint}: unreadable ({reason}); moved to {aside.name}, training "
            "starts from the first epoch"
        )
        return
    reporter = Reporter()
    reporter.load_state_dict(states["reporter"])
    epoch = reporter.get_epoch()
    model_file = f"{epoch}epoch.pth"
    if epoch == 0 or (output_dir / model_file).exists():
        return
    with atomic_path(output_dir / model_file) as partial:
        torch.save(states["model"], partial)
    relink(output_dir, "latest.pth", model_file)
    for phase, key, mode in best_model_criterion:
        if (
            reporter.has(phase, key)
            and reporter.get_best_epoch(phase, key, mode) == epoch
        ):
            relink(output_dir, f"{phase}.{key}.best.pth", model_file)
    logging.warning(
        f"{output_dir / model_file}: missing after epoch {epoch} of {checkpoint} (killed "
        "between the two saves); written from the checkpoint"
    )


class KillSafeTrainer(Trainer):
    """ESPnet's `Trainer` with whole-file checkpoints and a mended resume (module docstring)."""

    @classmethod
    def run(
        cls,
        model: torch.nn.Module,
        optimizers: Sequence[torch.optim.Optimizer],
        schedulers: Sequence[Optional[Any]],
        train_iter_factory: Any,
        valid_iter_factory: Any,
        plot_attention_iter_factory: Optional[Any],
        trainer_options: Any,
        distributed_option: Any,
    ) -> None:
        if trainer_options.resume:
            distributed = distributed_option.distributed
            if not distributed or distributed_option.dist_rank == 0:
                mend_checkpoint(
                    Path(trainer_options.output_dir),
                    trainer_options.best_model_criterion,
                )
            if distributed:  # the other ranks read the checkpoint once it is mended
                torch.distributed.barrier()
        with whole_file_saves():
            super().run(
                model,
                optimizers,
                schedulers,
                train_iter_factory,
                valid_iter_factory,
                plot_attention_iter_factory,
                trainer_options,
                distributed_option,
            )
