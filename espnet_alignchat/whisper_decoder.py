"""Start the speech-token decoder from Whisper's pretrained text decoder.

Our decoder's blocks have the shape of Whisper's decoder layers (pre-norm self-attention,
cross-attention to the encoder, GELU feed-forward), so with the sizes of a Whisper model
(``attention_dim`` = d_model, heads, ``linear_units`` = FFN size, ``num_blocks`` = layers) its
layers can be copied in: the cross-attention then starts out knowing how to read Whisper's
encoder frames.

Whisper's vocabulary is not the LLM's, but both spell English text. With the decoder's
``whisper`` vocabulary, each LLM token gets the mean of Whisper's embeddings of the pieces
Whisper's tokenizer cuts its text into (a single piece for ~75% of SmolLM2's tokens), the
LLM's end token gets Whisper's ``<|endoftext|>`` and other special tokens a zero row. That
fixed table is both the decoder's input and its output layer, as in Whisper (tied), and with
Whisper's positions and its ``<|startoftranscript|><|notimestamps|>`` start the untrained
decoder already transcribes into LLM tokens (teacher-forced accuracy 0.67 on the real track's
dev set, measured before any training). The LLM still reads ``z = Linear(h)``, which training
aligns with the LLM's embeddings.
"""

from pathlib import Path
from typing import Optional, Union

import torch
from transformers import (
    AutoTokenizer,
    PreTrainedTokenizerBase,
    WhisperForConditionalGeneration,
)
from transformers.utils import logging as hf_logging

from espnet_alignchat.encoders import ConfigError


def load_whisper(name_or_path: Union[str, Path]) -> WhisperForConditionalGeneration:
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return WhisperForConditionalGeneration.from_pretrained(str(name_or_path))
    finally:
        hf_logging.set_verbosity(verbosity)


def copy_linear(target: torch.nn.Linear, source: torch.nn.Linear) -> None:
    target.weight.copy_(source.weight)
    if source.bias is not None:
        target.bias.copy_(source.bias)
    else:  # Whisper's key projections have no bias: ours start at zero
        target.bias.zero_()


def check_shape(decoder: torch.nn.Module, whisper, name_or_path) -> None:
    config = whisper.config
    ours = (
        decoder.attention_dim,
        decoder.blocks[0].src_attn.h,
        decoder.blocks[0].feed_forward[0].out_features,
        len(decoder.blocks),
    )
    theirs = (
        config.d_model,
        config.decoder_attention_heads,
        config.decoder_ffn_dim,
        config.decoder_layers,
    )
    if ours != theirs:
        raise ConfigError(
            f"decoder_conf.init_from_whisper: {name_or_path}'s decoder has (attention_dim, "
            f"attention_heads, linear_units, num_blocks) = {theirs}, the config {ours}"
        )


def copy_layers(decoder: torch.nn.Module, whisper) -> None:
    for block, layer in zip(decoder.blocks, whisper.model.decoder.layers):
        block.norm1.load_state_dict(layer.self_attn_layer_norm.state_dict())
        attention = layer.self_attn
        block.self_attn.qkv.weight.copy_(
            torch.cat(
                [
                    attention.q_proj.weight,
                    attention.k_proj.weight,
                    attention.v_proj.weight,
                ]
            )
        )
        no_key_bias = torch.zeros_like(attention.q_proj.bias)
        block.self_attn.qkv.bias.copy_(
            torch.cat([attention.q_proj.bias, no_key_bias, attention.v_proj.bias])
        )
        copy_linear(block.self_attn.out, attention.out_proj)
        block.norm2.load_state_dict(layer.encoder_attn_layer_norm.state_dict())
        cross = layer.encoder_attn
        copy_linear(block.src_attn.linear_q, cross.q_proj)
        copy_linear(block.src_attn.linear_k, cross.k_proj)
        copy_linear(block.src_attn.linear_v, cross.v_proj)
        copy_linear(block.src_attn.linear_out, cross.out_proj)
        block.norm3.load_state_dict(layer.final_layer_norm.state_dict())
        copy_linear(block.feed_forward[0], layer.fc1)
        copy_linear(block.feed_forward[3], layer.fc2)
    decoder.norm.load_state_dict(whisper.model.decoder.layer_norm.state_dict())


def token_table(
    embeddings: torch.Tensor,
    whisper_tokenizer: PreTrainedTokenizerBase,
    llm_tokenizer: PreTrainedTokenizerBase,
    vocab_size: int,
    end_token_id: int,
) -> torch.Tensor:
    """(vocab_size, d): each LLM token's row is the mean of Whisper's embeddings of its text."""
    table = torch.zeros(vocab_size, embeddings.shape[1])
    specials = set(llm_tokenizer.all_special_ids)
    tokens = llm_tokenizer.convert_ids_to_tokens(list(range(len(llm_tokenizer))))
    for token_id, token in enumerate(tokens[:vocab_size]):
        if token_id in specials or token is None:
            continue
        text = llm_tokenizer.convert_tokens_to_string([token])
        pieces = whisper_tokenizer.encode(text, add_special_tokens=False)
        if pieces:
            table[token_id] = embeddings[pieces].mean(dim=0)
    end_of_text = whisper_tokenizer.convert_tokens_to_ids("<|endoftext|>")
    table[end_token_id] = embeddings[end_of_text]
    return table


@torch.no_grad()
def init_from_whisper(
    decoder: torch.nn.Module,
    name_or_path: Union[str, Path],
    llm_tokenizer: Optional[PreTrainedTokenizerBase] = None,
    end_token_id: Optional[int] = None,
) -> torch.nn.Module:
    """Copy a Whisper model's text decoder into `decoder`, a `SpeechTokenDecoder` of its
    shape; for the ``whisper`` vocabulary also its token table (which needs the LLM's
    tokenizer and end token), positions and start tokens."""
    whisper = load_whisper(name_or_path)
    check_shape(decoder, whisper, name_or_path)
    copy_layers(decoder, whisper)
    if decoder.vocabulary == "whisper":
        if llm_tokenizer is None or end_token_id is None:
            raise ValueError(
                "the whisper vocabulary needs the LLM's tokenizer and end id"
            )
        source = whisper.model.decoder
        embeddings = source.embed_tokens.weight
        whisper_tokenizer = AutoTokenizer.from_pretrained(str(name_or_path))
        decoder.token_table.copy_(
            token_table(
                embeddings,
                whisper_tokenizer,
                llm_tokenizer,
                decoder.token_table.shape[0],
                end_token_id,
            )
        )
        positions = source.embed_positions.weight
        if decoder.positions.shape[0] > positions.shape[0]:
            raise ConfigError(
                f"decoder_conf.max_positions {decoder.positions.shape[0]}: "
                f"{name_or_path} has {positions.shape[0]} positions"
            )
        decoder.positions.copy_(positions[: decoder.positions.shape[0]])
        start = ["<|startoftranscript|>", "<|notimestamps|>"]
        decoder.start.copy_(embeddings[whisper_tokenizer.convert_tokens_to_ids(start)])
        # Whisper's final norm leaves h large (its gain's RMS is ~11 in tiny.en): with the
        # default initialisation z would be ~50x the LLM's embeddings, and the first steps'
        # alignment losses would swamp the pretrained layers. Start z at norm ~1 instead.
        out_features, in_features = decoder.output_proj.weight.shape
        h_norm = decoder.norm.weight.pow(2).mean().sqrt() * in_features**0.5
        torch.nn.init.normal_(
            decoder.output_proj.weight, std=float(1 / (h_norm * out_features**0.5))
        )
        decoder.output_proj.bias.zero_()
    return decoder
