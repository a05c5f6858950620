"""Talk to a trained model in a web browser: microphone, audio files or typed text.

    cd egs2/alignchat && espnet-alignchat demo           # the model ./run.sh trains
    espnet-alignchat demo --model alignchat.zip --llm meta-llama/Llama-3.1-8B-Instruct \\
        --output_mode continuous --port 7860

serves the page on http://127.0.0.1:7860 (``--host 0.0.0.0`` to reach it from elsewhere)
until interrupted. The default model is the real track's, decoded with ``canonical`` as
``conf/decode_real.yaml`` decodes it. Needs Gradio: ``pip install -e ".[demo]"``.
"""

import argparse

from espnet_alignchat.cli import (
    add_generation_arguments,
    add_model_arguments,
    generation_options,
    load_chat,
)
from espnet_alignchat.errors import InputError

DEFAULT_MODEL = "exp/train_instruct_real"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser, default_model=DEFAULT_MODEL)
    add_generation_arguments(parser)
    group = parser.add_argument_group("the page")
    group.add_argument("--host", default="127.0.0.1", help="the address to serve on")
    group.add_argument(
        "--port", type=int, default=None, help="default: 7860, or the next free one"
    )
    group.add_argument(
        "--max_seconds",
        type=float,
        default=30.0,
        help="longer speech gets a message instead of an answer (Whisper hears 30 s)",
    )
    group.add_argument("--title", default="AlignChat", help="the page's heading")


def run(args: argparse.Namespace) -> int:
    try:
        from espnet_alignchat.demo import build_demo, launch
    except ImportError as error:
        raise InputError(
            f'the demo needs Gradio ({error}): pip install -e ".[demo]"'
        ) from error
    chat = load_chat(args, system_prompt=args.system_prompt)
    chat.require_transcripts("the demo (it shows what the speech tokenizer heard)")
    chat.llm.model  # load the LLM now, not in the middle of the first answer
    page = build_demo(chat, args.title, args.max_seconds, **generation_options(args))
    launch(page, args.host, args.port)
    return 0
