"""Bad input everywhere it can enter (`espnet_alignchat.bad_inputs`): the suite runs once, each
entry point once on the corpus of every kind, and each (entry point, kind) is a test."""

from typing import Dict, Tuple

import numpy as np
import pytest
import soundfile

from espnet_alignchat.bad_inputs import (
    ENTRY_POINTS,
    HANDLING,
    KINDS,
    Record,
    markdown_table,
    run_suite,
)
from espnet_alignchat.bad_inputs.judging import lines_naming
from espnet_alignchat.datadir import read_audio_file, wav_is_cut

CASES = [(entry, kind) for entry, kinds in HANDLING.items() for kind in kinds]


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> Dict[Tuple[str, str], Record]:
    work = tmp_path_factory.mktemp("bad_inputs")
    return {(r.entry_point, r.kind): r for r in run_suite(work)}


@pytest.mark.parametrize(
    "entry_point, kind", CASES, ids=[f"{entry}-{kind}" for entry, kind in CASES]
)
def test_each_kind_is_handled_at_each_entry_point(records, entry_point, kind):
    record = records[(entry_point, kind)]
    assert record.how == HANDLING[entry_point][kind]
    assert record.handled, record.line
    assert record.line and "\n" not in record.line  # one line, what the user saw


def test_the_table_has_a_cell_per_kind_and_entry_point(records):
    table = markdown_table(list(records.values())).splitlines()
    assert table[0] == "| kind | " + " | ".join(ENTRY_POINTS) + " |"
    assert [row.split(" | ")[0].strip("| ") for row in table[2:-1]] == list(KINDS)
    handled = {entry: len(kinds) for entry, kinds in HANDLING.items()}
    assert (
        table[-1]
        == "| handled | "
        + " | ".join(f"{handled[entry]}/{handled[entry]}" for entry in ENTRY_POINTS)
        + " |"
    )


def test_a_line_names_an_id_only_as_a_whole_word():
    log = "rec_stereo: fine\n/audio/stereo.wav read\nstereo: the audio is empty\r"
    assert lines_naming(log, "stereo") == ["stereo: the audio is empty"]
    assert lines_naming("items.jsonl:21: no audio", "items.jsonl:2") == []


def test_a_wav_cut_short_is_refused_and_a_streamed_one_is_whole(tmp_path):
    samples = np.zeros(16000, dtype=np.int16)
    soundfile.write(tmp_path / "a.wav", samples, 16000)
    whole = (tmp_path / "a.wav").read_bytes()
    (tmp_path / "cut.wav").write_bytes(whole[: len(whole) // 2])
    assert wav_is_cut(str(tmp_path / "cut.wav"))
    with pytest.raises(OSError, match="cut short"):
        read_audio_file(str(tmp_path / "cut.wav"))
    # A WAV written to a pipe declares no data size (0xFFFFFFFF): not cut.
    data = whole.index(b"data")
    streamed = whole[: data + 4] + b"\xff\xff\xff\xff" + whole[data + 8 :]
    (tmp_path / "streamed.wav").write_bytes(streamed)
    assert not wav_is_cut(str(tmp_path / "streamed.wav"))
    assert len(read_audio_file(str(tmp_path / "a.wav"))[0]) == 16000
