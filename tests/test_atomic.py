"""Outputs appear whole or not at all, and a disk that refuses them is one line."""

import errno
import os

import pytest
from conftest import UTTERANCES, write_data_dir

from espnet_alignchat import atomic
from espnet_alignchat.bin import format_data
from espnet_alignchat.datadir import read_kaldi_map, write_kaldi_map


def test_a_complete_write_replaces_the_file_and_leaves_no_partial(tmp_path):
    path = tmp_path / "text"
    path.write_text("old\n")
    atomic.atomic_write_text(path, "new\n")
    assert path.read_text() == "new\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["text"]


def test_a_writer_failing_half_way_leaves_the_old_file(tmp_path):
    path = tmp_path / "text"
    write_kaldi_map(path, {"a": "one", "b": "two"})
    # The second value is not text: writing fails after the first line.
    with pytest.raises(AttributeError):
        write_kaldi_map(path, {"a": "uno", "b": None})
    assert read_kaldi_map(path) == {"a": "one", "b": "two"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["text"]


def test_a_full_disk_is_one_line_and_no_half_file(
    tmp_path, tiny_llm, monkeypatch, capfd
):
    source = write_data_dir(tmp_path / "source", UTTERANCES)

    def full_disk(partial, path):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(atomic.os, "replace", full_disk)
    out = tmp_path / "formatted"
    with pytest.raises(SystemExit) as exit_info:
        format_data.main(
            ["--in_dir", str(source), "--out_dir", str(out), "--llm", str(tiny_llm)]
        )
    assert exit_info.value.code == 1
    err = capfd.readouterr().err.strip().splitlines()
    assert err[-1].startswith("format_data: error: [Errno 28] No space left on device")
    assert "Traceback" not in "\n".join(err)
    assert not [p for p in out.rglob("*") if p.is_file() and "partial" in p.name]
