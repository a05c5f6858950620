"""The VoiceBench assistant and the offline writer of VoiceBench's output files."""

import json
import sys

import pytest
import soundfile

from espnet_alignchat.bin import voicebench_infer
from espnet_alignchat.datadir import resample
from espnet_alignchat.voicebench import AlignChatAssistant

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def assistant(tiny_recipe) -> AlignChatAssistant:
    with (
        pytest.MonkeyPatch.context() as patch
    ):  # built without arguments, as VoiceBench does
        patch.setenv("ALIGNCHAT_MODEL", str(tiny_recipe / "exp/tiny"))
        patch.setenv("ALIGNCHAT_DEVICE", "cpu")
        assistant = AlignChatAssistant()
    assistant.max_new_tokens = 6  # a random LLM rarely stops by itself
    return assistant


def test_the_assistant_answers_audio_dicts_and_text(assistant, tiny_recipe):
    samples, rate = soundfile.read(tiny_recipe / "data/wav/spk1_utt0.wav")
    audio = {"array": resample(samples, rate, 22050), "sampling_rate": 22050}
    answer = assistant.generate_audio(audio)
    assert isinstance(answer, str) and answer
    assert answer == assistant.chat((samples, rate), max_new_tokens=6)
    question = "what is two plus three"
    text = assistant.generate_text(question)
    assert text == assistant.chat.respond_to_text([question], max_new_tokens=6)[0]
    assert assistant.generate_ttft(audio) > 0


def write_jsonl(path, tiny_recipe):
    wav = tiny_recipe / "data/wav"
    (path.parent / "audio").mkdir()
    lines = []
    for i, utt in enumerate(["spk1_utt0", "spk2_utt1", "spk1_utt3"]):
        (path.parent / "audio" / f"{i}.wav").write_bytes(
            (wav / f"{utt}.wav").read_bytes()
        )
        item = {"prompt": f"question {i}", "audio": f"audio/{i}.wav", "id": i}
        lines.append(json.dumps({**item, "reference": "A"}))
    lines.insert(1, "{not json")
    lines.append(json.dumps({"prompt": "no such audio", "audio": "audio/none.wav"}))
    path.write_text("\n".join(lines) + "\n")


def test_the_writer_keeps_the_fields_and_skips_bad_lines(tiny_recipe, tmp_path, caplog):
    source = tmp_path / "set" / "sd-qa.jsonl"
    source.parent.mkdir()
    write_jsonl(source, tiny_recipe)
    modules = set(sys.modules)
    voicebench_infer.main(
        ["--jsonl", str(source), "--model", str(tiny_recipe / "exp/tiny")]
        + ["--output_dir", str(tmp_path / "out"), "--split", "usa", "--device", "cpu"]
        + ["--batch_size", "2", "--max_new_tokens", "4"]
    )
    audio = [
        json.loads(line)
        for line in (tmp_path / "out/alignchat-sd-qa-usa-audio.jsonl").open()
    ]
    text = [
        json.loads(line)
        for line in (tmp_path / "out/alignchat-sd-qa-usa-text.jsonl").open()
    ]
    assert [r["id"] for r in audio] == [0, 1, 2]  # the bad lines left out, order kept
    assert [r["prompt"] for r in text] == [f"question {i}" for i in range(3)] + [
        "no such audio"
    ]
    for record in audio + text:
        assert "audio" not in record and isinstance(record["response"], str)
    assert set(audio[0]) == {"prompt", "id", "reference", "response"}
    assert f"{source}:2: not JSON" in caplog.text
    assert f"{source}:5: {source.parent}/audio/none.wav: cannot read audio" in (
        caplog.text
    )
    assert not {name for name in sys.modules if name.split(".")[0] == "datasets"} - (
        modules
    )  # offline: VoiceBench's loader is never imported


def test_the_writer_reads_a_kaldi_data_dir(tiny_recipe, tmp_path, monkeypatch):
    monkeypatch.chdir(tiny_recipe)  # wav.scp's paths are relative to the recipe dir
    voicebench_infer.main(
        ["--data_dir", "data", "--model", "exp/tiny", "--output_dir", str(tmp_path)]
        + ["--modality", "audio", "--device", "cpu", "--max_new_tokens", "3"]
        + ["--model_name", "mine"]
    )
    out = tmp_path / "mine-data-test-audio.jsonl"
    records = [json.loads(line) for line in out.open()]
    keys = sorted(path.stem for path in (tiny_recipe / "data/wav").glob("*.wav"))
    assert [record["key"] for record in records] == keys
    assert records[0]["prompt"] == "what is two plus three"
