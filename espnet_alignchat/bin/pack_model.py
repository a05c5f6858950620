"""Pack a trained model into one .zip to share: config, checkpoint, the files it needs, a card.

    espnet-alignchat pack --model_dir exp/train_instruct --output alignchat.zip \\
        [--model_file valid.acc_response.ave.pth] [--llm meta-llama/Llama-3.1-8B-Instruct]

The LLM is referenced (hub id or path) with its fingerprint, never copied: ``--llm`` stores
another reference to the same LLM, e.g. the hub id of a local copy. The model card
(``README.md`` in the zip) takes the scores of the model dir's RESULTS.md (or ``--results``)
or of its ``scores.json`` files.
"""

import argparse
from pathlib import Path

from espnet2.utils.types import str_or_none

from espnet_alignchat.packing import pack_model


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model_dir", type=Path, required=True)
    parser.add_argument("--output", type=Path, required=True, help="a .zip file")
    parser.add_argument(
        "--model_file", default=None, help="checkpoint in model_dir (default: best)"
    )
    parser.add_argument(
        "--llm", type=str_or_none, default=None, help="store this LLM reference"
    )
    parser.add_argument(
        "--results", type=Path, default=None, help="a RESULTS.md for the model card"
    )


def run(args: argparse.Namespace) -> int:
    names = pack_model(
        args.model_dir, args.output, args.model_file, args.llm, args.results
    )
    size = args.output.stat().st_size / 2**20
    print(f"{args.output} ({size:.1f} MiB): {', '.join(names)}")
    return 0
