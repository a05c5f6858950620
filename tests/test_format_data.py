"""The format stage (bin/format_data.py) and the corpus import (bin/import_corpus.py)."""

import shutil
from pathlib import Path
from typing import Dict

import kaldiio
import numpy as np
import pytest
import soundfile
from conftest import build_tokenizer, refuse_llm_loading, write_data_dir

from espnet_alignchat.bin import format_data, import_corpus
from espnet_alignchat.datadir import DataDir, read_kaldi_map


def sine(seconds: float, rate: int, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    wave = (0.5 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    return np.stack([wave] * channels, axis=1) if channels > 1 else wave


def write_lines(path: Path, lines: Dict[str, str]) -> None:
    path.write_text("".join(f"{key} {value}\n" for key, value in lines.items()))


def ids(text: str) -> str:
    tokens = build_tokenizer()(text, add_special_tokens=False)["input_ids"]
    return " ".join(map(str, tokens))


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A data dir with segments, a pipe, and one utterance for each reason to drop."""
    root = tmp_path_factory.mktemp("source")
    audio = root / "audio"
    audio.mkdir()
    nan = sine(0.5, 16000)
    nan[100] = np.nan
    recordings = {  # name: (samples, rate, subtype)
        "recA": (sine(2.0, 16000), 16000, "PCM_16"),
        "recB": (sine(1.0, 8000), 8000, "PCM_16"),
        "recC": (sine(0.5, 44100, channels=2), 44100, "PCM_16"),
        "recF": (sine(2.0, 16000), 16000, "PCM_16"),
        "recJ": (nan, 16000, "FLOAT"),
    }
    for name in "EGHI":
        recordings[f"rec{name}"] = (sine(0.5, 16000), 16000, "PCM_16")
    wav_scp = {}
    for name, (samples, rate, subtype) in recordings.items():
        soundfile.write(audio / f"{name}.wav", samples, rate, subtype=subtype)
        wav_scp[name] = str(audio / f"{name}.wav")
    wav_scp["recB"] = f"cat {audio / 'recB.wav'} |"
    wav_scp["recD"] = str(audio / "missing.wav")
    data = root / "train"
    data.mkdir()
    write_lines(data / "wav.scp", dict(sorted(wav_scp.items())))
    segments = {"A1": "recA 0.0 0.9", "A2": "recA 1.0 1.8", "G1": "recG 0.0 0.05"}
    for name in "BCDEFHIJ":  # the whole recording (a missing one: its 2 s)
        samples, rate, _ = recordings.get(f"rec{name}", (np.zeros(32000), 16000, ""))
        segments[f"{name}1"] = f"rec{name} 0 {len(samples) / rate}"
    write_lines(data / "segments", dict(sorted(segments.items())))
    text = {utt: "what is one plus two" for utt in segments if utt != "I1"}
    text.update(A2="two", B1="hello   world", E1="", H1="one " * 9)
    write_lines(data / "text", dict(sorted(text.items())))
    write_lines(data / "utt2spk", {utt: f"spk{utt[0]}" for utt in sorted(segments)})
    write_lines(data / "answer", {"A1": "three", "B1": "hi", "H1": "nine"})
    write_lines(data / "spk2gender", {"spkA": "f", "spkB": "m"})  # not per utterance
    return data


def snapshot(root: Path, relative: bool = False) -> Dict[str, bytes]:
    """Every file under `root`, optionally with `root` left out of names and contents."""
    files = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            name, contents = str(path), path.read_bytes()
            if relative:
                name = str(path.relative_to(root))
                contents = contents.replace(bytes(root.absolute()), b"<root>")
            files[name] = contents
    return files


def run_format(source: Path, out_dir: Path, llm: Path, *options: str) -> None:
    format_data.main(
        ["--in_dir", str(source), "--out_dir", str(out_dir), "--llm", str(llm)]
        + ["--max_duration", "1.5", "--max_tokens", "8", "--log_level", "WARNING"]
        + list(options)
    )


def test_format_data_filters_resamples_and_tokenizes(
    source, tmp_path, tiny_llm, capsys, monkeypatch
):
    refuse_llm_loading(monkeypatch)  # the tokenizer is all it needs
    out = tmp_path / "train"
    run_format(source, out, tiny_llm, "--nj", "1")
    stdout, stderr = capsys.readouterr()
    assert stdout.splitlines()[-1] == (
        "train: 4 kept, 7 dropped (unusable audio: 2, empty transcript: 1, "
        "missing transcript: 1, too long: 1, too many tokens: 1, too short: 1)"
    )
    for utt in ("D1", "J1"):  # each unusable utterance on one line
        assert len([line for line in stderr.splitlines() if f" {utt}: " in line]) == 1
    dropped = read_kaldi_map(out / "dropped")
    assert {utt: why.split(":")[0] for utt, why in dropped.items()} == {
        "D1": "unusable audio",
        "J1": "unusable audio",
        "E1": "empty transcript",
        "F1": "too long",
        "G1": "too short",
        "H1": "too many tokens",
        "I1": "missing transcript",
    }
    assert "NaN" in dropped["J1"]
    assert "9 > 8" in dropped["H1"] and "2.00 s > 1.5 s" in dropped["F1"]

    wav_scp = read_kaldi_map(out / "wav.scp")
    assert list(wav_scp) == [
        "A1",
        "A2",
        "B1",
        "C1",
    ]  # C1: stereo at 44.1 kHz, downmixed
    num_samples = read_kaldi_map(out / "utt2num_samples")
    assert num_samples == {"A1": "14400", "A2": "12800", "B1": "16000", "C1": "8000"}
    for utt, path in wav_scp.items():
        info = soundfile.info(path)
        assert Path(path).is_absolute() and path.endswith(f"/data/{utt}.flac")
        assert (info.samplerate, info.channels) == (16000, 1)
        assert (info.format, info.subtype) == ("FLAC", "PCM_16")
        assert info.frames == int(num_samples[utt])
    # A 16-bit source at the target rate is copied sample for sample.
    original, _ = soundfile.read(source.parent / "audio/recA.wav", dtype="int16")
    written, _ = soundfile.read(wav_scp["A2"], dtype="int16")
    np.testing.assert_array_equal(written, original[16000:28800])

    text = read_kaldi_map(out / "text")
    assert text == {
        "A1": "what is one plus two",
        "A2": "two",
        "B1": "hello world",
        "C1": "what is one plus two",
    }
    text_int = read_kaldi_map(out / "text_int")
    assert text_int == {utt: ids(value) for utt, value in text.items()}
    assert read_kaldi_map(out / "utt2spk") == {
        "A1": "spkA",
        "A2": "spkA",
        "B1": "spkB",
        "C1": "spkC",
    }
    assert read_kaldi_map(out / "spk2utt") == {
        "spkA": "A1 A2",
        "spkB": "B1",
        "spkC": "C1",
    }
    assert read_kaldi_map(out / "answer") == {"A1": "three", "B1": "hi"}
    assert not (out / "spk2gender").exists() and not (out / "response_int").exists()
    assert not (out / "template_mismatch").exists()  # the template's cut is clean

    # Two workers write the same files, and a rerun replaces the output, stale audio included.
    first = snapshot(out, relative=True)
    run_format(source, tmp_path / "parallel" / "train", tiny_llm, "--nj", "2")
    assert snapshot(tmp_path / "parallel" / "train", relative=True) == first
    (out / "data" / "Z9.flac").write_bytes(b"stale")
    run_format(source, out, tiny_llm, "--nj", "2")
    assert snapshot(out, relative=True) == first


def test_transcripts_tokenized_otherwise_inside_the_template_are_listed(
    source, tmp_path, tiny_llm, caplog
):
    """A user template that glues the transcript to a word changes its tokens."""
    out = tmp_path / "glued"
    run_format(source, out, tiny_llm, "--nj", "1", "--user_template", "say{speech}")
    mismatches = read_kaldi_map(out / "template_mismatch")
    assert sorted(mismatches) == ["A1", "A2", "B1", "C1"]
    assert mismatches["A2"].startswith("ours: ") and " | template: " in mismatches["A2"]
    run_format(source, out, tiny_llm, "--nj", "1")  # a clean rerun removes the list
    assert not (out / "template_mismatch").exists()


def test_format_data_without_filter_drops_only_unusable_audio(tmp_path, tiny_llm):
    utterances = {
        "s1_a": {"text": "what is two plus three", "response": "five"},
        "s1_b": {"text": "one two three four five six", "response": "no"},
        "s2_c": {"text": "hello", "response": "hello world"},
    }
    source = write_data_dir(tmp_path / "test", utterances)
    (source / "wav" / "s2_c.wav").write_bytes(b"not audio")
    (source / "utt2spk").unlink()
    out = tmp_path / "dump" / "test"
    run_format(
        source, out, tiny_llm, "--filter", "false", "--fs", "8000", "--max_tokens", "2"
    )
    dropped = read_kaldi_map(out / "dropped")
    assert list(dropped) == ["s2_c"] and dropped["s2_c"].startswith("unusable audio: ")
    for utt, path in read_kaldi_map(out / "wav.scp").items():
        info = soundfile.info(path)
        assert (info.samplerate, info.format) == (8000, "FLAC")
        original = soundfile.info(source / "wav" / f"{utt}.wav").frames
        assert info.frames == -(-original // 2)  # resampling rounds up
    assert read_kaldi_map(out / "response_int") == {
        utt: ids(utterances[utt]["response"]) for utt in ("s1_a", "s1_b")
    }
    assert read_kaldi_map(out / "text_int")["s1_b"] == ids(
        "one two three four five six"
    )
    assert read_kaldi_map(out / "utt2spk") == {"s1_a": "s1_a", "s1_b": "s1_b"}


def test_segments_of_a_piped_recording_decode_it_once(tmp_path):
    soundfile.write(tmp_path / "r.wav", sine(1.0, 16000), 16000)
    (tmp_path / "wav.scp").write_text(
        f"r echo >> {tmp_path}/runs; cat {tmp_path}/r.wav |\n"
    )
    write_lines(
        tmp_path / "segments", {f"u{i}": f"r {i / 4} {i / 4 + 0.25}" for i in range(4)}
    )
    data = DataDir(tmp_path)
    assert [len(data.speech(utt, 8000)) for utt in data.utt_ids] == [2000] * 4
    assert (tmp_path / "runs").read_text() == "\n"


def test_format_data_errors_are_one_line(tmp_path, tiny_llm, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        run_format(tmp_path / "empty", tmp_path / "out", tiny_llm)
    assert exit_info.value.code == 1
    assert capsys.readouterr().err.strip().endswith("empty: no wav.scp")


@pytest.fixture
def recipe(tmp_path) -> Path:
    """Another ESPnet recipe whose wav.scp uses recipe-relative paths."""
    root = tmp_path / "espnet" / "egs2" / "corpus" / "asr1"
    (root / "downloads").mkdir(parents=True)
    soundfile.write(root / "downloads" / "a.flac", sine(0.5, 16000), 16000)
    soundfile.write(root / "downloads" / "b.wav", sine(0.5, 16000), 16000)
    ark = Path("dump/raw/org/train/data/format.1/data_wav.ark")
    (root / ark.parent).mkdir(parents=True)
    pcm = (sine(0.5, 16000) * 32767).astype(np.int16)
    kaldiio.save_ark(str(root / ark), {"r3": (16000, pcm)}, scp=str(tmp_path / "scp"))
    offset = (tmp_path / "scp").read_text().split(":")[-1].strip()
    soundfile.write(tmp_path / "elsewhere.wav", sine(0.5, 16000), 16000)
    data = root / "data" / "train"
    data.mkdir(parents=True)
    write_lines(
        data / "wav.scp",
        {
            "r1": "downloads/a.flac",
            "r2": "cat downloads/b.wav |",
            "r3": f"{ark}:{offset}",
            "r4": str(tmp_path / "elsewhere.wav"),
        },
    )
    write_lines(data / "segments", {f"u{i}": f"r{i} 0 0.25" for i in range(1, 5)})
    write_lines(data / "text", {f"u{i}": "hello" for i in range(1, 5)})
    write_lines(data / "utt2spk", {f"u{i}": "s" for i in range(1, 5)})
    write_lines(data / "spk2utt", {"s": "u1 u2 u3 u4"})
    return root


def test_import_corpus_makes_recipe_paths_absolute(recipe, tmp_path, monkeypatch):
    before = snapshot(recipe)
    (tmp_path / "ours").mkdir()
    monkeypatch.chdir(tmp_path / "ours")
    import_corpus.main(["--src", str(recipe / "data" / "train"), "--out_dir", "data/x"])
    out = Path("data/x")
    wav_scp = read_kaldi_map(out / "wav.scp")
    assert wav_scp["r1"] == str(recipe / "downloads" / "a.flac")
    assert wav_scp["r2"] == f"cat {recipe / 'downloads' / 'b.wav'} |"
    assert wav_scp["r3"].startswith(f"{recipe}/dump/raw/org/train/data/format.1/")
    assert wav_scp["r4"] == str(tmp_path / "elsewhere.wav")
    for name in ("segments", "text", "utt2spk", "spk2utt"):
        assert (out / name).read_bytes() == (recipe / "data/train" / name).read_bytes()
    data = DataDir(out)
    for utt in data.utt_ids:
        assert data.speech(utt, 16000).shape == (4000,)
    assert snapshot(recipe) == before

    # From the recipe's dump/ the root is found the same way.
    dump = recipe / "dump" / "raw" / "org" / "train"
    shutil.copy(recipe / "data" / "train" / "wav.scp", dump)
    assert import_corpus.default_recipe_root(dump) == recipe
    import_corpus.main(["--src", str(dump), "--out_dir", "dump_x"])
    assert read_kaldi_map("dump_x/wav.scp") == wav_scp


def test_import_corpus_refuses_what_it_cannot_import(recipe, tmp_path, capsys):
    with pytest.raises(SystemExit):
        import_corpus.main(["--src", str(recipe), "--out_dir", str(tmp_path / "o")])
    assert "is not a Kaldi data dir: it has no wav.scp" in capsys.readouterr().err
    loose = tmp_path / "loose"
    shutil.copytree(recipe / "data" / "train", loose)
    if import_corpus.default_recipe_root(loose) is None:  # unless tmp is under a data/
        with pytest.raises(SystemExit):
            import_corpus.main(["--src", str(loose), "--out_dir", str(tmp_path / "o")])
        assert "pass --recipe_root" in capsys.readouterr().err
    import_corpus.main(
        ["--src", str(loose), "--out_dir", str(tmp_path / "o")]
        + ["--recipe_root", str(recipe)]
    )
    assert read_kaldi_map(tmp_path / "o" / "wav.scp")["r1"] == str(
        recipe / "downloads" / "a.flac"
    )
