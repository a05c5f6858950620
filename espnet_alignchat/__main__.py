"""``espnet-alignchat``: use a trained AlignChat model (``python -m espnet_alignchat``).

    espnet-alignchat chat --model exp/train_instruct --wav question.wav
    espnet-alignchat chat --model alignchat.zip            # an interactive session
    espnet-alignchat pack --model_dir exp/train_instruct --output alignchat.zip
    espnet-alignchat inspect --model alignchat.zip --wav q.wav --text "what is two plus three"
    espnet-alignchat demo --model alignchat.zip            # a web page: speak, upload, type

``espnet-alignchat <command> --help`` lists a command's options.
"""

import argparse
import sys
from typing import List, Optional

import transformers

from espnet_alignchat.bin import chat, demo, inspect_model, pack_model
from espnet_alignchat.cli import exit_on_user_error, setup_logging

COMMANDS = {"chat": chat, "pack": pack_model, "inspect": inspect_model, "demo": demo}


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="espnet-alignchat",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--log_level", default="WARNING")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, module in COMMANDS.items():
        module.add_arguments(
            commands.add_parser(
                name,
                help=module.__doc__.split("\n")[0],
                description=module.__doc__,
                formatter_class=argparse.RawDescriptionHelpFormatter,
            )
        )
    return parser


def main(cmd: Optional[List[str]] = None) -> None:
    args = get_parser().parse_args(cmd)
    setup_logging(args.log_level)
    # The commands' output is the answers: no "Loading weights" bars between them.
    transformers.utils.logging.disable_progress_bar()
    with exit_on_user_error(f"espnet-alignchat {args.command}"):
        status = COMMANDS[args.command].run(args)
    if status:
        sys.exit(status)


if __name__ == "__main__":
    main()
