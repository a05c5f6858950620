"""Kill recipe stages with SIGKILL at random moments, rerun them, and check what they leave.

On the mini world at a tiny size (`espnet_alignchat.testing`), in a recipe copy under a work
dir: stages 1-8 run once, uninterrupted, as the reference, each stage's outputs copied aside
as it ends. Then each of stages 2, 4, 5, 6 and 7 is, `trials` times: restored to the state
before it (its outputs and ``.done`` markers removed), started as
``./run.sh ... --stage S --stop_stage S`` in a process group of its own, killed as a whole
(``kill -9``) at a seeded random moment within the stage's reference time (drawn again if
the stage ends first), and rerun with the same command to completion. Each trial then checks that the rerun exits 0, that the stage's
Kaldi maps hold every utterance of the reference exactly once, that the training stages'
checkpoints load with ``weights_only=True``, and that the outputs equal the reference's: byte
for byte for formatting, self-generation and decoding (whose scores, stage 8 rerun, must be
equal too), the final weights tensor for tensor for training.

Trials run from the last stage to the first, so a trial only removes outputs that no later
trial reads. `run_trials` returns one `Trial` per trial, `render_markdown` their totals per
stage. Linux only: the running programs are read from ``/proc``.
"""

import json
import os
import random
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from espnet_alignchat.testing import (
    TINY_MINI_WORLD,
    link_recipe,
    recipe_command,
    write_tiny_configs,
)
from espnet_alignchat.trainer import CHECKPOINT, load_checkpoint

KILLED_STAGES = (7, 6, 5, 4, 2)  # in the order their trials run
DUMP = "dump/raw"
DECODE = "exp/instruct/decode/test"  # stage 7's outputs for the mini world's test set
SCORES = f"{DECODE}/scores.json"
# Two epochs: a kill after the first one's checkpoint exercises ESPnet's resume.
MAX_EPOCH = 2
# Runs of a trial that may end before their kill moment (see `run_trial`).
ATTEMPTS = 3
# A killed process group is gone within seconds; waiting longer means something escaped it.
GROUP_EXIT_TIMEOUT = 60


@dataclass(frozen=True)
class StageOutputs:
    """What a stage writes (removed to restore the state before it) and how it is checked."""

    paths: Tuple[str, ...]  # files and dirs, relative to the recipe dir
    utterance_maps: Tuple[str, ...] = ()  # Kaldi maps that hold each utterance once
    same_bytes: Tuple[str, ...] = ()  # files and dirs equal to the reference's, bytes
    model_dir: Optional[str] = None  # a training stage's experiment dir
    model_file: Optional[str] = None  # its final weights, equal to the reference's


SETS = ("train", "dev", "test")  # the mini world's (run.sh --world mini)
TRAINING_SETS = ("train", "dev")
DECODED = tuple(
    f"{DECODE}/{name}"
    for name in ("text", "response", "text_input/response", "cascade/response")
)


def _in_sets(sets: Sequence[str], names: Sequence[str]) -> Tuple[str, ...]:
    return tuple(f"{DUMP}/{s}/{name}" for s in sets for name in names)


STAGES: Dict[int, StageOutputs] = {
    2: StageOutputs(
        paths=tuple(f"{DUMP}/{s}" for s in SETS),
        utterance_maps=_in_sets(
            SETS, ["wav.scp", "text", "text_int", "utt2num_samples"]
        ),
        same_bytes=tuple(f"{DUMP}/{s}" for s in SETS),
    ),
    4: StageOutputs(
        paths=("exp/pretrain",),
        model_dir="exp/pretrain",
        model_file="valid.acc.ave.pth",
    ),
    5: StageOutputs(
        paths=_in_sets(TRAINING_SETS, ["generate", "response", "response_int"]),
        utterance_maps=_in_sets(TRAINING_SETS, ["response", "response_int"]),
        same_bytes=_in_sets(TRAINING_SETS, ["response", "response_int"]),
    ),
    6: StageOutputs(
        paths=("exp/instruct",),
        model_dir="exp/instruct",
        model_file="valid.acc_response.ave.pth",
    ),
    7: StageOutputs(paths=(DECODE,), utterance_maps=DECODED, same_bytes=DECODED),
}


@dataclass
class Trial:
    """One kill of a stage and its rerun. ``None``: the check does not apply to the stage."""

    stage: int
    trial: int
    kill_at_s: float  # after the command started
    killed: bool  # False: every run ended before its kill moment (`run_trial`)
    ended_first: int  # runs that ended before their kill moment, so were run again
    running: str  # the programs of the process group at the kill
    resumed: bool  # the rerun of the same command exited 0
    lost: Optional[int]  # reference utterances missing from the stage's Kaldi maps
    duplicated: Optional[int]  # utterance lines repeated in them
    checkpoints_load: Optional[bool]  # every .pth loads with weights_only=True
    equal: bool  # outputs (and stage 7's scores) equal to the reference's
    seconds: float  # the killed run, the rerun and the checks
    note: str = ""


@dataclass
class Reference:
    """The uninterrupted run: each stage's time from its log line, its outputs' copies."""

    stage_seconds: Dict[int, int]
    snapshot_dir: Path

    def outputs(self, stage: int) -> Path:
        """Where stage `stage`'s outputs were copied as it ended (under their own paths;
        stages write into each other's dirs, so each stage has its own copy)."""
        return self.snapshot_dir / f"stage{stage}"


class TinyRecipe:
    """A recipe copy under `work_dir` with the tiny configs; runs one stage at a time."""

    def __init__(self, work_dir: Path):
        self.root = link_recipe(work_dir / "alignchat")
        configs = work_dir / "configs"
        configs.mkdir()
        self.configs = write_tiny_configs(configs, max_epoch=MAX_EPOCH)
        self.logs = work_dir / "logs"
        self.logs.mkdir()
        self.env = dict(os.environ, OMP_NUM_THREADS="1")

    def command(self, stage: int) -> List[str]:
        return recipe_command(
            self.configs,
            *TINY_MINI_WORLD,
            "--stage", str(stage),
            "--stop_stage", str(stage),
        )  # fmt: skip

    def run(self, stage: int, log_name: str) -> subprocess.CompletedProcess:
        """Stage `stage` to its end; its output goes to logs/<log_name>."""
        with open(self.logs / log_name, "w") as log:
            return subprocess.run(
                self.command(stage),
                cwd=self.root,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                text=True,
            )

    def log(self, log_name: str) -> str:
        return (self.logs / log_name).read_text()

    def run_killed(
        self, stage: int, kill_at: float, log_name: str
    ) -> Tuple[bool, str, float]:
        """Start stage `stage` and kill its process group `kill_at` seconds later; returns
        whether it was still running, the programs it was running and its seconds."""
        start = time.monotonic()
        with open(self.logs / log_name, "w") as log:
            process = subprocess.Popen(
                self.command(stage),
                cwd=self.root,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, killed whole
            )
            try:
                process.wait(timeout=kill_at)
                return False, "", time.monotonic() - start
            except subprocess.TimeoutExpired:
                running = running_programs(group_members(process.pid))
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        wait_for_group_exit(process.pid)
        return True, running, time.monotonic() - start


def group_members(group: int) -> List[List[str]]:
    """The command lines of the live (not zombie) processes of process group `group`."""
    members = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:  # ended meanwhile
            continue
        # After "pid (comm)": state, ppid, pgrp.
        state, _, pgrp = stat.rsplit(")", 1)[1].split()[:3]
        if int(pgrp) == group and state != "Z" and cmdline:
            members.append(cmdline.decode(errors="replace").rstrip("\0").split("\0"))
    return members


def program_name(argv: List[str]) -> Optional[str]:
    """``alignchat_train`` for ``python -m espnet_alignchat.bin.alignchat_train ...`` or
    ``python .../alignchat_train.py ...``; None for the shells and tools around them."""
    if not Path(argv[0]).name.startswith("python") or len(argv) < 2:
        return None
    if "-m" in argv[:-1]:
        return argv[argv.index("-m") + 1].rsplit(".", 1)[-1]
    return Path(argv[1]).stem


def running_programs(members: List[List[str]]) -> str:
    """``alignchat_inference x2``: the Python programs running (forked workers counted)."""
    names = [name for name in map(program_name, members) if name is not None]
    if not names:
        return "the stage script"
    counts = {name: names.count(name) for name in sorted(set(names))}
    return ", ".join(f"{name} x{n}" if n > 1 else name for name, n in counts.items())


def wait_for_group_exit(group: int) -> None:
    deadline = time.monotonic() + GROUP_EXIT_TIMEOUT
    while group_members(group):
        if time.monotonic() > deadline:
            raise RuntimeError(f"process group {group} still runs after kill -9")
        time.sleep(0.1)


def stage_seconds(log: str, stage: int) -> int:
    """T of the stage's log line ``stage N done in T s`` (summed over the lines of a stage
    of two parts, ``stage 3 (statistics) done in T s``)."""
    found = re.findall(rf"stage {stage}(?: \([^)]*\))? done in (\d+) s", log)
    if not found:
        raise RuntimeError(f"stage {stage} did not run to its end:\n{log[-2000:]}")
    return sum(map(int, found))


def copy_path(source: Path, destination: Path) -> None:
    destination.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        shutil.copytree(source, destination, symlinks=True)
    else:
        shutil.copy2(source, destination, follow_symlinks=False)


def remove_path(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def run_reference(recipe: TinyRecipe, snapshot_dir: Path) -> Reference:
    """Stages 1-8, uninterrupted; each killed stage's outputs (and stage 8's scores) are
    copied to `snapshot_dir` as the stage ends."""
    seconds = {}
    reference = Reference(seconds, snapshot_dir)
    for stage in range(1, 9):
        log_name = f"reference_stage{stage}.log"
        result = recipe.run(stage, log_name)
        log = recipe.log(log_name)
        if result.returncode != 0:
            raise RuntimeError(f"reference stage {stage} failed:\n{log[-3000:]}")
        seconds[stage] = stage_seconds(log, stage)
        kept = STAGES[stage].paths if stage in STAGES else ()
        if stage == 8:
            kept = (SCORES,)
        for path in kept:
            copy_path(recipe.root / path, reference.outputs(stage) / path)
    return reference


def read_keys(path: Path) -> List[str]:
    """The key of every line of a Kaldi map, repeats included."""
    return [line.split(maxsplit=1)[0] for line in path.read_text().splitlines() if line]


def count_utterances(
    recipe: Path, reference: Path, maps: Sequence[str]
) -> Tuple[int, int]:
    """(lost, duplicated) over `maps`: reference keys missing, key lines repeated."""
    lost = duplicated = 0
    for name in maps:
        expected = set(read_keys(reference / name))
        got = read_keys(recipe / name) if (recipe / name).is_file() else []
        lost += len(expected - set(got))
        duplicated += len(got) - len(set(got))
    return lost, duplicated


def files_under(path: Path) -> Dict[str, bytes]:
    """Relative name -> content of each file at `path` (a file, or a dir's tree)."""
    if path.is_file():
        return {"": path.read_bytes()}
    if not path.is_dir():
        return {}
    return {
        str(file.relative_to(path)): file.read_bytes()
        for file in sorted(path.rglob("*"))
        if file.is_file()
    }


def differing(recipe: Path, reference: Path, paths: Sequence[str]) -> List[str]:
    """The files under `paths` that are missing, extra or different from the reference's."""
    found = []
    for path in paths:
        ours, theirs = files_under(recipe / path), files_under(reference / path)
        for name in sorted(set(ours) | set(theirs)):
            if ours.get(name) != theirs.get(name):
                found.append(str(Path(path) / name))
    return found


def load_weights(path: Path) -> Dict[str, torch.Tensor]:
    if path.name == CHECKPOINT:
        return load_checkpoint(path)["model"]
    return torch.load(path, map_location="cpu", weights_only=True)


def checkpoints_load(model_dir: Path) -> Tuple[bool, List[str]]:
    """Whether every ``.pth`` of `model_dir` loads with ``weights_only=True`` (ESPnet's
    ``checkpoint.pth`` with its reporter's numpy scalars and durations allowed)."""
    failed = []
    for path in sorted(model_dir.glob("*.pth")):
        try:
            load_weights(path)
        except Exception:  # whatever torch raises for a file it cannot read
            failed.append(path.name)
    return not failed, failed


def same_weights(ours: Path, theirs: Path) -> bool:
    a, b = load_weights(ours), load_weights(theirs)
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def restore_before(recipe: Path, stage: int) -> None:
    for path in STAGES[stage].paths:
        remove_path(recipe / path)


def check_stage(
    recipe: TinyRecipe, reference_run: Reference, stage: int
) -> Tuple[Optional[int], Optional[int], Optional[bool], bool, str]:
    """(lost, duplicated, checkpoints load, equal to the reference, note) after a rerun."""
    outputs, root = STAGES[stage], recipe.root
    reference = reference_run.outputs(stage)
    lost = duplicated = loads = None
    notes = []
    if outputs.utterance_maps:
        lost, duplicated = count_utterances(root, reference, outputs.utterance_maps)
    differences = differing(root, reference, outputs.same_bytes)
    equal = not differences
    if differences:
        notes.append(f"differ: {', '.join(differences[:5])}")
    if outputs.model_dir is not None:
        model_dir = root / outputs.model_dir
        loads, failed = checkpoints_load(model_dir)
        if failed:
            notes.append(f"do not load: {', '.join(failed)}")
        final = Path(outputs.model_dir) / outputs.model_file
        if not same_weights(root / final, reference / final):
            equal = False
            notes.append(f"{final}: other weights")
        log = (model_dir / "train.log").read_text()
        if "The training was resumed" in log:
            notes.append(f"resumed from {CHECKPOINT}")
    if stage == 7:
        result = recipe.run(8, "stage8_after_kill.log")
        scores_equal = result.returncode == 0 and json.loads(
            (root / SCORES).read_text()
        ) == json.loads((reference_run.outputs(8) / SCORES).read_text())
        equal = equal and scores_equal
        if not scores_equal:
            notes.append("stage 8's scores differ")
    return lost, duplicated, loads, equal, "; ".join(notes)


def run_trial(
    recipe: TinyRecipe,
    reference: Reference,
    stage: int,
    trial: int,
    draw: random.Random,
) -> Trial:
    """Kill stage `stage` at a moment drawn within its reference time, rerun it, check it.

    On a machine busier during the reference than now the stage may end before the moment:
    then it is restored and killed again at a moment drawn within the time it just took
    (at most `ATTEMPTS` runs)."""
    start = time.monotonic()
    name = f"stage{stage}_trial{trial}"
    window = max(reference.stage_seconds[stage], 1)
    ended_first = []
    for _ in range(ATTEMPTS):
        restore_before(recipe.root, stage)
        kill_at = draw.uniform(0, window)
        killed, running, window = recipe.run_killed(
            stage, kill_at, f"{name}_killed.log"
        )
        if killed:
            break
        ended_first.append(f"ended in {window:.0f} s, before a kill at {kill_at:.0f} s")
    notes = list(ended_first)
    rerun = recipe.run(stage, f"{name}_rerun.log")
    resumed = rerun.returncode == 0
    lost = duplicated = loads = None
    equal = False
    if resumed:
        lost, duplicated, loads, equal, note = check_stage(recipe, reference, stage)
        notes.append(note)
    else:
        notes.append(f"rerun failed: {recipe.log(f'{name}_rerun.log')[-300:]}")
    return Trial(
        stage=stage,
        trial=trial,
        kill_at_s=round(kill_at, 2),
        killed=killed,
        ended_first=len(ended_first),
        running=running,
        resumed=resumed,
        lost=lost,
        duplicated=duplicated,
        checkpoints_load=loads,
        equal=equal,
        seconds=round(time.monotonic() - start, 1),
        note="; ".join(note for note in notes if note),
    )


def run_trials(
    work_dir: Path,
    trials: int,
    seed: int = 0,
    stages: Sequence[int] = KILLED_STAGES,
) -> Tuple[Reference, List[Trial]]:
    """The reference run and `trials` kills of each of `stages` (run last stage first), in
    a recipe copy under `work_dir` (created; its logs are in `work_dir`/logs)."""
    work_dir.mkdir(parents=True)
    recipe = TinyRecipe(work_dir)
    reference = run_reference(recipe, work_dir / "reference")
    draw = random.Random(seed)
    results = []
    for stage in sorted(stages, reverse=True):
        for trial in range(1, trials + 1):
            results.append(run_trial(recipe, reference, stage, trial, draw))
    return reference, results


def _count(values: Sequence[Optional[int]]) -> str:
    known = [v for v in values if v is not None]
    return str(sum(known)) if known else "n/a"


def _share(values: Sequence[Optional[bool]]) -> str:
    known = [v for v in values if v is not None]
    return f"{sum(known)}/{len(known)}" if known else "n/a"


def render_markdown(reference: Reference, trials: Sequence[Trial]) -> str:
    """A table of the totals per stage, and over all stages."""
    lines = [
        "| stage | reference s | trials | killed | runs that ended before their kill "
        "| reruns exit 0 | utterances lost | duplicated | checkpoints load "
        "| equal to uninterrupted | s per trial |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    groups = [
        (str(s), [t for t in trials if t.stage == s])
        for s in sorted({t.stage for t in trials})
    ]
    groups.append(("all", list(trials)))
    for name, group in groups:
        reference_s = str(reference.stage_seconds[int(name)]) if name != "all" else ""
        mean = sum(t.seconds for t in group) / len(group)
        lines.append(
            f"| {name} | {reference_s} | {len(group)} | {sum(t.killed for t in group)} "
            f"| {sum(t.ended_first for t in group)} "
            f"| {sum(t.resumed for t in group)}/{len(group)} "
            f"| {_count([t.lost for t in group])} "
            f"| {_count([t.duplicated for t in group])} "
            f"| {_share([t.checkpoints_load for t in group])} "
            f"| {sum(t.equal for t in group)}/{len(group)} | {mean:.0f} |"
        )
    return "\n".join(lines) + "\n"
