"""`ChatSession`: a conversation turn by turn, and the speech a person must not be sent."""

import numpy as np
import pytest
import soundfile

from espnet_alignchat.errors import InputError
from espnet_alignchat.inference import Speech2Chat
from espnet_alignchat.search import Hypothesis
from espnet_alignchat.session import ChatSession

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def chat(tiny_recipe) -> Speech2Chat:
    return Speech2Chat.from_pretrained(
        tiny_recipe / "exp/tiny", device="cpu", generation=dict(max_new_tokens=5)
    )


@pytest.fixture(scope="module")
def wav(tiny_recipe) -> str:
    return str(tiny_recipe / "data/wav/spk1_utt0.wav")


def test_the_history_keeps_each_turn_and_its_answer(chat, wav):
    session = ChatSession(chat, max_seconds=30)
    spoken = session.hear(wav)
    assert session.transcript(spoken) == chat.transcribe(wav)
    first = "".join(session.answer(spoken))
    assert first == chat(wav)
    typed = session.typed("what is one plus one")
    second = "".join(session.answer(typed))
    assert session.history == [
        spoken,
        {"role": "assistant", "content": first},
        typed,
        {"role": "assistant", "content": second},
    ]
    assert second == chat(session.history[:3])
    session.reset()
    assert session.history == []


def test_silent_long_and_unheard_speech_is_refused(chat, wav, tmp_path, monkeypatch):
    session = ChatSession(chat, max_seconds=2)
    silent = tmp_path / "silent.wav"
    soundfile.write(silent, np.zeros(16000, dtype=np.float32), 16000)
    with pytest.raises(InputError, match=f"{silent}: the audio is silent"):
        session.hear(str(silent))
    long = tmp_path / "long.wav"
    samples, rate = soundfile.read(wav, dtype="float32")
    soundfile.write(long, np.tile(samples, 3), rate)
    with pytest.raises(
        InputError, match=r"long.wav: \d+\.\d s of audio; .* at most 2 s"
    ):
        session.hear(str(long))
    monkeypatch.setattr(
        chat, "tokenize", lambda speech: Hypothesis([], samples[:0], 0.0, True)
    )
    with pytest.raises(InputError, match="recording: the speech tokenizer heard no"):
        session.hear(samples, name="recording")
    assert session.history == []
