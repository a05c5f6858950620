"""The data-efficiency sweep behind ``python -m espnet_alignchat.bin.data_sweep``.

AlignChat's claim is strong speech chat from little speech, because one vector per text token
makes the LLM's job the same as for text. The sweep trains AlignChat and the frame-rate
adapter baseline (`espnet_alignchat.frame_adapter`) on fractions of the training utterances,
through the recipe's own stages (``./run.sh`` stages 3-8, with the options below), and scores
each on the same test set. For a fraction f of a world's training set:

- the training set is ``<train_set>_p<percent>``, f of its utterances spread evenly over the
  sorted ids (so over speakers and sources), with its cached encoder outputs (f = 1: the set);
- stage 3 computes its shapes and feature statistics (``<sweep dir>/stats_p<percent>``);
- stage 4 trains stage 1 on it (AlignChat: against the embedding matrix; the adapter: the
  transcript through the LLM), stage 5 self-generates answers for f of the world's stage-2
  utterances (``--instruct_max_utts``, spread over the subset), stage 6 trains stage 2 on
  them, stage 7 decodes the test set and stage 8 scores it;
- the configs are the world's, with the learning-rate schedule's steps scaled by f (the same
  epochs over less data: ``budget epochs``) or with f⁻¹ times the epochs (the same number of
  steps: ``budget steps``), written under ``<sweep dir>/conf``.

Each stage's CPU time (of every process it started) and wall time are recorded, with the hours
of speech each stage trained on and the LLM input positions each model feeds per second of
test speech (measured by decoding it, `benchmarking.positions_per_second`). The record
(``sweep.json``) is written after every stage, so a rerun skips what is finished; a stage cut
off by a kill is timed again from where ``run.sh`` resumes it (the time before the kill is
lost). ``sweep.md`` (a table and the claims' checks) and ``sweep.png`` (agreement against hours
of speech, one line per model type) are written from the record.
"""

import json
import logging
import math
import resource
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import yaml

from espnet_alignchat.atomic import atomic_write_text
from espnet_alignchat.benchmarking import positions_per_second, read_utterances
from espnet_alignchat.cli import DECODING_OPTIONS
from espnet_alignchat.datadir import read_kaldi_map
from espnet_alignchat.errors import InputError
from espnet_alignchat.inference import load_model

MODEL_TYPES = ("alignchat", "frame_adapter")
BUDGETS = ("epochs", "steps")
# The files of a dump dir a subset keeps, filtered to its utterances (those it has).
SUBSET_FILES = ("wav.scp", "text", "text_int", "utt2spk", "utt2num_samples", "answer")
INFERENCE_MODEL = "valid.acc_response.ave.pth"  # alignchat.sh's --inference_model
DECODE_TAG = "decode"


class StageFailed(RuntimeError):
    """A recipe stage of the sweep exited with an error; its log says why."""


@dataclass(frozen=True)
class World:
    """What the sweep needs to know of one of run.sh's worlds (its names, as run.sh's)."""

    train_set: str
    valid_set: str
    test_set: str
    decode_config: str
    instruct_utts: int  # run.sh's --instruct_max_utts for this world (0: all)
    encoder_cache_tag: Optional[
        str
    ]  # stage 3's cached encoder outputs; None: not cached
    configs: Dict[
        str, Tuple[str, str]
    ]  # model type -> (stage-1 config, stage-2 config)


WORLDS = {
    "real": World(
        train_set="train_real",
        valid_set="dev_real",
        test_set="test_real",
        decode_config="conf/decode_real.yaml",
        instruct_utts=1000,
        encoder_cache_tag="train_pretrain_real",
        configs={
            "alignchat": (
                "conf/train_pretrain_real.yaml",
                "conf/train_instruct_real.yaml",
            ),
            "frame_adapter": (
                "conf/tuning/train_adapter_transcribe_whisper_tiny_real.yaml",
                "conf/tuning/train_adapter_whisper_tiny_real.yaml",
            ),
        },
    ),
    "mini": World(
        train_set="train",
        valid_set="dev",
        test_set="test",
        decode_config="conf/decode.yaml",
        instruct_utts=0,
        encoder_cache_tag=None,
        configs={
            "alignchat": ("conf/train_pretrain.yaml", "conf/train_instruct.yaml"),
            "frame_adapter": (
                "conf/tuning/train_adapter_transcribe_conformer_small.yaml",
                "conf/tuning/train_adapter_conformer_small.yaml",
            ),
        },
    ),
}


@dataclass(frozen=True)
class Cost:
    cpu_s: float  # user + system time of every process the stage started
    wall_s: float


def percent_label(fraction: float) -> str:
    return f"p{round(100 * fraction):d}"


def spread(keys: Sequence[str], n: int) -> List[str]:
    """`n` of `keys` spread evenly over them, as alignchat.sh's make_subset picks them."""
    total = len(keys)
    return [
        key for i, key in enumerate(keys) if (i * n) // total != ((i + 1) * n) // total
    ]


def scale_steps(steps: Sequence[int], fraction: float) -> List[int]:
    """A schedule's step list for `fraction` of the steps, still strictly increasing."""
    scaled: List[int] = []
    for step in steps:
        value = round(step * fraction)
        scaled.append(value if not scaled else max(value, scaled[-1] + 1))
    return scaled


def budget_config(source: Path, fraction: float, budget: str, dest: Path) -> Path:
    """`source` for `fraction` of the data: its schedule's steps scaled (``epochs``: the same
    epochs, fewer steps) or its epochs multiplied by 1/fraction (``steps``)."""
    config = yaml.safe_load(source.read_text())
    if budget == "steps":
        config["max_epoch"] = math.ceil(config["max_epoch"] / fraction)
    elif config.get("scheduler") == "piecewiselinearwarmuplr":
        schedule = config["scheduler_conf"]
        schedule["warmup_steps_list"] = scale_steps(
            schedule["warmup_steps_list"], fraction
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    header = (
        f"# {source} for {fraction:g} of the training utterances (budget: {budget})\n"
    )
    atomic_write_text(dest, header + yaml.safe_dump(config, sort_keys=False))
    return dest


def make_subset(
    dump_dir: Path, source: str, target: str, fraction: float, cache_tag: Optional[str]
) -> int:
    """``dump_dir/target``: `fraction` of ``dump_dir/source``'s utterances (in its
    ``text_int`` order), with their cached encoder outputs; returns its size."""
    src, dst = dump_dir / source, dump_dir / target
    keys = list(read_kaldi_map(src / "text_int"))
    if (dst / ".done").is_file():
        return len(read_kaldi_map(dst / "text_int"))
    wanted = set(spread(keys, round(fraction * len(keys))))
    if not wanted:
        raise InputError(f"{src}: {fraction:g} of {len(keys)} utterances is none")
    dst.mkdir(parents=True, exist_ok=True)
    for name in SUBSET_FILES:
        if (src / name).is_file():
            _filter_lines(src / name, dst / name, wanted)
    if (src / "token_ids.json").is_file():
        shutil.copy(src / "token_ids.json", dst / "token_ids.json")
    if cache_tag is not None:
        cache_src, cache_dst = (d / f"encoder_out_{cache_tag}" for d in (src, dst))
        cache_dst.mkdir(exist_ok=True)
        _filter_lines(
            cache_src / "encoder_out.scp", cache_dst / "encoder_out.scp", wanted
        )
        shutil.copy(cache_src / "encoder.yaml", cache_dst / "encoder.yaml")
        (cache_dst / ".done").touch()  # stage 3 skips it: the outputs are the set's
    (dst / ".done").touch()
    return len(wanted)


def _filter_lines(source: Path, dest: Path, keys: set) -> None:
    with open(source, encoding="utf-8") as f:
        lines = [line for line in f if line.split(maxsplit=1)[0] in keys]
    atomic_write_text(dest, "".join(lines))


def speech_hours(dump_set: Path, fs: int) -> float:
    samples = read_kaldi_map(dump_set / "utt2num_samples")
    return sum(int(n) for n in samples.values()) / fs / 3600


def run_stage(command: List[str], log: Path) -> Cost:
    """Run `command` (a ``./run.sh`` call) with its output in `log`; its CPU and wall time."""
    log.parent.mkdir(parents=True, exist_ok=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with open(log, "w", encoding="utf-8") as out:
        out.write(shlex.join(command) + "\n")
        out.flush()
        status = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if status.returncode != 0:
        raise StageFailed(f"exit status {status.returncode}: see {log}")
    return Cost(cpu, wall)


def measure_positions(
    model_dir: Path, data_dir: Path, decode_config: Path, limit: int
) -> Dict[str, float]:
    """LLM positions per second of speech a trained model feeds, on `limit` utterances."""
    decode = yaml.safe_load(decode_config.read_text()) or {}
    search = {name: decode[name] for name in DECODING_OPTIONS if name in decode}
    model = load_model(model_dir, INFERENCE_MODEL)
    utterances = read_utterances(data_dir, model.llm, limit)
    return positions_per_second(model, utterances, search, decode.get("batch_size", 8))


@dataclass
class Sweep:
    """The sweep's plan and record; `run` does what the record does not hold yet.

    `runner` and `positions` run a recipe stage and measure positions (replaceable, e.g. to
    test the plan without training).
    """

    world_name: str
    fractions: Sequence[float]
    models: Sequence[str]
    sweep_tag: str = "sweep"
    budget: str = "epochs"
    run_args: Sequence[str] = ()
    configs: Dict[str, Tuple[str, str]] = field(default_factory=dict)
    decode_config: Optional[str] = None
    positions_utterances: int = 100
    fs: int = 16000
    dumpdir: Path = Path("dump/raw")
    runner: Callable[[List[str], Path], Cost] = run_stage
    positions: Callable[[Path, Path, Path, int], Dict[str, float]] = measure_positions

    def __post_init__(self) -> None:
        self.world = WORLDS[self.world_name]
        self.configs = {**self.world.configs, **self.configs}
        self.decode_config = self.decode_config or self.world.decode_config
        self.dir = Path("exp") / self.sweep_tag
        self.record_path = self.dir / "sweep.json"
        self.record = (
            json.loads(self.record_path.read_text())
            if self.record_path.is_file()
            else {}
        )
        for key, value in (("world", self.world_name), ("budget", self.budget)):
            if self.record.setdefault(key, value) != value:
                raise InputError(
                    f"{self.record_path} holds a sweep of {key} {self.record[key]}, not "
                    f"{value}: pass another --sweep_tag"
                )
        self.record.setdefault("setup", {})
        self.record.setdefault("points", {})

    # -- the plan ----------------------------------------------------------------------------
    def train_set(self, fraction: float) -> str:
        base = self.world.train_set
        return base if fraction == 1 else f"{base}_{percent_label(fraction)}"

    def instruct_utts(self, fraction: float) -> int:
        return round(self.world.instruct_utts * fraction)

    def instruct_set(self, fraction: float) -> str:
        n = self.instruct_utts(fraction)
        return self.train_set(fraction) + (f"_sub{n}" if n else "")

    def tags(self, model: str, fraction: float) -> Tuple[str, str]:
        point = f"{self.sweep_tag}/{model}_{percent_label(fraction)}"
        return f"{point}_pretrain", point

    def command(self, model: str, fraction: float, first: int, last: int) -> List[str]:
        """The ``./run.sh`` call of stages `first`..`last` of one point."""
        label = percent_label(fraction)
        pretrain_tag, instruct_tag = self.tags(model, fraction)
        configs = [
            budget_config(
                Path(source),
                fraction,
                self.budget,
                self.dir / "conf" / f"{model}_{label}_{stage}.yaml",
            )
            for stage, source in zip(("pretrain", "instruct"), self.configs[model])
        ]
        command = ["./run.sh", "--world", self.world_name]
        command += ["--train_set", self.train_set(fraction)]
        command += ["--stats_dir", str(self.dir / f"stats_{label}")]
        command += ["--instruct_max_utts", str(self.instruct_utts(fraction))]
        command += ["--pretrain_config", str(configs[0])]
        command += ["--instruct_config", str(configs[1])]
        command += ["--pretrain_tag", pretrain_tag, "--instruct_tag", instruct_tag]
        command += ["--inference_config", self.decode_config]
        command += ["--inference_tag", DECODE_TAG]
        # The test set's Whisper cascade does not depend on the model: once is enough.
        command += ["--cascade_asr", ""]
        if self.world.encoder_cache_tag is not None:
            command += ["--encoder_cache_tag", self.world.encoder_cache_tag]
        command += [*self.run_args, "--stage", str(first), "--stop_stage", str(last)]
        return command

    def decode_dir(self, model: str, fraction: float) -> Path:
        instruct_tag = self.tags(model, fraction)[1]
        return Path("exp") / instruct_tag / DECODE_TAG / self.world.test_set

    # -- running it --------------------------------------------------------------------------
    def run(self) -> Dict:
        """Every point in turn (fractions from the smallest), skipping what is recorded."""
        if "world_data" not in self.record["setup"]:
            logging.info(f"the {self.world_name} world's data (run.sh stages 1-3)")
            cost = self.runner(
                ["./run.sh", "--world", self.world_name, *self.run_args]
                + ["--stop_stage", "3"],
                self.dir / "logs" / "world_data.log",
            )
            self.record["setup"]["world_data"] = cost.__dict__
            self.save()
        for fraction in sorted(self.fractions):
            if fraction != 1:
                make_subset(
                    self.dumpdir,
                    self.world.train_set,
                    self.train_set(fraction),
                    fraction,
                    self.world.encoder_cache_tag,
                )
            for model in self.models:
                self.run_point(model, fraction)
        return self.record

    def run_point(self, model: str, fraction: float) -> None:
        name = f"{model}_{percent_label(fraction)}"
        point = self.record["points"].setdefault(
            name, dict(model=model, fraction=fraction, stages={})
        )
        if "scores" in point:
            logging.info(f"{name}: complete; skipped")
            return
        # Stages 3 and 5 are shared by the fraction's points: the first one pays for them.
        for first, last in ((3, 3), (4, 4), (5, 5), (6, 6), (7, 8)):
            stage = f"{first}" if first == last else f"{first}-{last}"
            if stage in point["stages"]:
                continue
            logging.info(f"{name}: stage {stage}")
            log = self.dir / "logs" / f"{name}.stage{stage}.log"
            try:
                cost = self.runner(self.command(model, fraction, first, last), log)
            except StageFailed as error:
                raise StageFailed(f"{name}, stage {stage}: {error}") from error
            point["stages"][stage] = cost.__dict__
            self.save()
        self.finish_point(point, model, fraction)

    def finish_point(self, point: Dict, model: str, fraction: float) -> None:
        """Sizes, positions per second and scores of a point whose stages all ran."""
        decode = self.decode_dir(model, fraction)
        start = time.process_time()
        point["positions"] = self.positions(
            decode.parent.parent,
            self.dumpdir / self.world.test_set,
            Path(self.decode_config),
            self.positions_utterances,
        )
        point["positions_cpu_s"] = time.process_time() - start
        for stage, name in (("stage1", self.train_set), ("stage2", self.instruct_set)):
            data = self.dumpdir / name(fraction)
            point[f"{stage}_utterances"] = len(read_kaldi_map(data / "text_int"))
            point[f"{stage}_hours"] = speech_hours(data, self.fs)
        point["scores"] = json.loads((decode / "scores.json").read_text())
        self.save()

    def save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.record_path, json.dumps(self.record, indent=2) + "\n")
