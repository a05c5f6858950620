"""The decoder's cache and the batched searches over it."""

import math

import pytest
import torch

from espnet_alignchat.decoder import CausalSelfAttention, SpeechTokenDecoder
from espnet_alignchat.search import (
    Hypothesis,
    beam_search,
    greedy_search,
    length_limits,
)

D_LLM, VOCAB, END = 16, 12, 0


@pytest.fixture
def decoder_and_table():
    torch.manual_seed(0)
    decoder = SpeechTokenDecoder(
        D_LLM, encoder_output_size=24, attention_dim=32, attention_heads=4, num_blocks=2
    ).eval()
    return decoder, torch.randn(VOCAB, D_LLM)


def memory_batch(lengths):
    memory = torch.randn(len(lengths), max(lengths), 24)
    return memory, torch.tensor(lengths)


def test_incremental_steps_equal_teacher_forcing(decoder_and_table):
    decoder, table = decoder_and_table
    memory, lengths = memory_batch([9, 5, 7])
    tokens = torch.randint(1, VOCAB, (3, 6))
    with torch.no_grad():
        forced, forced_hidden = decoder(memory, lengths, table[tokens])  # (3, 7, ·)
        caches, mask = decoder.init_state(memory, lengths)
        steps = [decoder.step(None, caches, mask)]
        steps += [decoder.step(table[tokens[:, i]], caches, mask) for i in range(6)]
    z, hidden = (torch.stack(part, 1) for part in zip(*steps))
    torch.testing.assert_close(z, forced, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(hidden, forced_hidden, atol=1e-5, rtol=1e-5)


def test_each_step_runs_one_query_against_the_cache(decoder_and_table):
    decoder, table = decoder_and_table
    queries, keys = [], []

    def record(module, inputs, output):
        queries.append(inputs[0].shape[1])
        if inputs[1] is not None:
            keys.append(inputs[1].self_key.shape[2])

    hook = decoder.blocks[0].self_attn.register_forward_hook(record)
    memory, lengths = memory_batch([8])
    hypotheses = greedy_search(
        decoder,
        memory,
        lengths,
        lambda z, hidden: z @ table.T,
        lambda ids: table[ids],
        end_id=-1,  # never ends: runs to the limit
        limits=torch.tensor([10]),
    )
    hook.remove()
    assert len(hypotheses[0].token_ids) == 10
    assert queries == [1] * 10  # N tokens: N single-query steps per layer
    assert keys == list(range(1, 11))  # the cache grows by one per step


class ScriptedDecoder:
    """A stand-in decoder whose next-token log-probabilities depend on the previous token."""

    def __init__(self, table: torch.Tensor):
        self.table = table  # (VOCAB + 1 "start" row, VOCAB) log-probabilities

    def init_state(self, memory, memory_lengths):
        class Stateless:
            def select(self, index):
                return self

        return [Stateless()], torch.ones(len(memory), 1, 1, dtype=torch.bool)

    def step(self, previous, caches, memory_mask):
        if previous is None:
            scores = self.table[-1].expand(len(memory_mask), -1)
        else:
            scores = self.table[previous.argmax(-1)]
        return scores, scores  # (z, hidden)


def scripted(transitions):
    """Transitions: {previous token or 'start': {token: probability}} over 3 tokens."""
    table = torch.full((4, 3), -1e9)
    for previous, probabilities in transitions.items():
        row = 3 if previous == "start" else previous
        for token, p in probabilities.items():
            table[row, token] = math.log(p)
    return ScriptedDecoder(table)


def run(search, decoder, limits, **kwargs):
    return search(
        decoder,
        torch.zeros(len(limits), 1, 1),
        torch.ones(len(limits), dtype=torch.long),
        lambda z, hidden: z,  # the scripted "vectors" are already log-probabilities
        lambda ids: torch.nn.functional.one_hot(ids, 3).float(),
        END,
        torch.tensor(limits),
        **kwargs,
    )


# Token 1 is the locally best first step but never ends well; token 2 ends at once.
TRAP = {
    "start": {END: 0.001, 1: 0.6, 2: 0.399},
    1: {END: 0.3, 1: 0.7},
    2: {END: 0.99, 1: 0.01},
}


def test_greedy_stops_at_the_end_token_or_the_limit():
    decoder = scripted({"start": {1: 1.0}, 1: {2: 1.0}, 2: {END: 1.0}})
    ended, cut = run(greedy_search, decoder, [10, 2])
    assert ended.token_ids == [1, 2] and ended.reached_end
    assert ended.vectors.shape == (2, 3) and ended.score == pytest.approx(0.0)
    assert cut.token_ids == [1, 2] and not cut.reached_end


def test_beam_search_escapes_the_greedy_trap():
    greedy = run(greedy_search, scripted(TRAP), [5])[0]
    beam = run(beam_search, scripted(TRAP), [5], beam_size=2)[0]
    assert greedy.token_ids == [1, 1, 1, 1, 1] and not greedy.reached_end
    assert beam.token_ids == [2] and beam.reached_end
    assert beam.score == pytest.approx(math.log(0.399 * 0.99))
    assert beam.vectors.shape == (1, 3)


def test_beam_search_handles_each_utterance_of_a_batch(decoder_and_table):
    decoder, table = decoder_and_table
    memory, lengths = memory_batch([9, 4, 7])
    common = dict(
        decoder=decoder,
        memory_lengths=lengths,
        logits_fn=lambda z, hidden: z @ table.T,
        embed_fn=lambda ids: table[ids],
        end_id=END,
        limits=length_limits(lengths, maxlenratio=1.0, max_tokens=8),
    )
    batched = beam_search(memory=memory, beam_size=3, **common)
    greedy = greedy_search(memory=memory, **common)
    one_beam = beam_search(memory=memory, beam_size=1, **common)
    for row in range(3):
        alone = beam_search(
            decoder,
            memory[row : row + 1, : lengths[row]],
            lengths[row : row + 1],
            common["logits_fn"],
            common["embed_fn"],
            END,
            common["limits"][row : row + 1],
            beam_size=3,
        )[0]
        assert batched[row].token_ids == alone.token_ids
        assert batched[row].score == pytest.approx(alone.score, abs=1e-4)
        assert one_beam[row].token_ids == greedy[row].token_ids
        assert isinstance(batched[row], Hypothesis)
        assert batched[row].vectors.shape == (len(batched[row].token_ids), D_LLM)


def test_length_limits_follow_the_encoder_length():
    limits = length_limits(torch.tensor([10, 3, 1000]), maxlenratio=0.5, max_tokens=64)
    assert limits.tolist() == [6, 3, 64]


def test_self_attention_rejects_a_bad_head_count():
    with pytest.raises(ValueError, match="not divisible"):
        CausalSelfAttention(30, 4, 0.0)
