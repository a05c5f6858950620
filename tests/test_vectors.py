"""What the LLM reads: the vectors' scale, the token logits' temperature, and stage 2 on the
decoder's own hypotheses (on-policy, scheduled sampling)."""

import math

import pytest
import torch
from conftest import build, tiny_model_args

import espnet_alignchat.model
from espnet_alignchat.encoders import ConfigError
from espnet_alignchat.model import vocabulary_temperature
from espnet_alignchat.search import Hypothesis, greedy_search
from espnet_alignchat.task import AlignChatTask


def stage1(batch):
    return {k: v for k, v in batch.items() if "response" not in k}


def teacher_forced(model, batch, token_ids):
    """The decoder's scaled vectors and hidden states, teacher-forced on `token_ids`."""
    memory = model.encode(batch["speech"], batch["speech_lengths"])
    return model.decode(*memory, token_ids)


def record_llm_inputs(model):
    """Every `logits_after_prefix` call's rests, in order."""
    calls = []
    original = model.llm.logits_after_prefix

    def recording(prefix, rests, n_positions):
        calls.append(rests)
        return original(prefix, rests, n_positions)

    model.llm.logits_after_prefix = recording
    return calls


# -- the vectors' scale -------------------------------------------------------------------------
def test_free_vectors_keep_the_head_s_scale_and_nmse(tiny_llm, batch):
    model = build(tiny_llm, nmse_weight=0.1).eval()
    _, stats, _ = model(**stage1(batch))
    text = batch["text"]
    with torch.no_grad():
        previous = model.decoder_inputs(text.clamp(min=0)) * (text >= 0)[..., None]
        memory = model.encode(batch["speech"], batch["speech_lengths"])
        z, _ = model.decoder(*memory, previous)
    targets = model._targets(text, batch["text_lengths"])
    z, rows = z[targets >= 0], model.llm.embed(targets[targets >= 0])
    nmse = ((z - rows).pow(2).sum(-1) / rows.pow(2).sum(-1)).mean()
    assert float(stats["loss_nmse"]) == pytest.approx(float(nmse))
    ratio = z.norm(dim=-1).mean() / rows.norm(dim=-1).mean()
    assert float(stats["norm_ratio"]) == pytest.approx(float(ratio))


def test_normalized_vectors_have_the_embeddings_mean_norm(tiny_llm, batch):
    model = build(tiny_llm, vector_scale="normalize").eval()
    _, stats, _ = model(**stage1(batch))
    mean_norm = model.llm.embeddings.norm(dim=-1).mean()
    targets = model._targets(batch["text"], batch["text_lengths"])
    target_norm = model.llm.embed(targets[targets >= 0]).norm(dim=-1).mean()
    assert float(stats["norm_ratio"]) == pytest.approx(float(mean_norm / target_norm))
    # Decoding gives the LLM the vectors at the scale training gave them.
    for hypothesis in model.tokenize(batch["speech"], batch["speech_lengths"]):
        norms = hypothesis.vectors.norm(dim=-1)
        torch.testing.assert_close(norms, mean_norm.expand_as(norms))


def test_the_gain_is_learned(tiny_llm, batch):
    model = build(tiny_llm, vector_scale="gain", nmse_weight=1.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(3):
        loss, stats, _ = model(**stage1(batch))
        optimizer.zero_grad()
        loss.backward()
        assert model.log_vector_gain.grad.abs() > 0
        optimizer.step()
    gain = float(model.log_vector_gain.exp())
    assert gain != 1.0 and float(stats["vector_gain"]) != 1.0
    with torch.no_grad():
        z, _ = teacher_forced(model.eval(), batch, batch["text"])
    mean_norm = model.llm.embeddings.norm(dim=-1).mean()
    torch.testing.assert_close(
        z.norm(dim=-1), (gain * mean_norm).expand(z.shape[:2]), rtol=1e-5, atol=1e-5
    )


def test_a_learned_gain_is_not_dropped_on_loading(tiny_llm):
    state = build(tiny_llm, vector_scale="gain").state_dict()
    with pytest.raises(ConfigError, match="vector_scale: gain"):
        build(tiny_llm).load_state_dict(state)
    build(tiny_llm, vector_scale="gain").load_state_dict(state)


# -- the logit temperature ----------------------------------------------------------------------
def test_the_vocabulary_sets_the_temperature(tiny_llm):
    for vocab_size in (180, 49152, 152064):
        tau = vocabulary_temperature(vocab_size)
        # A vector on its token's row, all other rows orthogonal: probability 0.99.
        p = math.exp(1 / tau) / (math.exp(1 / tau) + vocab_size - 1)
        assert p == pytest.approx(0.99)
    assert vocabulary_temperature(49152) < vocabulary_temperature(180)
    model = build(tiny_llm, logit_temperature=None)
    assert model.temperature == vocabulary_temperature(model.llm.vocab_size)
    with pytest.raises(ConfigError, match="needs cosine logits"):
        build(tiny_llm, logit_temperature=None, normalize_logits=False)


def test_a_learned_temperature_gets_a_gradient_and_moves(tiny_llm, batch):
    model = build(tiny_llm, learn_temperature=True, logit_temperature=0.2)
    assert float(model.temperature) == pytest.approx(0.2)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(3):
        loss, stats, _ = model(**stage1(batch))
        optimizer.zero_grad()
        loss.backward()
        assert model.log_temperature.grad.abs() > 0
        optimizer.step()
    assert float(model.temperature) != pytest.approx(0.2)
    assert float(stats["temperature"]) != pytest.approx(0.2)
    with pytest.raises(ConfigError, match="learn_temperature: true"):
        build(tiny_llm).load_state_dict(model.state_dict())


def test_a_learned_temperature_is_refused_with_whisper_s_token_scores(tiny_llm):
    args = tiny_model_args(tiny_llm, learn_temperature=True)
    args.decoder_conf.update(vocabulary="whisper", max_positions=64)
    with pytest.raises(ConfigError, match="vocabulary whisper scores tokens"):
        AlignChatTask.build_model(args)


# -- stage 2 on the decoder's own hypotheses ----------------------------------------------------
def fixed_hypotheses(token_ids, calls):
    """A stand-in for `greedy_search` that returns `token_ids` and records its calls."""

    def search(decoder, memory, memory_lengths, logits_fn, embed_fn, end_id, limits):
        calls.append(dict(training=decoder.training, limits=limits.tolist()))
        # Stage 2 runs the decoder on the ids again: the vectors here are not read.
        return [
            Hypothesis(ids, torch.zeros(len(ids), 1), 0.0, True) for ids in token_ids
        ]

    return search


def test_on_policy_vectors_come_from_the_decoder_s_own_hypothesis(
    tiny_llm, batch, monkeypatch
):
    text, lengths = batch["text"], batch["text_lengths"]
    references = [row[:n] for row, n in zip(text.tolist(), lengths.tolist())]
    # Longer, shorter and empty: the empty one keeps its transcript.
    own = [references[0] + references[1][:1], references[1][:1], []]
    searches = []
    monkeypatch.setattr(
        espnet_alignchat.model, "greedy_search", fixed_hypotheses(own, searches)
    )
    model = build(
        tiny_llm, mode="instruct", stage2_inputs="on_policy", align_weight=0.0
    )
    calls = record_llm_inputs(model)
    encoded = []  # the encoder has dropout: the vectors are checked on its own output
    encode = model.encode
    model.encode = lambda *args: encoded.append(encode(*args)) or encoded[-1]
    loss, stats, _ = model(**batch)
    loss.backward()

    # Searched as at inference (dropout off), at most twice the transcript's length.
    assert searches == [
        dict(training=False, limits=[2 * n + 1 for n in lengths.tolist()])
    ]
    assert model.training
    read = [own[0], own[1], references[2]]
    spliced = [rest[0] for rest in calls[0]]
    assert [len(vectors) for vectors in spliced] == [len(ids) for ids in read]
    ids = torch.nn.utils.rnn.pad_sequence(
        [torch.tensor(row) for row in read], batch_first=True, padding_value=-1
    )
    with torch.no_grad():
        z, _ = model.decode(*encoded[0], ids)
    for row, vectors in enumerate(spliced):
        torch.testing.assert_close(vectors, z[row, : len(read[row])])
    assert float(stats["hyp_empty"]) == pytest.approx(1 / 3)
    assert float(stats["hyp_exact"]) == 0.0
    total = sum(map(len, references))
    assert float(stats["hyp_length_ratio"]) == pytest.approx(sum(map(len, own)) / total)
    # Only the answer loss trains (align_weight 0): its gradient reaches every decoder
    # parameter through the vectors of the decoder's own hypotheses.
    for name, param in model.decoder.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_on_policy_runs_the_real_search(tiny_llm, batch, monkeypatch):
    found = []

    def recording_search(**kwargs):
        found.extend(greedy_search(**kwargs))
        return found

    monkeypatch.setattr(espnet_alignchat.model, "greedy_search", recording_search)
    model = build(tiny_llm, mode="instruct", stage2_inputs="on_policy")
    calls = record_llm_inputs(model)
    loss, _, _ = model(**batch)
    assert torch.isfinite(loss)
    lengths = batch["text_lengths"].tolist()
    expected = [len(h.token_ids) or n for h, n in zip(found, lengths)]
    assert [len(rest[0]) for rest in calls[0]] == expected


def test_kl_compares_the_answer_s_positions_whatever_the_prompt_s_length(
    tiny_llm, batch, monkeypatch
):
    text, lengths = batch["text"], batch["text_lengths"]
    references = [row[:n] for row, n in zip(text.tolist(), lengths.tolist())]
    own = [references[0] + references[0], references[1][:1], references[2][1:]]
    monkeypatch.setattr(
        espnet_alignchat.model, "greedy_search", fixed_hypotheses(own, [])
    )
    model = build(tiny_llm, mode="instruct", stage2_inputs="on_policy", kl_weight=1.0)
    model.eval()
    calls = record_llm_inputs(model)
    with torch.no_grad():
        _, stats, _ = model(**batch)
    speech_rests, text_rests = calls

    # Row by row, each prompt alone: no padding, no alignment to get wrong.
    llm, prefix = model.llm, model.prompt_layout.prefix
    total, positions = 0.0, 0
    for speech_rest, text_rest in zip(speech_rests, text_rests):
        answer = speech_rest[-1]
        assert text_rest[-1] == answer
        n = len(answer)
        with torch.no_grad():
            speech = llm.logits_after_prefix(prefix, [speech_rest], n + 1)[0, :-1]
            typed = llm.logits_after_prefix(prefix, [text_rest], n + 1)[0, :-1]
        log_p, log_q = typed.log_softmax(-1), speech.log_softmax(-1)
        total += float((log_p.exp() * (log_p - log_q)).sum())
        positions += n
    assert float(stats["loss_kl"]) == pytest.approx(total / positions, rel=1e-4)


def test_scheduled_sampling_reads_the_decoder_s_predictions(tiny_llm, batch):
    model = build(
        tiny_llm, mode="instruct", stage2_inputs="scheduled", scheduled_prob=1.0
    ).eval()
    calls = record_llm_inputs(model)
    with torch.no_grad():
        _, stats, _ = model(**batch)
        text = batch["text"]
        z, hidden = teacher_forced(model, batch, text)
        predicted = model.scores(z[:, :-1], hidden[:, :-1]).argmax(-1)
        predicted[text < 0] = -1
        expected, _ = teacher_forced(model, batch, predicted)
    wrong = ((predicted != text) & (text >= 0)).sum() / (text >= 0).sum()
    assert float(stats["scheduled_wrong"]) == pytest.approx(float(wrong))
    for row, n in enumerate(batch["text_lengths"].tolist()):
        torch.testing.assert_close(calls[0][row][0], expected[row, :n])
