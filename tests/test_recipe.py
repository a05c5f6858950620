"""egs2/alignchat stages 1-8 on a tiny world (a few dozen utterances, one epoch each).

The full default run is a benchmark (egs2/alignchat/RESULTS.md), not a timed test: this one
checks that every stage runs through the real scripts and leaves outputs that parse.
"""

import json
import shutil
from pathlib import Path

import pytest
import recipe_runs
import torch
import yaml

from espnet_alignchat.datadir import read_kaldi_map, write_kaldi_map
from espnet_alignchat.testing import TINY_MINI_WORLD, write_tiny_configs

# What stage 5 writes into a data dir (besides its generate/ dir).
KEPT_BY_STAGE5 = ("text", "response", "response_int")


def run_recipe(recipe: Path, *options: str) -> str:
    return recipe_runs.run_recipe(
        recipe,
        write_tiny_configs(recipe.parent),
        *TINY_MINI_WORLD,
        *options,
        timeout=900,
    )  # fmt: skip


@pytest.fixture(scope="module")
def first_run(recipe):
    return run_recipe(recipe)


def test_stage1_builds_the_world_and_the_mini_llm(recipe, first_run):
    for name in ("train", "dev", "test"):
        data = recipe / "data" / name
        texts = read_kaldi_map(data / "text")
        assert 0 < len(texts) <= 24
        assert set(read_kaldi_map(data / "wav.scp")) == set(texts)
    assert read_kaldi_map(recipe / "data/test/answer")
    assert (recipe / "exp/mini_llm/config.json").is_file()
    assert (recipe / "exp/mini_llm/tokenizer.json").is_file()


def test_stage2_dumps_audio_and_llm_token_ids(recipe, first_run):
    for name in ("train", "dev", "test"):
        dump = recipe / "dump/raw" / name
        ids = read_kaldi_map(dump / "text_int")
        assert set(ids) == set(read_kaldi_map(dump / "wav.scp"))
        assert all(
            value.split() and value.replace(" ", "").isdigit() for value in ids.values()
        )
        assert "kept" in first_run


def test_stage3_collects_statistics(recipe, first_run):
    stats = recipe / "exp/stats/train"
    assert (stats / "feats_stats.npz").is_file() and (stats / "speech_shape").is_file()


def test_stages_4_and_6_train_both_modes(recipe, first_run):
    for name, mode in (("pretrain", "pretrain"), ("instruct", "instruct")):
        exp = recipe / "exp" / name
        config = yaml.safe_load((exp / "config.yaml").read_text())
        assert config["model_conf"]["mode"] == mode
        assert (exp / "1epoch.pth").is_file()
    state = torch.load(recipe / "exp/instruct/1epoch.pth", weights_only=True)
    assert "llm_fingerprint.digest" in state
    assert (recipe / "exp/pretrain/llm_sha256.before").read_text().strip()


def test_stage5_answers_every_training_utterance(recipe, first_run):
    for name in ("train", "dev"):
        dump = recipe / "dump/raw" / name
        answers = read_kaldi_map(dump / "response_int")
        assert set(answers) == set(read_kaldi_map(dump / "text_int"))
        assert set(read_kaldi_map(dump / "response")) == set(answers)


def test_stages_7_and_8_decode_and_score(recipe, first_run):
    decode = recipe / "exp/instruct/decode/test"
    utts = set(read_kaldi_map(recipe / "dump/raw/test/wav.scp"))
    for name in ("text", "response", "text_input/response", "cascade/response"):
        assert set(read_kaldi_map(decode / name)) == utts, name
    scores = json.loads((decode / "scores.json").read_text())
    assert {"wer", "ter", "response", "answer"} <= set(scores)
    assert "Sum/Avg" in (decode / "score_wer/result.txt").read_text()
    results = (recipe / "exp/instruct/RESULTS.md").read_text()
    assert "|exp/instruct|decode|test|" in results
    assert "identical" in first_run  # the LLM's files before and after training


def test_a_rerun_skips_every_complete_stage(recipe, first_run):
    again = run_recipe(recipe, "--stop_stage", "7")
    for done in (
        "data",
        "exp/stats",
        "exp/pretrain",
        "exp/instruct",
        "exp/instruct/decode/test",
    ):
        assert f"{done} is complete; skipped" in again


def test_bad_utterances_are_listed_by_stages_3_and_5_and_left_out_of_stage2(
    recipe, first_run
):
    # Last in the module: it breaks one utterance's audio and blanks another's transcript,
    # reruns stages 3, 5 and 6, and puts the data and the statistics back afterwards.
    train, stats = recipe / "dump/raw/train", recipe / "exp/stats"
    kept = {train / name: (train / name).read_bytes() for name in KEPT_BY_STAGE5}
    texts = read_kaldi_map(train / "text")
    unreadable, blank = sorted(texts)[:2]
    audio = recipe / read_kaldi_map(train / "wav.scp")[unreadable]  # absolute or not
    kept[audio] = audio.read_bytes()
    shutil.move(stats, recipe / "stats.kept")
    shutil.move(train / "generate", recipe / "generate.kept")
    audio.write_bytes(b"not audio")
    write_kaldi_map(train / "text", dict(texts, **{blank: ""}))
    try:
        out = run_recipe(
            recipe, "--stage", "3", "--stop_stage", "6", "--instruct_tag", "skipping"
        )
        assert set(read_kaldi_map(stats / "skipped_train")) == {unreadable}
        assert read_kaldi_map(train / "generate/skipped") == {
            blank: "the text is empty"
        }
        assert "dump/raw/train: 1 utterances have no answer" in out
        answered = set(read_kaldi_map(train / "response_int"))
        assert answered == set(texts) - {blank}
        trained_on = set(read_kaldi_map(train / "generate/speech_shape"))
        assert trained_on == set(texts) - {blank, unreadable}
        assert (recipe / "exp/skipping/1epoch.pth").is_file()
    finally:
        for path, content in kept.items():
            path.write_bytes(content)
        for moved, back in (
            (recipe / "stats.kept", stats),
            (recipe / "generate.kept", train / "generate"),
        ):
            shutil.rmtree(back, ignore_errors=True)
            shutil.move(moved, back)
