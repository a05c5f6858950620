"""`bin/benchmark` end to end on a tiny trained model, a tiny Whisper and synthetic speech:
every section runs and its figures agree with what they are computed from."""

import json
import math
import os

import pytest
import soundfile
from conftest import UTTERANCES

from espnet_alignchat.bin import benchmark
from espnet_alignchat.datadir import read_kaldi_map
from espnet_alignchat.llm import FrozenLLM


@pytest.fixture(scope="module")
def measured(tiny_recipe, tiny_whisper, tmp_path_factory):
    """The benchmark run from inside the recipe dir, as its defaults expect. Its training
    measurements run in this process (a process of its own each costs ~10 s of imports;
    `test_a_training_measurement_runs_in_a_process_of_its_own` covers that path)."""
    out = tmp_path_factory.mktemp("benchmark") / "benchmark.json"
    cwd = os.getcwd()
    os.chdir(tiny_recipe)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(benchmark, "run_worker", benchmark.training_worker)
            benchmark.main(
                ["--model_dir", "exp/tiny", "--data_dir", "data", "--train_dir", "data"]
                + ["--asr", str(tiny_whisper), "--output", str(out)]
                + ["--num_utterances", "4", "--latency_utterances", "2"]
                + ["--batch_size", "4", "--max_new_tokens", "3", "--max_tokens", "6"]
                + ["--train_batch", "2", "--train_steps", "1", "--depths", "1", "2"]
            )
    finally:
        os.chdir(cwd)
    return json.loads(out.read_text()), tiny_recipe / "data"


def test_positions_count_one_per_token_and_the_adapters_frames(measured, tiny_llm):
    results, data = measured
    p = results["positions"]
    keys = sorted(UTTERANCES)[:4]
    llm = FrozenLLM(str(tiny_llm))
    texts = read_kaldi_map(data / "text")
    assert p["transcript_tokens"] == sum(len(llm.tokenize(texts[k])) for k in keys)
    wavs = read_kaldi_map(data / "wav.scp")
    seconds = [soundfile.info(data.parent / wavs[k]).duration for k in keys]
    assert p["speech_seconds"] == pytest.approx(sum(seconds))
    assert p["adapter_12.5hz_positions"] == sum(math.ceil(s * 12.5) for s in seconds)
    assert p["adapter_25hz_positions"] == sum(math.ceil(s * 25) for s in seconds)
    assert p["positions_per_transcript_token"] == pytest.approx(
        p["speech_positions"] / p["transcript_tokens"]
    )


def test_latency_of_text_speech_and_cascade(measured):
    latency = measured[0]["latency"]
    for path in ("text", "speech", "cascade"):
        f = latency[path]
        assert 0 <= f["front_end"] <= f["first_token"] <= f["whole_answer"]
    assert latency["speech_per_text_first_token"] == pytest.approx(
        latency["speech"]["first_token"] / latency["text"]["first_token"]
    )


def test_batched_and_one_at_a_time_throughput(measured):
    t = measured[0]["throughput"]
    for job in ("self_generation", "decoding"):
        one, many = t[f"{job}_batch1"], t[f"{job}_batch4"]
        assert one["answer_tokens"] > 0 and many["answer_tokens"] > 0
        assert t[f"{job}_speedup"] == pytest.approx(one["seconds"] / many["seconds"])


def test_training_steps_of_both_stages(measured):
    training = measured[0]["training"]
    # A Conformer trained from scratch has no frozen outputs to cache: waveform rows only.
    assert set(training) == {"pretrain_waveform", "instruct_waveform"}
    for row in training.values():
        assert row["batch"] == 2 and row["step_seconds"] > 0
        assert row["peak_memory_mb"] > row["llm_resident_mb"] > 0


def test_a_training_measurement_runs_in_a_process_of_its_own(tiny_recipe, tiny_llm):
    spec = dict(
        model_dir=str(tiny_recipe / "exp/tiny"),
        llm=None,
        tokenizer=str(tiny_llm),
        train_dir=str(tiny_recipe / "data"),
        batch=2,
        steps=1,
        ngpu=0,
        mode="pretrain",
        cached=False,
        full_llm=False,
    )
    cwd = os.getcwd()
    os.chdir(tiny_recipe)  # the data dir's audio paths are relative to it
    try:
        row = benchmark.run_worker(spec)
    finally:
        os.chdir(cwd)
    assert row["batch"] == 2 and row["step_seconds"] > 0
    assert row["peak_memory_mb"] > row["llm_resident_mb"] > 0


def test_stage_one_reads_the_same_embeddings_whatever_the_depth(measured):
    depth = measured[0]["depth"]
    shallow, deep = depth["1_layers_embeddings"], depth["2_layers_embeddings"]
    assert (shallow["llm_layers"], deep["llm_layers"]) == (1, 2)
    assert shallow["llm_resident_mb"] == deep["llm_resident_mb"]
    full_shallow, full_deep = depth["1_layers_full"], depth["2_layers_full"]
    assert full_deep["llm_resident_mb"] > full_shallow["llm_resident_mb"]
    assert full_shallow["llm_resident_mb"] > shallow["llm_resident_mb"]


def test_the_table_names_each_target(measured):
    text = benchmark.table(measured[0])
    for target in (
        "speech positions per transcript token",
        "speech / text first token",
        "speech / cascade first token",
        "speedup (target >= 5)",
        "E only: shallow/deep step time",
    ):
        assert target in text


def test_a_data_dir_without_speech_is_one_line(tiny_recipe, tmp_path, capfd):
    empty = tmp_path / "data"
    empty.mkdir()
    (empty / "wav.scp").write_text("a missing.wav\n")
    (empty / "text").write_text("a hello\n")
    with pytest.raises(SystemExit):
        benchmark.main(
            ["--model_dir", str(tiny_recipe / "exp/tiny"), "--data_dir", str(empty)]
            + ["--output", str(tmp_path / "b.json")]
        )
    err = capfd.readouterr().err.strip().splitlines()
    assert (
        err[-1] == f"benchmark: error: {empty}: no readable utterance with a transcript"
    )
