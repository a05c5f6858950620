"""Every shipped config parses and builds a model (ESPnet's --dry_run) or a decoder setup."""

from pathlib import Path

import numpy as np
import pytest
import yaml
from real_shapes import REAL_SCALE_CONFIGS, save_whisper_tiny_en_config

from espnet_alignchat.bin import alignchat_inference, alignchat_train

CONF = Path(__file__).parent.parent / "conf"
# The real-scale configs (pretrained encoders, 8B LLMs) are built on the meta device in
# test_plan.py; all others build here, on the CPU.
TRAIN_CONFIGS = sorted(
    path
    for path in CONF.glob("tuning/train_*.yaml")
    if path.name not in REAL_SCALE_CONFIGS
)
DECODE_CONFIGS = sorted(CONF.glob("tuning/decode_*.yaml"))


def fake_feature_stats(path: Path, dim: int) -> Path:
    np.savez(
        path, count=np.array(100), sum=np.zeros(dim), sum_square=np.full(dim, 100.0)
    )
    return path


@pytest.mark.parametrize("config", TRAIN_CONFIGS, ids=lambda p: p.name)
def test_training_config_builds_a_model(config, tiny_llm, tmp_path, monkeypatch):
    conf = yaml.safe_load(config.read_text())
    n_mels = conf.get("frontend_conf", {}).get("n_mels", 80)  # no frontend: unused
    stats = fake_feature_stats(tmp_path / "stats.npz", n_mels)
    options = []
    encoder_path = conf.get("encoder_conf", {}).get("name_or_path") or ""
    if encoder_path.startswith("downloads/"):
        # The real track's encoder, converted by the recipe: its shape, random weights.
        save_whisper_tiny_en_config(tmp_path / encoder_path)
        monkeypatch.chdir(tmp_path)
        options = ["--encoder_conf", "load_pretrained=false"]
        if "init_from_whisper" in conf.get("decoder_conf", {}):
            # Copying Whisper's decoder is tested on a tiny Whisper in test_whisper_decoder.
            options += ["--decoder_conf", "init_from_whisper=null"]
    alignchat_train.main(
        ["--config", str(config), "--llm", str(tiny_llm), "--dry_run", "true"]
        + ["--iterator_type", "none", "--output_dir", str(tmp_path / "exp")]
        + ["--normalize_conf", f"stats_file={stats}"]
        + options
    )
    written = yaml.safe_load((tmp_path / "exp" / "config.yaml").read_text())
    assert written["model_conf"]["mode"] == conf["model_conf"]["mode"]


@pytest.mark.parametrize("config", DECODE_CONFIGS, ids=lambda p: p.name)
def test_decoding_config_parses(config):
    args = alignchat_inference.get_parser().parse_args(
        [
            "--config",
            str(config),
            "--model_dir",
            "m",
            "--data_dir",
            "d",
            "--output_dir",
            "o",
        ]
    )
    for key, value in yaml.safe_load(config.read_text()).items():
        assert getattr(args, key) == value


def test_default_configs_are_links_into_tuning():
    for name in ("train_pretrain.yaml", "train_instruct.yaml", "decode.yaml") + (
        "train_pretrain_real.yaml",
        "train_instruct_real.yaml",
        "decode_real.yaml",
    ):
        assert (CONF / name).resolve().parent == (CONF / "tuning").resolve()
