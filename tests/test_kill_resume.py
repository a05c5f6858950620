"""A killed run resumes: `kill -9` at random moments of stages 2, 4, 5, 6 and 7 of the tiny
mini-world recipe, then the same command again (`espnet_alignchat.kill_resume`; one kill per
stage here, the reliability report runs more); and the training fixes those kills need, each
made to happen on purpose, since a random kill seldom lands in their window."""

import logging
import shutil

import pytest
import torch
from conftest import UTTERANCES, collect_stats, train, write_data_dir

from espnet_alignchat import kill_resume
from espnet_alignchat.trainer import CHECKPOINT, load_checkpoint, whole_file_saves


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_llm, single_thread):
    """Data, statistics and a stage-1 model trained for one epoch."""
    tmp = tmp_path_factory.mktemp("trained")
    data = write_data_dir(tmp / "data", UTTERANCES)
    collect_stats(tiny_llm, data, tmp / "stats")
    train(tmp, tiny_llm, data, tmp / "stats", tmp / "exp", "pretrain")
    return tmp


def resume(trained, tiny_llm, exp):
    """The same training again, as a rerun of the recipe's stage does it."""
    data, stats = trained / "data", trained / "stats"
    train(trained, tiny_llm, data, stats, exp, "pretrain", "--resume", "true")


def test_a_checkpoint_cut_short_is_set_aside_and_training_starts_over(
    trained, tiny_llm, tmp_path, caplog, single_thread
):
    exp = tmp_path / "exp"
    shutil.copytree(trained / "exp", exp, symlinks=True)
    checkpoint = exp / CHECKPOINT
    whole = checkpoint.read_bytes()
    checkpoint.write_bytes(whole[: len(whole) // 2])  # as ESPnet's torch.save leaves it
    caplog.set_level(logging.INFO)
    resume(trained, tiny_llm, exp)
    assert f"{checkpoint}: unreadable" in caplog.text
    assert "The training was resumed" not in caplog.text
    assert (exp / f"{CHECKPOINT}.unreadable").read_bytes() == whole[: len(whole) // 2]
    assert load_checkpoint(checkpoint)["reporter"]["epoch"] == 1
    assert torch.load(exp / "valid.acc.ave.pth", weights_only=True)


def test_an_epoch_file_missing_after_its_checkpoint_is_written_back(
    trained, tiny_llm, tmp_path, caplog, single_thread
):
    exp = tmp_path / "exp"
    shutil.copytree(trained / "exp", exp, symlinks=True)
    for name in ("1epoch.pth", "latest.pth", "valid.acc.best.pth"):
        (exp / name).unlink()  # killed between ESPnet's two saves
    caplog.set_level(logging.INFO)
    resume(trained, tiny_llm, exp)
    assert "written from the checkpoint" in caplog.text
    assert "The training was resumed" in caplog.text
    weights = load_checkpoint(exp / CHECKPOINT)["model"]
    for name in ("1epoch.pth", "latest.pth", "valid.acc.best.pth", "valid.acc.ave.pth"):
        state = torch.load(exp / name, weights_only=True)
        assert state.keys() == weights.keys()
        assert all(torch.equal(state[key], weights[key]) for key in weights), name


def test_a_resumed_training_ends_with_the_weights_of_an_uninterrupted_one(
    trained, tiny_llm, tmp_path, single_thread
):
    """ESPnet's resume is exact on CPU: a run stopped after epoch 1 and resumed for epoch 2
    ends where a run of two epochs does (ESPnet reseeds every epoch)."""
    data, stats = trained / "data", trained / "stats"
    resumed, uninterrupted = tmp_path / "resumed", tmp_path / "uninterrupted"
    shutil.copytree(trained / "exp", resumed, symlinks=True)
    two_epochs = ("--max_epoch", "2")
    train(
        tmp_path,
        tiny_llm,
        data,
        stats,
        resumed,
        "pretrain",
        *two_epochs,
        "--resume",
        "true",
    )
    train(tmp_path, tiny_llm, data, stats, uninterrupted, "pretrain", *two_epochs)
    ours = torch.load(resumed / "2epoch.pth", weights_only=True)
    theirs = torch.load(uninterrupted / "2epoch.pth", weights_only=True)
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[key], theirs[key]) for key in ours)


def test_a_save_that_fails_half_way_leaves_the_old_file_and_no_partial(tmp_path):
    path = tmp_path / "checkpoint.pth"
    torch.save({"w": torch.zeros(2)}, path)

    class Unsaveable:
        def __reduce__(self):
            raise RuntimeError("killed")

    with whole_file_saves(), pytest.raises(RuntimeError, match="killed"):
        torch.save({"w": torch.ones(1000), "other": Unsaveable()}, path)
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.zeros(2))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pth"]


@pytest.mark.slow
def test_kills_at_random_moments_lose_nothing_and_change_nothing(tmp_path):
    reference, trials = kill_resume.run_trials(tmp_path / "kills", trials=1, seed=0)
    table = kill_resume.render_markdown(reference, trials)
    assert [t.stage for t in trials] == list(kill_resume.KILLED_STAGES)
    for trial in trials:
        assert trial.killed and trial.resumed, trial
        assert trial.lost in (0, None) and trial.duplicated in (0, None), trial
        assert trial.checkpoints_load in (True, None), trial
        assert trial.equal, trial
    rows = [line.split("|")[1].strip() for line in table.splitlines()[2:]]
    assert rows == ["2", "4", "5", "6", "7", "all"], table
