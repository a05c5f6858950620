"""The reliability report: its section of RESULTS.md, its figures and its exit status.

The suites it runs have their own tests (test_bad_inputs.py, test_kill_resume.py); here they
are replaced by their records, to check what the report makes of them.
"""

from pathlib import Path

import pytest

from espnet_alignchat import bad_inputs, kill_resume
from espnet_alignchat.bin import reliability_report

RECORDS = [
    bad_inputs.Record("format_data", "stereo", True, "", "processed"),
    bad_inputs.Record("format_data", "nan", True, "u3: NaN samples", "skipped"),
    bad_inputs.Record("alignchat_inference", "nan", False, "Traceback", "skipped"),
]


def trial(stage: int, **changes) -> kill_resume.Trial:
    fields = dict(
        stage=stage,
        trial=1,
        kill_at_s=3.5,
        killed=True,
        ended_first=0,
        running="python3 -m espnet_alignchat.bin.format_data",
        resumed=True,
        lost=0,
        duplicated=0,
        checkpoints_load=None,
        equal=True,
        seconds=20.0,
    )
    return kill_resume.Trial(**{**fields, **changes})


@pytest.fixture
def suites(monkeypatch, tmp_path):
    """The suites' results as given, without running them."""
    reference = kill_resume.Reference({2: 12, 4: 30}, tmp_path)
    trials = [trial(2), trial(4, checkpoints_load=True)]

    def run_trials(work_dir, trials_per_stage, seed):
        return reference, trials

    monkeypatch.setattr(bad_inputs, "run_suite", lambda work_dir: RECORDS)
    monkeypatch.setattr(kill_resume, "run_trials", run_trials)
    return trials


def test_the_section_replaces_the_last_one_and_nothing_else():
    document = "# RESULTS\n\nbefore\n"
    once = reliability_report.replace_section(document, "first figures")
    assert once.startswith(document) and "first figures" in once
    twice = reliability_report.replace_section(once + "\nafter\n", "second figures")
    assert "first figures" not in twice and "second figures" in twice
    assert twice.startswith(document) and twice.endswith("\nafter\n")
    assert twice.count(reliability_report.BEGIN) == 1


def test_the_report_writes_its_figures_and_fails_on_what_was_not_handled(
    suites, tmp_path, capsys
):
    results = tmp_path / "RESULTS.md"
    results.write_text("# RESULTS\n")
    with pytest.raises(SystemExit) as exit:
        reliability_report.main(
            ["--results", str(results), "--output", str(tmp_path / "r.json")]
        )
    assert exit.value.code == 1  # one (entry point, kind) was not handled
    section = results.read_text()
    assert "2 of 3 (entry point, kind) pairs handled" in section
    assert "- not handled: alignchat_inference, nan: Traceback" in section
    assert "2 SIGKILLs in 2 trials; 2 reruns completed; 0 utterances lost" in section
    assert (tmp_path / "r.json").is_file()


def test_a_clean_run_exits_0(suites, monkeypatch, tmp_path):
    monkeypatch.setattr(bad_inputs, "run_suite", lambda work_dir: RECORDS[:2])
    results = tmp_path / "RESULTS.md"
    results.write_text("# RESULTS\n")
    with pytest.raises(SystemExit) as exit:
        reliability_report.main(["--results", str(results), "--suites", "inputs"])
    assert exit.value.code == 0
    assert "SIGKILL" not in results.read_text()


def test_a_lost_utterance_fails_the_report(suites, tmp_path):
    suites[0].lost = 1
    results = tmp_path / "RESULTS.md"
    results.write_text("# RESULTS\n")
    with pytest.raises(SystemExit) as exit:
        reliability_report.main(["--results", str(results), "--suites", "kills"])
    assert exit.value.code == 1
    assert "1 utterances lost" in results.read_text()


def test_a_missing_results_file_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit):
        reliability_report.main(["--results", str(tmp_path / "none.md")])
    error = capsys.readouterr().err.strip()
    assert error.startswith("reliability_report: error:") and "\n" not in error
    assert Path(tmp_path / "none.md").name in error
