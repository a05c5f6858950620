"""Stage-8 scoring with the real sclite (Debian's sctk) and sacrebleu, on hand-made decode dirs."""

import json
from pathlib import Path
from typing import Dict, Optional

import pytest

from espnet_alignchat.bin import alignchat_results, alignchat_score
from espnet_alignchat.datadir import write_kaldi_map
from espnet_alignchat.results import results_table
from espnet_alignchat.scoring import normalize, sclite_safe, score_decode_dir
from espnet_alignchat.testing import build_word_tokenizer

TEN_WORDS = "what is two plus three the answer is five thank"


def write_dirs(tmp_path: Path, files: Dict[str, Dict[str, str]]):
    """A data dir and a decode dir from {relative name: {uttid: value}}.

    Names starting with ``data/`` go to the data dir (utt2spk is made from its text), the
    others to the decode dir; the speaker is the uttid's prefix, as in Kaldi.
    """
    data_dir, decode_dir = tmp_path / "data", tmp_path / "exp/m/decode/test"
    for name, entries in files.items():
        path = tmp_path / name if name.startswith("data/") else decode_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        write_kaldi_map(path, entries)
    texts = files["data/text"]
    write_kaldi_map(data_dir / "utt2spk", {u: u.split("_")[0] for u in texts})
    return data_dir, decode_dir


def decoded(
    transcripts: Dict[str, str],
    speech: Dict[str, str],
    text: Dict[str, str],
    cascade: Optional[Dict[str, str]] = None,
    reference: Optional[Dict[str, str]] = None,
) -> Dict[str, Dict[str, str]]:
    """What decoding leaves: transcripts and the three kinds of responses (reference text:
    `reference`, or the transcripts themselves)."""
    files = {
        "data/text": reference or transcripts,
        "text": transcripts,
        "response": speech,
        "text_input/response": text,
    }
    if cascade is not None:
        files["cascade/response"] = cascade
    return files


def test_wer_one_substitution_and_one_deletion_over_ten_words(tmp_path):
    hypothesis = "what is two plus four the answer is five"  # three→four, no "thank"
    data_dir, decode_dir = write_dirs(
        tmp_path,
        decoded(
            {"a_1": hypothesis}, {"a_1": ""}, {"a_1": ""}, reference={"a_1": TEN_WORDS}
        ),
    )
    wer = score_decode_dir(data_dir, decode_dir)["wer"]
    assert (wer["wrd"], wer["errors"], wer["err"]) == (10, 2, 20.0)
    rates = {name: wer[name] for name in ("sub", "del", "ins", "s_err")}
    assert rates == {"sub": 10.0, "del": 10.0, "ins": 0.0, "s_err": 100.0}
    score_dir = decode_dir / "score_wer"
    assert (score_dir / "ref.trn").read_text() == f"{TEN_WORDS}\t(a-a_1)\n"
    assert (score_dir / "hyp.trn").read_text() == f"{hypothesis}\t(a-a_1)\n"
    report = (score_dir / "result.txt").read_text()
    assert (
        "| Sum/Avg|    1     10 | 80.0   10.0   10.0    0.0   20.0  100.0 |" in report
    )


def test_words_sclite_would_interpret_are_escaped_and_scored_as_words(tmp_path):
    reference = ";; (hi) {x / y} @ 100%"
    assert sclite_safe("(a b)") == "%0028a%0020b%0029"
    assert sclite_safe("100%") == "100%0025"
    data_dir, decode_dir = write_dirs(
        tmp_path,
        decoded({"a_1": reference}, {"a_1": ""}, {"a_1": ""}),
    )
    wer = score_decode_dir(data_dir, decode_dir)["wer"]
    assert (wer["wrd"], wer["errors"]) == (4, 0)  # normalised: hi x y 100


def test_wer_ignores_case_and_punctuation_but_ter_does_not(tmp_path):
    tokenizer_dir = tmp_path / "llm"
    build_word_tokenizer(["what", "What", "is", "it", "?"]).save_pretrained(
        tokenizer_dir
    )
    files = decoded(
        {"a_1": "what is it"},
        {"a_1": ""},
        {"a_1": ""},
        reference={"a_1": "What is it ?"},
    )
    data_dir, decode_dir = write_dirs(tmp_path, files)
    scores = score_decode_dir(data_dir, decode_dir, llm=str(tokenizer_dir))
    assert (scores["wer"]["wrd"], scores["wer"]["errors"]) == (3, 0)
    assert (scores["ter"]["wrd"], scores["ter"]["errors"]) == (4, 2)


def test_whisper_cascade_is_scored_when_decoding_made_one(tmp_path):
    transcripts = {"a_1": "what is two plus three", "a_2": "hello"}
    text = {"a_1": "Five.", "a_2": "Hi there."}
    files = decoded(transcripts, text, text, cascade=text)
    files["cascade_whisper/data/text"] = {
        "a_1": "What is 2 plus three?",
        "a_2": "Hello.",
    }
    files["cascade_whisper/response"] = {"a_1": "Five.", "a_2": "Hello!"}
    data_dir, decode_dir = write_dirs(tmp_path, files)
    scores = score_decode_dir(data_dir, decode_dir)
    assert (scores["wer_whisper"]["wrd"], scores["wer_whisper"]["errors"]) == (6, 1)
    assert (decode_dir / "cascade_whisper/score_wer/result.txt").is_file()
    assert scores["response"]["cascade_whisper_vs_text"]["exact_agreement"] == 50.0
    table = results_table(tmp_path / "exp")
    header, row = table.splitlines()[-3], table.splitlines()[-1]
    cells = dict(zip(header.split("|"), row.split("|")))
    assert cells["WER whisper"] == "16.7" and cells["agree whisper cascade"] == "50.0"
    assert cells["agree speech"] == "100.0" and cells["acc speech"] == ""


def test_ter_counts_the_llms_tokens(tmp_path):
    tokenizer_dir = tmp_path / "llm"
    build_word_tokenizer(TEN_WORDS.split()).save_pretrained(tokenizer_dir)
    # The word tokenizer knows neither zebra nor giraffe: both are <unk> for the LLM.
    files = decoded(
        {"a_1": "what is two plus giraffe"},
        {"a_1": ""},
        {"a_1": ""},
        reference={"a_1": "what is two plus zebra"},
    )
    data_dir, decode_dir = write_dirs(tmp_path, files)
    scores = score_decode_dir(data_dir, decode_dir, llm=str(tokenizer_dir))
    assert scores["wer"]["err"] == 20.0
    assert (scores["ter"]["wrd"], scores["ter"]["err"]) == (5, 0.0)
    ref_trn = (decode_dir / "score_ter" / "ref.trn").read_text()
    assert ref_trn == "what is two plus <unk>\t(a-a_1)\n"


def test_identical_responses_score_100_and_others_less(tmp_path):
    text = {"a_1": "The answer is five.", "a_2": "Hello world, thank you."}
    cascade = {"a_1": "The answer is nine.", "a_2": "Hello world, thank you."}
    transcripts = {"a_1": "what is two plus three", "a_2": "hello"}
    data_dir, decode_dir = write_dirs(
        tmp_path, decoded(transcripts, dict(text), text, cascade)
    )
    response = score_decode_dir(data_dir, decode_dir)["response"]
    assert response["speech_vs_text"] == dict(
        bleu=100.0, chrf=100.0, exact_agreement=100.0
    )
    assert response["cascade_vs_text"]["bleu"] < 100.0
    assert response["cascade_vs_text"]["chrf"] < 100.0
    assert response["cascade_vs_text"]["exact_agreement"] == 50.0
    report = (decode_dir / "score_response" / "result.txt").read_text()
    assert "BLEU|nrefs:1|case:mixed|eff:yes|tok:13a|smooth:exp|version:" in report
    assert "chrF2|nrefs:1|" in report


def test_accuracy_is_an_exact_match_after_normalisation(tmp_path):
    assert normalize("  Seven!\tIt's  SEVEN. ") == "seven its seven"
    answers = {"a_1": "seven", "a_2": "Big", "a_3": "nine", "a_4": "no"}
    speech = {"a_1": "Seven.", "a_2": "  big ", "a_3": "eight", "a_4": "yes"}
    text = {"a_1": "seven", "a_2": "BIG!", "a_3": "nine", "a_4": "yes"}
    files = decoded({u: "x" for u in answers}, speech, text, cascade=text)
    files["data/answer"] = answers
    data_dir, decode_dir = write_dirs(tmp_path, files)
    answer = score_decode_dir(data_dir, decode_dir)["answer"]
    assert answer == dict(
        utterances=4, speech=50.0, text=75.0, cascade=75.0, speech_over_text=50 / 75
    )
    report = (decode_dir / "score_answer" / "result.txt").read_text()
    assert "speech (response): 50.0% (2/4)" in report


def test_missing_hypotheses_are_counted_and_scored_as_empty(tmp_path, capsys):
    reference = {"a_1": "one two three four", "b_1": "five six seven eight"}
    files = decoded(
        {"a_1": "one two three four"},  # b_1 has no transcript
        {"a_1": "four", "b_1": "eight"},
        {"a_1": "four"},  # nor a text-conditioned response
        reference=reference,
    )
    files["skipped"] = {"b_1": "b_1: cannot read audio"}
    data_dir, decode_dir = write_dirs(tmp_path, files)
    alignchat_score.main(["--data_dir", str(data_dir), "--decode_dir", str(decode_dir)])
    scores = json.loads((decode_dir / "scores.json").read_text())
    assert scores["missing"] == {"text": 1, "response": 0, "text_input/response": 1}
    assert scores["skipped"] == 1
    wer = scores["wer"]
    assert (wer["wrd"], wer["del"], wer["err"]) == (8, 50.0, 50.0)  # 4 deletions
    assert "\t(b-b_1)\n" in (decode_dir / "score_wer" / "hyp.trn").read_text()
    assert scores["response"]["speech_vs_text"]["exact_agreement"] == 50.0
    # No cascade dir, no answer file: those scores are simply absent.
    assert "cascade_vs_text" not in scores["response"] and "answer" not in scores
    assert not (decode_dir / "score_answer").exists()
    assert "missing lines, scored as empty: text 1, text_input/response 1" in (
        capsys.readouterr().out
    )


def test_bad_input_is_one_line_naming_the_file(tmp_path, capsys, monkeypatch):
    files = decoded({"a_1": "one", "z_9": "two"}, {}, {}, reference={"a_1": "one"})
    data_dir, decode_dir = write_dirs(tmp_path, files)
    args = ["--data_dir", str(data_dir), "--decode_dir", str(decode_dir)]
    with pytest.raises(SystemExit):
        alignchat_score.main(args)
    error = capsys.readouterr().err
    assert error == (
        f"alignchat_score: error: {decode_dir}/text: utterance z_9 is not in the data "
        "dir's text\n"
    )
    write_kaldi_map(decode_dir / "text", {"a_1": "one"})
    write_kaldi_map(data_dir / "answer", {"a_1": ""})
    with pytest.raises(SystemExit):
        alignchat_score.main(args)
    assert capsys.readouterr().err == (
        f"alignchat_score: error: {data_dir}/answer: utterance a_1 has no answer\n"
    )
    monkeypatch.setenv("PATH", str(tmp_path))  # neither sclite nor sctk
    with pytest.raises(SystemExit):
        alignchat_score.main(args)
    assert "apt-get install sctk" in capsys.readouterr().err


def test_results_table_has_a_row_per_scores_json(tmp_path, capsys):
    exp = tmp_path / "exp"
    full = dict(
        utterances=40,
        wer={"err": 12.5},
        ter={"err": 10.3},
        answer=dict(speech=80.0, text=90.0, cascade=85.0, speech_over_text=80 / 90),
        response={"speech_vs_text": dict(bleu=70.0, chrf=75.5)},
    )
    partial = dict(utterances=30, wer={"err": 20.0}, response=full["response"])
    for path, scores in [
        ("instruct/decode/test", full),
        ("pretrain/decode/dev", partial),
    ]:
        (exp / path).mkdir(parents=True)
        (exp / path / "scores.json").write_text(json.dumps(scores))
    alignchat_results.main(["--exp_dir", str(exp)])
    table = capsys.readouterr().out
    assert "- python version: `" in table and "- espnet version: `" in table
    assert (
        f"|{exp}/instruct|decode|test|40|12.5|10.3||75.5|70.0||||||80.0|90.0|85.0|0.889|"
        in table
    )
    assert f"|{exp}/pretrain|decode|dev|30|20.0|||75.5|70.0||||||||||" in table
    alignchat_results.main(["--exp_dir", str(exp), "--output", str(tmp_path / "R.md")])
    assert (tmp_path / "R.md").read_text().endswith(table.splitlines()[-1] + "\n")
