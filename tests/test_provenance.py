"""Token ids never reach another LLM; an LLM that is not there, or lacks what AlignChat needs,
is one line; a packed model whose members would escape its folder is refused."""

import io
import json
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from conftest import WORDS, write_data_dir

from espnet_alignchat.bin import alignchat_train, format_data, generate_responses
from espnet_alignchat.errors import InputError
from espnet_alignchat.inference import Speech2Chat
from espnet_alignchat.llm import FrozenLLM, PromptError, load_tokenizer
from espnet_alignchat.provenance import RECORD, tokenizer_sha256
from espnet_alignchat.testing import save_random_llm

UTTERANCES = {"spk1_utt0": {"text": "what is two plus three"}}


@pytest.fixture(scope="module")
def bigger_llm(tmp_path_factory) -> Path:
    """Another vocabulary, larger than tiny_llm's: its ids would all look valid there."""
    words = ["zero", "eleven", "twelve"] + list(WORDS)
    return save_random_llm(tmp_path_factory.mktemp("llm") / "bigger", words)


@pytest.fixture(scope="module")
def formatted(tmp_path_factory, tiny_llm) -> Path:
    root = tmp_path_factory.mktemp("provenance")
    data = write_data_dir(root / "data", UTTERANCES)
    out = root / "dump"
    format_data.main(
        ["--in_dir", str(data), "--out_dir", str(out), "--llm", str(tiny_llm)]
        + ["--filter", "false", "--nj", "1"]
    )
    return out


def test_format_data_records_the_tokenizer(formatted, tiny_llm):
    record = json.loads((formatted / RECORD).read_text())
    assert record["llm"] == str(tiny_llm) and record["files"] == ["text_int"]
    assert record["tokenizer_sha256"] == tokenizer_sha256(load_tokenizer(str(tiny_llm)))


def train_args(llm: Path, folder: Path, tmp_path: Path):
    return ["--llm", str(llm), "--output_dir", str(tmp_path / "exp")] + [
        f"--{split}_data_path_and_name_and_type={folder}/text_int,text,text_int"
        for split in ("train", "valid")
    ]


def test_training_refuses_ids_of_another_tokenizer(
    formatted, bigger_llm, tmp_path, capsys
):
    with pytest.raises(SystemExit):
        alignchat_train.main(train_args(bigger_llm, formatted, tmp_path))
    error = capsys.readouterr().err.strip()
    assert error.startswith(
        f"alignchat_train: error: {formatted}: its token ids were made"
    )
    assert f"rerun format_data with --llm {bigger_llm}" in error and "\n" not in error


def test_training_accepts_its_own_ids_and_warns_without_a_record(
    formatted, tiny_llm, tmp_path, caplog
):
    args = alignchat_train.get_parser().parse_args(
        train_args(tiny_llm, formatted, tmp_path)
    )
    alignchat_train.check_token_ids(args)  # the same tokenizer: no error
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "text_int").write_text((formatted / "text_int").read_text())
    args = alignchat_train.get_parser().parse_args(train_args(tiny_llm, bare, tmp_path))
    alignchat_train.check_token_ids(args)
    assert f"{bare}: no {RECORD}" in caplog.text


def test_the_warning_before_training_leaves_espnets_logging_to_espnet(
    formatted, tiny_llm, tmp_path
):
    """A root-logger warning before ESPnet's `logging.basicConfig` would configure logging
    at WARNING and silence every INFO line of train.log (the epoch results among them).
    """
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "text_int").write_text((formatted / "text_int").read_text())
    code = (
        "import logging, sys\n"
        "from espnet_alignchat.bin import alignchat_train\n"
        "args = alignchat_train.get_parser().parse_args(sys.argv[1:])\n"
        "alignchat_train.check_token_ids(args)\n"
        "print(len(logging.getLogger().handlers))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, *train_args(tiny_llm, bare, tmp_path)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert f"{bare}: no {RECORD}" in result.stderr  # still shown
    assert result.stdout.strip() == "0"  # and the root logger left unconfigured


def test_self_generation_refuses_ids_of_another_tokenizer(
    formatted, bigger_llm, tiny_llm, tmp_path, capsys
):
    command = ["--data_dir", str(formatted), "--output_dir", str(tmp_path / "gen")]
    with pytest.raises(SystemExit):
        generate_responses.main(["--llm", str(bigger_llm), *command])
    assert "its token ids were made by the tokenizer of" in capsys.readouterr().err
    generate_responses.main(["--llm", str(tiny_llm), *command, "--max_new_tokens", "2"])
    record = json.loads((tmp_path / "gen" / RECORD).read_text())
    assert record["files"] == ["response_int"]


@pytest.mark.parametrize("llm", ["/no/such/llm", "no-such-org/no-such-llm"])
def test_a_mistyped_llm_is_one_line(llm, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)  # no request
    data = write_data_dir(tmp_path / "data", UTTERANCES)
    with pytest.raises(SystemExit):
        format_data.main(
            ["--in_dir", str(data), "--out_dir", str(tmp_path / "out"), "--llm", llm]
        )
    error = capsys.readouterr().err.strip()
    assert (
        error.startswith(f"format_data: error: {llm}: no such LLM")
        and "\n" not in error
    )


def test_an_llm_without_eos_or_chat_template_is_named(tiny_llm, tmp_path):
    tokenizer = load_tokenizer(str(tiny_llm))
    tokenizer.eos_token = None
    tokenizer.save_pretrained(tmp_path / "no_eos")
    (tmp_path / "no_eos" / "config.json").write_text(
        (tiny_llm / "config.json").read_text()
    )
    with pytest.raises(
        PromptError, match=f"{tmp_path / 'no_eos'}: its tokenizer has no EOS"
    ):
        FrozenLLM(str(tmp_path / "no_eos")).eos_token_id
    tokenizer = load_tokenizer(str(tiny_llm))
    tokenizer.chat_template = None
    tokenizer.save_pretrained(tmp_path / "no_template")
    (tmp_path / "no_template" / "config.json").write_text(
        (tiny_llm / "config.json").read_text()
    )
    with pytest.raises(PromptError, match="the tokenizer has no chat template"):
        FrozenLLM(str(tmp_path / "no_template")).prompt_layout()


def test_packs_whose_members_escape_are_refused(tmp_path):
    escaping = tmp_path / "escaping.zip"
    with zipfile.ZipFile(escaping, "w") as archive:
        archive.writestr("meta.yaml", "files: {}\nyaml_files: {}\n")
        archive.writestr("../outside.txt", "x")
    with pytest.raises(InputError, match="'../outside.txt' points outside it"):
        Speech2Chat.from_pretrained(escaping, device="cpu")
    linked = tmp_path / "linked.tgz"
    with tarfile.open(linked, "w:gz") as archive:
        link = tarfile.TarInfo("model.pth")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        archive.addfile(link)
        meta = tarfile.TarInfo("meta.yaml")
        body = b"files: {}\nyaml_files: {}\n"
        meta.size = len(body)
        archive.addfile(meta, io.BytesIO(body))
    with pytest.raises(InputError, match="'model.pth' is a link or device"):
        Speech2Chat.from_pretrained(linked, device="cpu")
    assert not (tmp_path.parent / "outside.txt").exists()
