"""Data-efficiency sweep: AlignChat against the frame-rate adapter on fractions of the data.

    cd egs2/alignchat
    python -m espnet_alignchat.bin.data_sweep                    # the real track, 0.1 0.3 1.0
    python -m espnet_alignchat.bin.data_sweep --world mini --fractions 0.1 0.3 1.0

runs the recipe's stages (``./run.sh``: first stages 1-3 of the world, then stages 3-8 for
every fraction and model type, see `espnet_alignchat.sweep`) and writes, under
``exp/<sweep_tag>/``: ``sweep.json`` (every stage's CPU and wall time, the sizes and hours of
speech trained on, LLM positions per second of test speech, stage 8's scores), ``sweep.md``
(a table and the targets' checks) and ``sweep.png`` (speech/text agreement against hours of
training speech, one line per model type). Each stage's log is under ``logs/``. A rerun skips
the points and stages the record holds; ``--run_args`` passes options to every ``./run.sh``
call (e.g. ``"--nj 2 --inference_nj 2"``).
"""

import argparse
import logging
import shlex
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from espnet_alignchat.atomic import atomic_write_text
from espnet_alignchat.cli import exit_on_user_error, setup_logging
from espnet_alignchat.errors import InputError
from espnet_alignchat.sweep import BUDGETS, MODEL_TYPES, WORLDS, StageFailed, Sweep
from espnet_alignchat.sweep_report import complete_points, plot, report

PROG = "data_sweep"


def fraction(value: str) -> float:
    number = float(value)
    if not 0 < number <= 1:
        raise argparse.ArgumentTypeError(f"a fraction is in (0, 1]: {value}")
    return number


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--world", choices=sorted(WORLDS), default="real")
    parser.add_argument(
        "--fractions", type=fraction, nargs="+", default=[0.1, 0.3, 1.0]
    )
    parser.add_argument(
        "--models", nargs="+", choices=MODEL_TYPES, default=list(MODEL_TYPES)
    )
    parser.add_argument(
        "--sweep_tag", default="sweep", help="experiments and outputs in exp/<tag>"
    )
    parser.add_argument(
        "--budget",
        choices=BUDGETS,
        default="epochs",
        help="epochs: the configs' epochs over less data (schedule scaled); steps: as "
        "many steps as on all of it",
    )
    parser.add_argument(
        "--run_args", default="", help="options of every ./run.sh call, one string"
    )
    for model in MODEL_TYPES:
        parser.add_argument(
            f"--{model}_configs",
            nargs=2,
            default=None,
            metavar=("STAGE1", "STAGE2"),
            help="its training configs (default: the world's)",
        )
    parser.add_argument(
        "--decode_config", default=None, help="stage 7's (default: the world's)"
    )
    parser.add_argument(
        "--positions_utterances",
        type=int,
        default=100,
        help="test utterances decoded to count LLM positions per second",
    )
    parser.add_argument("--log_level", default="INFO")
    return parser


def write_report(record: Dict, out_dir: Path) -> str:
    text = report(record)
    atomic_write_text(out_dir / "sweep.md", text)
    points = complete_points(record)
    if points:
        plot(points, out_dir / "sweep.png")
    return text


def main(cmd: Optional[List[str]] = None) -> None:
    args = get_parser().parse_args(cmd)
    setup_logging(args.log_level)
    configs: Dict[str, Tuple[str, str]] = {
        model: tuple(getattr(args, f"{model}_configs"))
        for model in MODEL_TYPES
        if getattr(args, f"{model}_configs")
    }
    with exit_on_user_error(PROG):
        if not Path("run.sh").is_file():
            raise InputError("run it from the recipe dir (egs2/alignchat): no ./run.sh")
        sweep = Sweep(
            args.world,
            args.fractions,
            args.models,
            sweep_tag=args.sweep_tag,
            budget=args.budget,
            run_args=shlex.split(args.run_args),
            configs=configs,
            decode_config=args.decode_config,
            positions_utterances=args.positions_utterances,
        )
        try:
            sweep.run()
        except StageFailed as error:
            print(f"{PROG}: error: {error}", file=sys.stderr)
            sys.exit(1)
        finally:
            text = write_report(sweep.record, sweep.dir)
    print(text, end="")
    logging.info(f"{sweep.dir}/sweep.md, sweep.png and sweep.json written")


if __name__ == "__main__":
    main()
