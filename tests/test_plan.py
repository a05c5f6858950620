"""The real-scale configs parse and build from config.json files alone; the planning command."""

import argparse
import io
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import refuse_llm_loading
from real_shapes import (
    REAL_SCALE_CONFIGS,
    save_llama31_8b_config,
    save_qwen25_7b_config,
    save_whisper_large_v3_config,
)

import espnet_alignchat.llm
from espnet_alignchat.bin import plan as plan_command
from espnet_alignchat.planning import (
    encoder_stack,
    plan,
    utterances_per_step,
    workload,
)
from espnet_alignchat.task import AlignChatTask

CONF = Path(__file__).parent.parent / "conf" / "tuning"
LLM_PARAMETERS = {"llama": "8.03B", "qwen": "7.62B"}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> dict:
    """Directories holding only the config.json of each real model."""
    root = tmp_path_factory.mktemp("shapes")
    return {
        "llama": save_llama31_8b_config(root / "Llama-3.1-8B-Instruct"),
        "qwen": save_qwen25_7b_config(root / "Qwen2.5-7B-Instruct"),
        "whisper": save_whisper_large_v3_config(root / "whisper-large-v3"),
    }


@pytest.fixture
def no_weights(monkeypatch):
    """Fail the test if anything reads an LLM's weights or tokenizer."""
    refuse_llm_loading(monkeypatch)

    def refuse(*args, **kwargs):
        pytest.fail("the LLM's embeddings or tokenizer were read")

    monkeypatch.setattr(espnet_alignchat.llm, "load_embeddings", refuse)
    monkeypatch.setattr(espnet_alignchat.llm, "load_tokenizer", refuse)


@pytest.mark.parametrize("name", REAL_SCALE_CONFIGS)
def test_real_scale_configs_parse(name, monkeypatch):
    # What `alignchat_train --config <name> --print_config` prints: ESPnet's print_config
    # parses the command line itself, and rejects unknown keys.
    monkeypatch.setattr(sys, "argv", ["alignchat_train", "--config", str(CONF / name)])
    printed = io.StringIO()
    AlignChatTask.print_config(file=printed)
    printed = yaml.safe_load(printed.getvalue())
    assert printed["use_amp"] is True
    assert printed["encoder"] == yaml.safe_load((CONF / name).read_text())["encoder"]


def run_plan(config: Path, llm: Path, shapes: dict, *extra: str) -> None:
    args = ["--config", str(config), "--llm", str(llm), "--ngpu", "8", *extra]
    if yaml.safe_load(config.read_text())["encoder"] == "whisper":
        args += ["--encoder_conf", f"name_or_path={shapes['whisper']}"]
    plan_command.main(args)


@pytest.mark.parametrize("llm", ["llama", "qwen"])
@pytest.mark.parametrize("name", REAL_SCALE_CONFIGS)
def test_plan_builds_real_configs_from_config_json_alone(
    name, llm, shapes, no_weights, capsys
):
    run_plan(CONF / name, shapes[llm], shapes)
    assert sorted(p.name for p in shapes[llm].iterdir()) == ["config.json"]
    lines = capsys.readouterr().out.splitlines()
    out = "\n".join(lines)
    frozen = next(line for line in lines if line.strip().startswith("frozen LLM"))
    assert frozen.split()[2] == LLM_PARAMETERS[llm]
    total = next(line for line in lines if line.strip().startswith("total"))
    assert 5 < float(total.split()[1]) < 70  # GB per 80 GB GPU, with room to spare
    assert (
        "LLM activations" in out if "instruct" in name else "LLM activations" not in out
    )


def test_plan_counts_are_those_of_the_built_model(tiny_llm, tmp_path):
    config = CONF / "train_pretrain_conformer_small.yaml"
    parser = AlignChatTask.get_parser()
    args = parser.parse_args(["--config", str(config), "--llm", str(tiny_llm)])
    args.normalize = None
    with torch.device("meta"):
        meta = AlignChatTask.build_model(args, read_llm=False)
    result = plan(meta, args, workload(args, 5.0, 3.0, 20, 10))
    model = AlignChatTask.build_model(args)
    parameters = {line.name: line.bytes for line in result.parameters}
    assert parameters["speech tokenizer"] == sum(p.numel() for p in model.parameters())
    torch.save(model.state_dict(), tmp_path / "model.pth")
    saved = (tmp_path / "model.pth").stat().st_size
    assert abs(result.checkpoints[0].bytes - saved) < 0.01 * saved


@pytest.mark.parametrize(
    "options, expected",
    [
        (dict(batch_type="folded", batch_size=32, fold_length=[80000]), 32 // 5),
        (dict(batch_type="numel", batch_bins=16_000_000), 16_000_000 // 320_000),
        (dict(batch_type="unsorted", batch_size=12), 12),
    ],
)
def test_utterances_per_step_follow_espnet_samplers(options, expected):
    args = argparse.Namespace(ngpu=2, **options)
    assert utterances_per_step(args, 20.0) == expected
    assert workload(args, 20.0, 3.0, 10, 10).utterances == max(1, expected // 2)


@pytest.mark.parametrize(
    "config",
    ["train_pretrain_whisper_small.yaml", "train_pretrain_conformer_small.yaml"],
)
def test_encoder_activation_estimate_is_close_to_what_autograd_keeps(tiny_llm, config):
    """The documented accuracy: the estimate against the tensors saved for backward."""
    args = AlignChatTask.get_parser().parse_args(
        ["--config", str(CONF / config), "--llm", str(tiny_llm), "--normalize", "none"]
    )
    if args.encoder == "whisper":
        # With attention dropout, CPU's SDPA falls back to keeping the attention matrix;
        # CUDA's memory-efficient kernel, which the estimate is for, does not.
        args.encoder_conf["config_overrides"]["attention_dropout"] = 0.0
    model = AlignChatTask.build_model(args, read_llm=False).train()
    stack, _ = encoder_stack(model, args, seconds=4.0)
    speech = torch.randn(2, 4 * 16000) * 0.1
    feats, feats_lengths = model._extract_feats(speech, torch.full((2,), 4 * 16000))
    saved = {}

    def keep(tensor):
        saved[tensor.untyped_storage().data_ptr()] = tensor
        return tensor

    with torch.autocast("cpu", dtype=torch.bfloat16):
        with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
            model.encoder(feats, feats_lengths)
    # Weights and autocast's bf16 copies of them are not activations.
    weights = {p.shape for p in model.parameters()}
    measured = sum(
        t.untyped_storage().nbytes() for t in saved.values() if t.shape not in weights
    )
    assert 0.7 < stack.activation_bytes(2) / measured < 1.3
