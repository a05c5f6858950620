"""What the entry points share: one-line errors for bad input, the model and its options."""

import argparse
import logging
import sys
from contextlib import contextmanager
from typing import Any, Dict, Iterator, Optional

from espnet2.utils.types import str2bool, str_or_none

from espnet_alignchat.convert.staging import ConversionError
from espnet_alignchat.encoders import ConfigError
from espnet_alignchat.errors import InputError
from espnet_alignchat.inference import Speech2Chat
from espnet_alignchat.llm import LLMMismatchError, PromptError
from espnet_alignchat.model import OUTPUT_MODES

USER_ERRORS = (
    ConfigError,
    ConversionError,
    InputError,
    LLMMismatchError,
    PromptError,
    # Missing files, permissions, a full disk: the message names the path and the reason.
    OSError,
)


def one_line(error: BaseException) -> str:
    """The error's own message, also when a DataLoader worker wrapped it in a traceback."""
    last = str(error).strip().splitlines()[-1] if str(error).strip() else repr(error)
    marker = f"{type(error).__name__}: "
    return last.split(marker, 1)[1] if marker in last else last


def setup_logging(level: str) -> None:
    """The entry points' log format, ESPnet's (``time (module) LEVEL: message``)."""
    logging.basicConfig(
        level=level, format="%(asctime)s (%(module)s) %(levelname)s: %(message)s"
    )


@contextmanager
def exit_on_user_error(prog: str) -> Iterator[None]:
    """Turn errors caused by the user's data, paths or LLM into ``prog: error: …`` + exit 1."""
    try:
        yield
    except USER_ERRORS as error:
        print(f"{prog}: error: {one_line(error)}", file=sys.stderr)
        sys.exit(1)


def add_decoding_arguments(parser: argparse.ArgumentParser) -> None:
    """The speech tokenizer's decoding options, the same wherever a data set is decoded."""
    group = parser.add_argument_group("speech tokenizer decoding")
    group.add_argument("--beam_size", type=int, default=1)
    group.add_argument(
        "--maxlenratio", type=float, default=1.0, help="max tokens per encoder frame"
    )
    group.add_argument("--max_tokens", type=int, default=512)
    group.add_argument("--length_bonus", type=float, default=0.0)
    group.add_argument(
        "--output_mode",
        choices=OUTPUT_MODES,
        default="canonical",
        help="what the LLM reads: E[the decoded text's ids as the LLM's tokenizer splits it] "
        "(canonical: the default, what both worlds decode with), E[decoded ids] (snap), the "
        "decoder's vectors (continuous), or E weighted by the decoder's token probabilities "
        "(expected)",
    )
    group.add_argument(
        "--expected_temperature",
        type=float,
        default=1.0,
        help="softmax temperature of output_mode expected: below 1 moves each vector "
        "towards the most likely token's embedding",
    )


# The options of `add_decoding_arguments`: the speech tokenizer's search, as `Speech2Chat` and
# `AlignChatModel.tokenize` take them (and as a decoding config names them).
DECODING_OPTIONS = (
    "beam_size",
    "maxlenratio",
    "max_tokens",
    "length_bonus",
    "output_mode",
    "expected_temperature",
)


def decoding_options(args: argparse.Namespace) -> Dict[str, Any]:
    """The options of `add_decoding_arguments`, as `Speech2Chat` takes them."""
    return {name: getattr(args, name) for name in DECODING_OPTIONS}


def add_generation_arguments(parser: argparse.ArgumentParser) -> None:
    """The LLM's decoding options, the same wherever the LLM answers."""
    group = parser.add_argument_group("LLM generation")
    group.add_argument("--system_prompt", type=str_or_none, default=None)
    group.add_argument("--max_new_tokens", type=int, default=256)
    group.add_argument("--do_sample", type=str2bool, default=False)
    group.add_argument("--temperature", type=float, default=1.0)
    group.add_argument("--top_p", type=float, default=1.0)
    group.add_argument("--top_k", type=int, default=0)
    group.add_argument("--repetition_penalty", type=float, default=1.0)


def generation_options(args: argparse.Namespace) -> Dict[str, Any]:
    """The options of `add_generation_arguments`, as `FrozenLLM.generate` takes them."""
    names = ("max_new_tokens", "do_sample", "temperature", "top_p", "top_k")
    return {name: getattr(args, name) for name in (*names, "repetition_penalty")}


def add_model_arguments(
    parser: argparse.ArgumentParser, default_model: Optional[str] = None
) -> None:
    """The user commands' model (``--model``, a dir or a packed file; required unless
    `default_model`), its LLM, the device and the speech tokenizer's decoding."""
    parser.add_argument(
        "--model",
        required=default_model is None,
        default=default_model,
        help="a model dir or a file written by pack",
    )
    parser.add_argument(
        "--model_file", default=None, help="checkpoint of a model dir (default: best)"
    )
    parser.add_argument(
        "--llm", type=str_or_none, default=None, help="the model's LLM, if elsewhere"
    )
    parser.add_argument("--device", default=None, help="default: cuda if there is one")
    add_decoding_arguments(parser)


def load_chat(args: argparse.Namespace, **options: Any) -> Speech2Chat:
    """The model of `add_model_arguments`; `options` go to `Speech2Chat`."""
    return Speech2Chat.from_pretrained(
        args.model,
        llm=args.llm,
        device=args.device,
        model_file=args.model_file,
        **decoding_options(args),
        **options,
    )
