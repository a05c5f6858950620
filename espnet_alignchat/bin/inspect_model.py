"""Show how the speech tokenizer lines an utterance up with LLM tokens.

    espnet-alignchat inspect --model exp/train_instruct --wav question.wav \\
        --text "what is two plus three" --heatmap attention.png

prints, per decoder step (LLM token), the decoded token and the cosine of the decoder's vector
to its embedding; with ``--text`` also the reference token, the cosine to its embedding and
its rank among the token scores (see ``espnet_alignchat.alignment``). ``--heatmap`` saves the
decoder's cross-attention (steps × encoder frames, one panel per layer).
"""

import argparse
from pathlib import Path

from espnet2.utils.types import str_or_none

from espnet_alignchat.alignment import format_report, inspect_alignment, save_heatmap
from espnet_alignchat.cli import add_model_arguments, load_chat


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--wav", required=True, help="the utterance")
    parser.add_argument(
        "--text", type=str_or_none, default=None, help="its reference transcript"
    )
    parser.add_argument(
        "--heatmap",
        type=Path,
        default=None,
        help="save the cross-attention here (.png)",
    )


def run(args: argparse.Namespace) -> int:
    chat = load_chat(args)
    chat.require_transcripts("inspect (it lines speech up with the tokens it heard)")
    report = inspect_alignment(chat, args.wav, args.text)
    print(format_report(report))
    if args.heatmap is not None:
        save_heatmap(report, args.heatmap)
        print(f"cross-attention: {args.heatmap}")
    return 0
