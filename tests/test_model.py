"""AlignChatModel: what each stage trains, what it never touches, and what it saves."""

import pytest
import torch
from conftest import build, refuse_llm_loading, tiny_model_args

import espnet_alignchat.llm
from espnet_alignchat.llm import LLMMismatchError
from espnet_alignchat.task import AlignChatTask


def test_stage1_reads_the_embeddings_and_nothing_else(tiny_llm, batch, monkeypatch):
    refuse_llm_loading(monkeypatch)
    model = build(tiny_llm, mode="pretrain")
    loss, stats, weight = model(
        **{k: v for k, v in batch.items() if "response" not in k}
    )
    assert torch.isfinite(loss).all() and int(weight) == 3
    assert {"loss", "loss_ce", "loss_cos", "loss_nmse", "acc"} <= set(stats)
    assert not model.llm.is_loaded


def test_sampled_softmax_is_the_full_one_when_the_draw_covers_the_vocabulary(
    tiny_llm, batch
):
    stage1 = {k: v for k, v in batch.items() if "response" not in k}
    full = build(tiny_llm, mode="pretrain")
    sampled = build(tiny_llm, mode="pretrain", ce_negatives=50 * full.llm.vocab_size)
    torch.manual_seed(1)  # the same dropout masks: they are drawn before the rows
    _, full_stats, _ = full(**stage1)
    torch.manual_seed(1)
    _, sampled_stats, _ = sampled(**stage1)  # same seed: the same weights
    assert torch.allclose(sampled_stats["loss_ce"], full_stats["loss_ce"])


def test_sampled_softmax_scores_fewer_rows_in_training_only(tiny_llm, batch):
    stage1 = {k: v for k, v in batch.items() if "response" not in k}
    model = build(tiny_llm, mode="pretrain", ce_negatives=2, ctc_weight=0.3).eval()
    # Validation scores the whole vocabulary: the same losses as without sampling.
    _, stats, _ = model(**stage1)
    _, reference, _ = build(tiny_llm, mode="pretrain", ctc_weight=0.3).eval()(**stage1)
    assert torch.allclose(stats["loss_ce"], reference["loss_ce"])
    assert torch.allclose(stats["loss_ctc"], reference["loss_ctc"])
    model.train()  # CTC over the batch's own tokens and the blank
    _, stats, _ = model(**stage1)
    assert torch.isfinite(stats["loss_ctc"]) and stats["loss_ctc"] > 0
    targets = model._targets(stage1["text"], stage1["text_lengths"])
    rows = model._candidate_rows(targets[targets != -1])
    assert set(targets[targets != -1].tolist()) <= set(rows.tolist())
    assert len(rows) < model.llm.vocab_size and torch.equal(rows, rows.sort().values)


def test_collect_stats_reads_no_llm_weights(tiny_llm, batch, monkeypatch):
    refuse_llm_loading(monkeypatch)
    monkeypatch.setattr(
        espnet_alignchat.llm, "load_embeddings", lambda *a: pytest.fail("E was read")
    )
    args = tiny_model_args(tiny_llm)
    args.collect_stats = True
    model = AlignChatTask.build_model(args)
    feats = model.collect_feats(batch["speech"], batch["speech_lengths"])
    assert feats["feats"].shape[-1] == 20


def test_stage1_loss_falls_on_a_fixed_batch(tiny_llm, batch):
    model = build(tiny_llm, mode="pretrain", ctc_weight=0.3, nmse_weight=0.1)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    stage1 = {k: v for k, v in batch.items() if "response" not in k}
    history = []
    for _ in range(40):
        loss, stats, _ = model(**stage1)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append((float(loss), float(stats["acc"])))
    assert history[-1][0] < 0.3 * history[0][0]
    assert history[-1][1] > history[0][1] + 0.3
    assert float(stats["loss_ctc"]) > 0


def test_stage2_trains_the_tokenizer_through_a_frozen_llm(tiny_llm, batch):
    model = build(tiny_llm, mode="instruct", kl_weight=0.5)
    llm = model.llm.model
    before = {name: p.detach().clone() for name, p in llm.named_parameters()}
    tokenizer_before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss, stats, _ = model(**batch)
    assert {"loss_response", "acc_response", "loss_kl"} <= set(stats)
    assert float(stats["loss_kl"]) > 0
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()

    # Gradients flow through the LLM into every part of the speech tokenizer ...
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
        assert not torch.equal(param, tokenizer_before[name]), name
    # ... while the LLM stays bit-identical and out of the optimizer and the state_dict.
    for name, param in llm.named_parameters():
        assert param.grad is None and torch.equal(param, before[name]), name
    optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert not optimized & {id(p) for p in llm.parameters()}
    assert not any(key.startswith("llm.") for key in model.state_dict())


def test_stage2_on_expected_vectors_feeds_the_llm_what_decoding_feeds(tiny_llm, batch):
    model = build(tiny_llm, mode="instruct", speech_vectors="expected").eval()
    fed = []
    original = model._answer_losses
    model._answer_losses = lambda z, *args: fed.append(z) or original(z, *args)
    loss, _, _ = model(**batch)
    loss.backward()
    text = batch["text"]
    previous = model.decoder_inputs(text.clamp(min=0)) * (text >= 0)[..., None]
    memory = model.encode(batch["speech"], batch["speech_lengths"])
    with torch.no_grad():
        z, hidden = model.decoder(*memory, previous)
        expected = model.expected_vectors(z, hidden)
    for row, length in enumerate(batch["text_lengths"].tolist()):
        torch.testing.assert_close(fed[0][row], expected[row, :length])
    assert all(p.grad is not None for p in model.decoder.parameters())


def test_stage2_needs_the_responses(tiny_llm, batch):
    model = build(tiny_llm, mode="instruct")
    stage1 = {k: v for k, v in batch.items() if "response" not in k}
    with pytest.raises(ValueError, match="needs a 'response'"):
        model(**stage1)


def test_token_ids_of_another_vocabulary_are_refused(tiny_llm, batch):
    model = build(tiny_llm)
    bad = dict(batch, text=batch["text"] + 1000)
    with pytest.raises(ValueError, match="was it tokenized for another LLM"):
        model(**bad)


def test_espnet_dtype_cast_does_not_reach_the_llm(tiny_llm, batch):
    model = build(tiny_llm, mode="instruct")
    model.to(dtype=torch.float64)  # what ESPnet's main does with --train_dtype
    assert model.llm.model.dtype == torch.float32
    assert model.llm.embeddings.dtype == torch.float32


def test_output_modes(tiny_llm, batch):
    model = build(tiny_llm).eval()
    model.end_token_id = -1  # never ends: every hypothesis runs to its limit
    speech, lengths = batch["speech"], batch["speech_lengths"]
    continuous = model.tokenize(speech, lengths, max_tokens=6)
    snapped = model.tokenize(speech, lengths, max_tokens=6, output_mode="snap")
    for c, s in zip(continuous, snapped):
        assert c.token_ids == s.token_ids and len(s.token_ids) == 6
        assert torch.equal(s.vectors, model.llm.embed(torch.tensor(s.token_ids)))
        assert not torch.equal(c.vectors, s.vectors)


def test_canonical_output_mode_embeds_the_tokenizer_s_own_split(
    tiny_llm, batch, monkeypatch
):
    model = build(tiny_llm).eval()
    model.end_token_id = -1  # never ends: every hypothesis runs to its limit
    speech, lengths = batch["speech"], batch["speech_lengths"]
    calls = []

    # The word-level tokenizer has one split of every text: fake another.
    def canonical_ids(token_ids):
        calls.append(list(token_ids))
        return list(token_ids[:2])

    monkeypatch.setattr(model.llm, "canonical_ids", canonical_ids)
    snapped = model.tokenize(speech, lengths, max_tokens=6, output_mode="snap")
    canonical = model.tokenize(speech, lengths, max_tokens=6, output_mode="canonical")
    assert calls == [s.token_ids for s in snapped]
    for s, c in zip(snapped, canonical):
        assert c.token_ids == s.token_ids[:2]
        assert torch.equal(c.vectors, model.llm.embed(torch.tensor(c.token_ids)))


def test_expected_vectors_weight_the_embeddings_by_the_decoder_s_probabilities(
    tiny_llm, batch
):
    model = build(tiny_llm).eval()
    model.end_token_id = -1  # never ends: every hypothesis runs to its limit
    speech, lengths = batch["speech"], batch["speech_lengths"]
    greedy = model.tokenize(speech, lengths, max_tokens=5)
    expected = model.tokenize(speech, lengths, max_tokens=5, output_mode="expected")
    memory, memory_lengths = model.encode(speech, lengths)
    embeddings = model.llm.embeddings
    # What the search saw, step by step: the probabilities at each step, times E.
    caches, mask = model.decoder.init_state(memory, memory_lengths)
    previous, steps = None, []
    for step in range(5):
        with torch.no_grad():
            z, hidden = model.decoder.step(previous, caches, mask)
        with torch.no_grad():
            steps.append(model.scores(z, hidden).softmax(-1) @ embeddings)
        previous = model.decoder_inputs(
            torch.tensor([g.token_ids[step] for g in greedy])
        )
    for row, (g, e) in enumerate(zip(greedy, expected)):
        assert g.token_ids == e.token_ids
        weights_times_e = torch.stack([vectors[row] for vectors in steps])
        torch.testing.assert_close(e.vectors, weights_times_e)


def test_expected_temperature_moves_the_vectors_between_expected_and_snap(
    tiny_llm, batch
):
    model = build(tiny_llm).eval()
    model.end_token_id = -1  # never ends: every hypothesis runs to its limit
    speech, lengths = batch["speech"], batch["speech_lengths"]

    def vectors(**options):
        decoded = model.tokenize(speech, lengths, max_tokens=5, **options)
        return torch.stack([h.vectors for h in decoded])

    snapped = vectors(output_mode="snap")
    temperatures = (1.0, 0.5, 0.1, 1e-4)
    distances = [
        (vectors(output_mode="expected", expected_temperature=t) - snapped).norm()
        for t in temperatures
    ]
    torch.testing.assert_close(
        vectors(output_mode="expected"),
        vectors(output_mode="expected", expected_temperature=1.0),
    )
    # Sharper weights move every vector towards its argmax token's row, reached near 0.
    assert all(a > b for a, b in zip(distances, distances[1:]))
    torch.testing.assert_close(
        vectors(output_mode="expected", expected_temperature=1e-4), snapped
    )
    with pytest.raises(ValueError, match="expected_temperature must be > 0"):
        model.tokenize(speech, lengths, output_mode="expected", expected_temperature=0)


def test_checkpoint_of_another_llm_is_refused(tiny_llm, other_llm):
    state = build(tiny_llm).state_dict()
    with pytest.raises(LLMMismatchError, match="other-llama"):
        build(other_llm).load_state_dict(state)


def test_fingerprint_survives_espnet_checkpoint_averaging(tiny_llm):
    first, second = (
        build(tiny_llm).state_dict(),
        build(tiny_llm, ce_weight=2.0).state_dict(),
    )
    # espnet2.main_funcs.average_nbest_models: sum, then float entries divided by n
    averaged = {
        k: (first[k] + second[k]) / 2 if first[k].is_floating_point() else first[k]
        for k in first
    }
    build(tiny_llm).load_state_dict(averaged)


def test_answers_end_as_the_llm_ended_them(tiny_llm, batch):
    model = build(tiny_llm, mode="instruct")
    end, stop = model.prompt_layout.turn_end, model.llm.stop_token_ids[0]
    answers = torch.tensor([[9, 10], [9, stop]])
    completed = model.complete_answers(answers, torch.tensor([2, 2]))
    assert completed[0] == [9, 10] + end  # given as text, or cut off
    assert completed[1] == [9, stop]  # self-generated: kept as emitted
    # An LLM that answered nothing still gives a target: its stop token.
    only_stop = torch.full_like(batch["response"][:, :1], stop)
    loss, stats, _ = model(
        **dict(
            batch, response=only_stop, response_lengths=torch.ones(3, dtype=torch.long)
        )
    )
    assert torch.isfinite(loss).all() and float(stats["loss_response"]) > 0


def test_a_model_without_ctc_takes_a_checkpoint_with_ctc(tiny_llm):
    with_ctc = build(tiny_llm, ctc_weight=0.3).state_dict()
    model = build(tiny_llm, mode="instruct")  # stage 2 with CTC off
    model.load_state_dict(with_ctc)  # strict, as ESPnet's --init_param loads
    assert torch.equal(model.decoder.start, with_ctc["decoder.start"])
