"""Talk to a trained model: one-shot answers to audio files, or an interactive session.

    espnet-alignchat chat --model exp/train_instruct --wav question.wav --show_transcript true
    espnet-alignchat chat --model alignchat.zip --llm meta-llama/Llama-3.1-8B-Instruct

With ``--wav`` each file is answered on its own (prefixed by its name when there are several);
a file that cannot be answered (unreadable, silent, NaN samples, no words heard) gets one error
line naming it, the others are answered, and the exit status is 1 with a count at the end.
Without it the session is interactive and multi-turn: each line is the path of an audio file
(a speech turn) or typed text (a text turn); ``/reset`` starts a new conversation, ``/quit`` or
end of input ends it. Answers are printed token by token as the LLM writes them. Earlier speech
turns stay speech for the LLM (``--history_as_text true``: their transcripts instead).
"""

import argparse
import sys
from pathlib import Path
from typing import List, TextIO

from espnet2.utils.types import str2bool

from espnet_alignchat.cli import (
    add_generation_arguments,
    add_model_arguments,
    generation_options,
    load_chat,
)
from espnet_alignchat.errors import InputError
from espnet_alignchat.inference import Message
from espnet_alignchat.session import ChatSession

AUDIO_SUFFIXES = {".wav", ".flac", ".mp3", ".ogg", ".opus", ".sph", ".aiff", ".au"}
PROMPT = "you> "


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


class Terminal:
    """A `ChatSession` printed to `out`: user turns in, streamed answers out."""

    def __init__(self, conversation: ChatSession, show_transcript: bool, out: TextIO):
        self.conversation = conversation
        self.show_transcript = show_transcript
        self.out = out

    def speech_turn(self, path: str) -> Message:
        """The user message of an audio file, decoded once (`InputError` if unusable)."""
        if not Path(path).is_file():
            raise InputError(f"{path}: no such file")
        message = self.conversation.hear(path)
        if self.show_transcript:
            print(f"heard: {self.conversation.transcript(message)}", file=self.out)
        return message

    def answer(self, message: Message, prefix: str = "") -> None:
        """Stream the answer to `message`; the conversation keeps both."""
        self.out.write(prefix)
        for piece in self.conversation.answer(message):
            self.out.write(piece)
            self.out.flush()
        self.out.write("\n")


def user_turn(terminal: Terminal, line: str) -> Message:
    """A speech turn if the line names an audio file, else a text turn."""
    path = line.strip("'\"")  # as pasted or dropped into a terminal
    if Path(path).is_file() or Path(path).suffix.lower() in AUDIO_SUFFIXES:
        return terminal.speech_turn(path)
    return ChatSession.typed(line)


def one_shot(terminal: Terminal, wavs: List[str]) -> int:
    failed = 0
    for wav in wavs:
        terminal.conversation.reset()  # each file is a question of its own
        try:
            message = terminal.speech_turn(wav)
        except InputError as error:
            print(f"espnet-alignchat chat: error: {error}", file=sys.stderr)
            failed += 1
            continue
        terminal.answer(message, prefix=f"{wav}: " if len(wavs) > 1 else "")
    if failed:
        print(
            f"espnet-alignchat chat: {failed} of {len(wavs)} files could not be answered",
            file=sys.stderr,
        )
    return 1 if failed else 0


def interactive(terminal: Terminal, stdin: TextIO) -> int:
    tty = stdin.isatty()
    if tty:
        print(
            "Type text, or the path of an audio file; /reset starts over, /quit ends.",
            file=terminal.out,
        )
    while True:
        if tty:
            terminal.out.write(PROMPT)
            terminal.out.flush()
        line = stdin.readline()
        if not line or line.strip() in ("/quit", "/exit"):
            return 0
        line = line.strip()
        if line == "/reset":
            terminal.conversation.reset()
        elif line:
            try:
                message = user_turn(terminal, line)
            except InputError as error:  # one bad turn does not end the session
                print(f"error: {error}", file=sys.stderr)
                continue
            terminal.answer(message)


def run(args: argparse.Namespace) -> int:
    chat = load_chat(args)
    for option in ("show_transcript", "history_as_text"):
        if getattr(args, option):
            chat.require_transcripts(f"--{option}")
    chat.llm.model  # load the LLM now, not in the middle of the first answer
    options = dict(system=args.system_prompt, history_as_text=args.history_as_text)
    conversation = ChatSession(chat, **options, **generation_options(args))
    terminal = Terminal(conversation, args.show_transcript, sys.stdout)
    if args.wav:
        return one_shot(terminal, args.wav)
    return interactive(terminal, sys.stdin)
