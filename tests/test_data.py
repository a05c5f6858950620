"""Reading Kaldi data dirs and turning utterances into the model's inputs."""

import pickle

import kaldiio
import numpy as np
import pytest
import soundfile
from conftest import build_tokenizer

from espnet_alignchat.datadir import DataDir, read_kaldi_map, write_kaldi_map
from espnet_alignchat.errors import InputError
from espnet_alignchat.preprocessor import AlignChatPreprocessor


@pytest.fixture
def preprocessor(tiny_llm):
    return AlignChatPreprocessor(str(tiny_llm))


def test_text_becomes_the_llm_tokenizers_ids(preprocessor):
    tokenizer = build_tokenizer()
    data = preprocessor(
        "utt1",
        {
            "speech": np.zeros(160),
            "text": " what is two plus three ",
            "response": "five",
        },
    )
    assert (
        data["text"].tolist()
        == tokenizer("what is two plus three", add_special_tokens=False)["input_ids"]
    )
    assert (
        data["response"].tolist()
        == tokenizer("five", add_special_tokens=False)["input_ids"]
    )
    assert data["speech"].dtype == np.float32
    ids = preprocessor("utt1", {"text": np.array([5, 6, 7])})  # text_int passes through
    assert ids["text"].tolist() == [5, 6, 7]
    # The LLM may answer nothing at all: its target is then only the end of its turn.
    assert preprocessor("utt1", {"response": ""})["response"].size == 0


@pytest.mark.parametrize(
    "data, problem",
    [
        ({"text": "   "}, "utt7: the text is empty"),
        ({"speech": np.zeros((2, 100))}, "utt7: speech has shape \\(2, 100\\)"),
        ({"speech": np.zeros(0)}, "utt7: the audio is empty"),
        ({"speech": np.array([0.0, np.nan])}, "utt7: the audio has NaN"),
    ],
)
def test_bad_utterances_are_named(preprocessor, data, problem):
    with pytest.raises(InputError, match=problem):
        preprocessor("utt7", data)


def test_preprocessor_pickles_without_its_tokenizer(preprocessor):
    preprocessor("utt1", {"text": "hello"})
    clone = pickle.loads(pickle.dumps(preprocessor))
    assert clone._tokenizer is None
    assert (
        clone("utt1", {"text": "hello"})["text"].tolist()
        == preprocessor("utt1", {"text": "hello"})["text"].tolist()
    )


def test_wav_scp_paths_pipes_arks_and_segments(tmp_path):
    rate = 8000
    samples = np.sin(np.arange(rate) / 10).astype(np.float32) * 0.5
    soundfile.write(tmp_path / "a.flac", samples, rate)
    soundfile.write(tmp_path / "b.wav", samples, rate)
    kaldiio.save_ark(
        str(tmp_path / "c.ark"),
        {"c": (rate, (samples * 32767).astype(np.int16))},
        scp=str(tmp_path / "c.scp"),
    )
    ark_entry = (tmp_path / "c.scp").read_text().split()[1]
    data = tmp_path / "data"
    data.mkdir()
    (data / "wav.scp").write_text(
        f"recA {tmp_path / 'a.flac'}\n"
        f"recB cat {tmp_path / 'b.wav'} |\n"
        f"recC {ark_entry}\n"
        "recD false |\n"
    )
    (data / "segments").write_text(
        "A1 recA 0.0 0.5\nA2 recA 0.5 1.0\nB1 recB 0.25 0.75\nC1 recC 0 1\nD1 recD 0 1\nE1 recE 0 1\n"
    )
    dir_ = DataDir(data)
    results = {
        utt: (speech, problem)
        for utt, speech, problem in dir_.iter_speech(dir_.utt_ids, 16000)
    }
    for utt in ("A1", "A2", "B1"):  # half a second at 8 kHz, resampled to 16 kHz
        assert results[utt][0].shape == (8000,)
    assert results["C1"][0].shape == (16000,)
    np.testing.assert_allclose(
        results["C1"][0][4000:4100],
        np.interp(np.arange(4000, 4100) / 2, np.arange(rate), samples)[:100],
        atol=0.02,
    )
    assert "D1: cannot read audio 'false |'" in results["D1"][1]
    assert results["E1"] == (None, "E1: recording recE is not in wav.scp")


def test_kaldi_maps_round_trip_and_name_duplicates(tmp_path):
    write_kaldi_map(tmp_path / "text", {"b": "two\nlines", "a": "", "c": "x  y"})
    assert (tmp_path / "text").read_text() == "a \nb two lines\nc x y\n"
    assert read_kaldi_map(tmp_path / "text") == {"a": "", "b": "two lines", "c": "x y"}
    (tmp_path / "dup").write_text("a 1\na 2\n")
    with pytest.raises(
        InputError, match="dup:2: a second line for a \\(line 1 is used"
    ):
        read_kaldi_map(tmp_path / "dup")
    left_out = {}
    assert read_kaldi_map(tmp_path / "dup", left_out) == {"a": "1"}
    assert list(left_out) == ["a"]
