"""The data-efficiency sweep's plan, record and report, with the recipe's stages stood in for
(the stages themselves are tested in test_recipe.py; a whole tiny sweep takes minutes).
"""

import json
import os
from pathlib import Path
from typing import Dict, List

import pytest
import yaml

from espnet_alignchat.bin import data_sweep
from espnet_alignchat.datadir import read_kaldi_map
from espnet_alignchat.sweep import Cost, Sweep, spread
from espnet_alignchat.testing import REPO

KEYS = [f"spk{i % 4}-utt{i:02d}" for i in range(20)]


def write_set(path: Path, keys: List[str], cache: bool = False) -> None:
    path.mkdir(parents=True, exist_ok=True)
    for name, value in (
        ("text_int", "5 6 7"),
        ("wav.scp", "x.flac"),
        ("utt2spk", "spk"),
        ("utt2num_samples", str(16000 * 36)),  # 36 s each: 20 utterances are 0.2 h
    ):
        (path / name).write_text("".join(f"{key} {value}\n" for key in keys))
    if cache:
        outputs = path / "encoder_out_train_pretrain_real"
        outputs.mkdir()
        (outputs / "encoder_out.scp").write_text(
            "".join(f"{key} /cache/{key}.npy\n" for key in keys)
        )
        (outputs / "encoder.yaml").write_text("hidden_size: 384\n")


@pytest.fixture
def recipe_dir(tmp_path, monkeypatch) -> Path:
    """A recipe dir with the real track's sets (20 training utterances) and configs."""
    write_set(tmp_path / "dump/raw/train_real", KEYS, cache=True)
    write_set(tmp_path / "dump/raw/test_real", ["test-1", "test-2"])
    (tmp_path / "conf").symlink_to(REPO / "conf")
    monkeypatch.chdir(tmp_path)
    return tmp_path


class FakeRecipe:
    """Stands in for ./run.sh: notes each call and leaves what the stages would."""

    def __init__(self) -> None:
        self.calls: List[Dict[str, str]] = []

    def __call__(self, command: List[str], log: Path) -> Cost:
        options = dict(zip(command[1::2], command[2::2]))
        self.calls.append(options)
        train_set, n = options.get("--train_set"), options.get("--instruct_max_utts")
        if options["--stop_stage"] == "5":  # make_subset: stage 2's share of the set
            keys = list(read_kaldi_map(Path("dump/raw", train_set, "text_int")))
            write_set(Path("dump/raw", f"{train_set}_sub{n}"), spread(keys, int(n)))
        if options["--stop_stage"] == "8":
            decode = Path("exp", options["--instruct_tag"], "decode", "test_real")
            decode.mkdir(parents=True, exist_ok=True)
            adapter = "frame_adapter" in options["--instruct_tag"]
            scores = {
                "wer": None if adapter else {"err": 20.0},
                "response": {
                    "speech_vs_text": {
                        "exact_agreement": 10.0 if adapter else 30.0,
                        "chrf": 40.0,
                    }
                },
            }
            (decode / "scores.json").write_text(json.dumps(scores))
        return Cost(cpu_s=60.0, wall_s=30.0)


def fake_positions(model_dir, data_dir, decode_config, limit) -> Dict[str, float]:
    rate = 12.5 if "frame_adapter" in str(model_dir) else 4.0
    return {"speech_positions_per_second": rate}


def sweep(recipe: FakeRecipe, **options) -> Sweep:
    return Sweep(
        "real",
        [1.0, 0.1],
        ["alignchat", "frame_adapter"],
        runner=recipe,
        positions=fake_positions,
        **options,
    )


def test_each_point_runs_the_recipe_on_its_share_of_the_data(recipe_dir):
    recipe = FakeRecipe()
    record = sweep(recipe).run()
    subset = recipe_dir / "dump/raw/train_real_p10"
    assert list(read_kaldi_map(subset / "text_int")) == spread(KEYS, 2)
    cache = subset / "encoder_out_train_pretrain_real"
    assert list(read_kaldi_map(cache / "encoder_out.scp")) == spread(KEYS, 2)
    assert (cache / ".done").is_file()  # stage 3 takes the set's outputs as they are
    assert (
        recipe.calls[0]["--stop_stage"] == "3" and "--train_set" not in recipe.calls[0]
    )
    # Then the smallest fraction first, every stage of each model type in turn.
    first = recipe.calls[1:6]
    assert [c["--stage"] for c in first] == ["3", "4", "5", "6", "7"]
    stage4 = first[1]
    assert stage4["--train_set"] == "train_real_p10"
    assert stage4["--instruct_max_utts"] == "100"  # 0.1 of the real track's 1,000
    assert stage4["--pretrain_tag"] == "sweep/alignchat_p10_pretrain"
    assert stage4["--instruct_tag"] == "sweep/alignchat_p10"
    assert stage4["--stats_dir"] == "exp/sweep/stats_p10"
    assert stage4["--encoder_cache_tag"] == "train_pretrain_real"
    assert stage4["--cascade_asr"] == ""
    config = yaml.safe_load(Path(stage4["--pretrain_config"]).read_text())
    assert config["scheduler_conf"]["warmup_steps_list"] == [0, 10, 100]  # 0.1 of it
    adapter = yaml.safe_load(Path(recipe.calls[7]["--pretrain_config"]).read_text())
    assert adapter["model"] == "frame_adapter"
    full = recipe.calls[-1]
    assert full["--train_set"] == "train_real" and full["--instruct_max_utts"] == "1000"
    assert len(recipe.calls) == 1 + 4 * 5
    point = record["points"]["alignchat_p10"]
    assert (point["stage1_utterances"], point["stage2_utterances"]) == (2, 2)
    assert point["stage1_hours"] == pytest.approx(2 * 36 / 3600)
    assert point["stages"]["4"] == {"cpu_s": 60.0, "wall_s": 30.0}


def test_a_rerun_does_only_what_the_record_lacks(recipe_dir):
    sweep(FakeRecipe()).run()
    record_path = recipe_dir / "exp/sweep/sweep.json"
    record = json.loads(record_path.read_text())
    point = record["points"]["frame_adapter_p100"]  # as if killed during stage 6
    del point["scores"], point["stages"]["6"], point["stages"]["7-8"]
    record_path.write_text(json.dumps(record))
    (recipe_dir / "exp/sweep/frame_adapter_p100/decode/test_real/scores.json").unlink()
    again = FakeRecipe()
    sweep(again).run()
    assert [(c["--instruct_tag"], c["--stage"]) for c in again.calls] == [
        ("sweep/frame_adapter_p100", "6"),
        ("sweep/frame_adapter_p100", "7"),
    ]


def test_another_budget_is_not_mixed_into_a_record(recipe_dir):
    sweep(FakeRecipe()).run()
    with pytest.raises(ValueError, match="budget epochs, not steps"):
        sweep(FakeRecipe(), budget="steps")


def test_budget_steps_trains_as_many_steps_on_less_data(tmp_path):
    from espnet_alignchat.sweep import budget_config

    source = REPO / "conf/train_pretrain_real.yaml"
    config = yaml.safe_load(
        budget_config(source, 0.1, "steps", tmp_path / "c.yaml").read_text()
    )
    assert config["max_epoch"] == 40  # 4 epochs over all of it
    assert (
        config["scheduler_conf"] == yaml.safe_load(source.read_text())["scheduler_conf"]
    )


def test_the_report_checks_the_targets(recipe_dir):
    recipe = FakeRecipe()
    data_sweep.write_report(sweep(recipe).run(), recipe_dir / "exp/sweep")
    text = (recipe_dir / "exp/sweep/sweep.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| frame-rate")]
    assert len(rows) == 2 and all(" | — | 12.50 | " in row for row in rows)
    assert "ratio 3.12" in text  # 12.5 / 4 positions per second
    assert (
        "AlignChat at 10% of the data (30.0% agreement) >= the adapter at 100% " in text
    )
    assert "(10.0%): met" in text
    total_min = (1 + 4 * 5) * 60 / 60
    assert f"{total_min:.1f} min" in text
    assert (recipe_dir / "exp/sweep/sweep.png").stat().st_size > 0


def test_a_failing_stage_is_one_line_naming_its_log(recipe_dir, capfd):
    script = recipe_dir / "run.sh"
    script.write_text("#!/bin/sh\necho 'no data here'\nexit 3\n")
    os.chmod(script, 0o755)
    with pytest.raises(SystemExit) as exit_info:
        data_sweep.main([])
    assert exit_info.value.code == 1
    err = capfd.readouterr().err.strip().splitlines()
    assert err[-1] == (
        "data_sweep: error: exit status 3: see exp/sweep/logs/world_data.log"
    )
    log = (recipe_dir / "exp/sweep/logs/world_data.log").read_text()
    assert "no data here" in log
