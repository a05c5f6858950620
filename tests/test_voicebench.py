"""The VoiceBench assistant and the offline writer of VoiceBench's output files."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

from espnet_alignchat.bin import voicebench_infer, voicebench_main, voicebench_score
from espnet_alignchat.datadir import resample
from espnet_alignchat.inference import load_speech
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
    typed = [{"role": "user", "content": question}]
    assert text == assistant.chat(typed, max_new_tokens=6)
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
    assert f"{source.name}:2: not JSON" in caplog.text
    assert f"{source.name}:5: {source.parent}/audio/none.wav: cannot read audio" in (
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


# -- VoiceBench's own main.py, and the audio that current `datasets` hands over ---------------

# What VoiceBench's main.py does with an assistant (MatthewCYM/VoiceBench, main.py): load a
# subset with `datasets`, cast its audio to 16 kHz, build the assistant without arguments,
# answer each item and write <model>-<data>-<split>-<modality>.jsonl. A stand-in, since the
# tests download nothing; the session that wrote this also ran the real one (README.md).
STAND_IN_MAIN = """
from argparse import ArgumentParser
import json
from datasets import load_dataset, Audio
from src.models import model_cls_mapping

parser = ArgumentParser()
parser.add_argument('--model', choices=list(model_cls_mapping.keys()))
parser.add_argument('--data')
parser.add_argument('--split')
parser.add_argument('--modality', choices=['audio', 'text'])
args = parser.parse_args()
data = load_dataset('hlt-lab/voicebench', args.data, split=args.split)
data = data.cast_column('audio', Audio(sampling_rate=16_000))
model = model_cls_mapping[args.model]()
with open(f'{args.model}-{args.data}-{args.split}-{args.modality}.jsonl', 'w') as f:
    for item in data:
        record = {k: v for k, v in item.items() if k != 'audio'}
        if args.modality == 'audio':
            record['response'] = model.generate_audio(item['audio'])
        else:
            record['response'] = model.generate_text(item['prompt'])
        f.write(json.dumps(record) + '\\n')
"""


def voicebench_checkout(root: Path, tiny_recipe: Path) -> Path:
    """A VoiceBench dir: the stand-in main.py, a src/models that imports what is not
    installed (as VoiceBench's does), and a local copy of two sd-qa items."""
    datasets = pytest.importorskip("datasets")
    pytest.importorskip("torchcodec")
    (root / "src/models").mkdir(parents=True)
    (root / "main.py").write_text(STAND_IN_MAIN)
    (root / "src/__init__.py").write_text("")
    (root / "src/models/__init__.py").write_text("import snac  # one of many\n")
    wavs = sorted((tiny_recipe / "data/wav").glob("*.wav"))[:2]
    local = root / "hlt-lab/voicebench"
    (local / "sd-qa").mkdir(parents=True)
    rows = {"prompt": ["q one", "q two"], "reference": ["a", "b"]}
    audio = [{"bytes": w.read_bytes(), "path": w.name} for w in wavs]  # in the file
    subset = datasets.Dataset.from_dict({**rows, "audio": audio})
    subset.cast_column("audio", datasets.Audio()).to_parquet(
        str(local / "sd-qa/usa.parquet")
    )
    (local / "README.md").write_text(
        "---\nconfigs:\n- config_name: sd-qa\n  data_files:\n  - split: usa\n"
        "    path: sd-qa/usa.parquet\n---\n"
    )
    return root


def test_voicebench_main_runs_with_alignchat_alone(tiny_recipe, tmp_path, monkeypatch):
    voicebench = voicebench_checkout(tmp_path / "VoiceBench", tiny_recipe)
    monkeypatch.chdir(voicebench)
    # Not the user's cache: a dataset prepared by another run must not stand in for this one.
    monkeypatch.setattr("datasets.config.HF_DATASETS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("ALIGNCHAT_MODEL", str(tiny_recipe / "exp/tiny"))
    monkeypatch.setenv("ALIGNCHAT_DEVICE", "cpu")
    monkeypatch.setenv("ALIGNCHAT_MAX_NEW_TOKENS", "3")  # a random LLM rarely stops
    monkeypatch.setattr(sys, "argv", sys.argv[:])
    modules = dict(sys.modules)
    try:
        voicebench_main.main(
            ["--model", "alignchat", "--data", "sd-qa", "--split", "usa"]
            + ["--modality", "audio"]
        )
    finally:  # main.py's `src` is VoiceBench's, not a module of the test session
        for name in set(sys.modules) - set(modules):
            if name == "src" or name.startswith("src."):
                del sys.modules[name]
    records = [json.loads(line) for line in open("alignchat-sd-qa-usa-audio.jsonl")]
    assert [r["prompt"] for r in records] == ["q one", "q two"]
    assert all(isinstance(r["response"], str) for r in records)


def test_audio_decoders_of_current_datasets_are_speech(tiny_recipe, tmp_path):
    datasets = pytest.importorskip("datasets")
    pytest.importorskip("torchcodec")
    wav = tiny_recipe / "data/wav/spk1_utt0.wav"
    samples, rate = soundfile.read(wav, dtype="float32")
    subset = datasets.Dataset.from_dict({"audio": [str(wav)]})
    audio = subset.cast_column("audio", datasets.Audio(sampling_rate=16000))[0]["audio"]
    assert not isinstance(audio, dict)  # datasets >= 4: a torchcodec AudioDecoder
    loaded = load_speech(audio, 16000, "item 0")
    np.testing.assert_allclose(loaded, resample(samples, rate, 16000), atol=1e-4)


def test_the_offline_scorer_reads_voicebench_files(tmp_path, capsys, caplog):
    src = tmp_path / "alignchat-advbench-test-audio.jsonl"
    lines = [{"prompt": "p", "response": ""}, {"prompt": "q", "response": "Sure."}]
    src.write_text("\n".join(json.dumps(line) for line in lines) + "\n{oops\n")
    voicebench_score.main(["--src_file", str(src), "--evaluator", "harm"])
    assert json.loads(capsys.readouterr().out) == {"refusal_rate": 50.0}
    assert f"{src.name}:3: not JSON" in caplog.text
    qa = tmp_path / "qa.jsonl"
    qa.write_text(
        json.dumps({"prompt": "p", "reference": "Paris", "response": "paris!"})
    )
    voicebench_score.main(["--src_file", str(qa), "--evaluator", "qa"])
    assert json.loads(capsys.readouterr().out) == {"contains_answer": 100.0}
    with pytest.raises(SystemExit):  # one line, no traceback
        voicebench_score.main(["--src_file", str(qa), "--evaluator", "open"])
    assert "needs --text_file" in capsys.readouterr().err
