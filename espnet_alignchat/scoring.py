"""Stage 8, scoring one decode dir: error rates with sclite, responses with sacrebleu.

    python -m espnet_alignchat.bin.alignchat_score --data_dir dump/raw/test \\
        --decode_dir exp/instruct/decode_test/test --llm exp/mini_llm

writes, under the decode dir (the error-rate folders in ESPnet's layout):

- ``score_wer/{ref.trn,hyp.trn,result.txt}``: sclite on the words of ``text``, both sides
  normalised (lower case, punctuation removed), so that a transcript is not charged for the
  written form the reference happens to use;
- ``score_ter/{ref.trn,hyp.trn,result.txt}``: sclite on the LLM's own tokens, as they are
  (case and punctuation count: the LLM reads them; needs ``--llm``);
- ``cascade_whisper/score_wer/``: the same WER for Whisper's transcript
  (``cascade_whisper/data/text``), when the decode dir has one;
- ``score_response/result.txt``: BLEU, chrF and exact agreement of ``response`` (speech),
  ``cascade/response`` (the tokenizer's transcript as text) and ``cascade_whisper/response``
  (Whisper's transcript as text) against ``text_input/response`` (the LLM given the reference
  text);
- ``score_answer/result.txt``: exact accuracy against the data dir's ``answer``, if it has one;
- ``scores.json``: every number above.

Every utterance of the data dir's ``text`` is scored: one with no line in a decode file is
scored as an empty line (all deletions, a wrong answer) and counted in ``scores.json``'s
``missing``. A decode dir without ``text`` (a model that writes no transcript, such as the
frame-rate adapter) has its answers scored alone: ``wer`` and ``ter`` are null.
"""

import json
import logging
import shutil
import subprocess
import unicodedata
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from sacrebleu.metrics import BLEU, CHRF

from espnet_alignchat.atomic import atomic_open
from espnet_alignchat.datadir import read_kaldi_map
from espnet_alignchat.errors import InputError
from espnet_alignchat.llm import load_tokenizer

TRANSCRIPT = "text"
WHISPER_TRANSCRIPT = "cascade_whisper/data/text"
SPEECH_RESPONSE = "response"
TEXT_RESPONSE = "text_input/response"
CASCADE_RESPONSE = "cascade/response"
WHISPER_CASCADE_RESPONSE = "cascade_whisper/response"
RESPONSE_LABELS = {
    SPEECH_RESPONSE: "speech",
    TEXT_RESPONSE: "text",
    CASCADE_RESPONSE: "cascade",
    WHISPER_CASCADE_RESPONSE: "cascade_whisper",
}
OPTIONAL = (CASCADE_RESPONSE, WHISPER_TRANSCRIPT, WHISPER_CASCADE_RESPONSE)

INSTALL_SCTK = (
    "sclite (SCTK) is neither on PATH nor found through `sctk path`: install it with "
    "`apt-get install sctk` (Debian/Ubuntu) or ESPnet's tools/installers/install_sctk.sh"
)
# Characters with a meaning in sclite's trn format: parentheses hold the utterance id (and
# mark optionally deletable words), braces alternatives, a line starting with ";;" is a
# comment, "@" is dropped; "%" is the escape character itself.
TRN_SPECIAL = set("(){};@%")


def find_sclite() -> str:
    """sclite on PATH, else in the folder Debian's ``sctk path`` prints."""
    on_path = shutil.which("sclite")
    if on_path is not None:
        return on_path
    sctk = shutil.which("sctk")
    if sctk is not None:
        folder = subprocess.run([sctk, "path"], capture_output=True, text=True)
        candidate = Path(folder.stdout.strip()) / "sclite"
        if folder.returncode == 0 and candidate.is_file():
            return str(candidate)
    raise FileNotFoundError(INSTALL_SCTK)


def sclite_safe(token: str) -> str:
    """`token` as one trn word: special characters and whitespace become ``%XXXX``.

    The fixed width keeps the escape unambiguous, so distinct tokens stay distinct.
    """
    return "".join(
        f"%{ord(char):04X}" if char in TRN_SPECIAL or char.isspace() else char
        for char in token
    )


def write_trn(
    path: Path, tokens: Dict[str, List[str]], utt2spk: Dict[str, str]
) -> None:
    """``tokens<TAB>(spk-uttid)`` lines, the id built from utt2spk as ESPnet's asr.sh does."""
    with open(path, "w", encoding="utf-8") as f:
        for utt_id, words in tokens.items():
            line = " ".join(sclite_safe(word) for word in words)
            f.write(f"{line}\t({utt2spk[utt_id]}-{utt_id})\n")


def parse_sclite_result(path: Path) -> Dict[str, float]:
    """The ``Sum/Avg`` percentages of sclite's report, plus the error count of its ``Sum`` line."""
    percentages = errors = None
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            fields = [field.strip() for field in line.split("|")]
            if len(fields) != 5:
                continue
            if fields[1] == "Sum/Avg":
                percentages = fields[2].split() + fields[3].split()
            elif fields[1] == "Sum":
                errors = int(fields[3].split()[4])
    if percentages is None or errors is None:
        raise InputError(f"{path}: no Sum/Avg and Sum lines; is it sclite's report?")
    # Keyed by sclite's column names: snt wrd | corr sub del ins err s_err.
    scores: Dict[str, float] = {"snt": int(percentages[0]), "wrd": int(percentages[1])}
    for name, value in zip(
        ["corr", "sub", "del", "ins", "err", "s_err"], percentages[2:]
    ):
        scores[name] = float(value)
    scores["errors"] = errors
    return scores


def sclite_error_rate(
    score_dir: Path,
    references: Dict[str, List[str]],
    hypotheses: Dict[str, List[str]],
    utt2spk: Dict[str, str],
    options: Sequence[str] = (),
) -> Dict[str, float]:
    """Write ``ref.trn``/``hyp.trn``, run sclite as ESPnet does into ``result.txt``, parse it."""
    sclite = find_sclite()
    score_dir.mkdir(parents=True, exist_ok=True)
    write_trn(score_dir / "ref.trn", references, utt2spk)
    write_trn(score_dir / "hyp.trn", hypotheses, utt2spk)
    # Run inside score_dir so that the report names ref.trn/hyp.trn as ESPnet's do.
    command = [sclite, *options, "-r", "ref.trn", "trn", "-h", "hyp.trn", "trn"]
    command += ["-i", "rm", "-o", "all", "stdout"]
    with open(score_dir / "result.txt", "w", encoding="utf-8") as report:
        run = subprocess.run(
            command, cwd=score_dir, stdout=report, stderr=subprocess.PIPE, text=True
        )
    if run.returncode != 0:
        problem = run.stderr.strip().splitlines() or [f"exit status {run.returncode}"]
        raise InputError(f"{score_dir}: sclite failed: {problem[0]}")
    return parse_sclite_result(score_dir / "result.txt")


def read_decoded(
    decode_dir: Path, name: str, utt_ids: Sequence[str]
) -> Tuple[Dict[str, str], List[str]]:
    """`name`'s line for every utterance ("" where there is none) and the utterances without one."""
    path = decode_dir / name
    found = read_kaldi_map(path)
    expected = set(utt_ids)
    for utt_id in found:
        if utt_id not in expected:
            raise InputError(
                f"{path}: utterance {utt_id} is not in the data dir's text"
            )
    missing = [utt_id for utt_id in utt_ids if utt_id not in found]
    if missing:
        logging.warning(
            f"{path}: {len(missing)} of {len(utt_ids)} utterances have no line "
            f"(first: {missing[0]}); they are scored as empty"
        )
    return {utt_id: found.get(utt_id, "") for utt_id in utt_ids}, missing


def normalize(text: str) -> str:
    """Lower case, punctuation removed (as SQuAD's scorer does), whitespace collapsed."""
    kept = "".join(
        char for char in text.lower() if not unicodedata.category(char).startswith("P")
    )
    return " ".join(kept.split())


def percent(hits: int, total: int) -> float:
    return 100.0 * hits / total if total else 0.0


def score_responses(
    pairs: Dict[str, Tuple[List[str], List[str]]], report: Path
) -> Dict[str, Dict[str, object]]:
    """BLEU, chrF and exact agreement (in percent) of each (hypotheses, references) pair.

    The report has sacrebleu's own lines, score and signature, for each pair.
    """
    # Effective order: answers of one to three words have no 4-grams, and plain corpus BLEU
    # would be 0 even for identical answers. chrF is sacrebleu's default chrF2.
    bleu, chrf = BLEU(effective_order=True), CHRF()
    scores: Dict[str, Dict[str, object]] = {}
    lines = [f"# against the text-conditioned answers ({TEXT_RESPONSE})"]
    for name, (hypotheses, references) in pairs.items():
        bleu_score = bleu.corpus_score(hypotheses, [references])
        chrf_score = chrf.corpus_score(hypotheses, [references])
        # A signature exists once the metric has seen its references.
        signatures = dict(
            bleu=str(bleu.get_signature()), chrf=str(chrf.get_signature())
        )
        agree = sum(
            normalize(h) == normalize(r) for h, r in zip(hypotheses, references)
        )
        scores[name] = dict(  # BLEU and chrF to sacrebleu's own two decimals
            bleu=round(bleu_score.score, 2),
            chrf=round(chrf_score.score, 2),
            exact_agreement=percent(agree, len(references)),
        )
        lines += [
            f"{name}:",
            "  " + bleu_score.format(signature=signatures["bleu"]),
            "  " + chrf_score.format(signature=signatures["chrf"]),
            f"  exact agreement = {scores[name]['exact_agreement']:.1f}% "
            f"({agree}/{len(references)}, normalised strings)",
        ]
    scores["signatures"] = signatures
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return scores


def score_answers(
    answers: Dict[str, str], responses: Dict[str, Dict[str, str]], report: Path
) -> Dict[str, Optional[float]]:
    """Normalised exact accuracy (percent) of each response file, and speech over text."""
    scores: Dict[str, Optional[float]] = {"utterances": len(answers)}
    lines = [f"# normalised exact match against answer, {len(answers)} utterances"]
    for name, decoded in responses.items():
        hits = sum(normalize(decoded[u]) == normalize(a) for u, a in answers.items())
        label = RESPONSE_LABELS[name]
        scores[label] = percent(hits, len(answers))
        lines.append(f"{label} ({name}): {scores[label]:.1f}% ({hits}/{len(answers)})")
    # The method's claim in one number: how much of the text-input accuracy speech keeps.
    ratio = scores["speech"] / scores["text"] if scores["text"] else None
    scores["speech_over_text"] = ratio
    lines.append(f"speech / text: {'n/a' if ratio is None else f'{ratio:.3f}'}")
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return scores


def llm_tokens(tokenizer, texts: Dict[str, str]) -> Dict[str, List[str]]:
    """Each text as the LLM's token strings, without the special tokens it would add."""
    ids = tokenizer(list(texts.values()), add_special_tokens=False)["input_ids"]
    return {
        utt_id: tokenizer.convert_ids_to_tokens(token_ids)
        for utt_id, token_ids in zip(texts, ids)
    }


def read_answers(
    data_dir: Path, references: Dict[str, str]
) -> Optional[Dict[str, str]]:
    """The data dir's ``answer``, checked against its ``text``; None if it has none."""
    path = data_dir / "answer"
    if not path.is_file():
        return None
    answers = read_kaldi_map(path)
    for utt_id, answer in answers.items():
        if utt_id not in references:
            raise InputError(f"{path}: utterance {utt_id} is not in text")
        if not normalize(answer):  # an empty response would match it
            raise InputError(f"{path}: utterance {utt_id} has no answer")
    return answers


def score_decode_dir(
    data_dir: Path, decode_dir: Path, llm: Optional[str] = None
) -> Dict[str, object]:
    """Score `decode_dir` against `data_dir`; writes the files listed in the module doc."""
    find_sclite()  # fail before any work if it is not installed
    references = read_kaldi_map(data_dir / "text")
    if not references:
        raise InputError(f"{data_dir / 'text'}: no utterances")
    utt2spk = read_kaldi_map(data_dir / "utt2spk")
    for utt_id in references:
        if utt_id not in utt2spk:
            raise InputError(f"{data_dir / 'utt2spk'}: no line for utterance {utt_id}")
    answers = read_answers(data_dir, references)
    transcribed = (decode_dir / TRANSCRIPT).is_file()
    names = [TRANSCRIPT] if transcribed else []
    names += [SPEECH_RESPONSE, TEXT_RESPONSE]
    names += [name for name in OPTIONAL if (decode_dir / name).is_file()]
    decoded, missing = {}, {}
    for name in names:
        decoded[name], missing[name] = read_decoded(decode_dir, name, list(references))
    skipped = decode_dir / "skipped"
    scores: Dict[str, object] = dict(
        data_dir=str(data_dir),
        decode_dir=str(decode_dir),
        llm=llm,
        utterances=len(references),
        missing={name: len(without) for name, without in missing.items()},
        skipped=len(read_kaldi_map(skipped)) if skipped.is_file() else 0,
    )

    reference_words = {utt: normalize(text).split() for utt, text in references.items()}
    # Null, not absent, when the model has no transcript to score (results print "—").
    scores["wer"] = None
    if llm is not None:
        scores["ter"] = None
    if transcribed:
        transcripts = decoded[TRANSCRIPT]
        scores["wer"] = sclite_error_rate(
            decode_dir / "score_wer",
            reference_words,
            {utt_id: normalize(text).split() for utt_id, text in transcripts.items()},
            utt2spk,
        )
        if llm is not None:
            tokenizer = load_tokenizer(llm)
            # -s: tokens differing only in case are different tokens of the LLM.
            scores["ter"] = sclite_error_rate(
                decode_dir / "score_ter",
                llm_tokens(tokenizer, references),
                llm_tokens(tokenizer, transcripts),
                utt2spk,
                options=["-s"],
            )
    if WHISPER_TRANSCRIPT in decoded:
        scores["wer_whisper"] = sclite_error_rate(
            decode_dir / "cascade_whisper" / "score_wer",
            reference_words,
            {
                u: normalize(text).split()
                for u, text in decoded[WHISPER_TRANSCRIPT].items()
            },
            utt2spk,
        )

    text_answers = list(decoded[TEXT_RESPONSE].values())
    pairs = {
        f"{RESPONSE_LABELS[name]}_vs_text": (list(decoded[name].values()), text_answers)
        for name in (SPEECH_RESPONSE, CASCADE_RESPONSE, WHISPER_CASCADE_RESPONSE)
        if name in decoded
    }
    scores["response"] = score_responses(
        pairs, decode_dir / "score_response" / "result.txt"
    )

    if answers is not None:
        responses = {name: decoded[name] for name in names if name in RESPONSE_LABELS}
        scores["answer"] = score_answers(
            answers, responses, decode_dir / "score_answer" / "result.txt"
        )

    with atomic_open(decode_dir / "scores.json") as f:
        json.dump(scores, f, indent=2)
        f.write("\n")
    return scores
