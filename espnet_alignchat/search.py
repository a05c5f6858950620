"""Decoding LLM tokens from speech: batched greedy and beam search over the cached decoder.

Both searches run a whole batch of utterances at once, feed back the decoder's input vector of
the chosen token (as in training) and stop each utterance at the end token or at its length
limit.
Each hypothesis keeps the decoder's vector ``z`` for every token: those vectors, not the token
ids, are what the LLM reads in ``continuous`` mode.
"""

from dataclasses import dataclass
from typing import Callable, List, Optional

import torch

from espnet_alignchat.decoder import SpeechTokenDecoder

# (z, h) of the decoder (..., D), (..., d) -> token logits (..., V)
Logits = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Embed = Callable[
    [torch.Tensor], torch.Tensor
]  # token ids (...) -> decoder inputs (..., ·)


@dataclass
class Hypothesis:
    token_ids: List[int]  # LLM token ids, end token excluded
    vectors: torch.Tensor  # (len(token_ids), D): the decoder's output for each token
    score: float  # sum of token log-probabilities, end token included
    reached_end: bool  # False when the length limit cut it off


def length_limits(
    memory_lengths: torch.Tensor, maxlenratio: float, max_tokens: int
) -> torch.Tensor:
    """At most ``maxlenratio`` tokens per encoder frame and `max_tokens`, end token included."""
    limits = torch.ceil(memory_lengths.float() * maxlenratio).long() + 1
    return limits.clamp(min=1, max=max_tokens)


@torch.no_grad()
def greedy_search(
    decoder: SpeechTokenDecoder,
    memory: torch.Tensor,
    memory_lengths: torch.Tensor,
    logits_fn: Logits,
    embed_fn: Embed,
    end_id: int,
    limits: torch.Tensor,
) -> List[Hypothesis]:
    """The most likely token at each step, for every utterance of the batch at once."""
    caches, memory_mask = decoder.init_state(memory, memory_lengths)
    limits = limits.to(memory.device)
    done = torch.zeros(memory.shape[0], dtype=torch.bool, device=memory.device)
    tokens, vectors, scores = [], [], []
    previous: Optional[torch.Tensor] = None
    for step in range(int(limits.max())):
        z, hidden = decoder.step(previous, caches, memory_mask)
        log_probs = logits_fn(z, hidden).float().log_softmax(dim=-1)
        score, token = log_probs.max(dim=-1)
        tokens.append(token)
        vectors.append(z)
        scores.append(score)
        done |= (token == end_id) | (step + 1 >= limits)
        if bool(done.all()):
            break
        previous = embed_fn(token)

    tokens_t, vectors_t = torch.stack(tokens, 1), torch.stack(vectors, 1)
    scores_t = torch.stack(scores, 1)
    hypotheses = []
    for row, row_tokens in enumerate(tokens_t.tolist()):
        limit = min(int(limits[row]), len(row_tokens))
        ended = end_id in row_tokens[:limit]
        length = row_tokens.index(end_id) if ended else limit
        hypotheses.append(
            Hypothesis(
                token_ids=row_tokens[:length],
                vectors=vectors_t[row, :length],
                score=float(scores_t[row, : length + ended].sum()),
                reached_end=ended,
            )
        )
    return hypotheses


@torch.no_grad()
def beam_search(
    decoder: SpeechTokenDecoder,
    memory: torch.Tensor,
    memory_lengths: torch.Tensor,
    logits_fn: Logits,
    embed_fn: Embed,
    end_id: int,
    limits: torch.Tensor,
    beam_size: int,
    length_bonus: float = 0.0,
) -> List[Hypothesis]:
    """Batched beam search; the best of `beam_size` ended hypotheses per utterance.

    A hypothesis' final score is its log-probability plus ``length_bonus`` per token
    (end token included), as ESPnet's ``penalty``.
    """
    batch, beams = memory.shape[0], beam_size
    device = memory.device
    caches, memory_mask = decoder.init_state(
        memory.repeat_interleave(beams, 0), memory_lengths.repeat_interleave(beams, 0)
    )
    limits = limits.tolist()
    scores = torch.full((batch, beams), float("-inf"), device=device)
    scores[:, 0] = (
        0.0  # all beams start identical: keep one alive so they do not repeat
    )
    history = torch.zeros(batch * beams, 0, dtype=torch.long, device=device)
    history_vectors: Optional[torch.Tensor] = None
    finished: List[List[Hypothesis]] = [[] for _ in range(batch)]
    active = [True] * batch
    previous: Optional[torch.Tensor] = None

    def hypothesis(
        tokens: torch.Tensor, vectors: torch.Tensor, score, reached_end: bool
    ):
        return Hypothesis(
            token_ids=tokens.tolist(),
            vectors=vectors[: len(tokens)],
            score=float(score) + length_bonus * (len(tokens) + reached_end),
            reached_end=reached_end,
        )

    for step in range(max(limits)):
        z, hidden = decoder.step(previous, caches, memory_mask)
        log_probs = logits_fn(z, hidden).float().log_softmax(dim=-1)
        vocab = log_probs.shape[-1]
        candidates = (scores.view(-1, 1) + log_probs).view(batch, beams * vocab)
        # 2 × beams candidates leave `beams` that do not end, even if the best ones all end.
        top_scores, top_index = candidates.topk(min(2 * beams, beams * vocab), dim=-1)
        parent, token = top_index // vocab, top_index % vocab
        ends = token == end_id
        parent_flat = parent + torch.arange(batch, device=device)[:, None] * beams
        history_vectors = (
            z[:, None]
            if history_vectors is None
            else torch.cat([history_vectors, z[:, None]], dim=1)
        )
        # Ended candidates that rank among the best `beams` become finished hypotheses.
        for row, rank in (ends[:, :beams]).nonzero().tolist():
            if active[row] and top_scores[row, rank] > float("-inf"):
                flat = int(parent_flat[row, rank])  # `history` is still the parents'
                finished[row].append(
                    hypothesis(
                        history[flat],
                        history_vectors[flat],
                        top_scores[row, rank],
                        True,
                    )
                )
        # The best `beams` candidates that do not end carry on.
        keep = torch.argsort(ends.int(), dim=1, stable=True)[:, :beams]
        chosen = parent_flat.gather(1, keep).view(-1)
        scores = top_scores.gather(1, keep)
        history = torch.cat([history[chosen], token.gather(1, keep).view(-1, 1)], dim=1)
        history_vectors = history_vectors[chosen]
        caches = [cache.select(chosen) for cache in caches]

        for row in range(batch):
            if not active[row]:
                continue
            if len(finished[row]) >= beams:
                active[row] = False
            elif step + 1 >= limits[row]:  # cut off: keep what the beams have
                finished[row].extend(
                    hypothesis(
                        history[flat], history_vectors[flat], scores[row, k], False
                    )
                    for k, flat in enumerate(range(row * beams, (row + 1) * beams))
                    if scores[row, k] > float("-inf")
                )
                active[row] = False
        if not any(active):
            break
        previous = embed_fn(history[:, -1])

    return [max(row, key=lambda h: h.score) for row in finished]
