"""The speech tokenizer's autoregressive decoder: it reads LLM embeddings and writes them.

Step ``i`` sees the encoder output (cross-attention) and the LLM embeddings of the tokens before
it, ``Linear(E[y_<i])``, and emits ``z_i = Linear(h_i)`` in the LLM's embedding space, one vector
per LLM token. Nothing here depends on the vocabulary size, so the same decoder serves a 128k
or a 152k vocabulary without an embedding table of its own.

Decoding is incremental: each layer caches its self-attention keys/values and the projected
encoder memory, so a step costs one query against the cache (N tokens = N steps, not N²).
"""

import math
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
from espnet.nets.pytorch_backend.nets_utils import make_pad_mask
from espnet.nets.pytorch_backend.transformer.attention import MultiHeadedAttention
from torch import nn


@dataclass
class LayerCache:
    """One layer's decoding state: self-attention keys/values so far, projected memory."""

    self_key: torch.Tensor  # (batch, heads, steps, d_head)
    self_value: torch.Tensor
    memory_key: torch.Tensor  # (batch, heads, frames, d_head)
    memory_value: torch.Tensor

    def select(self, index: torch.Tensor) -> "LayerCache":
        """Keep (and reorder) batch rows, e.g. the surviving beams."""
        return LayerCache(
            self.self_key.index_select(0, index),
            self.self_value.index_select(0, index),
            self.memory_key.index_select(0, index),
            self.memory_value.index_select(0, index),
        )


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention over the tokens so far, with a key/value cache."""

    def __init__(self, size: int, heads: int, dropout_rate: float):
        super().__init__()
        if size % heads:
            raise ValueError(f"attention_dim {size} is not divisible by {heads} heads")
        self.heads = heads
        self.qkv = nn.Linear(size, 3 * size)
        self.out = nn.Linear(size, size)
        self.dropout_rate = dropout_rate

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, steps, size = x.shape
        return x.view(batch, steps, self.heads, size // self.heads).transpose(1, 2)

    def forward(
        self, x: torch.Tensor, cache: Optional[LayerCache] = None
    ) -> torch.Tensor:
        """Whole sequences (training, causal mask) or new steps per row (`cache` given):
        one token, or at the first step the start vectors (causal among themselves).

        Right padding needs no mask here: a causal query never looks at later positions.
        """
        query, key, value = map(self._split_heads, self.qkv(x).chunk(3, dim=-1))
        if cache is not None:
            key = torch.cat([cache.self_key, key], dim=2)
            value = torch.cat([cache.self_value, value], dim=2)
            cache.self_key, cache.self_value = key, value
        out = nn.functional.scaled_dot_product_attention(
            query,
            key,
            value,
            is_causal=query.shape[2] > 1,  # a whole sequence, or the start vectors
            dropout_p=self.dropout_rate if self.training else 0.0,
        )
        return self.out(out.transpose(1, 2).flatten(2))


class CrossAttention(MultiHeadedAttention):
    """ESPnet's multi-head attention, so ESPnet's ``--num_att_plot`` draws its weights.

    Training calls it like ESPnet's (``forward``); decoding projects the encoder memory once
    per utterance (`project_memory`) and then attends one query at a time (`attend`).
    """

    def project_memory(self, memory: torch.Tensor):
        batch = memory.shape[0]
        key = self.linear_k(memory).view(batch, -1, self.h, self.d_k).transpose(1, 2)
        value = self.linear_v(memory).view(batch, -1, self.h, self.d_k).transpose(1, 2)
        return self.k_norm(key), value

    def attend(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        mask: torch.Tensor,
    ) -> torch.Tensor:
        batch = query.shape[0]
        q = self.linear_q(query).view(batch, -1, self.h, self.d_k).transpose(1, 2)
        scores = torch.matmul(self.q_norm(q), key.transpose(-2, -1)) / math.sqrt(
            self.d_k
        )
        return self.forward_attention(value, scores, mask)


class DecoderLayer(nn.Module):
    """Pre-norm Transformer decoder block: causal self-attention, cross-attention, FFN."""

    def __init__(
        self,
        size: int,
        heads: int,
        linear_units: int,
        dropout_rate: float,
        attention_dropout_rate: float,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(size)
        self.self_attn = CausalSelfAttention(size, heads, attention_dropout_rate)
        self.norm2 = nn.LayerNorm(size)
        self.src_attn = CrossAttention(heads, size, attention_dropout_rate)
        self.norm3 = nn.LayerNorm(size)
        self.feed_forward = nn.Sequential(
            nn.Linear(size, linear_units),
            nn.GELU(),
            nn.Dropout(dropout_rate),
            nn.Linear(linear_units, size),
        )
        self.dropout = nn.Dropout(dropout_rate)

    def forward(
        self,
        x: torch.Tensor,
        memory: torch.Tensor,
        memory_mask: torch.Tensor,
        cache: Optional[LayerCache] = None,
    ) -> torch.Tensor:
        x = x + self.dropout(self.self_attn(self.norm1(x), cache))
        query = self.norm2(x)
        if cache is None:
            attended = self.src_attn(query, memory, memory, memory_mask)
        else:
            attended = self.src_attn.attend(
                query, cache.memory_key, cache.memory_value, memory_mask
            )
        x = x + self.dropout(attended)
        return x + self.dropout(self.feed_forward(self.norm3(x)))


def sinusoidal_positions(
    positions: torch.Tensor, size: int, dtype: torch.dtype
) -> torch.Tensor:
    """Sinusoidal encodings of integer positions, (..., size); no maximum length."""
    half = torch.arange(0, size, 2, device=positions.device, dtype=torch.float32)
    angles = positions[..., None].float() * torch.exp(
        half * (-math.log(10000.0) / size)
    )
    encoding = torch.zeros(*positions.shape, size, device=positions.device)
    encoding[..., 0::2] = torch.sin(angles)
    encoding[..., 1::2] = torch.cos(angles[..., : size // 2])
    return encoding.to(dtype)


VOCABULARIES = ("llm", "whisper")


class SpeechTokenDecoder(nn.Module):
    """Autoregressive decoder from encoder frames to one LLM-space vector per LLM token.

    Args:
        llm_hidden_size: D of the LLM's embedding matrix (input and output of this decoder).
        encoder_output_size: size of the encoder frames it cross-attends to.
        attention_dim, attention_heads, linear_units, num_blocks: Transformer shape.
        dropout_rate: dropout on the residual branches and inputs.
        attention_dropout_rate: dropout on attention weights.
        vocabulary: how tokens enter the decoder and are scored. ``llm``: the previous
            token's LLM embedding ``E[y]`` through a projection, sinusoidal positions, and
            tokens scored by ``z`` against ``E`` (in the model). ``whisper``: Whisper's own
            token embeddings, a fixed ``(vocab_size, attention_dim)`` table that gives each
            LLM token the mean of Whisper's embeddings of its text
            (`espnet_alignchat.whisper_decoder`), Whisper's learned positions and its
            two-token start, and tokens scored against that table as Whisper scores its
            own: a decoder initialised from Whisper then starts out transcribing.
        vocab_size: rows of the LLM's embedding matrix (the ``whisper`` table's rows).
        max_positions: the ``whisper`` vocabulary's learned positions (Whisper's 448).

    Whatever the vocabulary, ``z = Linear(h)`` is the vector the LLM reads for each token.
    ``decoder_conf.init_from_whisper`` (read by the task: it needs the LLM's tokenizer)
    starts a decoder of Whisper's shape from Whisper's text decoder
    (`espnet_alignchat.whisper_decoder`).
    """

    def __init__(
        self,
        llm_hidden_size: int,
        encoder_output_size: int,
        attention_dim: int = 256,
        attention_heads: int = 4,
        linear_units: int = 1024,
        num_blocks: int = 2,
        dropout_rate: float = 0.1,
        attention_dropout_rate: float = 0.0,
        vocabulary: str = "llm",
        vocab_size: Optional[int] = None,
        max_positions: int = 448,
    ):
        super().__init__()
        if vocabulary not in VOCABULARIES:
            raise ValueError(
                f"decoder_conf.vocabulary must be one of {VOCABULARIES}: {vocabulary}"
            )
        self.attention_dim = attention_dim
        self.vocabulary = vocabulary
        if vocabulary == "llm":
            # LLM embedding rows are small (norm ~0.5 for Llama-3 and the mini LLM) next to
            # the positional encodings (norm ~sqrt(d/2)): normalizing the projected rows
            # keeps the token's identity from being drowned out by its position.
            self.input_proj = nn.Sequential(
                nn.Linear(llm_hidden_size, attention_dim), nn.LayerNorm(attention_dim)
            )
            # The first step has no previous token: it starts from a learned vector (at
            # the scale of the normalized rows) instead of any LLM token, so no special
            # token of the LLM is given a new meaning.
            self.start = nn.Parameter(torch.randn(attention_dim))
        else:
            if vocab_size is None:
                raise ValueError("decoder_conf.vocabulary whisper needs the vocab_size")
            # Fixed: derived from Whisper and the LLM's tokenizer, never trained, but saved
            # with the model so that inference needs neither of them.
            self.register_buffer("token_table", torch.zeros(vocab_size, attention_dim))
            self.positions = nn.Parameter(torch.zeros(max_positions, attention_dim))
            self.start = nn.Parameter(torch.zeros(2, attention_dim))
        self.memory_proj = (
            nn.Linear(encoder_output_size, attention_dim)
            if encoder_output_size != attention_dim
            else nn.Identity()
        )
        self.input_dropout = nn.Dropout(dropout_rate)
        self.blocks = nn.ModuleList(
            DecoderLayer(
                attention_dim,
                attention_heads,
                linear_units,
                dropout_rate,
                attention_dropout_rate,
            )
            for _ in range(num_blocks)
        )
        self.norm = nn.LayerNorm(attention_dim)
        self.output_proj = nn.Linear(attention_dim, llm_hidden_size)

    @property
    def prefix_length(self) -> int:
        """Positions before the first token's prediction (the start vectors)."""
        return self.start.view(-1, self.attention_dim).shape[0]

    @property
    def max_tokens(self) -> Optional[int]:
        """The most tokens a sequence can have: the ``whisper`` vocabulary's learned
        positions after the start vectors; None (no limit) for ``llm``."""
        if self.vocabulary == "llm":
            return None
        return self.positions.shape[0] - self.prefix_length

    def embed_tokens(self, token_ids: torch.Tensor) -> Optional[torch.Tensor]:
        """The ``whisper`` vocabulary's input vectors of `token_ids`; None for ``llm``, whose
        input is the LLM's own embeddings (the model gives them)."""
        if self.vocabulary == "llm":
            return None
        return nn.functional.embedding(token_ids, self.token_table)

    def token_scores(
        self, hidden: torch.Tensor, rows: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """The ``whisper`` vocabulary's token logits of the final hidden states `hidden`, over
        the token ids `rows` only, if given (as Whisper scores its tokens: a dot product).
        """
        table = self.token_table if rows is None else self.token_table[rows]
        return hidden @ table.to(hidden.dtype).T

    def _inputs(self, previous: Optional[torch.Tensor], offset: int, batch: int):
        """The previous tokens' input vectors, the start vectors first at step 0, plus
        their positions."""
        dtype = self.start.dtype
        parts = []
        if offset == 0:
            parts.append(
                self.start.view(1, -1, self.attention_dim).expand(batch, -1, -1)
            )
        if previous is not None:
            previous = previous.to(dtype)
            parts.append(
                self.input_proj(previous) if self.vocabulary == "llm" else previous
            )
        x = torch.cat(parts, dim=1)
        end = offset + x.shape[1]
        if self.vocabulary == "llm":
            positions = torch.arange(offset, end, device=x.device)
            x = x + sinusoidal_positions(positions, self.attention_dim, x.dtype)
        else:
            if end > self.positions.shape[0]:
                raise ValueError(
                    f"the decoder has {self.positions.shape[0]} positions, "
                    f"{end - self.prefix_length} tokens do not fit"
                )
            x = x + self.positions[offset:end].to(x.dtype)
        return self.input_dropout(x)

    @staticmethod
    def _memory_mask(memory: torch.Tensor, memory_lengths: torch.Tensor):
        return (~make_pad_mask(memory_lengths, maxlen=memory.shape[1]))[:, None, :].to(
            memory.device
        )

    def forward(
        self,
        memory: torch.Tensor,
        memory_lengths: torch.Tensor,
        previous: torch.Tensor,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Teacher forcing: `previous` = the input vectors of y_1..y_N (batch, N, ·) →
        (z_1..z_{N+1}, their final hidden states h_1..h_{N+1}).

        The output has one vector more than the input: z_{N+1} is trained to be the end token.
        """
        memory_mask = self._memory_mask(memory, memory_lengths)
        memory = self.memory_proj(memory)
        x = self._inputs(previous, offset=0, batch=memory.shape[0])
        for block in self.blocks:
            x = block(x, memory, memory_mask)
        hidden = self.norm(x)[:, self.prefix_length - 1 :]
        return self.output_proj(hidden), hidden

    # -- incremental decoding ----------------------------------------------------------------
    def init_state(self, memory: torch.Tensor, memory_lengths: torch.Tensor):
        """Project the memory once per layer; returns (caches, memory_mask)."""
        memory_mask = self._memory_mask(memory, memory_lengths)
        memory = self.memory_proj(memory)
        batch = memory.shape[0]
        caches = []
        for block in self.blocks:
            key, value = block.src_attn.project_memory(memory)
            empty = key.new_zeros(batch, key.shape[1], 0, key.shape[3])
            caches.append(LayerCache(empty, empty, key, value))
        return caches, memory_mask

    def step(
        self,
        previous: Optional[torch.Tensor],
        caches: List[LayerCache],
        memory_mask: torch.Tensor,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """One step for every row: `previous` = the last token's input vector (batch, ·),
        None at step 0 (which runs the start vectors); returns (z, h) of the next token.
        """
        offset = caches[0].self_key.shape[2]
        batch = memory_mask.shape[0]
        x = self._inputs(
            None if previous is None else previous[:, None], offset=offset, batch=batch
        )
        for block, cache in zip(self.blocks, caches):
            x = block(x, None, memory_mask, cache)
        hidden = self.norm(x)[:, -1]
        return self.output_proj(hidden), hidden
