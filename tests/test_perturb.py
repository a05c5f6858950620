"""Perturbed test sets (bin/perturb_data.py): what each perturbation does to the audio, the
data dir it writes, and the utterances it cannot use."""

import json
import shutil

import numpy as np
import pytest
import soundfile

from espnet_alignchat.bin import perturb_data
from espnet_alignchat.datadir import read_kaldi_map
from espnet_alignchat.perturb import KINDS, TalkerPool

RATE = 16000
needs_sox = pytest.mark.skipif(shutil.which("sox") is None, reason="no sox")


def write_set(path, signals, extra_lines=()):
    """A data dir with one utterance per signal (``u0``, ``u1``…), by speaker ``s<i % 2>``."""
    (path / "wav").mkdir(parents=True)
    scp, text, spk, answer = [], [], [], []
    for i, signal in enumerate(signals):
        wav = path / "wav" / f"u{i}.wav"
        soundfile.write(wav, signal, RATE, subtype="FLOAT")
        scp.append(f"u{i} {wav}")
        text.append(f"u{i} words of {i}")
        spk.append(f"u{i} s{i % 2}")
        answer.append(f"u{i} answer {i}")
    for utt_id, entry in extra_lines:
        scp.append(f"{utt_id} {entry}")
        text.append(f"{utt_id} words")
        spk.append(f"{utt_id} s0")
    for name, lines in dict(wav_scp=scp, text=text, utt2spk=spk, answer=answer).items():
        (path / name.replace("_", ".")).write_text("\n".join(lines) + "\n")
    return path


def tone(frequency, seconds=1.0, amplitude=0.1):
    t = np.arange(int(seconds * RATE)) / RATE
    return (amplitude * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


def speechlike(seed, seconds=1.0):
    """Tones with pauses: power that varies over time, as speech's does."""
    rng = np.random.default_rng(seed)
    pieces = [
        np.concatenate([tone(rng.uniform(150, 2000), 0.2), np.zeros(1600)])
        for _ in range(int(seconds / 0.3))
    ]
    return np.concatenate(pieces).astype(np.float32)


def run(in_dir, out_dir, *options):
    perturb_data.main(
        ["--in_dir", str(in_dir), "--out_dir", str(out_dir), "--log_level", "ERROR"]
        + list(options)
    )
    return out_dir


def read(out_dir, utt_id):
    return soundfile.read(out_dir / "wav" / f"{utt_id}.wav", dtype="float64")


def snr_db(clean, perturbed):
    return 10 * np.log10(np.mean(clean**2) / np.mean((perturbed - clean) ** 2))


@pytest.mark.parametrize("color, snr", [("white", 5), ("pink", 10), ("brown", 20)])
def test_noise_is_added_at_the_requested_snr(tmp_path, color, snr):
    clean = [speechlike(seed) for seed in range(3)]
    out = run(
        write_set(tmp_path / "in", clean),
        tmp_path / "out",
        *["--perturbation", "noise", "--color", color, "--snr", str(snr)],
    )
    for i, signal in enumerate(clean):
        perturbed, rate = read(out, f"u{i}")
        assert rate == RATE
        assert snr_db(signal, perturbed) == pytest.approx(snr, abs=0.5)


def test_the_same_seed_writes_the_same_audio(tmp_path):
    source = write_set(tmp_path / "in", [speechlike(0), speechlike(1)])
    options = ["--perturbation", "noise", "--snr", "10"]
    first = run(source, tmp_path / "a", *options, "--seed", "3")
    again = run(source, tmp_path / "b", *options, "--seed", "3")
    other = run(source, tmp_path / "c", *options, "--seed", "4")
    assert np.array_equal(read(first, "u1")[0], read(again, "u1")[0])
    assert not np.array_equal(read(first, "u1")[0], read(other, "u1")[0])


def test_babble_is_other_utterances_never_the_utterance_itself(tmp_path):
    frequencies = [300, 1100, 2300]
    clean = [tone(f) for f in frequencies]
    out = run(
        write_set(tmp_path / "in", clean),
        tmp_path / "out",
        *["--perturbation", "babble", "--talkers", "1", "--snr", "10"],
    )
    bins = np.fft.rfftfreq(RATE, 1 / RATE)
    for signal, own in zip(clean, frequencies):
        perturbed, _ = read(out, f"u{frequencies.index(own)}")
        assert snr_db(signal, perturbed) == pytest.approx(10, abs=0.5)
        babble = np.abs(np.fft.rfft(perturbed - signal))
        heard = bins[babble.argmax()]
        assert heard in frequencies and heard != own


def test_the_talker_pool_never_draws_the_utterance_itself():
    audio = {f"u{i}": np.full(10, float(i)) for i in range(4)}
    pool = TalkerPool(audio, count=3)
    rng = np.random.default_rng(0)
    for _ in range(50):
        for utt_id, samples in audio.items():
            assert all(t is not samples for t in pool(utt_id, rng))
    with pytest.raises(ValueError, match="at least 5 readable utterances"):
        TalkerPool(audio, count=4)


@needs_sox
@pytest.mark.parametrize("kind", ["tempo", "speed"])
@pytest.mark.parametrize("factor", [0.8, 1.25])
def test_tempo_and_speed_change_the_duration_by_the_factor(tmp_path, kind, factor):
    clean = speechlike(0, seconds=3.0)
    out = run(
        write_set(tmp_path / "in", [clean]),
        tmp_path / "out",
        *["--perturbation", kind, "--factor", str(factor)],
    )
    perturbed, rate = read(out, "u0")
    assert rate == RATE
    assert len(perturbed) / len(clean) == pytest.approx(1 / factor, rel=0.02)


def band_power(samples, rate, low, high):
    spectrum = np.abs(np.fft.rfft(samples)) ** 2 / len(samples) ** 2
    frequencies = np.fft.rfftfreq(len(samples), 1 / rate)
    return spectrum[(frequencies >= low) & (frequencies < high)].sum()


@needs_sox
def test_the_telephone_channel_cuts_what_is_above_its_band(tmp_path):
    wideband = (0.1 * np.random.default_rng(0).standard_normal(2 * RATE)).astype(
        np.float32
    )
    out = run(
        write_set(tmp_path / "in", [wideband]),
        tmp_path / "out",
        *["--perturbation", "telephone"],
    )
    perturbed, rate = read(out, "u0")
    assert rate == 8000
    above = 10 * np.log10(
        band_power(perturbed, rate, 3400, rate / 2)
        / band_power(wideband, RATE, 3400, RATE / 2)
    )
    inside = 10 * np.log10(
        band_power(perturbed, rate, 500, 3000) / band_power(wideband, RATE, 500, 3000)
    )
    assert above < -20 and abs(inside) < 1.5


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="no ffmpeg")
def test_a_lossy_codec_round_trip_keeps_the_utterance(tmp_path):
    clean = speechlike(0, seconds=2.0)
    out = run(
        write_set(tmp_path / "in", [clean]),
        tmp_path / "out",
        *["--perturbation", "codec", "--codec", "opus", "--bitrate", "8k"],
    )
    perturbed, rate = read(out, "u0")
    assert rate == RATE and len(perturbed) == pytest.approx(len(clean), rel=0.05)
    assert not np.allclose(perturbed[: len(clean)], clean, atol=1e-3)


def test_a_bad_file_is_skipped_and_named_and_the_rest_written(tmp_path, capsys):
    source = write_set(
        tmp_path / "in",
        [speechlike(0), speechlike(1)],
        extra_lines=[("broken", str(tmp_path / "missing.wav"))],
    )
    out = run(source, tmp_path / "out", "--perturbation", "noise")
    err = [line for line in capsys.readouterr().err.splitlines() if "broken" in line]
    assert len(err) == 1 and err[0].startswith("perturb_data: broken: cannot read")
    assert list(read_kaldi_map(out / "skipped")) == ["broken"]
    assert sorted(read_kaldi_map(out / "wav.scp")) == ["u0", "u1"]
    for name in ("text", "utt2spk", "answer"):
        assert sorted(read_kaldi_map(out / name)) == ["u0", "u1"], name
    assert read_kaldi_map(out / "spk2utt") == {"s0": "u0", "s1": "u1"}
    options = json.loads((out / "perturbation.json").read_text())
    assert options["snr"] == 10.0 and options["color"] == "white"
    assert "factor" not in options and "talkers" not in options  # not noise's
    assert not [p for p in out.rglob(".*partial")]


def test_a_missing_program_is_one_line_before_any_audio(tmp_path, capsys, monkeypatch):
    source = write_set(tmp_path / "in", [speechlike(0)])
    monkeypatch.setattr(shutil, "which", lambda program: None)
    with pytest.raises(SystemExit):
        run(source, tmp_path / "out", "--perturbation", "tempo")
    err = capsys.readouterr().err.strip()
    assert err == "perturb_data: error: sox is not on the PATH (apt-get install sox)"
    assert not (tmp_path / "out").exists()


def test_every_kind_says_which_options_it_records():
    assert set(perturb_data.OPTIONS_OF_KIND) == set(KINDS)
    parser_options = {action.dest for action in perturb_data.get_parser()._actions}
    for options in perturb_data.OPTIONS_OF_KIND.values():
        assert set(options) <= parser_options
    assert set(perturb_data.COMMON_OPTIONS) <= parser_options
