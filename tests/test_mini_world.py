"""Tests of the embedded mini world, its synthesis and the mini chat LLM trainer.

Run: python -m pytest tests/test_mini_world.py
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import soundfile
from transformers import AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "local"))

import mini_world  # noqa: E402
import synthesize  # noqa: E402
import train_mini_llm  # noqa: E402

N = {w: i for i, w in enumerate(mini_world.NUMBERS)}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("world")
    mini_world.main(["--out_dir", str(out), "--seed", "0"])
    return out


def read(world: Path, name: str) -> list[dict]:
    return train_mini_llm.read_jsonl(world / name)


def test_sizes_kinds_and_disjoint_splits(world: Path) -> None:
    qa = {s: read(world, f"qa_{s}.jsonl") for s in mini_world.SPLITS}
    questions = {s: {r["question"] for r in rows} for s, rows in qa.items()}
    assert len(questions["train"]) == len(qa["train"]) >= 2000
    assert len({r["kind"] for r in qa["test"]}) >= 8
    assert not questions["test"] & (questions["train"] | questions["dev"])
    assert not questions["dev"] & questions["train"]
    train_words = {w for r in qa["train"] for w in r["question"].split()}
    assert {w for r in qa["test"] for w in r["question"].split()} <= train_words
    sentences = {r["text"] for r in read(world, "sentences_train.jsonl")}
    assert len(sentences) == 600 and not sentences & questions["train"]


def test_voices_split(world: Path) -> None:
    speakers = {
        s: {r["speaker"] for r in read(world, f"plan_{s}.jsonl")}
        for s in mini_world.SPLITS
    }
    assert len(speakers["train"]) >= 6 and len(speakers["test"]) >= 2
    assert not speakers["test"] & (speakers["train"] | speakers["dev"])


def test_memorised_test_facts_are_taught_in_train() -> None:
    splits = mini_world.build_questions(0, mini_world.load_facts())
    train = {q.fact for q in splits["train"]}
    memorised = {k.name for k in mini_world.KINDS if k.memorised}
    held = [q for q in splits["test"] + splits["dev"] if q.kind in memorised]
    assert held and all(q.fact in train for q in held)


def oracle(question: str) -> str | None:
    """Independent answers for the rule-based kinds, parsed from the question text."""
    rules = [
        (
            r"(?:what is|add|what is the sum of) (\w+) (?:plus|and) (\w+)",
            lambda a, b: N[a] + N[b],
        ),
        (r"what is (\w+) minus (\w+)", lambda a, b: N[a] - N[b]),
        (r"(?:take|subtract) (\w+) from (\w+)", lambda b, a: N[a] - N[b]),
        (
            r"(?:what is|multiply) (\w+) (?:times|multiplied by|by) (\w+)",
            lambda a, b: N[a] * N[b],
        ),
        (r"which is bigger (\w+) or (\w+)", lambda a, b: max(N[a], N[b])),
        (r"which is smaller (\w+) or (\w+)", lambda a, b: min(N[a], N[b])),
        (
            r"(?:what (?:number )?comes|tell me the number) after (\w+)",
            lambda a: N[a] + 1,
        ),
        (
            r"(?:what (?:number )?comes|tell me the number) before (\w+)",
            lambda a: N[a] - 1,
        ),
        (r"(?:count the words|how many words in) (.+)", lambda x: len(x.split())),
    ]
    for pattern, rule in rules:
        m = re.fullmatch(pattern, question)
        if m:
            return mini_world.NUMBERS[rule(*m.groups())]
    m = re.fullmatch(r"is (\w+) (bigger|smaller) than (\w+)", question)
    if m:
        a, rel, b = m.groups()
        return "yes" if (N[a] > N[b]) == (rel == "bigger") else "no"
    m = re.fullmatch(
        r"(?:how do you spell|spell|tell me the letters of) (\w+)", question
    )
    if m:
        return " ".join(m.group(1))
    m = re.fullmatch(r"what is the (first|last) letter of (\w+)", question)
    if m:
        return m.group(2)[0 if m.group(1) == "first" else -1]
    m = re.fullmatch(r"which word is a (color|number) (\w+) (\w+) (\w+)", question)
    if m:
        members = mini_world.COLORS if m.group(1) == "color" else mini_world.NUMBERS
        (answer,) = [w for w in m.groups()[1:] if w in members]
        return answer
    m = re.fullmatch(r"(?:repeat after me|say) (.+)", question)
    return m.group(1) if m else None


def fact_oracle(question: str) -> str | None:
    """Answers for the questions about the fact table, looked up in the table."""
    animals = {a.name: a for a in mini_world.load_facts()}
    lookups = {
        "color": "what color is a X|tell me the color of a X|what is the color of a X",
        "legs": "how many legs does a X have|count the legs of a X"
        "|tell me how many legs a X has",
        "sound": "what does a X say|tell me the sound of a X|what is the sound of a X",
        "home": "where does a X live|tell me the home of a X|what is the home of a X",
    }
    for attr, patterns in lookups.items():
        for pattern in patterns.split("|"):
            m = re.fullmatch(pattern.replace("X", r"(\w+)"), question)
            if m:
                return getattr(animals[m.group(1)], attr)
    claims = {
        "color": r"(?:is a|is the color of a|tell me if a) (\w+) (?:is )?(\w+)",
        "legs": r"(?:does a|has a|tell me if a) (\w+) (?:have|got|has) (\w+) legs",
    }
    for attr, pattern in claims.items():
        m = re.fullmatch(pattern, question)
        if m:
            return "yes" if getattr(animals[m.group(1)], attr) == m.group(2) else "no"
    return None


def test_every_answer_is_correct(world: Path) -> None:
    for split in mini_world.SPLITS:
        for row in read(world, f"qa_{split}.jsonl"):
            assert row["answer"] == (
                oracle(row["question"]) or fact_oracle(row["question"])
            ), row


def test_world_is_deterministic(world: Path, tmp_path: Path) -> None:
    mini_world.main(["--out_dir", str(tmp_path), "--seed", "0"])
    for path in world.iterdir():
        assert (tmp_path / path.name).read_bytes() == path.read_bytes(), path.name


def test_tokenizer_piecewise_property(world: Path) -> None:
    words = (world / "words.txt").read_text().split()
    tok = train_mini_llm.build_tokenizer(words)
    assert tok.eos_token == "<|eot|>" and tok.pad_token_id is not None
    ids = tok(" ".join(words), add_special_tokens=False)["input_ids"]
    assert len(ids) == len(words) and tok.unk_token_id not in ids
    assert tok.decode(ids) == " ".join(words)
    pieces = train_mini_llm.prompt_pieces(tok)
    for row in read(world, "qa_test.jsonl")[:50]:
        chat = [
            {"role": "user", "content": row["question"]},
            {"role": "assistant", "content": row["answer"]},
        ]
        whole = tok(
            tok.apply_chat_template(chat, tokenize=False), add_special_tokens=False
        )
        ids, labels = train_mini_llm.encode_example(
            tok, pieces, row["question"], row["answer"]
        )
        # The whole rendered conversation equals the trained layout, token for token.
        assert whole["input_ids"] == ids
        assert [t for t in labels if t != train_mini_llm.IGNORE][-1] == tok.eos_token_id


@pytest.mark.skipif(
    shutil.which("espeak-ng") is None or shutil.which("sox") is None,
    reason="needs espeak-ng and sox",
)
def test_synthesis_two_utterances(
    tmp_path: Path, world: Path, capsys: pytest.CaptureFixture, monkeypatch
) -> None:
    # A relative --audio_dir must still give absolute paths in wav.scp.
    monkeypatch.chdir(tmp_path)
    rows = [
        ("tr02-q1", "tr02", "what is two plus two", "four"),
        ("tr01-s1", "tr01", "the red cow sleeps", None),
        ("bad1-s2", "bad1", "the red cow sleeps", None),
    ]
    plan = tmp_path / "plan.jsonl"
    with open(plan, "w") as f:
        for utt, spk, text, answer in rows:
            row = {"utt": utt, "speaker": spk, "text": text, "kind": "x"}
            f.write(json.dumps(row | ({"answer": answer} if answer else {})) + "\n")
    voices = tmp_path / "voices.tsv"
    bad_voice = "bad1\tnosuchvoice\t150\t50\ttrain\n"
    voices.write_text((world / "voices.tsv").read_text() + bad_voice)
    data = tmp_path / "data"
    argv = f"--plan {plan} --voices {voices} --audio_dir wav --data_dir {data}"
    synthesize.main(argv.split() + ["--nj", "2"])
    assert "skipped bad1-s2" in capsys.readouterr().err
    lines = {f.name: f.read_text().splitlines() for f in data.iterdir()}
    assert [x.split()[0] for x in lines["wav.scp"]] == ["tr01-s1", "tr02-q1"]
    assert lines["text"] == [
        "tr01-s1 the red cow sleeps",
        "tr02-q1 what is two plus two",
    ]
    assert lines["spk2utt"] == ["tr01 tr01-s1", "tr02 tr02-q1"]
    assert lines["utt2spk"] == ["tr01-s1 tr01", "tr02-q1 tr02"]
    assert lines["answer"] == ["tr02-q1 four"]
    for line in lines["wav.scp"]:
        path = Path(line.split()[1])
        info = soundfile.info(str(path))
        assert path.is_absolute() and info.samplerate == 16000 and info.channels == 1
        assert info.subtype == "PCM_16" and 0.3 < info.duration < 4
        audio, _ = soundfile.read(str(path))
        # A noise floor: a sample may round to zero, a pause is never digital silence.
        assert (audio == 0).mean() < 0.1
    # Each utterance has its own recording conditions, the same in every run.
    how = synthesize.conditions("tr02-q1")
    assert how == synthesize.conditions("tr02-q1") != synthesize.conditions("tr01-s1")
    assert 0.05 <= how.lead <= 0.3 and 0.05 <= how.trail <= 0.3
    assert -70 <= how.noise_dbfs <= -50


def test_llm_trainer_writes_a_loadable_model(world: Path, tmp_path: Path) -> None:
    out = tmp_path / "llm"
    tiny = "--hidden_size 32 --intermediate_size 64 --num_layers 1 --num_heads 2"
    fast = "--num_kv_heads 1 --steps 3 --warmup_steps 1 --max_new_tokens 4"
    train_mini_llm.main(
        f"--world_dir {world} --out_dir {out} {tiny} {fast} --num_threads 1".split()
    )
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    eot = tok.convert_tokens_to_ids("<|eot|>")
    assert model.generation_config.eos_token_id == tok.eos_token_id == eot
    assert tok.chat_template == train_mini_llm.CHAT_TEMPLATE
    assert "model.embed_tokens.weight" in dict(model.named_parameters())
    # Used exactly as a hub chat model: template, tokenizer, generate, decode.
    chat = [{"role": "user", "content": "what is two plus two"}]
    prompt = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    ids = tok(prompt, add_special_tokens=False, return_tensors="pt")
    assert isinstance(
        tok.decode(model.generate(**ids)[0], skip_special_tokens=True), str
    )
    results = json.loads((out / "accuracy.json").read_text())
    assert 0 <= results["test"]["accuracy"] <= 1 and results["test"]["n"] > 0
    assert (out / "train_loss.png").stat().st_size > 0
