"""A conversation with a trained model as a person has it: turn by turn, spoken or typed.

    session = ChatSession(Speech2Chat.from_pretrained("exp/train_instruct"), max_seconds=30)
    message = session.hear("question.wav")     # decoded once; refused if silent or too long
    print(session.transcript(message))         # what the speech tokenizer heard
    for piece in session.answer(message):      # streamed; the turn and the answer are kept
        print(piece, end="", flush=True)
    for piece in session.answer(session.typed("and times two?")):
        print(piece, end="", flush=True)

``espnet-alignchat chat`` and ``espnet-alignchat demo`` hold their conversations in it.
"""

from pathlib import Path
from typing import Any, Iterator, List, Optional

import numpy as np

from espnet_alignchat.errors import InputError
from espnet_alignchat.inference import Message, Speech, Speech2Chat, load_speech

# Quieter than this everywhere (-60 dBFS) is a silent recording, not a quiet voice.
SILENCE_PEAK = 1e-3


def _name(speech: Speech, name: str) -> str:
    """What an error calls the speech: its file, else `name`."""
    return str(speech) if isinstance(speech, (str, Path)) else name


class ChatSession:
    """One conversation with `chat`: its history, and answers streamed turn by turn.

    Args:
        chat: the model.
        max_seconds: longer speech is refused with an `InputError` (None: any length).
        options: options of every answer (`Speech2Chat.stream`: ``system``,
            ``history_as_text``, ``max_new_tokens``, ...).
    """

    def __init__(
        self, chat: Speech2Chat, max_seconds: Optional[float] = None, **options: Any
    ):
        self.chat = chat
        self.max_seconds = max_seconds
        self.options = options
        self.history: List[Message] = []

    def listen(self, speech: Speech, name: str = "speech") -> np.ndarray:
        """The samples of one utterance at the model's rate; `InputError` if they cannot be
        read, are silent or are longer than `max_seconds`."""
        name = _name(speech, name)
        waveform = load_speech(speech, self.chat.sample_rate, name)
        seconds = len(waveform) / self.chat.sample_rate
        if self.max_seconds is not None and seconds > self.max_seconds:
            raise InputError(
                f"{name}: {seconds:.1f} s of audio; questions of at most "
                f"{self.max_seconds:g} s are taken"
            )
        if np.abs(waveform).max() < SILENCE_PEAK:
            raise InputError(f"{name}: the audio is silent")
        return waveform

    def hear(self, speech: Speech, name: str = "speech") -> Message:
        """A user turn of speech, decoded now (its `Hypothesis` is what later turns reuse);
        `InputError` as `listen`, or if the speech tokenizer heard no words in it (a model
        that writes no transcript gives vectors alone)."""
        hypothesis = self.chat.tokenize(self.listen(speech, name))
        if self.chat.model.transcribes and not hypothesis.token_ids:
            raise InputError(
                f"{_name(speech, name)}: the speech tokenizer heard no words in it"
            )
        return {"role": "user", "speech": hypothesis}

    @staticmethod
    def typed(text: str) -> Message:
        """A user turn of typed text."""
        return {"role": "user", "content": text}

    def transcript(self, message: Message) -> str:
        """What the speech tokenizer heard in a speech turn; a typed turn's text."""
        if "speech" in message:
            self.chat.require_transcripts("a speech turn's transcript")
            return self.chat.llm.decode(message["speech"].token_ids)
        return message["content"]

    def answer(self, message: Message) -> Iterator[str]:
        """The answer to `message` after the history, piece by piece; once it is complete,
        the history holds both."""
        pieces = []
        for piece in self.chat.stream([*self.history, message], **self.options):
            pieces.append(piece)
            yield piece
        self.history += [message, {"role": "assistant", "content": "".join(pieces)}]

    def reset(self) -> None:
        self.history = []
