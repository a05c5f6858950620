"""The measurements behind ``python -m espnet_alignchat.bin.benchmark``.

Each function times one of AlignChat's cost claims on real utterances of a data dir with a
trained model (or, for training, a model built from a trained model's config): how many LLM
positions speech takes, how soon the first answer token comes, how fast training steps,
self-generation and decoding run. Timings synchronise the device before reading the clock.
"""

import argparse
import resource
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from tqdm import tqdm
from transformers.generation.streamers import BaseStreamer

from espnet_alignchat.datadir import DataDir, read_kaldi_map
from espnet_alignchat.errors import InputError
from espnet_alignchat.llm import FrozenLLM, PromptPiece, Turn
from espnet_alignchat.model import AlignChatModel
from espnet_alignchat.model_dir import locate_llm, read_config, resolve_paths
from espnet_alignchat.speech_chat import SpeechChatMixin
from espnet_alignchat.task import AlignChatTask

SAMPLE_RATE = 16000


@dataclass
class Utterance:
    key: str
    samples: np.ndarray  # mono float32 at SAMPLE_RATE
    text: str
    text_ids: List[int]  # the transcript in the LLM's tokens
    response_ids: Optional[
        List[int]
    ]  # the LLM's own answer (stage 2's target), if known

    @property
    def seconds(self) -> float:
        return len(self.samples) / SAMPLE_RATE


def _token_ids(data_dir: Path, name: str) -> Optional[Dict[str, List[int]]]:
    path = data_dir / f"{name}_int"
    if not path.is_file():
        return None
    return {
        key: [int(i) for i in ids.split()] for key, ids in read_kaldi_map(path).items()
    }


def read_utterances(data_dir: Path, llm: FrozenLLM, limit: int) -> List[Utterance]:
    """The first `limit` readable utterances of a data dir (sorted ids), with token ids from
    ``text_int``/``response_int`` when the recipe wrote them, else tokenized here."""
    data = DataDir(data_dir)
    texts = data.text()
    text_ids, response_ids = _token_ids(data_dir, "text"), _token_ids(
        data_dir, "response"
    )
    if response_ids is None and (data_dir / "response").is_file():
        responses = data.text("response")
        response_ids = {key: llm.tokenize(text) for key, text in responses.items()}
    keys = [key for key in sorted(data.utt_ids) if key in texts][: 2 * limit]
    utterances = []
    for key, samples, problem in data.iter_speech(keys, SAMPLE_RATE):
        if problem is None and texts[key].strip():
            ids = text_ids[key] if text_ids else llm.tokenize(texts[key])
            answer = response_ids.get(key) if response_ids else None
            utterances.append(Utterance(key, samples, texts[key], ids, answer))
        if len(utterances) == limit:
            break
    if not utterances:
        raise InputError(f"{data_dir}: no readable utterance with a transcript")
    return utterances


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak: CUDA's allocator statistics, or the kernel's high-water mark of this
    process's resident set (Linux), so that model building does not count as the step's.
    """
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    elif Path("/proc/self/clear_refs").exists():
        Path("/proc/self/clear_refs").write_text("5")


def peak_memory_mb(device: torch.device) -> float:
    """The device's peak allocated memory (CUDA), or this process's peak resident set (CPU)
    since `reset_peak_memory`."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- LLM positions per second of speech ----------------------------------------------------
def adapter_positions(seconds: float, rate_hz: float) -> int:
    """What a frame-rate adapter at `rate_hz` feeds the LLM for `seconds` of speech."""
    return int(np.ceil(seconds * rate_hz))


def positions_per_second(
    model: SpeechChatMixin,
    utterances: Sequence[Utterance],
    decoding: Dict,
    batch_size: int,
) -> Dict[str, float]:
    """LLM input positions the speech takes, as inference feeds it: one per decoded token
    (AlignChat; `decoding` is its speech tokenizer's search) or one per group of encoder
    frames (the frame-rate adapter, which decodes nothing)."""
    options = decoding if model.transcribes else {}
    hypotheses = transcribe(model, utterances, options, batch_size)
    seconds = sum(u.seconds for u in utterances)
    count = sum(len(h.vectors) for h in hypotheses)
    return dict(
        utterances=len(utterances),
        speech_seconds=seconds,
        speech_positions=count,
        speech_positions_per_second=count / seconds,
    )


def positions(
    model: AlignChatModel,
    utterances: Sequence[Utterance],
    decoding: Dict,
    batch_size: int,
    adapter_rates: Sequence[float] = (12.5, 25.0),
) -> Dict[str, float]:
    """LLM input positions the speech takes (one per decoded token) against the
    transcript's token count, and what frame-rate adapters would feed for the same audio.
    """
    figures = positions_per_second(model, utterances, decoding, batch_size)
    speech = figures["speech_positions"]
    transcript = sum(len(u.text_ids) for u in utterances)
    figures.update(
        transcript_tokens=transcript, positions_per_transcript_token=speech / transcript
    )
    for rate in adapter_rates:
        count = sum(adapter_positions(u.seconds, rate) for u in utterances)
        figures[f"adapter_{rate:g}hz_positions"] = count
        figures[f"adapter_{rate:g}hz_per_alignchat"] = count / speech
    return figures


# -- the speech tokenizer and the LLM, as inference runs them --------------------------------
def transcribe(
    model: SpeechChatMixin,
    utterances: Sequence[Utterance],
    decoding: Dict,
    batch_size: int,
    progress: Optional[str] = None,
) -> List:
    """Hypotheses of the utterances in their order, decoded in batches of similar length
    (with a progress bar named `progress`, if given)."""
    order = sorted(range(len(utterances)), key=lambda i: -len(utterances[i].samples))
    hypotheses: List = [None] * len(utterances)
    starts = range(0, len(order), batch_size)
    for start in tqdm(starts, desc=progress, unit="batch", disable=progress is None):
        rows = order[start : start + batch_size]
        waves = [torch.from_numpy(utterances[i].samples) for i in rows]
        lengths = torch.tensor([len(w) for w in waves])
        batch = torch.nn.utils.rnn.pad_sequence(waves, batch_first=True)
        device = next(model.parameters()).device
        with torch.no_grad():
            decoded = model.tokenize(batch.to(device), lengths.to(device), **decoding)
        for i, hypothesis in zip(rows, decoded):
            hypotheses[i] = hypothesis
    return hypotheses


def text_prompt(model: AlignChatModel, text: str) -> List[PromptPiece]:
    """The prompt of a typed question: its tokens where the speech would go."""
    return model.llm.conversation_prompt(
        [Turn("user", model.llm.tokenize(text))],
        model.system_prompt,
        model.user_template,
    )


def speech_prompt(model: AlignChatModel, vectors: torch.Tensor) -> List[PromptPiece]:
    return model.llm.conversation_prompt(
        [Turn("user", vectors)], model.system_prompt, model.user_template
    )


def answer(
    llm: FrozenLLM,
    prompts: Sequence[Sequence[PromptPiece]],
    batch_size: int,
    max_new_tokens: int,
    progress: Optional[str] = None,
) -> int:
    """Answer the prompts in batches of similar length (greedy); the answer tokens."""
    order = sorted(range(len(prompts)), key=lambda i: -_prompt_length(prompts[i]))
    tokens = 0
    starts = range(0, len(order), batch_size)
    for start in tqdm(starts, desc=progress, unit="batch", disable=progress is None):
        batch = [prompts[i] for i in order[start : start + batch_size]]
        answers = llm.generate_ids(
            llm.build_inputs(batch), max_new_tokens=max_new_tokens
        )
        tokens += sum(len(a) for a in answers)
    return tokens


def _prompt_length(prompt: Sequence[PromptPiece]) -> int:
    return sum(len(piece) for piece in prompt)


# -- time to the first answer token ----------------------------------------------------------
class FirstTokenClock(BaseStreamer):
    """A streamer that notes when `generate` hands over its first new token.

    `generate` first puts the prompt (empty for an ``inputs_embeds`` prompt), then each new
    token as soon as it is chosen: the first put after the prompt is the first token a user
    would see streamed.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.prompt_seen = False
        self.first_token_at: Optional[float] = None

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
        elif self.first_token_at is None:
            synchronize(self.device)
            self.first_token_at = time.perf_counter()

    def end(self) -> None:
        pass


@dataclass
class Latency:
    first_token: (
        float  # seconds from the audio (or the text) in memory to the first token
    )
    front_end: float  # of which the speech tokenizer's or the ASR's share
    whole_answer: float


def streamed_answer(
    llm: FrozenLLM,
    make_prompt: Callable[[], Sequence[PromptPiece]],
    max_new_tokens: int,
) -> Latency:
    """One question answered alone and streamed: `make_prompt` runs the front end (speech
    tokenizer, ASR or none) and is timed as part of the first token's wait."""
    device = llm.device
    synchronize(device)
    start = time.perf_counter()
    prompt = make_prompt()
    synchronize(device)
    front_end = time.perf_counter() - start
    clock = FirstTokenClock(device)
    llm.generate_ids(
        llm.build_inputs([prompt]), max_new_tokens=max_new_tokens, streamer=clock
    )
    synchronize(device)
    end = time.perf_counter()
    first = clock.first_token_at if clock.first_token_at is not None else end
    return Latency(first - start, front_end, end - start)


def median_latency(latencies: Sequence[Latency]) -> Dict[str, float]:
    return {
        name: statistics.median(getattr(x, name) for x in latencies)
        for name in ("first_token", "front_end", "whole_answer")
    }


# -- training steps --------------------------------------------------------------------------
def build_untrained(
    model_dir: Path, llm: Optional[str], mode: str, device: torch.device
) -> AlignChatModel:
    """A model of a trained model's configuration in training `mode`, with fresh weights:
    step time and memory do not depend on the weights. Another `llm` of the same width and
    vocabulary size (e.g. a random one of other depth) replaces the configured one."""
    config = read_config(model_dir)
    resolve_paths(config, model_dir)
    if llm is None:
        config["llm"] = locate_llm(config["llm"], model_dir, str(model_dir))
    else:
        config["llm"], config["llm_fingerprint"] = llm, None
    config["model_conf"] = dict(config["model_conf"], mode=mode)
    config.get("decoder_conf", {}).pop("init_from_whisper", None)
    model = AlignChatTask.build_model(argparse.Namespace(**config))
    return model.to(device).train()


def caches_encoder_outputs(model: AlignChatModel) -> bool:
    """Whether the encoder is a wholly frozen pretrained one, whose outputs can be cached."""
    return getattr(model.encoder, "freeze", None) == "all" and hasattr(
        model.encoder, "frozen_outputs"
    )


def training_batch(
    model: AlignChatModel,
    utterances: Sequence[Utterance],
    cached: bool,
    device: torch.device,
) -> Dict[str, torch.Tensor]:
    """A training batch as ESPnet's collate makes it: speech padded with 0, ids with -1;
    with `cached`, the frozen encoder's frames stand in for the waveform (computed here once,
    as ``dump_encoder_outputs`` does before training)."""
    waves = [torch.from_numpy(u.samples) for u in utterances]
    speech = torch.nn.utils.rnn.pad_sequence(waves, batch_first=True).to(device)
    speech_lengths = torch.tensor([len(w) for w in waves], device=device)
    if cached:
        speech, speech_lengths = model.encoder.frozen_outputs(speech, speech_lengths)

    def padded(rows: List[List[int]]) -> torch.Tensor:
        tensors = [torch.tensor(row) for row in rows]
        return torch.nn.utils.rnn.pad_sequence(tensors, True, -1).to(device)

    batch = dict(
        speech=speech,
        speech_lengths=speech_lengths,
        text=padded([u.text_ids for u in utterances]),
        text_lengths=torch.tensor([len(u.text_ids) for u in utterances], device=device),
    )
    if all(u.response_ids for u in utterances):
        batch["response"] = padded([u.response_ids for u in utterances])
        batch["response_lengths"] = torch.tensor(
            [len(u.response_ids) for u in utterances], device=device
        )
    return batch


def training_steps(
    model: AlignChatModel,
    batch: Dict[str, torch.Tensor],
    steps: int,
    warmup: int = 2,
) -> List[float]:
    """Seconds per training step (forward, backward, AdamW update) on the same batch; the
    first `warmup` steps (allocation, lazy loading) are not counted."""
    device = batch["speech"].device
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    times = []
    for step in range(warmup + steps):
        synchronize(device)
        start = time.perf_counter()
        loss, _, _ = model(**batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        synchronize(device)
        if step >= warmup:
            times.append(time.perf_counter() - start)
    return times
