"""The frame-rate adapter baseline: its splice, its training through ESPnet's trainer, and
decoding, scoring and the user commands on a model that writes no transcript."""

import hashlib
import json
import math

import pytest
import torch
import yaml
from conftest import (
    UTTERANCES,
    collect_stats,
    one_thread,
    tiny_model_args,
    train,
    write_data_dir,
)
from safetensors.torch import load_file

import espnet_alignchat.__main__ as cli
from espnet_alignchat.benchmarking import positions_per_second, read_utterances
from espnet_alignchat.bin import alignchat_inference
from espnet_alignchat.datadir import read_kaldi_map
from espnet_alignchat.errors import InputError
from espnet_alignchat.frame_adapter import FrameAdapterModel, split_utterances
from espnet_alignchat.inference import Speech2Chat
from espnet_alignchat.llm import PromptError, Turn
from espnet_alignchat.packing import pack_model
from espnet_alignchat.results import results_table
from espnet_alignchat.scoring import score_decode_dir
from espnet_alignchat.session import ChatSession
from espnet_alignchat.task import AlignChatTask

FRAME_STACK = 2  # the tiny conformer's 25 Hz frames in pairs: 12.5 Hz


def build(llm, **model_conf) -> FrameAdapterModel:
    torch.manual_seed(0)
    args = tiny_model_args(llm, frame_stack=FRAME_STACK, **model_conf)
    args.model = "frame_adapter"
    return AlignChatTask.build_model(args)


def test_one_vector_per_frame_group_where_the_words_go(tiny_llm, batch):
    model = build(tiny_llm).eval()
    speech, lengths = batch["speech"], batch["speech_lengths"]
    vectors = model.speech_vectors(speech, lengths)
    _, frames = model.encode(speech, lengths)
    assert [len(v) for v in vectors] == [math.ceil(n / FRAME_STACK) for n in frames]
    assert all(v.shape[1] == model.llm.hidden_size for v in vectors)
    # The prompt holds exactly those vectors between the template's two pieces.
    layout, llm = model.prompt_layout, model.llm
    inputs = llm.build_inputs([llm.conversation_prompt([Turn("user", vectors[0])])])
    start = len(layout.prefix)
    assert inputs.inputs_embeds.shape[1] == start + len(vectors[0]) + len(layout.suffix)
    spliced = inputs.inputs_embeds[0, start : start + len(vectors[0])]
    assert torch.equal(spliced, vectors[0])


def test_a_count_other_than_the_prompts_is_refused(tiny_llm, batch):
    vectors = torch.zeros(2, 5, 8)
    lengths = torch.tensor([5, 3])
    assert [len(v) for v in split_utterances(vectors, lengths, lengths)] == [5, 3]
    with pytest.raises(
        PromptError, match="^u2: the adapter gave 3 speech vectors for the 4"
    ):
        split_utterances(vectors, lengths, torch.tensor([5, 4]), ["u1", "u2"])
    # In training: a prompt reserving one position per 3 frames, vectors of 2 frames each.
    model = build(tiny_llm, mode="transcribe")
    model.frame_stack = 3
    with pytest.raises(PromptError, match="^a: the adapter gave"):
        model(**batch)


@pytest.fixture(scope="module")
def adapter_exp(tmp_path_factory, tiny_llm):
    """Statistics, the transcript stage, then the answer stage initialised from it; and the
    LLM's weight file's hash before training."""
    tmp = tmp_path_factory.mktemp("adapter")
    llm_hash = hashlib.sha256((tiny_llm / "model.safetensors").read_bytes()).hexdigest()
    with one_thread():
        data = write_data_dir(tmp / "data", UTTERANCES)
        stats = tmp / "stats"
        collect_stats(tiny_llm, data, stats)
        options = dict(model="frame_adapter", frame_stack=FRAME_STACK, kl_weight=0.5)
        train(tmp, tiny_llm, data, stats, tmp / "transcribe", "transcribe", **options)
        initial = tmp / "transcribe" / "1epoch.pth"
        train(
            tmp,
            tiny_llm,
            data,
            stats,
            tmp / "instruct",
            "instruct",
            "--init_param",
            str(initial),
            **options,
        )
    return tmp, llm_hash


def test_training_through_espnets_trainer(adapter_exp, tiny_llm):
    exp, llm_hash = adapter_exp
    for stage, loss in (
        ("transcribe", "loss_transcript"),
        ("instruct", "loss_response"),
    ):
        config = yaml.safe_load((exp / stage / "config.yaml").read_text())
        assert config["model"] == "frame_adapter"
        assert config["model_conf"]["mode"] == stage
        reporter = torch.load(exp / stage / "checkpoint.pth", weights_only=False)
        train_stats = reporter["reporter"]["stats"][1]["train"]
        assert math.isfinite(train_stats["loss"]) and math.isfinite(train_stats[loss])
    before = torch.load(exp / "transcribe" / "1epoch.pth", weights_only=True)
    after = torch.load(exp / "instruct" / "1epoch.pth", weights_only=True)
    assert not torch.equal(
        after["projector.proj.0.weight"], before["projector.proj.0.weight"]
    )
    # The LLM is untouched and nowhere in the checkpoint.
    assert (
        hashlib.sha256((tiny_llm / "model.safetensors").read_bytes()).hexdigest()
        == llm_hash
    )
    parts = {key.split(".")[0] for key in after}
    assert parts == {"llm_fingerprint", "frontend", "normalize", "encoder", "projector"}
    llm_tensors = load_file(tiny_llm / "model.safetensors").values()
    for value in after.values():
        assert not any(
            value.shape == llm.shape and torch.equal(value, llm) for llm in llm_tensors
        )


def test_decoding_and_scoring_answers_without_a_transcript(adapter_exp):
    exp, _ = adapter_exp
    out = exp / "decode"
    common = ["--model_dir", str(exp / "instruct"), "--model_file", "1epoch.pth"]
    common += ["--data_dir", str(exp / "data"), "--max_new_tokens", "3"]
    alignchat_inference.main(common + ["--output_dir", str(out)])
    assert sorted(read_kaldi_map(out / "response")) == sorted(UTTERANCES)
    assert not (out / "text").exists()
    alignchat_inference.main(
        common + ["--output_dir", str(out / "text_input"), "--text_input", "true"]
    )
    scores = score_decode_dir(exp / "data", out)
    assert scores["wer"] is None
    assert 0 <= scores["response"]["speech_vs_text"]["exact_agreement"] <= 100
    lines = results_table(exp).splitlines()
    header = next(line for line in lines if line.startswith("|model|")).split("|")
    assert lines[-1].split("|")[header.index("WER")] == "—"
    assert json.loads((out / "scores.json").read_text())["wer"] is None


def test_speech2chat_answers_and_refuses_transcripts(adapter_exp, tmp_path):
    exp, _ = adapter_exp
    packed = tmp_path / "adapter.zip"
    pack_model(exp / "instruct", packed, "1epoch.pth")
    chat = Speech2Chat.from_pretrained(packed, generation={"max_new_tokens": 2})
    wav = sorted((exp / "data" / "wav").iterdir())[0]
    assert isinstance(chat(wav), str)
    hypothesis = chat.tokenize(wav)
    assert hypothesis.token_ids == [] and len(hypothesis.vectors) > 0
    with pytest.raises(InputError, match="writes none"):
        chat.transcribe(wav)
    message = ChatSession(chat).hear(wav)  # no words heard is no reason to refuse it
    assert message["speech"].vectors.shape == hypothesis.vectors.shape


def test_commands_that_need_a_transcript_refuse_in_one_line(adapter_exp, capfd):
    exp, _ = adapter_exp
    wav = sorted((exp / "data" / "wav").iterdir())[0]
    with pytest.raises(SystemExit) as exit_info:
        cli.main(
            ["chat", "--model", str(exp / "instruct"), "--model_file", "1epoch.pth"]
            + ["--wav", str(wav), "--show_transcript", "true"]
        )
    assert exit_info.value.code == 1
    err = capfd.readouterr().err.strip().splitlines()
    assert err[-1].startswith("espnet-alignchat chat: error: --show_transcript needs")


def test_positions_per_second_are_frame_groups(adapter_exp):
    exp, _ = adapter_exp
    chat = Speech2Chat.from_pretrained(exp / "instruct", model_file="1epoch.pth")
    model = chat.model
    utterances = read_utterances(exp / "data", model.llm, 4)
    figures = positions_per_second(model, utterances, {}, batch_size=1)
    groups = 0
    for u in utterances:
        samples = torch.from_numpy(u.samples)[None]
        _, frames = model.encode(samples, torch.tensor([samples.shape[1]]))
        groups += math.ceil(int(frames[0]) / FRAME_STACK)
    seconds = sum(u.seconds for u in utterances)
    assert figures["speech_positions"] == groups
    assert figures["speech_positions_per_second"] == pytest.approx(groups / seconds)
