"""Both training stages through ESPnet's own `main`, then `alignchat_inference`, on tiny data."""

import logging
import subprocess
import sys

import pytest
import torch
import yaml
from conftest import UTTERANCES, collect_stats, train, write_data_dir

from espnet_alignchat.bin import alignchat_inference, alignchat_train, checkpoint_report
from espnet_alignchat.datadir import read_kaldi_map
from espnet_alignchat.inference import Speech2Chat
from espnet_alignchat.llm import load_embeddings
from espnet_alignchat.search import Hypothesis


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_llm):
    """Statistics, stage 1, then stage 2 initialised from stage 1."""
    tmp = tmp_path_factory.mktemp("recipe")
    data = write_data_dir(tmp / "data", UTTERANCES)
    stats = tmp / "stats"
    collect_stats(tiny_llm, data, stats)
    train(tmp, tiny_llm, data, stats, tmp / "pretrain", "pretrain")
    train(
        tmp,
        tiny_llm,
        data,
        stats,
        tmp / "instruct",
        "instruct",
        "--init_param",
        str(tmp / "pretrain" / "1epoch.pth"),
    )
    return tmp


def test_collect_stats_writes_shapes_and_feature_stats(trained):
    assert (trained / "stats/train/speech_shape").read_text().count("\n") == len(
        UTTERANCES
    )
    assert (trained / "stats/train/feats_stats.npz").is_file()


def test_training_writes_espnet_outputs(trained):
    for stage in ("pretrain", "instruct"):
        exp = trained / stage
        assert (exp / "config.yaml").is_file() and (exp / "1epoch.pth").is_file()
        assert (exp / "images" / "loss.png").is_file()
        config = yaml.safe_load((exp / "config.yaml").read_text())
        assert config["llm_fingerprint"]["vocab_size"] > 0
        assert config["model_conf"]["end_token_id"] is not None
    # The attention plots show the decoder's cross-attention over encoder frames.
    plots = [p.name for p in (trained / "instruct" / "att_ws").rglob("*.png")]
    assert any("src_attn" in name for name in plots), plots
    assert (trained / "instruct" / "images" / "loss_response.png").is_file()


def test_checkpoints_hold_no_llm_weights(trained, tiny_llm):
    state = torch.load(trained / "instruct" / "1epoch.pth", weights_only=True)
    assert not any(key.startswith(("llm.", "model.")) for key in state)
    from safetensors.torch import load_file

    llm_tensors = load_file(tiny_llm / "model.safetensors").values()
    for value in state.values():  # no LLM tensor was stored under another name either
        assert not any(
            value.shape == llm.shape and torch.equal(value, llm) for llm in llm_tensors
        )


def test_checkpoint_report_counts_llm_tensors(trained, tiny_llm, tmp_path, capsys):
    checkpoint = trained / "instruct" / "1epoch.pth"
    state = torch.load(checkpoint, weights_only=True)
    state["stowaway"] = load_embeddings(str(tiny_llm))  # as if the LLM had been saved
    doctored = tmp_path / "doctored.pth"
    torch.save(state, doctored)
    checkpoint_report.main(["--llm", str(tiny_llm), str(checkpoint), str(doctored)])
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[0] == str(checkpoint) and lines[1].split()[-1] == "0"
    assert lines[2].split()[0] == str(doctored) and lines[2].split()[-1] == "1"
    assert lines[3].startswith(f"the LLM ({tiny_llm}):")


def test_training_resumes_from_its_checkpoint(trained, tiny_llm, caplog):
    caplog.set_level(logging.INFO)
    exp = trained / "instruct"
    first_epoch = (exp / "1epoch.pth").stat().st_mtime
    data, stats = trained / "data", trained / "stats"
    train(
        trained,
        tiny_llm,
        data,
        stats,
        exp,
        "instruct",
        "--max_epoch",
        "2",
        "--resume",
        "true",
    )
    assert "The training was resumed" in caplog.text
    assert (exp / "2epoch.pth").is_file()
    assert (exp / "1epoch.pth").stat().st_mtime == first_epoch  # not trained again


def test_inference_writes_transcripts_and_answers(trained):
    out = trained / "decode"
    alignchat_inference.main(
        ["--model_dir", str(trained / "instruct"), "--model_file", "1epoch.pth"]
        + ["--data_dir", str(trained / "data"), "--output_dir", str(out)]
        + ["--batch_size", "3", "--max_new_tokens", "5"]
    )
    text, response = read_kaldi_map(out / "text"), read_kaldi_map(out / "response")
    assert sorted(text) == sorted(response) == sorted(UTTERANCES)
    assert read_kaldi_map(out / "skipped") == {}


def test_inference_on_text_answers_the_transcripts(trained):
    out = trained / "decode_text"
    alignchat_inference.main(
        ["--model_dir", str(trained / "instruct"), "--model_file", "1epoch.pth"]
        + ["--data_dir", str(trained / "data"), "--output_dir", str(out)]
        + ["--text_input", "true", "--max_new_tokens", "5", "--beam_size", "2"]
    )
    assert sorted(read_kaldi_map(out / "response")) == sorted(UTTERANCES)
    assert not (out / "text").exists()


def test_an_empty_transcript_is_reported(trained, tmp_path, caplog, monkeypatch):
    decode = Speech2Chat.tokenize

    def heard_nothing_in_the_first(self, speech):  # alignchat_inference gives a list
        hypotheses = decode(self, speech)
        first = hypotheses[0]
        hypotheses[0] = Hypothesis([], first.vectors[:0], first.score, True)
        return hypotheses

    monkeypatch.setattr(Speech2Chat, "tokenize", heard_nothing_in_the_first)
    out = tmp_path / "decode"
    alignchat_inference.main(
        ["--model_dir", str(trained / "instruct"), "--model_file", "1epoch.pth"]
        + ["--data_dir", str(trained / "data"), "--output_dir", str(out)]
        + ["--batch_size", "8", "--max_new_tokens", "2"]
    )
    empty = [key for key, text in read_kaldi_map(out / "text").items() if not text]
    assert len(empty) == 1
    assert f"{empty[0]}: the speech tokenizer heard nothing" in caplog.text
    assert f"1 of {len(UTTERANCES)} utterances got an empty transcript" in caplog.text


def test_wrong_llm_is_refused_with_one_line(trained, other_llm, tmp_path, capfd):
    with pytest.raises(SystemExit) as exit_info:
        alignchat_inference.main(
            ["--model_dir", str(trained / "instruct"), "--model_file", "1epoch.pth"]
            + ["--llm", str(other_llm)]
            + ["--data_dir", str(trained / "data"), "--output_dir", str(tmp_path)]
        )
    assert exit_info.value.code == 1
    err = capfd.readouterr().err.strip().splitlines()
    assert err[-1].startswith("alignchat_inference: error: this speech tokenizer was")
    assert "Traceback" not in "\n".join(err)


def test_unloadable_utterances_are_skipped_and_counted(
    trained, tiny_llm, tmp_path, caplog
):
    """An empty transcript and an unreadable file: training goes on without them."""
    caplog.set_level(logging.INFO)
    data = write_data_dir(tmp_path / "data", UTTERANCES)
    lines = (data / "text").read_text().splitlines()
    empty = lines[1].split()[0]
    lines[1] = empty  # the utterance id alone: an empty transcript
    (data / "text").write_text("\n".join(lines) + "\n")
    wavs = (data / "wav.scp").read_text().splitlines()
    unreadable = wavs[2].split()[0]
    (tmp_path / "broken.wav").write_bytes(b"not audio at all")
    wavs[2] = f"{unreadable} {tmp_path / 'broken.wav'}"
    (data / "wav.scp").write_text("\n".join(wavs) + "\n")
    exp = tmp_path / "exp"
    train(tmp_path, tiny_llm, data, trained / "stats", exp, "pretrain")
    assert (exp / "1epoch.pth").is_file()
    skipped = read_kaldi_map(exp / "skipped_train")
    assert sorted(skipped) == sorted([empty, unreadable])
    assert "text is empty" in skipped[empty]
    assert f"{unreadable}: cannot read audio" in caplog.text
    assert "2 train utterances (or their lines) were skipped" in caplog.text


@pytest.mark.parametrize("entry", ["alignchat_train", "alignchat_inference"])
def test_entry_points_answer_help(entry):
    result = subprocess.run(
        [sys.executable, "-m", f"espnet_alignchat.bin.{entry}", "--help"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0 and "usage:" in result.stdout
    assert "nltk" not in result.stdout + result.stderr


@pytest.mark.parametrize(
    "cmd, ddp",
    [
        (["--ngpu", "2"], True),  # ESPnet alone would take DataParallel
        (["--ngpu", "2", "--multiprocessing_distributed", "true"], False),  # asked
        (
            ["--ngpu", "4", "--dist_launcher", "slurm"],
            False,
        ),  # the launcher's processes
        (["--ngpu", "1"], False),
    ],
)
def test_several_gpus_train_with_one_process_each(cmd, ddp, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    args = alignchat_train.get_parser().parse_args(cmd)
    added = ["--multiprocessing_distributed", "true"] if ddp else []
    assert alignchat_train.one_process_per_gpu(args, cmd) == cmd + added
    monkeypatch.setenv("WORLD_SIZE", "2")  # started by torchrun: DDP already
    assert alignchat_train.one_process_per_gpu(args, cmd) == cmd
