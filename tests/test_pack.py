"""Packing a model into one file and loading it on "another machine"."""

import shutil
import zipfile

import pytest
import yaml

from espnet_alignchat.__main__ import main
from espnet_alignchat.errors import InputError
from espnet_alignchat.inference import Speech2Chat
from espnet_alignchat.llm import LLMMismatchError
from espnet_alignchat.packing import pack_model

pytestmark = pytest.mark.usefixtures("single_thread")
RESULTS = "# RESULTS\n## Scores\n|model|WER|\n|---|---|\n|exp/tiny|12.5|\n"


@pytest.fixture(scope="module")
def packed(tiny_recipe, tmp_path_factory):
    """The model packed from a copy of its recipe, which is then deleted."""
    tmp = tmp_path_factory.mktemp("pack")
    recipe = shutil.copytree(tiny_recipe, tmp / "recipe")
    (recipe / "exp/tiny/RESULTS.md").write_text(RESULTS)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(recipe)  # the recipe dir, where config.yaml's paths start
        main(["pack", "--model_dir", "exp/tiny", "--output", str(tmp / "tiny.zip")])
    shutil.rmtree(recipe)
    return tmp / "tiny.zip"


def test_the_pack_holds_what_the_model_needs_and_no_llm(packed, tiny_llm, tiny_recipe):
    with zipfile.ZipFile(packed) as archive:
        names = archive.namelist()
        checkpoint = archive.read("model.pth")
        config = yaml.safe_load(archive.read("config.yaml"))
        card = archive.read("README.md").decode()
    assert sorted(names) == sorted(
        ["meta.yaml", "config.yaml", "model.pth", "files/feats_stats.npz", "README.md"]
    )
    assert config["normalize_conf"]["stats_file"] == "files/feats_stats.npz"
    assert config["llm"] == str(tiny_llm)  # a reference to the LLM, not its weights
    assert checkpoint == (tiny_recipe / "exp/tiny/valid.acc.ave.pth").read_bytes()
    assert config["llm_fingerprint"]["embedding_sha256"] in card
    assert "### Scores" in card and "|exp/tiny|12.5|" in card
    assert "`data/wav.scp` (speech, sound, 8 entries)" in card


def test_the_pack_answers_as_the_model_dir_from_anywhere(
    packed, tiny_recipe, tmp_path, monkeypatch
):
    wav = str(tiny_recipe / "data/wav/spk1_utt0.wav")
    original = Speech2Chat.from_pretrained(tiny_recipe / "exp/tiny", device="cpu")
    monkeypatch.chdir(tmp_path)
    chat = Speech2Chat.from_pretrained(packed, device="cpu")
    assert chat.transcribe(wav) == original.transcribe(wav)
    assert chat(wav, max_new_tokens=5) == original(wav, max_new_tokens=5)


def test_the_llm_may_be_elsewhere_but_must_be_the_same(
    packed, tiny_llm, other_llm, tmp_path
):
    moved = shutil.copytree(tiny_llm, tmp_path / "moved-llm")
    Speech2Chat.from_pretrained(packed, llm=str(moved), device="cpu")
    with pytest.raises(LLMMismatchError, match="trained for the LLM"):
        Speech2Chat.from_pretrained(packed, llm=str(other_llm), device="cpu")


def test_a_missing_llm_is_one_line_naming_the_pack(
    tiny_recipe, tmp_path, capsys, monkeypatch
):
    shared = tmp_path / "shared.zip"
    pack_model(tiny_recipe / "exp/tiny", shared, llm="/nowhere/tiny-llama")
    with pytest.raises(SystemExit) as exit_info:
        main(["chat", "--model", str(shared), "--wav", "q.wav"])
    assert exit_info.value.code == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error == (
        f"espnet-alignchat chat: error: {shared}: its LLM /nowhere/tiny-llama is not "
        "on this machine; pass the same LLM (a local dir or hub id) with llm=... or --llm"
    )


def test_bad_packs_and_outputs_are_named(tiny_recipe, tmp_path):
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"not a zip")
    with pytest.raises(InputError, match=f"{junk}: not a model written by"):
        Speech2Chat.from_pretrained(junk)
    with pytest.raises(InputError, match="a packed model is a .zip"):
        pack_model(tiny_recipe / "exp/tiny", tmp_path / "model.tar")
