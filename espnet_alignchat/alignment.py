"""How the speech tokenizer lines speech up with LLM tokens, one token at a time.

    chat = Speech2Chat.from_pretrained("exp/train_instruct")
    report = inspect_alignment(chat, "question.wav", reference="what is two plus three")
    print(format_report(report))
    save_heatmap(report, "attention.png")        # every decoder layer, over encoder frames
    alignment_figure(report).savefig("tokens.png")  # the waveform, and each token over time

For every decoder step (one LLM token, then the end token) the report gives the token the
model's token scores put first (the scores decoding uses: ``z·Eᵀ``, normalised as the model is
configured), the cosine of ``z`` to that token's embedding and, given a reference transcript,
the cosine to the reference token's embedding and the reference token's rank among the scores.
With a reference the decoder reads the reference tokens (teacher forcing, as in training), so
every step is scored against the token it should produce; without one it reads its own greedy
transcript. The cross-attention weights of the same pass show which encoder frames each step
listened to; `alignment_figure` draws them over the waveform's time axis, one row per LLM
token, so a reader sees which stretch of audio each token came from.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

from espnet_alignchat.errors import InputError
from espnet_alignchat.inference import Speech, Speech2Chat, load_speech


@dataclass
class TokenRow:
    """One decoder step."""

    predicted: str  # the token the scores put first
    cosine: float  # cos(z, E[predicted])
    reference: Optional[str] = None  # the reference token of this step
    reference_cosine: Optional[float] = None  # cos(z, E[reference])
    rank: Optional[int] = None  # the reference token's rank among the scores, 1 = first


@dataclass
class AlignmentReport:
    labels: List[str]  # the token of each step: the reference's, else the decoded one
    rows: List[TokenRow]
    attention: np.ndarray  # (decoder layers, steps, encoder frames), mean over heads
    transcript: str  # the greedy transcript of the speech
    waveform: np.ndarray  # the speech, at `sample_rate`
    sample_rate: int


@torch.no_grad()
def inspect_alignment(
    chat: Speech2Chat, speech: Speech, reference: Optional[str] = None
) -> AlignmentReport:
    """Score every step of one utterance (see the module's docstring)."""
    model, llm = chat.model, chat.llm
    waveform = load_speech(speech, chat.sample_rate, "speech")
    transcript_ids = chat.tokenize(waveform).token_ids
    tokens = transcript_ids if reference is None else llm.tokenize(reference)
    if reference is not None and not tokens:
        raise InputError("the reference transcript is empty")
    device = chat.device
    memory, memory_lengths = model.encode(
        torch.from_numpy(waveform)[None].to(device),
        torch.tensor([len(waveform)], device=device),
    )
    targets = torch.tensor(tokens + [model.end_token_id], device=device)
    previous = model.decoder_inputs(targets[None, :-1])
    z, hidden = (out[0] for out in model.decoder(memory, memory_lengths, previous))
    scores = model.scores(z, hidden).float()  # (steps, vocab)
    embeddings = llm.embeddings_as(z.dtype)
    predicted = scores.argmax(-1)
    cosines = F.cosine_similarity(z, embeddings[predicted], dim=-1).tolist()
    reference_cosines = F.cosine_similarity(z, embeddings[targets], dim=-1).tolist()
    target_scores = scores.gather(1, targets[:, None])
    ranks = ((scores > target_scores).sum(-1) + 1).tolist()

    def token(token_id: int) -> str:
        return llm.tokenizer.decode([token_id])

    rows = []
    for step, token_id in enumerate(predicted.tolist()):
        row = TokenRow(token(token_id), cosines[step])
        if reference is not None:
            row.reference = token(int(targets[step]))
            row.reference_cosine, row.rank = reference_cosines[step], ranks[step]
        rows.append(row)
    # The decoder's first rows may be start vectors (Whisper's two-token start): the rows
    # of the steps that emit a token are the last len(targets).
    attention = np.stack(
        [
            block.src_attn.attn[0].float().mean(0)[-len(targets) :].cpu().numpy()
            for block in model.decoder.blocks
        ]
    )
    labels = [token(int(token_id)) for token_id in targets]
    return AlignmentReport(
        labels,
        rows,
        attention,
        llm.decode(transcript_ids),
        waveform,
        chat.sample_rate,
    )


def format_report(report: AlignmentReport) -> str:
    """A table, one line per step, and a summary."""
    with_reference = report.rows and report.rows[0].reference is not None
    header = f"{'step':>4}  {'decoded':<16} {'cos':>6}"
    if with_reference:
        header += f"  {'reference':<16} {'cos':>6} {'rank':>6}"
    lines = [header]
    for step, row in enumerate(report.rows, 1):
        line = f"{step:>4}  {row.predicted!r:<16} {row.cosine:>6.3f}"
        if with_reference:
            line += (
                f"  {row.reference!r:<16} {row.reference_cosine:>6.3f} {row.rank:>6}"
            )
        lines.append(line)
    lines.append(f"transcript: {report.transcript}")
    if with_reference:
        first = sum(row.rank == 1 for row in report.rows)
        mean = np.mean([row.reference_cosine for row in report.rows])
        lines.append(
            f"reference tokens ranked first: {first}/{len(report.rows)}; "
            f"mean cosine to the reference embeddings: {mean:.3f}"
        )
    else:
        mean = np.mean([row.cosine for row in report.rows])
        lines.append(f"mean cosine to the decoded tokens' embeddings: {mean:.3f}")
    return "\n".join(lines)


def save_heatmap(report: AlignmentReport, path: Path, max_labels: int = 60) -> None:
    """The cross-attention of each decoder layer: steps (LLM tokens) × encoder frames."""
    layers, steps, frames = report.attention.shape
    figure = Figure(figsize=(max(6.0, frames / 12), layers * max(2.5, steps * 0.25)))
    axes = figure.subplots(layers, 1, squeeze=False)[:, 0]
    for layer, ax in enumerate(axes):
        image = ax.imshow(
            report.attention[layer], aspect="auto", interpolation="nearest"
        )
        ax.set_title(f"decoder layer {layer + 1}: cross-attention, mean over heads")
        ax.set_ylabel("LLM token")
        if steps <= max_labels:  # beyond that the labels overlap
            ax.set_yticks(range(steps), [repr(label) for label in report.labels])
        figure.colorbar(image, ax=ax)
    axes[-1].set_xlabel("encoder frame")
    figure.savefig(path, dpi=100, bbox_inches="tight")


def alignment_figure(report: AlignmentReport, max_labels: int = 60) -> Figure:
    """The waveform over time, and under it one row per LLM token (the end token last): the
    cross-attention of the step that produced it, averaged over the decoder's layers and
    heads and scaled to its strongest frames, over the seconds of audio its encoder frames
    cover.
    """
    steps = report.attention.shape[1]
    seconds = len(report.waveform) / report.sample_rate
    weights = report.attention.mean(0)
    # Scaled by a high quantile, not the peak: a frame that every step attends to (an
    # attention sink, often the last one) would otherwise leave the rest of each row dark.
    top = np.quantile(weights, 0.98, axis=1, keepdims=True).clip(min=1e-12)
    weights = (weights / top).clip(max=1.0)
    figure = Figure(figsize=(10, 1.6 + max(2.0, 0.22 * steps)), layout="constrained")
    wave_ax, token_ax = figure.subplots(
        2, 1, sharex=True, height_ratios=[1, max(2.0, 0.22 * steps)]
    )
    time = np.arange(len(report.waveform)) / report.sample_rate
    wave_ax.plot(time, report.waveform, linewidth=0.5, color="tab:blue")
    wave_ax.set_yticks([])
    wave_ax.set_title(f"heard: {report.transcript}", loc="left", fontsize=10)
    image = token_ax.imshow(
        weights,
        aspect="auto",
        interpolation="nearest",
        cmap="magma",
        extent=(0.0, seconds, steps - 0.5, -0.5),
    )
    if steps <= max_labels:  # beyond that the labels overlap
        token_ax.set_yticks(range(steps), [repr(label) for label in report.labels])
    token_ax.set_ylabel("LLM token")
    token_ax.set_xlabel("seconds")
    token_ax.set_xlim(0.0, seconds)
    figure.colorbar(image, ax=token_ax, label="attention, scaled per row", shrink=0.8)
    return figure
