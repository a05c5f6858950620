"""compare_answers: agreement per answer file and the paired sign test against the first."""

import math

import pytest

from espnet_alignchat.bin import compare_answers


def write_map(path, mapping):
    path.write_text("".join(f"{k} {v}\n" for k, v in mapping.items()), encoding="utf-8")
    return path


def test_sign_test_matches_the_binomial_tails():
    assert compare_answers.sign_test_p(0, 0) == 1.0
    assert compare_answers.sign_test_p(5, 5) == 1.0
    # 8 of 10 discordant prompts one way: 2 * P(X <= 2), X ~ Bin(10, 1/2)
    expected = 2 * sum(math.comb(10, i) for i in range(3)) / 2**10
    assert compare_answers.sign_test_p(8, 2) == pytest.approx(expected)
    assert compare_answers.sign_test_p(2, 8) == compare_answers.sign_test_p(8, 2)
    assert compare_answers.sign_test_p(20, 0) < 1e-5


def test_table_counts_paired_wins_and_losses(tmp_path, capsys):
    reference = {f"u{i}": f"answer {i}." for i in range(6)}
    ref = write_map(tmp_path / "ref", reference)
    # base agrees on u0-u3 (case and punctuation do not matter); other on u2-u5
    base = write_map(
        tmp_path / "base", {**reference, "u0": "ANSWER 0", "u4": "x", "u5": "y"}
    )
    other = write_map(tmp_path / "other", {**reference, "u0": "no", "u1": "no"})
    compare_answers.main(["--reference", str(ref), f"a={base}", f"b={other}"])
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("6 prompts")
    rows = {line.split(" | ")[0].strip("| "): line for line in out[3:]}
    assert rows["a"].split(" | ")[1] == "66.7"
    # b: agrees on u2..u5; only b: u4, u5; only a: u0, u1
    cells = [c.strip(" |") for c in rows["b"].split(" | ")]
    assert cells[1:5] == ["66.7", "2", "2", "1.000"]


def test_missing_lines_disagree_and_unknown_ids_are_one_line(tmp_path, capsys):
    ref = write_map(tmp_path / "ref", {"u0": "yes", "u1": "no"})
    partial = write_map(tmp_path / "partial", {"u0": "yes"})
    compare_answers.main(["--reference", str(ref), f"p={partial}"])
    assert "| p | 50.0 |" in capsys.readouterr().out
    stray = write_map(tmp_path / "stray", {"u0": "yes", "u9": "no"})
    with pytest.raises(SystemExit):
        compare_answers.main(["--reference", str(ref), f"s={stray}"])
    err = capsys.readouterr().err.strip()
    assert (
        err == f"compare_answers: error: {stray}: utterance u9 is not in the reference"
    )
    with pytest.raises(SystemExit):
        compare_answers.main(["--reference", str(tmp_path / "none"), f"p={partial}"])
    assert "no such answer file" in capsys.readouterr().err
