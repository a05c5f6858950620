"""``espnet-alignchat``: chat (one-shot and interactive, as a subprocess), inspect, help."""

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_model_args

from espnet_alignchat.__main__ import main
from espnet_alignchat.alignment import alignment_figure, inspect_alignment
from espnet_alignchat.inference import Speech2Chat
from espnet_alignchat.task import AlignChatTask

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def chat(tiny_recipe) -> Speech2Chat:
    return Speech2Chat.from_pretrained(tiny_recipe / "exp/tiny", device="cpu")


@pytest.fixture(scope="module")
def wavs(tiny_recipe):
    return [
        str(tiny_recipe / f"data/wav/spk{s}_utt{i}.wav") for s, i in ((1, 0), (2, 3))
    ]


TURNS = [
    "{0}",
    "what is one plus one",
    "/nowhere.wav",
    "/reset",
    "{1}",
    "/quit",
    "unread",
]


def start_cli(tiny_recipe, cwd, *args) -> subprocess.Popen:
    """``python -m espnet_alignchat chat`` from an unrelated directory."""
    command = [sys.executable, "-m", "espnet_alignchat", "chat", "--device", "cpu"]
    command += ["--model", str(tiny_recipe / "exp/tiny"), "--max_new_tokens", "5"]
    env = dict(os.environ, OMP_NUM_THREADS="1")  # tiny models: one thread is fastest
    return subprocess.Popen(
        [*command, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
        env=env,
    )


@pytest.fixture(scope="module")
def sessions(tiny_recipe, wavs, tmp_path_factory):
    """(exit code, stdout, stderr) of a one-shot and an interactive run, started together:
    most of their time is Python importing ESPnet."""
    cwd = tmp_path_factory.mktemp("cli")
    one_shot = start_cli(tiny_recipe, cwd, "--wav", *wavs, "--show_transcript", "true")
    interactive = start_cli(tiny_recipe, cwd)
    stdin = "\n".join(turn.format(*wavs) for turn in TURNS) + "\n"
    runs = {"one_shot": (one_shot, ""), "interactive": (interactive, stdin)}
    results = {}
    for name, (process, text) in runs.items():
        out, err = process.communicate(text)
        results[name] = (process.returncode, out, err)
    return results


def test_one_shot_answers_each_file(chat, wavs, sessions):
    code, out, err = sessions["one_shot"]
    assert code == 0, err
    expected = []
    for wav in wavs:
        expected += [
            f"heard: {chat.transcribe(wav)}",
            f"{wav}: {chat(wav, max_new_tokens=5)}",
        ]
    assert out.splitlines() == expected


def test_an_interactive_session_is_a_conversation(chat, wavs, sessions):
    code, out, err = sessions["interactive"]
    assert code == 0, err
    first = chat(wavs[0], max_new_tokens=5)
    history = [
        {"role": "user", "speech": wavs[0]},
        {"role": "assistant", "content": first},
    ]
    second = chat(
        history + [{"role": "user", "content": "what is one plus one"}],
        max_new_tokens=5,
    )
    after_reset = chat(wavs[1], max_new_tokens=5)
    assert out.splitlines() == [first, second, after_reset]
    assert "error: /nowhere.wav: no such file" in err


def test_inspect_prints_token_scores_and_saves_the_heatmap(
    chat, wavs, tiny_recipe, tmp_path, capsys
):
    heatmap = tmp_path / "attention.png"
    main(
        ["inspect", "--model", str(tiny_recipe / "exp/tiny"), "--device", "cpu"]
        + ["--wav", wavs[0], "--text", "what is two plus three"]
        + ["--heatmap", str(heatmap)]
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["step", "decoded", "cos", "reference", "cos", "rank"]
    rows = [line.split() for line in lines[1:7]]
    assert [row[3] for row in rows] == [
        "'what'",
        "'is'",
        "'two'",
        "'plus'",
        "'three'",
    ] + ["'<|end|>'"]
    assert all(row[5] == "1" for row in rows if row[1] == row[3])
    assert lines[7] == f"transcript: {chat.transcribe(wavs[0])}"
    assert heatmap.read_bytes()[:4] == b"\x89PNG"

    report = inspect_alignment(chat, wavs[0], "what is two plus three")
    layers, steps, frames = report.attention.shape
    assert steps == 6 and layers == len(chat.model.decoder.blocks)
    assert abs(report.attention.sum(-1) - 1).max() < 1e-4  # weights over frames
    free = inspect_alignment(chat, wavs[0])
    assert [row.predicted for row in free.rows[:-1]] == free.labels[:-1]
    waveform_axes, token_axes, _ = alignment_figure(report).axes  # and a colour bar
    assert token_axes.get_xlim() == (0.0, len(report.waveform) / chat.sample_rate)
    assert [tick.get_text() for tick in token_axes.get_yticklabels()] == [
        repr(label) for label in report.labels
    ]


def test_help_lists_the_commands_and_the_console_script_exists(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    usage = capsys.readouterr().out
    assert all(name in usage for name in ("chat", "pack", "inspect", "demo"))
    setup = (Path(__file__).parents[1] / "setup.py").read_text()
    module, function = re.search(r'"espnet-alignchat=([\w.]+):(\w+)"', setup).groups()
    assert getattr(importlib.import_module(module), function) is main


def test_the_demo_without_gradio_says_how_to_install_it(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)  # `import gradio` fails
    monkeypatch.delitem(sys.modules, "espnet_alignchat.demo", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--model", "exp/nowhere"])
    assert exit_info.value.code == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("espnet-alignchat demo: error: the demo needs Gradio")
    assert error.endswith('pip install -e ".[demo]"') and "\n" not in error


def test_the_alignment_has_a_row_per_token_after_whispers_two_token_start(tiny_llm):
    """A ``whisper``-vocabulary decoder starts from two start vectors, not one: the report
    keeps the rows of the steps that emit tokens."""
    args = tiny_model_args(tiny_llm)
    args.decoder_conf["vocabulary"] = "whisper"
    model = AlignChatTask.build_model(args).eval()
    assert model.decoder.prefix_length == 2
    chat = Speech2Chat(model, max_tokens=4)
    speech = np.random.default_rng(0).standard_normal(8000).astype(np.float32) * 0.1
    report = inspect_alignment(chat, speech, "what is two plus three")
    assert report.attention.shape[1] == len(report.labels) == 6
    assert abs(report.attention.sum(-1) - 1).max() < 1e-4
