"""Stage-2 training with DDP on two CPU processes (gloo) through ESPnet's trainer, launched by
torchrun as a multi-GPU or Slurm job would be: after training both ranks hold the same
tokenizer weights, each trained on its own share of the batches and with its own frozen LLM.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import UTTERANCES, collect_stats, data_args, write_data_dir
from safetensors.torch import load_file

from espnet_alignchat.testing import TINY_TRAINING

RANK_SCRIPT = Path(__file__).with_name("ddp_rank.py")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory, tiny_llm):
    tmp = tmp_path_factory.mktemp("ddp")
    data = write_data_dir(tmp / "data", UTTERANCES)
    stats = tmp / "stats"
    collect_stats(tiny_llm, data, stats)
    config = tmp / "instruct.yaml"
    conf = dict(TINY_TRAINING, model_conf={"mode": "instruct"}, num_att_plot=0)
    conf["normalize_conf"] = {"stats_file": str(stats / "train" / "feats_stats.npz")}
    config.write_text(yaml.safe_dump(conf))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node", "2", str(RANK_SCRIPT), str(tmp)]
    command += ["--config", str(config), "--llm", str(tiny_llm)]
    command += ["--output_dir", str(tmp / "exp"), "--ngpu", "0"]
    command += ["--dist_backend", "gloo", "--seed", "0"]
    command += data_args(data, "train", True) + data_args(data, "valid", True)
    command += ["--train_shape_file", str(stats / "train" / "speech_shape")]
    command += ["--valid_shape_file", str(stats / "valid" / "speech_shape")]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp, [torch.load(tmp / f"rank{r}.pt", weights_only=True) for r in (0, 1)]


def test_both_ranks_hold_the_same_trained_tokenizer(ranks):
    tmp, (rank0, rank1) = ranks
    assert rank0["pid"] != rank1["pid"]
    assert rank0["trained"].keys() == rank1["trained"].keys()
    for key, value in rank0["trained"].items():
        assert torch.equal(value, rank1["trained"][key]), key
    changed = [
        key
        for key, value in rank0["trained"].items()
        if not torch.equal(value, rank0["initial"][key])
    ]
    assert changed  # a step was taken
    assert (tmp / "exp" / "1epoch.pth").is_file()  # rank 0 wrote the checkpoint


def test_each_rank_trained_on_its_own_share_of_the_batches(ranks):
    _, (rank0, rank1) = ranks
    train0, train1 = set(rank0["utterances"]), set(rank1["utterances"])
    assert train0 and train1 and not train0 & train1
    assert train0 | train1 == set(UTTERANCES)


def test_each_rank_holds_its_own_untouched_frozen_llm(ranks, tiny_llm):
    _, ranks_ = ranks
    on_disk = sum(
        t.double().sum().item()
        for t in load_file(tiny_llm / "model.safetensors").values()
    )
    for rank in ranks_:
        assert rank["llm_loaded"]
        assert not rank["llm_trainable"] and not rank["llm_in_state_dict"]
        assert rank["llm_checksum"] == pytest.approx(on_disk, rel=1e-12)
