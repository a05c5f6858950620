"""The speech-token decoder started from Whisper's text decoder, with Whisper's vocabulary
mapped onto the LLM's tokens (espnet_alignchat.whisper_decoder), on tiny local models.
"""

import pytest
import torch
from fake_assets import SENTENCES, tiny_ct2_whisper
from transformers import AutoTokenizer, WhisperForConditionalGeneration

from espnet_alignchat.convert import convert_ct2_whisper
from espnet_alignchat.decoder import SpeechTokenDecoder
from espnet_alignchat.encoders import ConfigError
from espnet_alignchat.llm import FrozenLLM
from espnet_alignchat.testing import save_random_llm
from espnet_alignchat.whisper_decoder import init_from_whisper

SHAPE = dict(
    attention_dim=64,
    attention_heads=4,
    linear_units=128,
    num_blocks=2,
    max_positions=40,
)


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """(Whisper dir, the Whisper model, an LLM with its own byte-level BPE vocabulary)."""
    root = tmp_path_factory.mktemp("whisper_decoder")
    tiny_ct2_whisper(root / "ct2", max_source_positions=64)
    whisper_dir = convert_ct2_whisper(root / "ct2", root / "whisper")
    whisper = WhisperForConditionalGeneration.from_pretrained(whisper_dir).eval()
    llm = FrozenLLM(str(save_random_llm(root / "llm", SENTENCES * 4, bpe=True)))
    return whisper_dir, whisper, llm


def whisper_decoder(parts, **options):
    whisper_dir, _, llm = parts
    decoder = SpeechTokenDecoder(
        llm.hidden_size,
        64,
        vocab_size=llm.vocab_size,
        dropout_rate=0.0,
        **SHAPE,
        **options,
    )
    end = llm.tokenizer.eos_token_id
    return init_from_whisper(decoder, whisper_dir, llm.tokenizer, end).eval()


def single_piece_tokens(parts):
    """LLM tokens whose text Whisper's tokenizer keeps as one token: (llm ids, whisper ids)."""
    whisper_dir, _, llm = parts
    whisper_tokenizer = AutoTokenizer.from_pretrained(whisper_dir)
    pairs = []
    for text in "What is the capital of France".split():
        for token_id in llm.tokenize(" " + text):
            piece = llm.tokenizer.decode([token_id])
            whisper_ids = whisper_tokenizer.encode(piece, add_special_tokens=False)
            if len(whisper_ids) == 1:
                pairs.append((token_id, whisper_ids[0]))
    assert len(pairs) >= 4
    return [p[0] for p in pairs], [p[1] for p in pairs]


def test_the_untrained_decoder_is_whispers_decoder_on_shared_tokens(parts):
    """Same inputs (Whisper's start, then tokens both vocabularies spell alike): the same
    final hidden states, so the same scores for those tokens, as Whisper's own decoder.
    """
    _, whisper, _ = parts
    decoder = whisper_decoder(parts, vocabulary="whisper")
    llm_ids, whisper_ids = single_piece_tokens(parts)
    memory = torch.randn(1, 30, 64)
    with torch.no_grad():
        previous = decoder.embed_tokens(torch.tensor([llm_ids]))
        _, hidden = decoder(memory, torch.tensor([30]), previous)
        tokenizer = AutoTokenizer.from_pretrained(parts[0])
        start = tokenizer.convert_tokens_to_ids(
            ["<|startoftranscript|>", "<|notimestamps|>"]
        )
        expected = whisper.model.decoder(
            input_ids=torch.tensor([start + whisper_ids]),
            encoder_hidden_states=memory,
        ).last_hidden_state[:, 1:]
        torch.testing.assert_close(hidden, expected, atol=1e-4, rtol=1e-4)
        scores = decoder.token_scores(hidden)
        whisper_logits = whisper.proj_out(expected)
        torch.testing.assert_close(
            scores[0, :-1, llm_ids],
            whisper_logits[0, :-1, whisper_ids],
            atol=1e-3,
            rtol=1e-3,
        )


def test_the_token_table_spells_each_llm_token_in_whispers_embeddings(parts):
    _, whisper, llm = parts
    decoder = whisper_decoder(parts, vocabulary="whisper")
    embeddings = whisper.model.decoder.embed_tokens.weight
    tokenizer = AutoTokenizer.from_pretrained(parts[0])
    llm_ids, whisper_ids = single_piece_tokens(parts)
    torch.testing.assert_close(decoder.token_table[llm_ids], embeddings[whisper_ids])
    end = llm.tokenizer.eos_token_id
    end_of_text = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert torch.equal(decoder.token_table[end], embeddings[end_of_text])
    start = llm.tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert not decoder.token_table[start].any()  # other special tokens: no meaning
    assert not decoder.token_table.requires_grad  # fixed, but in the state_dict
    assert "token_table" in decoder.state_dict()


def test_the_llm_vectors_start_small(parts):
    """z = Linear(h) starts near norm 1, not at the scale of Whisper's large hidden states."""
    decoder = whisper_decoder(parts, vocabulary="whisper")
    llm_ids, _ = single_piece_tokens(parts)
    with torch.no_grad():
        z, _ = decoder(
            torch.randn(1, 30, 64),
            torch.tensor([30]),
            decoder.embed_tokens(torch.tensor([llm_ids])),
        )
    assert 0.2 < float(z.norm(dim=-1).mean()) < 5


def test_the_llm_vocabulary_takes_whispers_layers_only(parts):
    _, whisper, _ = parts
    decoder = whisper_decoder(parts)  # vocabulary llm: the LLM's embeddings go in
    layer = whisper.model.decoder.layers[1]
    assert torch.equal(decoder.blocks[1].feed_forward[0].weight, layer.fc1.weight)
    assert torch.equal(
        decoder.blocks[1].src_attn.linear_q.weight, layer.encoder_attn.q_proj.weight
    )
    assert decoder.embed_tokens(torch.tensor([1])) is None


def test_a_decoder_of_another_shape_is_refused(parts):
    whisper_dir, _, llm = parts
    decoder = SpeechTokenDecoder(llm.hidden_size, 64, attention_dim=32, num_blocks=2)
    with pytest.raises(ConfigError, match=r"\(64, 4, 128, 2\), the config \(32, 4"):
        init_from_whisper(decoder, whisper_dir)
