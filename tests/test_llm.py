"""The frozen-LLM glue: embeddings without the model, fingerprints, prompts, generation."""

import shutil

import pytest
import torch
from conftest import refuse_llm_loading, save_tiny_llm
from transformers import AutoTokenizer, LlamaForCausalLM

from espnet_alignchat.llm import (
    FrozenLLM,
    LLMFingerprint,
    LLMMismatchError,
    PromptError,
    load_embeddings,
    splice_vectors,
)
from espnet_alignchat.testing import save_random_llm


def model_embeddings(path) -> torch.Tensor:
    return LlamaForCausalLM.from_pretrained(path).get_input_embeddings().weight


def test_embeddings_are_read_without_building_the_model(tiny_llm, monkeypatch):
    expected = model_embeddings(tiny_llm)
    refuse_llm_loading(monkeypatch)
    embeddings = load_embeddings(str(tiny_llm))
    assert embeddings.dtype == expected.dtype and torch.equal(embeddings, expected)


def test_embeddings_are_read_from_the_right_shard(tmp_path):
    path = save_tiny_llm(tmp_path / "sharded", num_layers=4, max_shard_size="20KB")
    assert (path / "model.safetensors.index.json").is_file()
    assert len(list(path.glob("model-*.safetensors"))) > 1
    assert torch.equal(load_embeddings(str(path)), model_embeddings(path))


def test_a_checkpoint_without_safetensors_is_named(tmp_path, tiny_llm):
    shutil.copy(tiny_llm / "config.json", tmp_path / "config.json")
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        load_embeddings(str(tmp_path))


def test_fingerprint_tells_llms_apart_but_not_dtypes(tiny_llm, other_llm):
    embeddings = load_embeddings(str(tiny_llm))
    mine = LLMFingerprint.of(str(tiny_llm), embeddings)
    assert mine == LLMFingerprint.of(str(tiny_llm), embeddings.double())
    assert (mine.vocab_size, mine.hidden_size) == tuple(embeddings.shape)
    mine.check_same_llm(LLMFingerprint.of("renamed", embeddings))  # same LLM elsewhere
    other = LLMFingerprint.of(str(other_llm), load_embeddings(str(other_llm)))
    with pytest.raises(LLMMismatchError, match="other-llama"):
        mine.check_same_llm(other)


def test_frozen_llm_reads_embeddings_first_and_the_model_on_demand(tiny_llm):
    llm = FrozenLLM(str(tiny_llm))
    embeddings = llm.embeddings.clone()
    assert not llm.is_loaded and llm.dtype == torch.float32
    model = llm.model
    assert llm.is_loaded and not model.training
    assert not any(p.requires_grad for p in model.parameters())
    assert torch.equal(llm.embeddings, embeddings)
    assert llm.fingerprint == LLMFingerprint.of(str(tiny_llm), embeddings)
    assert FrozenLLM(str(tiny_llm), dtype="bfloat16").embeddings.dtype == torch.bfloat16


def test_prompt_layout_rebuilds_the_chat_template(tiny_llm):
    llm = FrozenLLM(str(tiny_llm))
    tokenizer = AutoTokenizer.from_pretrained(tiny_llm)
    text = "what is two plus three"
    for system in (None, "say yes"):
        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": text})
        whole = tokenizer.apply_chat_template(
            messages, tokenize=True, add_generation_prompt=True
        )["input_ids"]
        layout = llm.prompt_layout(system)
        assert layout.prefix + llm.tokenize(text) + layout.suffix == whole
    assert layout.turn_end == [tokenizer.convert_tokens_to_ids("<|end|>")]

    wrapped = llm.prompt_layout(user_template="please say {speech} again")
    plain = llm.prompt_layout()
    assert wrapped.prefix == plain.prefix + llm.tokenize("please say")
    assert wrapped.suffix == llm.tokenize("again") + plain.suffix
    with pytest.raises(PromptError, match="must contain"):
        llm.prompt_layout(user_template="no placeholder")


def test_build_inputs_packs_each_prompt_then_pads_left(tiny_llm):
    llm = FrozenLLM(str(tiny_llm))
    layout = llm.prompt_layout()
    speech = [torch.randn(3, llm.hidden_size), torch.randn(1, llm.hidden_size)]
    answer = llm.tokenize("five")
    inputs = llm.build_inputs(
        [
            [layout.prefix, speech[0], layout.suffix],
            [layout.prefix, speech[1], layout.suffix, answer],
        ]
    )
    lengths = [len(layout.prefix) + 3 + len(layout.suffix), None]
    lengths[1] = len(layout.prefix) + 1 + len(layout.suffix) + len(answer)
    width = max(lengths)
    assert inputs.inputs_embeds.shape == (2, width, llm.hidden_size)
    for row, (length, vectors) in enumerate(zip(lengths, speech)):
        pad = width - length
        assert inputs.attention_mask[row].tolist() == [0] * pad + [1] * length
        assert inputs.position_ids[row, pad:].tolist() == list(range(length))
        start = pad + len(layout.prefix)
        spliced = inputs.inputs_embeds[row, start : start + len(vectors)]
        assert torch.equal(
            spliced, vectors
        )  # the speech sits where the user's words go
        prefix = inputs.inputs_embeds[row, pad:start]
        assert torch.equal(prefix, llm.embed(torch.tensor(layout.prefix)))


def test_splice_refuses_a_count_mismatch():
    embeds, slots = torch.zeros(1, 5, 4), torch.tensor(
        [[False, True, True, True, False]]
    )
    with pytest.raises(PromptError, match="2 speech vectors for 3 prompt positions"):
        splice_vectors(embeds, slots, [torch.ones(2, 4)])
    spliced = splice_vectors(embeds, slots, [torch.ones(3, 4)])
    assert spliced[0, :, 0].tolist() == [0, 1, 1, 1, 0]


def test_batched_generation_equals_one_prompt_at_a_time(tiny_llm):
    llm = FrozenLLM(str(tiny_llm))
    layout = llm.prompt_layout()
    torch.manual_seed(0)
    scale = llm.embeddings.norm(dim=-1).mean()
    prompts = [
        [layout.prefix, llm.tokenize("what is two plus three"), layout.suffix],
        [layout.prefix, torch.randn(2, llm.hidden_size) * scale / 6, layout.suffix],
        [layout.prefix, torch.randn(7, llm.hidden_size) * scale / 6, layout.suffix],
        [layout.prefix, llm.tokenize("hello"), layout.suffix],
    ]
    batched = llm.generate(llm.build_inputs(prompts), max_new_tokens=12)
    alone = [llm.generate(llm.build_inputs([p]), max_new_tokens=12)[0] for p in prompts]
    assert batched == alone
    assert len(set(batched)) > 1  # the prompts really lead to different answers
    sampled = llm.generate(
        llm.build_inputs(prompts), max_new_tokens=4, do_sample=True, top_p=0.9
    )
    assert len(sampled) == len(prompts)


# Prompts a spoken-chat user could give, with leading spaces, merges and punctuation.
BPE_TEXTS = [
    "What is the capital of France?",
    "Who wrote the novel Moby Dick?",
    "hello there, how are you doing today",
    "Why don't cats like water?",
    "Tell me a joke!",
    "Name three primary colors.",
]


@pytest.fixture(scope="module")
def bpe_llm(tmp_path_factory):
    """A random Llama with a byte-level BPE tokenizer and ChatML, like SmolLM2's."""
    return FrozenLLM(
        str(
            save_random_llm(
                tmp_path_factory.mktemp("bpe") / "bpe-llama", BPE_TEXTS * 4, bpe=True
            )
        )
    )


@pytest.mark.parametrize("system", [None, "Answer briefly."])
@pytest.mark.parametrize("text", BPE_TEXTS + ["What", "  spaced  out "])
def test_bpe_transcripts_are_tokenized_at_the_cut_as_in_the_whole_prompt(
    bpe_llm, text, system
):
    """ChatML puts a newline before the content: no merge crosses the cut."""
    assert bpe_llm.tokenize("What is") != bpe_llm.tokenize(" What is")  # real BPE
    assert bpe_llm.template_mismatch(text, system) is None


def test_a_merge_across_the_cut_is_reported(bpe_llm):
    """A user template that glues the transcript to a word: BPE merges across the cut."""
    mismatch = bpe_llm.template_mismatch("hello there", user_template="Say:{speech}")
    assert mismatch is None  # ":" and a letter are separate pre-tokens
    assert len(bpe_llm.tokenize("What")) == 1
    text = "at is the capital of France?"
    ours, theirs = bpe_llm.template_mismatch(text, user_template="Wh{speech}")
    assert "What" in theirs and "What" not in ours


def test_canonical_ids_merge_a_split_the_tokenizer_never_writes(bpe_llm):
    """ " capital" spelled in two pieces comes back as the tokenizer's own one token."""
    canonical = bpe_llm.tokenize("What is the capital of France?")
    tokens = bpe_llm.tokenizer.convert_ids_to_tokens(canonical)
    word = tokens.index("Ġcapital")
    pieces = bpe_llm.tokenizer.convert_tokens_to_ids(["Ġcap", "ital"])
    assert bpe_llm.tokenizer.unk_token_id not in pieces
    split = canonical[:word] + pieces + canonical[word + 1 :]
    assert bpe_llm.tokenizer.decode(split) == bpe_llm.tokenizer.decode(canonical)
    assert bpe_llm.canonical_ids(split) == canonical
    assert bpe_llm.canonical_ids(canonical) == canonical
    spaced = bpe_llm.tokenize(" hello there")  # a leading space is kept, not stripped
    assert bpe_llm.canonical_ids(spaced) == spaced


def test_a_shared_prefix_run_once_gives_the_whole_prompts_logits(bpe_llm):
    """Training runs the template's prefix once and the rests behind it, padded on the
    right: the logits of each row's last positions are those of its whole prompt, and the
    gradient reaches the spliced vectors."""
    layout = bpe_llm.prompt_layout()
    torch.manual_seed(0)
    vectors = [torch.randn(n, bpe_llm.hidden_size, requires_grad=True) for n in (3, 1)]
    answers = [bpe_llm.tokenize("Paris is the capital."), bpe_llm.tokenize("Hi")]
    rests = [[v, layout.suffix, a] for v, a in zip(vectors, answers)]
    n_positions = max(len(a) for a in answers) + 1
    logits = bpe_llm.logits_after_prefix(layout.prefix, rests, n_positions)
    assert len(bpe_llm._prefix_caches) == 1  # computed once, reused by later calls
    for row, rest in enumerate(rests):
        inputs = bpe_llm.build_inputs([[layout.prefix, *rest]])
        whole = bpe_llm.model(
            inputs_embeds=inputs.inputs_embeds,
            attention_mask=inputs.attention_mask,
            position_ids=inputs.position_ids,
        ).logits[0, -n_positions:]
        torch.testing.assert_close(logits[row], whole, atol=1e-4, rtol=1e-4)
    logits.sum().backward()
    assert all(v.grad is not None and v.grad.abs().sum() > 0 for v in vectors)
    again = bpe_llm.logits_after_prefix(layout.prefix, rests, n_positions)
    torch.testing.assert_close(again, logits)
