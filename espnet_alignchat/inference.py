"""`Speech2Chat`: talk to a trained AlignChat model from Python.

    from espnet_alignchat.inference import Speech2Chat

    chat = Speech2Chat.from_pretrained("exp/train_instruct")  # or a packed "model.zip"
    chat("question.wav")                    # the frozen LLM's answer to the speech
    chat(["a.flac", (samples, 8000), tensor_at_16k])  # a batch: a list of answers
    chat([{"role": "user", "speech": "a.wav"}, {"role": "assistant", "content": "five"},
          {"role": "user", "content": "and times two?"}])  # a conversation
    for piece in chat.stream("question.wav"):
        print(piece, end="", flush=True)    # the answer as the LLM writes it
    chat.transcribe("question.wav")         # what the speech tokenizer heard, as text
    chat.tokenize("question.wav")           # the same as LLM token ids and vectors

A frame-rate adapter model (``model: frame_adapter``) answers alike; it writes no transcript,
so `transcribe` and ``history_as_text`` refuse it and its hypotheses have vectors only.

Speech is a file path (any format soundfile reads, at any sample rate), ``(samples, rate)``,
a ``{"array": samples, "sampling_rate": rate}`` dict (Hugging Face datasets < 4, VoiceBench),
a torchcodec ``AudioDecoder`` (what datasets >= 4 gives for an Audio column), samples
(numpy or torch) at the model's `sample_rate`, or a `Hypothesis` that `tokenize` returned
(speech decoded once, answered later); a ``list`` of these is a batch.
A conversation is a list of messages, as in transformers' chat pipelines:
``{"role": "user", "speech": ...}``, ``{"role": "user", "content": "typed text"}`` and
``{"role": "assistant", "content": ...}``; it ends with a user turn.
"""

import argparse
import logging
from pathlib import Path
from threading import Thread
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Union

import numpy as np
import torch
from transformers import TextIteratorStreamer

from espnet_alignchat.datadir import read_audio_file, resample
from espnet_alignchat.errors import InputError
from espnet_alignchat.llm import PromptError, PromptPiece, Turn
from espnet_alignchat.model_dir import (
    find_model_file,
    locate_llm,
    read_config,
    resolve_paths,
)
from espnet_alignchat.packing import unpacked
from espnet_alignchat.preprocessor import check_speech
from espnet_alignchat.search import Hypothesis
from espnet_alignchat.speech_chat import SpeechChatMixin
from espnet_alignchat.task import AlignChatTask

# A path, (samples, rate), {"array", "sampling_rate"}, an AudioDecoder, samples, or a
# decoded Hypothesis.
Speech = Any
# {"role": ..., "content": text} or {"role": "user", "speech": ...}
Message = Dict[str, Any]
Conversation = List[Message]


def load_model(
    model_dir: Union[str, Path],
    model_file: Optional[str] = None,
    llm: Optional[str] = None,
    device: Union[str, torch.device] = "cpu",
) -> SpeechChatMixin:
    """Rebuild a trained model from its ``config.yaml`` and checkpoint.

    Relative paths of the config are found from the model dir (see `model_dir`). `llm`
    replaces the configured LLM (e.g. the same LLM stored elsewhere); the model's LLM
    fingerprint makes sure it is the same LLM.
    """
    model_dir = Path(model_dir)
    config = read_config(model_dir)
    resolve_paths(config, model_dir)
    config["llm"] = llm or locate_llm(config["llm"], model_dir, str(model_dir))
    if "load_pretrained" in config["encoder_conf"]:
        # A pretrained encoder's weights are in the checkpoint: build its architecture only.
        config["encoder_conf"]["load_pretrained"] = False
    # So are the decoder's: whatever initialised them is not needed.
    config.get("decoder_conf", {}).pop("init_from_whisper", None)
    model = AlignChatTask.build_model(argparse.Namespace(**config))
    path = find_model_file(model_dir, model_file)
    logging.info(f"Loading {path}")
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.to(device).eval()


def load_speech(speech: Speech, rate: int, name: str) -> np.ndarray:
    """One utterance as mono float32 samples at `rate`; errors name the file or `name`."""
    if isinstance(speech, (str, Path)):
        name = str(speech)
        try:
            # A file and nothing else: a user's path is never run as a wav.scp pipe
            # command (`read_audio`) nor read as a Kaldi ark offset.
            samples, source_rate = read_audio_file(name)
        except Exception as error:  # soundfile, kaldiio and pipes raise many kinds
            raise InputError(f"{name}: cannot read audio: {error}") from error
    elif isinstance(speech, dict):
        if not {"array", "sampling_rate"} <= speech.keys():
            raise InputError(f"{name}: an audio dict has 'array' and 'sampling_rate'")
        samples, source_rate = speech["array"], speech["sampling_rate"]
    elif hasattr(speech, "get_all_samples"):
        # A torchcodec AudioDecoder: what `datasets` >= 4 hands over for an Audio column.
        try:
            decoded = speech.get_all_samples()
        except Exception as error:  # FFmpeg's errors come in many kinds
            raise InputError(f"{name}: cannot decode audio: {error}") from error
        # data is (channels, samples); a file's samples are (samples, channels).
        samples, source_rate = decoded.data.T, decoded.sample_rate
    elif isinstance(speech, tuple):
        if len(speech) != 2:
            raise InputError(f"{name}: speech as a tuple is (samples, sample rate)")
        samples, source_rate = speech
    else:
        samples, source_rate = speech, rate
    if isinstance(samples, torch.Tensor):
        samples = samples.detach().cpu().numpy()
    samples = np.asarray(samples, dtype=np.float32)
    return check_speech(name, resample(samples, int(source_rate), rate))


def _stripped(pieces: Iterable[str]) -> Iterator[str]:
    """The pieces without the whitespace around the whole text, as `FrozenLLM.decode` has it."""
    pending, started = "", False
    for piece in pieces:
        if not started:
            piece = piece.lstrip()
            started = bool(piece)
        text = pending + piece
        body = text.rstrip()
        pending = text[len(body) :]  # held back until more text follows it
        if body:
            yield body


def is_conversation(inputs: Any) -> bool:
    """Whether `inputs` is one conversation (a list of messages) rather than speech."""
    return (
        isinstance(inputs, list)
        and bool(inputs)
        and isinstance(inputs[0], dict)
        and "role" in inputs[0]
    )


def as_conversation(inputs: Union[Speech, Conversation]) -> Conversation:
    """A conversation as it is; speech as the one user turn of a new conversation."""
    return inputs if is_conversation(inputs) else [{"role": "user", "speech": inputs}]


class Speech2Chat:
    """Speech in, transcript and the frozen LLM's answer out; batched and multi-turn.

    One way to do each thing (the README's table):

    ``chat(inputs)``            the LLM's answer: `inputs` is speech or a conversation, or a
                                list of these (a batch: a list of answers, in order)
    ``chat.stream(inputs)``     the same answer for one speech or conversation, piece by piece
    ``chat.transcribe(speech)`` what the speech tokenizer heard, as text
    ``chat.tokenize(speech)``   the same as a `Hypothesis`: LLM token ids and the vectors the
                                LLM reads (pass it back as speech to answer it)

    Args:
        model: a trained `AlignChatModel` or `FrameAdapterModel` (see `from_pretrained`).
        beam_size, maxlenratio, max_tokens, length_bonus, output_mode,
        expected_temperature: the speech tokenizer's decoding (`AlignChatModel.tokenize`);
            a frame-rate adapter decodes no tokens and has none of these.
        system_prompt: the LLM's system message (default: the one the model was trained with).
        generation: default options of `FrozenLLM.generate_ids` (``max_new_tokens``, ...).
    """

    def __init__(
        self,
        model: SpeechChatMixin,
        beam_size: int = 1,
        maxlenratio: float = 1.0,
        max_tokens: int = 512,
        length_bonus: float = 0.0,
        output_mode: str = "canonical",
        expected_temperature: float = 1.0,
        system_prompt: Optional[str] = None,
        generation: Optional[Dict[str, Any]] = None,
    ):
        self.model = model
        self.llm = model.llm.to(self.device)  # also when it only answers text
        self.decoding = dict(
            beam_size=beam_size,
            maxlenratio=maxlenratio,
            max_tokens=max_tokens,
            length_bonus=length_bonus,
            output_mode=output_mode,
            expected_temperature=expected_temperature,
        )
        self.system_prompt = (
            model.system_prompt if system_prompt is None else system_prompt
        )
        self.generation = generation or {}

    @classmethod
    def from_pretrained(
        cls,
        path: Union[str, Path],
        llm: Optional[str] = None,
        device: Union[str, torch.device, None] = None,
        model_file: Optional[str] = None,
        **options,
    ) -> "Speech2Chat":
        """A model dir (``config.yaml`` and checkpoints) or a file written by ``pack``.

        `llm` (a local dir or hub id) replaces the LLM reference the model holds; the
        fingerprint check refuses another LLM. `device` defaults to CUDA when there is one.
        `model_file` picks a checkpoint of a model dir. `options` go to the constructor.
        """
        path = Path(path)
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if path.is_dir():
            return cls(load_model(path, model_file, llm, device), **options)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such model dir or packed model")
        with unpacked(path) as (model_dir, checkpoint):
            llm = llm or locate_llm(read_config(model_dir)["llm"], model_dir, str(path))
            return cls(load_model(model_dir, str(checkpoint), llm, device), **options)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def sample_rate(self) -> int:
        frontend = self.model.frontend
        return getattr(frontend, "fs", 16000) if frontend is not None else 16000

    # -- the speech tokenizer ----------------------------------------------------------------
    def tokenize(
        self, speech: Union[Speech, List[Speech]]
    ) -> Union[Hypothesis, List[Hypothesis]]:
        """LLM token ids and their vectors for speech (a list for a list, decoded as one
        batch). Hypotheses given in place of speech are passed through."""
        items = speech if isinstance(speech, list) else [speech]
        results = list(items)
        todo = [i for i, item in enumerate(items) if not isinstance(item, Hypothesis)]
        waveforms = [
            load_speech(items[i], self.sample_rate, f"speech {i}") for i in todo
        ]
        if waveforms:
            for i, hypothesis in zip(todo, self._decode(waveforms)):
                results[i] = hypothesis
        return results if isinstance(speech, list) else results[0]

    def _decode(self, waveforms: Sequence[np.ndarray]) -> List[Hypothesis]:
        lengths = torch.tensor([len(samples) for samples in waveforms])
        batch = torch.zeros(len(waveforms), int(lengths.max()))
        for row, samples in enumerate(waveforms):
            batch[row, : len(samples)] = torch.from_numpy(samples)
        options = self.decoding if self.model.transcribes else {}
        return self.model.tokenize(
            batch.to(self.device), lengths.to(self.device), **options
        )

    def transcribe(self, speech: Union[Speech, List[Speech]]) -> Union[str, List[str]]:
        """What the speech tokenizer heard, as text (a list for a list)."""
        self.require_transcripts("a transcript")
        hypotheses = self.tokenize(speech if isinstance(speech, list) else [speech])
        texts = [self.llm.decode(h.token_ids) for h in hypotheses]
        return texts if isinstance(speech, list) else texts[0]

    def require_transcripts(self, what: str) -> None:
        """Refuse `what` with one line when the model writes no transcript."""
        if not self.model.transcribes:
            raise InputError(
                f"{what} needs the speech tokenizer's transcript, and this model "
                f"({type(self.model).__name__}) writes none: it gives the LLM vectors only"
            )

    # -- answers -----------------------------------------------------------------------------
    def __call__(
        self,
        inputs: Union[Speech, Conversation, List[Union[Speech, Conversation]]],
        system: Optional[str] = None,
        history_as_text: bool = False,
        **generation,
    ) -> Union[str, List[str]]:
        """The LLM's answer to speech or to a conversation; a list of answers for a list.

        A conversation's speech turns reach the LLM as their speech vectors; with
        `history_as_text` those before the last turn reach it as their transcripts. `system`
        replaces the system prompt (``""``: none). `generation`: options of
        `FrozenLLM.generate_ids` for this call. All the speech of a call is decoded as one
        batch, and all the prompts are answered as one batch.
        """
        batch = isinstance(inputs, list) and not is_conversation(inputs)
        conversations = [
            as_conversation(item) for item in (inputs if batch else [inputs])
        ]
        if not conversations:
            return []
        prompts = self._prompts(conversations, system, history_as_text)
        options = {**self.generation, **generation}
        answers = self.llm.generate(self.llm.build_inputs(prompts), **options)
        return answers if batch else answers[0]

    def stream(
        self,
        inputs: Union[Speech, Conversation],
        system: Optional[str] = None,
        history_as_text: bool = False,
        **generation,
    ) -> Iterator[str]:
        """The answer to one speech or conversation, as pieces of text while the LLM writes
        them; joined, the pieces are the answer the call gives. Options as the call's.
        """
        prompts = self._prompts([as_conversation(inputs)], system, history_as_text)
        streamer = TextIteratorStreamer(
            self.llm.tokenizer, skip_prompt=True, skip_special_tokens=True
        )
        failures: List[BaseException] = []

        def generate() -> None:
            try:
                self.llm.generate_ids(
                    self.llm.build_inputs(prompts),
                    streamer=streamer,
                    **{**self.generation, **generation},
                )
            except BaseException as error:  # re-raised in the caller's thread
                failures.append(error)
                streamer.end()

        thread = Thread(target=generate, daemon=True)
        thread.start()
        yield from _stripped(streamer)
        thread.join()
        if failures:
            raise failures[0]

    def _prompts(
        self,
        conversations: Sequence[Conversation],
        system: Optional[str],
        history_as_text: bool,
    ) -> List[List[PromptPiece]]:
        """The prompt pieces of each conversation; all speech is decoded as one batch."""
        if history_as_text:
            self.require_transcripts("history_as_text")
        speech = [m["speech"] for c in conversations for m in c if "speech" in m]
        hypotheses = iter(self.tokenize(speech))
        system = self.system_prompt if system is None else system
        prompts = []
        for conversation in conversations:
            if not conversation or conversation[-1].get("role") != "user":
                raise PromptError("a conversation to answer ends with a user turn")
            turns = []
            for index, message in enumerate(conversation):
                if "speech" in message:
                    hypothesis = next(hypotheses)
                    as_text = history_as_text and index < len(conversation) - 1
                    content = hypothesis.token_ids if as_text else hypothesis.vectors
                elif "content" in message:
                    content = message["content"]
                else:
                    raise PromptError(
                        "a message has 'content' (text) or 'speech', not only "
                        f"{sorted(message)}"
                    )
                turns.append(Turn(message.get("role"), content))
            prompts.append(
                self.llm.conversation_prompt(turns, system, self.model.user_template)
            )
        return prompts
