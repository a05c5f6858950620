"""The demo in a real browser: headless Chromium uploads, records from its fake microphone and
types, and the page must show what `Speech2Chat` answers for the same audio and text."""

import time
from typing import Iterator

import numpy as np
import pytest
import soundfile

from espnet_alignchat.demo_browser import DemoPage, chromium_missing
from espnet_alignchat.inference import Speech2Chat

pytestmark = [
    pytest.mark.skipif(
        chromium_missing() is not None,
        reason=f"the browser test needs {chromium_missing()}",
    ),
    pytest.mark.usefixtures("single_thread"),
]

MAX_NEW_TOKENS = 6  # a random LLM rarely stops by itself
MAX_SECONDS = 3.0


@pytest.fixture(scope="module")
def chat(tiny_recipe) -> Speech2Chat:
    return Speech2Chat.from_pretrained(
        tiny_recipe / "exp/tiny",
        device="cpu",
        generation=dict(max_new_tokens=MAX_NEW_TOKENS),
    )


@pytest.fixture(scope="module")
def question(tiny_recipe) -> str:
    return str(tiny_recipe / "data/wav/spk1_utt0.wav")


@pytest.fixture(scope="module")
def url(chat) -> Iterator[str]:
    from espnet_alignchat.demo import build_demo, serve_in_background

    page = build_demo(chat, max_seconds=MAX_SECONDS)
    yield serve_in_background(page)
    page.close()


@pytest.fixture(scope="module")
def page(url, question) -> Iterator[DemoPage]:
    with DemoPage(url, microphone=question) as page:
        start = time.perf_counter()
        page.open()
        page.load_seconds = time.perf_counter() - start
        yield page


@pytest.fixture
def fresh(page) -> DemoPage:
    page.reset()
    return page


def typed(text: str):
    return {"role": "user", "content": text}


def test_the_page_needs_nothing_from_the_internet(page):
    assert page.outside_requests() == []
    assert page.load_seconds < 30


def test_an_uploaded_question_is_answered_as_speech2chat_answers_it(
    fresh, chat, question
):
    fresh.upload(question)
    fresh.wait_until_answered(1)
    heard = chat.transcribe(question)
    assert fresh.heard() == heard
    assert fresh.questions("speech-chat") == [f"(speech) {heard}"]
    assert fresh.answers("speech-chat") == [chat(question)]
    assert fresh.answers("text-chat") == [chat([typed(heard)])]
    assert fresh.has_alignment()
    # A typed follow-up goes to both conversations, each with its own history.
    fresh.type("what is one plus one")
    fresh.wait_until_answered(2)
    spoken = [
        {"role": "user", "speech": question},
        {"role": "assistant", "content": chat(question)},
        typed("what is one plus one"),
    ]
    as_text = [typed(heard), {"role": "assistant", "content": chat([typed(heard)])}]
    assert fresh.answers("speech-chat")[1] == chat(spoken)
    assert fresh.answers("text-chat")[1] == chat([*as_text, spoken[-1]])


def test_a_microphone_recording_is_answered_as_speech2chat_answers_it(fresh, chat):
    fresh.record(1.0)
    fresh.wait_until_answered(1)
    recording = fresh.audio_file()  # the server's copy of what the browser recorded
    samples, rate = soundfile.read(recording)
    assert 0.5 < len(samples) / rate < 3 and np.abs(samples).max() > 0.05
    assert fresh.questions("speech-chat") == [f"(speech) {chat.transcribe(recording)}"]
    assert fresh.answers("speech-chat") == [chat(str(recording))]


def test_bad_input_gets_a_message_not_a_traceback(fresh, tmp_path, question):
    silent = tmp_path / "silent.wav"
    soundfile.write(silent, np.zeros(16000, dtype=np.float32), 16000)
    samples, rate = soundfile.read(question, dtype="float32")
    long = tmp_path / "long.wav"
    soundfile.write(
        long, np.tile(samples, 1 + int(MAX_SECONDS * rate / len(samples))), rate
    )
    notes = tmp_path / "notes.wav"
    notes.write_text("these are notes, not audio\n")
    expected = {
        silent: "silent.wav: the audio is silent",
        long: f"long.wav: {soundfile.info(long).duration:.1f} s of audio; questions of "
        f"at most {MAX_SECONDS:g} s are taken",
        notes: "notes.wav: cannot read audio",
    }
    for path, text in expected.items():
        fresh.upload(path)
        message = fresh.wait_for_message()
        assert message.startswith(f"Not answered: {text}")
        assert "Traceback" not in message and "/tmp/gradio" not in message
        assert fresh.answers("speech-chat") == []
        fresh.reset()
