"""Self-generation: the LLM's own answers to the transcripts, resumable without loss."""

import json

import pytest
from conftest import write_data_dir

from espnet_alignchat.bin import generate_responses
from espnet_alignchat.datadir import read_kaldi_map
from espnet_alignchat.llm import FrozenLLM

TEXTS = {
    f"spk1_utt{i}": {"text": text}
    for i, text in enumerate(
        [
            "what is two plus three",
            "hello world",
            "say yes please",
            "what is ten",
            "big",
        ]
    )
}


def run(llm, data, out, *extra):
    generate_responses.main(
        ["--llm", str(llm), "--data_dir", str(data), "--output_dir", str(out)]
        + ["--batch_size", "2", "--max_new_tokens", "6", *extra]
    )
    return read_kaldi_map(out / "response"), read_kaldi_map(out / "response_int")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_data_dir(tmp_path_factory.mktemp("gen") / "data", TEXTS)


def test_answers_are_the_llms_own_answers_to_the_text(tiny_llm, data, tmp_path):
    texts, ids = run(tiny_llm, data, tmp_path / "out")
    assert sorted(texts) == sorted(ids) == sorted(TEXTS)
    llm = FrozenLLM(str(tiny_llm))
    layout = llm.prompt_layout()
    for key, entry in TEXTS.items():
        prompt = [[layout.prefix, llm.tokenize(entry["text"]), layout.suffix]]
        expected = llm.generate_ids(llm.build_inputs(prompt), max_new_tokens=6)[0]
        assert ids[key].split() == [str(i) for i in expected]
        assert texts[key] == llm.decode(expected)


def test_a_killed_run_continues_without_duplicates_or_losses(tiny_llm, data, tmp_path):
    reference = run(tiny_llm, data, tmp_path / "fresh")
    out = tmp_path / "killed"
    run(tiny_llm, data, out, "--key_file", str(data / "utt2spk"))
    log = out / "responses.jsonl"
    lines = log.read_text().splitlines()
    # Killed after two answers, in the middle of writing the third.
    log.write_text("\n".join(lines[:2]) + "\n" + lines[2][:7])
    (out / "response").unlink()
    assert run(tiny_llm, data, out) == reference
    utts = [json.loads(line)["utt"] for line in log.read_text().splitlines()]
    assert sorted(utts) == sorted(TEXTS)  # each utterance exactly once


def test_user_template_wraps_the_transcript(tiny_llm, data, tmp_path):
    texts, _ = run(
        tiny_llm, data, tmp_path / "wrapped", "--user_template", "say {speech} again"
    )
    llm = FrozenLLM(str(tiny_llm))
    layout = llm.prompt_layout(user_template="say {speech} again")
    for key, entry in TEXTS.items():
        wrapped = (
            llm.tokenize("say") + llm.tokenize(entry["text"]) + llm.tokenize("again")
        )
        prompt = llm.prompt_layout().prefix + wrapped + llm.prompt_layout().suffix
        assert layout.prefix + llm.tokenize(entry["text"]) + layout.suffix == prompt
        answer = llm.generate(llm.build_inputs([[prompt]]), max_new_tokens=6)[0]
        assert texts[key] == answer
