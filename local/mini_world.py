#!/usr/bin/env python3
"""Generate the embedded spoken-QA mini world: questions, answers, sentences, voices.

The world is text only; ``local/synthesize.py`` turns its utterance plans into speech.
Everything is lower case, numbers are words (zero to twenty), there is no punctuation,
and the spoken vocabulary is small and chosen to avoid homophones (no "to", "for",
"tree", "see", ...) because the speech tokenizer has to tell every word apart.

Question kinds come in two flavours:
  * memorised kinds (facts from ``world_facts.tsv``, arithmetic, ...) have three
    phrasings per fact; a test or dev question is one phrasing of a fact whose other two
    stay in train, so the LLM knows the answer without having seen the question (three
    rather than two phrasings: with two, the mini LLM transferred facts poorly);
  * compositional kinds (comparisons, counting, repeating, ...) follow a rule; their
    test and dev questions are unseen combinations of seen words.
Test questions never appear in train or dev, and test voices never speak train or dev.

Output files in ``--out_dir``:
  qa_{train,dev,test}.jsonl   {"id", "kind", "question", "answer"}
  sentences_{train,dev}.jsonl {"id", "text"}  (plain speech for tokenizer pretraining)
  plan_{train,dev,test}.jsonl {"utt", "speaker", "text", "kind", ["answer"]}
  voices.tsv                  speaker, espeak voice, rate, pitch, split
  words.txt                   every word the world can say or answer, one per line

Example:
    python local/mini_world.py --out_dir /tmp/world_run/world --seed 0
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

NUMBERS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen "
    "fourteen fifteen sixteen seventeen eighteen nineteen twenty"
).split()
COLORS = "red blue green yellow black white brown pink gray orange".split()
VERBS = "sleeps runs eats jumps sits plays walks swims".split()
ADJECTIVES = "big little old happy".split()
FACTS_TSV = Path(__file__).resolve().with_name("world_facts.tsv")
SPLITS = ("train", "dev", "test")


@dataclass(frozen=True)
class Question:
    """One question; ``fact`` is the same for all phrasings of the same content."""

    kind: str
    question: str
    answer: str
    fact: str


@dataclass(frozen=True)
class Voice:
    """An espeak-ng voice variant; ``speaker`` prefixes its utterance ids."""

    speaker: str
    espeak: str
    rate: int
    pitch: int
    split: str


# Test voices are unseen espeak variants (m4, f5) on accents seen in training, with rate and
# pitch inside the training range: new speakers, not a new language. Sixteen training voices
# spread over variants, accents and pitch: with eight, the test variant f5 (its base pitch above
# every training female's) lost a word in seven.
VOICES = (
    Voice("tr01", "en-us+m1", 160, 45, "train"),
    Voice("tr02", "en-gb+f2", 150, 60, "train"),
    Voice("tr03", "en-gb-scotland+m3", 170, 40, "train"),
    Voice("tr04", "en-029+f4", 155, 70, "train"),
    Voice("tr05", "en-gb-x-rp+m7", 145, 35, "train"),
    Voice("tr06", "en-us+f1", 175, 65, "train"),
    Voice("tr07", "en-gb-x-gbclan+m2", 165, 55, "train"),
    Voice("tr08", "en-us-nyc+f3", 150, 50, "train"),
    Voice("tr09", "en-us+m6", 155, 60, "train"),
    Voice("tr10", "en-gb+Andrea", 160, 50, "train"),
    Voice("tr11", "en-us+Alicia", 170, 45, "train"),
    Voice("tr12", "en-gb-x-rp+m8", 165, 50, "train"),
    Voice("tr13", "en-us+belinda", 150, 55, "train"),
    Voice("tr14", "en-gb+Annie", 165, 40, "train"),
    Voice("tr15", "en-029+m2", 150, 65, "train"),
    Voice("tr16", "en-gb-scotland+f2", 160, 80, "train"),
    Voice("te01", "en-gb+m4", 160, 50, "test"),
    Voice("te02", "en-us+f5", 165, 55, "test"),
)


@dataclass(frozen=True)
class Animal:
    """One row of the fact table."""

    name: str
    color: str
    legs: str
    sound: str
    home: str


def load_facts(path: Path = FACTS_TSV) -> list[Animal]:
    """Read the fact table shipped next to this script."""
    with open(path, newline="") as f:
        return [Animal(**row) for row in csv.DictReader(f, delimiter="\t")]


def _phrasings(
    kind: str, fact: str, answer: str, templates: Iterable[str], **slots: str
) -> list[Question]:
    """One question per template, all of the same fact."""
    return [Question(kind, t.format(**slots), answer, fact) for t in templates]


def gen_arithmetic(rng: random.Random, animals: list[Animal]) -> list[Question]:
    """Sums and products up to twenty; subtracting up to ten from up to twenty."""
    out = []
    for a in range(21):
        for b in range(11):
            x, y = NUMBERS[a], NUMBERS[b]
            if a <= 10:
                tpl = (
                    "what is {x} plus {y}",
                    "add {x} and {y}",
                    "what is the sum of {x} and {y}",
                )
                out += _phrasings(
                    "arithmetic", f"{a}+{b}", NUMBERS[a + b], tpl, x=x, y=y
                )
            if a >= b:
                tpl = (
                    "what is {x} minus {y}",
                    "take {y} from {x}",
                    "subtract {y} from {x}",
                )
                out += _phrasings(
                    "arithmetic", f"{a}-{b}", NUMBERS[a - b], tpl, x=x, y=y
                )
            if a <= 10 and a * b <= 20:
                tpl = (
                    "what is {x} times {y}",
                    "multiply {x} by {y}",
                    "what is {x} multiplied by {y}",
                )
                out += _phrasings(
                    "arithmetic", f"{a}*{b}", NUMBERS[a * b], tpl, x=x, y=y
                )
    return out


def gen_neighbor(rng: random.Random, animals: list[Animal]) -> list[Question]:
    """The number after or before another."""
    out = []
    for n in range(21):
        for where, m in (("after", n + 1), ("before", n - 1)):
            if 0 <= m <= 20:
                tpl = (
                    f"what comes {where} {{x}}",
                    f"what number comes {where} {{x}}",
                    f"tell me the number {where} {{x}}",
                )
                out += _phrasings(
                    "neighbor", f"{n}.{where}", NUMBERS[m], tpl, x=NUMBERS[n]
                )
    return out


def gen_facts(rng: random.Random, animals: list[Animal]) -> list[Question]:
    """Questions about the fact table, three phrasings per fact."""
    templates = {
        "color": (
            "what color is a {a}",
            "tell me the color of a {a}",
            "what is the color of a {a}",
        ),
        "legs": (
            "how many legs does a {a} have",
            "count the legs of a {a}",
            "tell me how many legs a {a} has",
        ),
        "sound": (
            "what does a {a} say",
            "tell me the sound of a {a}",
            "what is the sound of a {a}",
        ),
        "home": (
            "where does a {a} live",
            "tell me the home of a {a}",
            "what is the home of a {a}",
        ),
    }
    out = []
    for animal in animals:
        for attr, tpl in templates.items():
            answer = getattr(animal, attr)
            out += _phrasings(
                "facts", f"{animal.name}.{attr}", answer, tpl, a=animal.name
            )
    return out


def gen_yesno_fact(rng: random.Random, animals: list[Animal]) -> list[Question]:
    """Yes/no checks of the fact table: every true statement and as many false ones."""
    legs = sorted({a.legs for a in animals}, key=NUMBERS.index)
    color_tpl = ("is a {a} {v}", "is the color of a {a} {v}", "tell me if a {a} is {v}")
    legs_tpl = (
        "does a {a} have {v} legs",
        "has a {a} got {v} legs",
        "tell me if a {a} has {v} legs",
    )
    claims = [(a, c, c == a.color, color_tpl) for a in animals for c in COLORS]
    claims += [(a, n, n == a.legs, legs_tpl) for a in animals for n in legs]
    true = [c for c in claims if c[2]]
    false = rng.sample([c for c in claims if not c[2]], len(true))
    out = []
    for animal, value, truth, tpl in true + false:
        fact = f"{animal.name}.{value}"
        out += _phrasings(
            "yesno_fact", fact, "yes" if truth else "no", tpl, a=animal.name, v=value
        )
    return out


def gen_spell(rng: random.Random, animals: list[Animal]) -> list[Question]:
    """Spelling (three phrasings); first/last letters (one phrasing: train only)."""
    out = []
    for word in COLORS + [a.name for a in animals]:
        tpl = ("spell {w}", "how do you spell {w}", "tell me the letters of {w}")
        out += _phrasings("spell", f"spell.{word}", " ".join(word), tpl, w=word)
        for which, letter in (("first", word[0]), ("last", word[-1])):
            tpl = (f"what is the {which} letter of {{w}}",)
            out += _phrasings("spell", f"{which}.{word}", letter, tpl, w=word)
    return out


def gen_compare(rng: random.Random, animals: list[Animal]) -> list[Question]:
    """Which of two different numbers is bigger or smaller."""
    out = []
    for a in range(21):
        for b in range(21):
            if a != b:
                for word, pick in (("bigger", max), ("smaller", min)):
                    q = f"which is {word} {NUMBERS[a]} or {NUMBERS[b]}"
                    out.append(Question("compare", q, NUMBERS[pick(a, b)], q))
    return out


def gen_yesno_number(rng: random.Random, animals: list[Animal]) -> list[Question]:
    """Is one number bigger or smaller than another (half yes, half no)."""
    out = []
    for a in range(21):
        for b in range(21):
            if a != b:
                for word, truth in (("bigger", a > b), ("smaller", a < b)):
                    q = f"is {NUMBERS[a]} {word} than {NUMBERS[b]}"
                    out.append(Question("yesno_number", q, "yes" if truth else "no", q))
    return out


def _unique(make: Callable[[], tuple[str, str]], n: int) -> list[tuple[str, str]]:
    """``n`` distinct (question, answer) pairs drawn from ``make``."""
    seen: dict[str, str] = {}
    while len(seen) < n:
        question, answer = make()
        seen[question] = answer
    return list(seen.items())


def _rule_kind(kind: str, pairs: list[tuple[str, str]]) -> list[Question]:
    """Questions of a compositional kind: each question is its own fact."""
    return [Question(kind, q, a, q) for q, a in pairs]


def gen_count(rng: random.Random, animals: list[Animal]) -> list[Question]:
    """How many words are in a list of one to five colors and animals."""
    words = COLORS + [a.name for a in animals]

    def make() -> tuple[str, str]:
        items = [rng.choice(words) for _ in range(rng.randint(1, 5))]
        tpl = rng.choice(("count the words {x}", "how many words in {x}"))
        return tpl.format(x=" ".join(items)), NUMBERS[len(items)]

    return _rule_kind("count", _unique(make, 800))


def gen_repeat(rng: random.Random, animals: list[Animal]) -> list[Question]:
    """Repeat a phrase of two to four colors, animals and numbers."""
    words = COLORS + [a.name for a in animals] + NUMBERS

    def make() -> tuple[str, str]:
        phrase = " ".join(rng.choice(words) for _ in range(rng.randint(2, 4)))
        return rng.choice(("repeat after me {x}", "say {x}")).format(x=phrase), phrase

    return _rule_kind("repeat", _unique(make, 1200))


def gen_category(rng: random.Random, animals: list[Animal]) -> list[Question]:
    """Pick the one color (or number) out of three words."""
    names = [a.name for a in animals]

    def make() -> tuple[str, str]:
        category, members, others = rng.choice(
            (("color", COLORS, NUMBERS), ("number", NUMBERS, COLORS))
        )
        answer = rng.choice(members)
        words = [answer] + rng.sample(names + others, 2)
        rng.shuffle(words)
        return f"which word is a {category} {' '.join(words)}", answer

    return _rule_kind("category", _unique(make, 800))


@dataclass(frozen=True)
class Kind:
    """A question kind and how many of its questions each split gets."""

    name: str
    generate: Callable[[random.Random, list[Animal]], list[Question]]
    memorised: bool
    n_test: int
    n_dev: int
    max_train: int | None  # None: every question not held out (memorised kinds)


KINDS = (
    Kind("arithmetic", gen_arithmetic, True, 60, 20, None),
    Kind("neighbor", gen_neighbor, True, 15, 5, None),
    Kind("facts", gen_facts, True, 30, 10, None),
    Kind("yesno_fact", gen_yesno_fact, True, 30, 10, None),
    Kind("spell", gen_spell, True, 10, 4, None),
    Kind("compare", gen_compare, False, 30, 10, 600),
    Kind("yesno_number", gen_yesno_number, False, 30, 10, 600),
    Kind("count", gen_count, False, 30, 10, 600),
    Kind("repeat", gen_repeat, False, 30, 10, 900),
    Kind("category", gen_category, False, 30, 10, 600),
)


def split_kind(
    kind: Kind, pool: list[Question], rng: random.Random
) -> dict[str, list[Question]]:
    """Split one kind's questions into train/dev/test (see the module docstring)."""
    groups: dict[str, list[Question]] = {}
    for q in pool:
        groups.setdefault(q.fact, []).append(q)
    facts = list(groups)
    rng.shuffle(facts)
    out: dict[str, list[Question]] = {s: [] for s in SPLITS}
    if kind.memorised:
        want = {"test": kind.n_test, "dev": kind.n_dev}
        for fact in facts:
            group = groups[fact][:]
            held = next((s for s in ("test", "dev") if len(out[s]) < want[s]), None)
            if held is not None and len(group) >= 2:
                out[held].append(group.pop(rng.randrange(len(group))))
            out["train"] += group
        if len(out["test"]) < kind.n_test or len(out["dev"]) < kind.n_dev:
            raise ValueError(
                f"kind {kind.name}: too few multi-phrasing facts to hold out"
            )
    else:
        qs = [groups[f][0] for f in facts]
        n_train = len(qs) - kind.n_test - kind.n_dev
        if kind.max_train is not None:
            n_train = min(n_train, kind.max_train)
        out["test"] = qs[: kind.n_test]
        out["dev"] = qs[kind.n_test : kind.n_test + kind.n_dev]
        out["train"] = qs[kind.n_test + kind.n_dev :][:n_train]
    return out


def build_questions(seed: int, animals: list[Animal]) -> dict[str, list[Question]]:
    """All questions of the world, by split, in a seed-determined order."""
    splits: dict[str, list[Question]] = {s: [] for s in SPLITS}
    for kind in KINDS:
        rng = random.Random(f"{seed}-{kind.name}")
        for split, qs in split_kind(kind, kind.generate(rng, animals), rng).items():
            splits[split] += qs
    for split, qs in splits.items():
        random.Random(f"{seed}-{split}").shuffle(qs)
    return splits


def build_sentences(
    seed: int, animals: list[Animal], n: int, exclude: set[str]
) -> list[str]:
    """Plain, mostly true statements in the same vocabulary; none is a question."""
    rng = random.Random(f"{seed}-sentences")
    names = [a.name for a in animals]
    homes = sorted({a.home for a in animals})

    def one() -> str:
        a = rng.choice(animals)
        x, y = rng.randrange(11), rng.randrange(11)
        return rng.choice(
            (
                f"the {rng.choice(ADJECTIVES)} {rng.choice(COLORS)} {a.name} "
                f"{rng.choice(VERBS)} near the {rng.choice(homes)}",
                f"a {a.name} has {a.legs} legs and lives in the {a.home}",
                f"my {rng.choice(ADJECTIVES)} {a.name} likes the {rng.choice(COLORS)} "
                f"{rng.choice(names)}",
                f"{NUMBERS[x]} plus {NUMBERS[y]} is {NUMBERS[x + y]}",
                f"{NUMBERS[max(x, y) + 10]} is bigger than {NUMBERS[min(x, y)]}",
                f"the {a.name} {rng.choice(VERBS)} with the {rng.choice(names)} in the "
                f"{rng.choice(homes)}",
            )
        )

    seen: dict[str, None] = {}
    for _ in range(100 * n):
        if len(seen) == n:
            return list(seen)
        s = one()
        if s not in exclude:
            seen[s] = None
    raise ValueError(f"cannot make {n} distinct sentences; ask for fewer")


def world_words(texts: Iterable[str], animals: list[Animal]) -> list[str]:
    """The words of ``texts`` plus the whole lexicon (seed-independent)."""
    words = set(NUMBERS + COLORS + VERBS + ADJECTIVES)
    words.update(value for a in animals for value in vars(a).values())
    words.update(w for text in texts for w in text.split())
    return sorted(words)


def plan(
    items: list[tuple[str, str, str, str | None]],
    voices: list[Voice],
    seed: int,
    name: str,
) -> list[dict[str, str]]:
    """Give each (id, text, kind, answer) one voice, balanced across ``voices``."""
    order = list(range(len(items)))
    random.Random(f"{seed}-voices-{name}").shuffle(order)
    rows = []
    for rank, i in enumerate(order):
        item_id, text, kind, answer = items[i]
        spk = voices[rank % len(voices)].speaker
        row = {"utt": f"{spk}-{item_id}", "speaker": spk, "text": text, "kind": kind}
        if answer is not None:
            row["answer"] = answer
        rows.append(row)
    return sorted(rows, key=lambda r: r["utt"].encode())


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    """One JSON object per line."""
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def split_rows(
    split: str, questions: list[Question], sentences: list[str]
) -> tuple[list[dict], list[dict]]:
    """The QA rows and sentence rows of one split, with ids unique across splits."""
    qa = [
        dict(
            id=f"q{split[:2]}{i:05d}", kind=q.kind, question=q.question, answer=q.answer
        )
        for i, q in enumerate(questions)
    ]
    sents = [{"id": f"s{split[:2]}{i:05d}", "text": s} for i, s in enumerate(sentences)]
    return qa, sents


def write_world(
    out_dir: Path, seed: int, n_sentences: int, n_dev_sentences: int
) -> None:
    """Generate the world and write all of its files to ``out_dir``."""
    animals = load_facts()
    splits = build_questions(seed, animals)
    questions = {q.question for qs in splits.values() for q in qs}
    sentences = build_sentences(seed, animals, n_sentences + n_dev_sentences, questions)
    sent_split = {"train": sentences[:n_sentences], "dev": sentences[n_sentences:]}

    out_dir.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        qa, sents = split_rows(split, splits[split], sent_split.get(split, []))
        write_jsonl(out_dir / f"qa_{split}.jsonl", qa)
        if split != "test":
            write_jsonl(out_dir / f"sentences_{split}.jsonl", sents)
        items = [(r["id"], r["question"], r["kind"], r["answer"]) for r in qa]
        items += [(r["id"], r["text"], "sentence", None) for r in sents]
        voice_split = "test" if split == "test" else "train"
        voices = [v for v in VOICES if v.split == voice_split]
        write_jsonl(out_dir / f"plan_{split}.jsonl", plan(items, voices, seed, split))
        counts = f"{len(qa)} questions, {len(sents)} sentences, {len(voices)} voices"
        print(f"{split}: {counts}")

    with open(out_dir / "voices.tsv", "w") as f:
        f.write("speaker\tespeak\trate\tpitch\tsplit\n")
        for v in VOICES:
            f.write(f"{v.speaker}\t{v.espeak}\t{v.rate}\t{v.pitch}\t{v.split}\n")
    spoken_texts = [q.question for qs in splits.values() for q in qs] + sentences
    answers = [q.answer for qs in splits.values() for q in qs]
    words = world_words(spoken_texts + answers, animals)
    (out_dir / "words.txt").write_text("\n".join(words) + "\n")
    spoken = {w for text in spoken_texts for w in text.split()}
    print(f"vocabulary: {len(words)} words, {len(spoken)} of them spoken")


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out_dir", type=Path, required=True, help="where to write the world"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument(
        "--num_sentences", type=int, default=600, help="train sentences"
    )
    parser.add_argument(
        "--num_dev_sentences", type=int, default=50, help="dev sentences"
    )
    args = parser.parse_args(argv)
    if args.num_sentences < 0 or args.num_dev_sentences < 0:
        sys.exit("mini_world.py: sentence counts must be >= 0")
    try:
        write_world(args.out_dir, args.seed, args.num_sentences, args.num_dev_sentences)
    except ValueError as err:
        sys.exit(f"mini_world.py: {err}")


if __name__ == "__main__":
    main()
