"""Talk to a trained model: one-shot answers to audio files, or an interactive session.

    espnet-alignchat chat --model exp/train_instruct --wav question.wav --show_transcript true
    espnet-alignchat chat --model alignchat.zip --llm meta-llama/Llama-3.1-8B-Instruct

With ``--wav`` each file is answered on its own (prefixed by its name when there are several).
Without it the session is interactive and multi-turn: each line is the path of an audio file
(a speech turn) or typed text (a text turn); ``/reset`` starts a new conversation, ``/quit`` or
end of input ends it. Answers are printed token by token as the LLM writes them. Earlier speech
turns stay speech for the LLM (``--history_as_text true``: their transcripts instead).
"""

import argparse
import sys
from pathlib import Path
from typing import Any, Dict, List, TextIO

from espnet2.utils.types import str2bool, str_or_none

from espnet_alignchat.cli import add_generation_arguments, generation_options
from espnet_alignchat.errors import InputError
from espnet_alignchat.inference import Message, Speech2Chat
from espnet_alignchat.model import OUTPUT_MODES

AUDIO_SUFFIXES = {".wav", ".flac", ".mp3", ".ogg", ".opus", ".sph", ".aiff", ".au"}
PROMPT = "you> "


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Where the model and its LLM are, and how the speech tokenizer decodes."""
    parser.add_argument(
        "--model", required=True, help="a model dir or a file written by pack"
    )
    parser.add_argument(
        "--model_file", default=None, help="checkpoint of a model dir (default: best)"
    )
    parser.add_argument(
        "--llm", type=str_or_none, default=None, help="the model's LLM, if elsewhere"
    )
    parser.add_argument("--device", default=None, help="default: cuda if there is one")
    parser.add_argument("--beam_size", type=int, default=1)
    parser.add_argument(
        "--output_mode",
        choices=OUTPUT_MODES,
        default="continuous",
        help="what the LLM reads: the decoder's vectors or E[decoded ids]",
    )


def load_chat(args: argparse.Namespace) -> Speech2Chat:
    return Speech2Chat.from_pretrained(
        args.model,
        llm=args.llm,
        device=args.device,
        model_file=args.model_file,
        beam_size=args.beam_size,
        output_mode=args.output_mode,
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--wav", nargs="+", default=None, help="answer these and stop")
    parser.add_argument(
        "--show_transcript",
        type=str2bool,
        default=False,
        help="print what the speech tokenizer heard",
    )
    parser.add_argument(
        "--history_as_text",
        type=str2bool,
        default=False,
        help="give earlier speech turns to the LLM as their transcripts",
    )
    add_generation_arguments(parser)
    parser.add_argument(
        "--system", dest="system_prompt", help="the same as --system_prompt"
    )


class Session:
    """A conversation printed to `out`: user turns in, streamed answers out."""

    def __init__(self, chat: Speech2Chat, args: argparse.Namespace, out: TextIO):
        self.chat = chat
        self.out = out
        self.show_transcript = args.show_transcript
        self.options: Dict[str, Any] = dict(
            system=args.system_prompt,
            history_as_text=args.history_as_text,
            **generation_options(args),
        )
        self.history: List[Message] = []

    def speech_turn(self, path: str) -> Message:
        """The user message of an audio file, decoded once (`InputError` if unreadable)."""
        if not Path(path).is_file():
            raise InputError(f"{path}: no such file")
        hypothesis = self.chat.hypotheses(path)[0]
        if self.show_transcript:
            print(f"heard: {self.chat.llm.decode(hypothesis.token_ids)}", file=self.out)
        return {"role": "user", "speech": hypothesis}

    def answer(self, message: Message, prefix: str = "") -> None:
        """Stream the answer to `message` after the history; keep both in the history."""
        self.out.write(prefix)
        pieces = []
        conversation = [*self.history, message]
        for piece in self.chat.stream_reply(conversation, **self.options):
            self.out.write(piece)
            self.out.flush()
            pieces.append(piece)
        self.out.write("\n")
        answer = {"role": "assistant", "content": "".join(pieces)}
        self.history += [message, answer]


def user_turn(session: Session, line: str) -> Message:
    """A speech turn if the line names an audio file, else a text turn."""
    path = line.strip("'\"")  # as pasted or dropped into a terminal
    if Path(path).is_file() or Path(path).suffix.lower() in AUDIO_SUFFIXES:
        return session.speech_turn(path)
    return {"role": "user", "content": line}


def one_shot(session: Session, wavs: List[str]) -> int:
    failed = 0
    for wav in wavs:
        session.history = []  # each file is a question of its own
        try:
            message = session.speech_turn(wav)
        except InputError as error:
            print(f"espnet-alignchat chat: error: {error}", file=sys.stderr)
            failed += 1
            continue
        session.answer(message, prefix=f"{wav}: " if len(wavs) > 1 else "")
    return 1 if failed else 0


def interactive(session: Session, stdin: TextIO) -> int:
    tty = stdin.isatty()
    if tty:
        print(
            "Type text, or the path of an audio file; /reset starts over, /quit ends.",
            file=session.out,
        )
    while True:
        if tty:
            session.out.write(PROMPT)
            session.out.flush()
        line = stdin.readline()
        if not line or line.strip() in ("/quit", "/exit"):
            return 0
        line = line.strip()
        if line == "/reset":
            session.history = []
        elif line:
            try:
                message = user_turn(session, line)
            except InputError as error:  # one bad turn does not end the session
                print(f"error: {error}", file=sys.stderr)
                continue
            session.answer(message)


def run(args: argparse.Namespace) -> int:
    chat = load_chat(args)
    chat.llm.model  # load the LLM now, not in the middle of the first answer
    session = Session(chat, args, sys.stdout)
    if args.wav:
        return one_shot(session, args.wav)
    return interactive(session, sys.stdin)
