"""`Speech2Chat`: speech in any form and rate, batches, conversations, streaming."""

import numpy as np
import pytest
import soundfile
import torch

from espnet_alignchat.datadir import resample
from espnet_alignchat.errors import InputError
from espnet_alignchat.inference import Speech2Chat, load_speech
from espnet_alignchat.llm import LLMMismatchError, PromptError
from espnet_alignchat.search import Hypothesis

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def chat(tiny_recipe) -> Speech2Chat:
    # From the model dir, outside its recipe dir: its relative stats path is found anyway.
    return Speech2Chat.from_pretrained(
        tiny_recipe / "exp/tiny", device="cpu", generation=dict(max_new_tokens=6)
    )


@pytest.fixture(scope="module")
def wavs(tiny_recipe):
    return [
        str(tiny_recipe / f"data/wav/spk{s}_utt{i}.wav") for s, i in ((1, 0), (2, 2))
    ]


def test_speech_as_path_array_tensor_or_dict_at_any_rate(chat, wavs, tmp_path):
    samples, rate = soundfile.read(wavs[0], dtype="float32")
    assert rate == chat.sample_rate
    upsampled = resample(samples, rate, 44100)
    soundfile.write(tmp_path / "44k.flac", upsampled, 44100)
    forms = [
        wavs[0],
        samples,
        torch.from_numpy(samples),
        (samples, rate),
        {"array": resample(samples, rate, 22050), "sampling_rate": 22050},
        str(tmp_path / "44k.flac"),
    ]
    hypotheses = chat.tokenize(forms)
    assert all(h.token_ids == hypotheses[0].token_ids for h in hypotheses)
    assert torch.equal(hypotheses[1].vectors, hypotheses[0].vectors)
    transcript = chat.transcribe(wavs[0])
    assert transcript == chat.llm.decode(hypotheses[0].token_ids)
    assert chat.transcribe(forms) == [transcript] * len(forms)
    narrowband = load_speech((resample(samples, rate, 8000), 8000), rate, "8k")
    assert abs(len(narrowband) - len(samples)) <= 2  # brought to the model's rate
    assert isinstance(chat((resample(samples, rate, 8000), 8000)), str)


def test_a_batch_gives_one_answer_per_utterance_in_order(chat, wavs):
    answers = chat(wavs)
    assert len(answers) == 2 and all(isinstance(a, str) and a for a in answers)
    assert chat(wavs[::-1]) == answers[::-1]
    assert answers == chat(chat.tokenize(wavs))  # speech decoded once, answered later
    assert chat(wavs[0]) == answers[0]
    # Utterances of one length are not padded: batched, each is decoded as alone.
    alone, batched = chat.tokenize(wavs[0]), chat.tokenize([wavs[0]] * 3)
    assert all(h.token_ids == alone.token_ids for h in batched)
    assert all(torch.allclose(h.vectors, alone.vectors, atol=1e-5) for h in batched)


def test_a_conversation_mixes_speech_and_typed_turns(chat, wavs):
    conversation = [
        {"role": "user", "speech": wavs[0]},
        {"role": "assistant", "content": "five"},
        {"role": "user", "content": "what is one plus one"},
        {"role": "assistant", "content": "two"},
        {"role": "user", "speech": wavs[1]},
    ]
    speech, text = (
        chat._prompts([conversation], None, as_text)[0] for as_text in (False, True)
    )
    first, last = chat.tokenize(wavs)  # the speech of a call is decoded as one batch
    assert torch.equal(speech[1], first.vectors)  # speech vectors, or the transcript
    assert text[1] == first.token_ids
    assert torch.equal(speech[-2], last.vectors) and torch.equal(text[-2], last.vectors)
    answer = chat(conversation)
    assert isinstance(answer, str)
    # A batch may mix conversations and speech; each answer is the one given alone.
    assert chat([conversation, wavs[1]]) == [answer, chat(wavs[1])]


def test_typed_words_take_the_place_of_the_same_words_spoken(chat):
    words = "what is two plus three"
    ids = chat.llm.tokenize(words)
    # Speech that the tokenizer heard as exactly these tokens, read as their embeddings.
    heard = Hypothesis(ids, chat.llm.embed(torch.tensor(ids)), 0.0, True)
    typed = [{"role": "user", "content": words}]
    spoken = [{"role": "user", "speech": heard}]
    typed_prompt, spoken_prompt = chat._prompts([typed, spoken], None, False)
    assert typed_prompt[1] == ids and spoken_prompt[1] is heard.vectors
    assert typed_prompt[::2] == spoken_prompt[::2]  # the same template around them
    assert chat([typed, spoken]) == [chat(typed)] * 2


def test_streaming_gives_the_answer_piece_by_piece(chat, wavs):
    conversation = [
        {"role": "user", "speech": wavs[0]},
        {"role": "assistant", "content": "five"},
        {"role": "user", "content": "what is one plus one"},
    ]
    pieces = list(chat.stream(conversation, max_new_tokens=8))
    assert len(pieces) > 1
    assert "".join(pieces) == chat(conversation, max_new_tokens=8)
    assert "".join(chat.stream(wavs[1])) == chat(wavs[1])


def test_bad_speech_is_named(chat, tmp_path):
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"not audio")
    with pytest.raises(InputError, match=f"{broken}: cannot read audio"):
        chat(str(broken))
    channels_first = np.zeros((2, 16000), dtype=np.float32)
    with pytest.raises(InputError, match="speech 1: .* mono"):
        chat.transcribe([np.zeros(16000, dtype=np.float32), channels_first])
    with pytest.raises(PromptError, match="ends with a user turn"):
        chat([{"role": "assistant", "content": "hi"}])


def test_a_path_is_a_file_never_a_command(chat, tmp_path):
    """wav.scp's pipe entries are for data dirs: a path given to the API is not run."""
    ran = tmp_path / "ran"
    with pytest.raises(InputError, match="cannot read audio"):
        chat(f"touch {ran} |")
    assert not ran.exists()


def test_another_llm_is_refused(tiny_recipe, other_llm):
    with pytest.raises(LLMMismatchError, match="trained for the LLM"):
        Speech2Chat.from_pretrained(tiny_recipe / "exp/tiny", llm=str(other_llm))
