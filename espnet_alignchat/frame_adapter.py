"""`FrameAdapterModel`: the frame-rate adapter baseline AlignChat is measured against.

Qwen2-Audio (~25 Hz), LLaMA-Omni (~10 Hz), AZeroS (~12.5 Hz) and Ultravox (~6.25 Hz) give
the frozen LLM one vector per group of encoder frames, so the LLM has to learn to read a
sequence as long as the speech rather than one as long as its text. Here the encoder is the
one AlignChat uses (any of the task's encoders; a frozen Whisper with cached outputs too), its
frames are stacked ``frame_stack`` at a time (4 on Whisper's 50 Hz frames: 12.5 Hz) or
convolved down by strided convolutions, and an MLP maps each group into the LLM's embedding
space (`DownsampleAdapter` with the LLM's hidden size as its output). The vectors go into the
same chat template in place of the user's words and train through the same frozen LLM with
the same loss as AlignChat's stage 2 (`SpeechChatMixin.answer_losses`). Modes:

- ``transcribe``: an ASR-style first stage, as such systems pretrain: the LLM is asked to
  repeat what was said (``transcribe_template``) and trained to answer with the transcript;
- ``instruct``: trained on the LLM's own answer to the transcript (self-generated, data name
  ``response``), optionally with the KL to its text-conditioned distribution.

The adapter writes no transcript: `tokenize` gives each utterance's vectors and no token ids.
"""

from functools import cached_property
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from espnet2.asr.encoder.abs_encoder import AbsEncoder
from espnet2.asr.frontend.abs_frontend import AbsFrontend
from espnet2.asr.specaug.abs_specaug import AbsSpecAug
from espnet2.layers.abs_normalize import AbsNormalize
from espnet2.torch_utils.device_funcs import force_gatherable
from espnet2.train.abs_espnet_model import AbsESPnetModel

from espnet_alignchat.encoders import ConfigError
from espnet_alignchat.encoders.base import DownsampleAdapter, zero_padding
from espnet_alignchat.llm import (
    FingerprintBuffer,
    FrozenLLM,
    PromptError,
    PromptLayout,
)
from espnet_alignchat.search import Hypothesis
from espnet_alignchat.speech_chat import SpeechChatMixin, id_lists

MODES = ("transcribe", "instruct")
PROJECTOR_TYPES = ("stack", "conv")
TRANSCRIBE_TEMPLATE = "Repeat exactly what was said: {speech}"


def frame_groups(frames: torch.Tensor, frame_stack: int) -> torch.Tensor:
    """The prompt positions of utterances of `frames` encoder frames: one per group of
    `frame_stack` frames (an utterance's last group may be shorter)."""
    return (frames + frame_stack - 1) // frame_stack


def split_utterances(
    vectors: torch.Tensor,
    lengths: torch.Tensor,
    positions: torch.Tensor,
    names: Optional[Sequence[str]] = None,
) -> List[torch.Tensor]:
    """Each utterance's own rows of the projector's output (batch, groups, hidden).

    The count check that guards the splice: an utterance must give exactly the `positions`
    its prompt reserves for its frames, and nothing of the batch's padding after them; a
    mismatch is refused (`PromptError`), naming the utterance, never truncated or padded.
    """
    counts, wanted = lengths.tolist(), positions.tolist()
    for row, (count, reserved) in enumerate(zip(counts, wanted)):
        if count != reserved or count > vectors.shape[1]:
            name = names[row] if names is not None else f"utterance {row}"
            raise PromptError(
                f"{name}: the adapter gave {count} speech vectors for the {reserved} "
                f"prompt positions of its frames"
            )
    return [vectors[row, :count] for row, count in enumerate(counts)]


class FrameAdapterModel(SpeechChatMixin, AbsESPnetModel):
    """Speech → one LLM-space vector per group of encoder frames, trained through the LLM.

    Args (``model_conf``):
        mode: ``transcribe`` (first stage: the transcript as the answer) or ``instruct``
            (the self-generated answer).
        frame_stack: encoder frames per vector (4 on Whisper's 50 Hz frames: 12.5 Hz).
        projector_type: ``stack`` (concatenate the group's frames, then Linear-GELU-Linear,
            as LLaMA-Omni's and SLAM-LLM's projectors) or ``conv`` (log2(frame_stack)
            stride-2 convolutions, then a linear map; frame_stack a power of 2).
        transcribe_template: the user turn of ``transcribe`` mode, with ``{speech}``.
        response_weight: cross-entropy of the LLM's answer (or transcript) given the speech.
        kl_weight: KL from the LLM's text-conditioned to its speech-conditioned distribution
            over the answer's positions (one extra no-grad LLM forward).
        extract_feats_in_collect_stats: ESPnet's flag; feature statistics need the frontend.
    """

    transcribes = False

    def __init__(
        self,
        llm: FrozenLLM,
        fingerprint: FingerprintBuffer,
        frontend: Optional[AbsFrontend],
        specaug: Optional[AbsSpecAug],
        normalize: Optional[AbsNormalize],
        encoder: AbsEncoder,
        system_prompt: Optional[str],
        user_template: str,
        mode: str = "instruct",
        frame_stack: int = 4,
        projector_type: str = "stack",
        transcribe_template: str = TRANSCRIBE_TEMPLATE,
        response_weight: float = 1.0,
        kl_weight: float = 0.0,
        extract_feats_in_collect_stats: bool = True,
    ):
        super().__init__()
        if mode not in MODES:
            raise ConfigError(f"model_conf.mode must be one of {MODES}: {mode}")
        if projector_type not in PROJECTOR_TYPES:
            raise ConfigError(
                f"model_conf.projector_type must be one of {PROJECTOR_TYPES}: "
                f"{projector_type}"
            )
        if frame_stack < 1 or (
            projector_type == "conv" and frame_stack & (frame_stack - 1)
        ):
            raise ConfigError(
                "model_conf.frame_stack must be >= 1 (a power of 2 for projector_type "
                f"conv): {frame_stack}"
            )
        self.llm = llm  # a plain object, so not a submodule: see espnet_alignchat.llm
        self.llm_fingerprint = fingerprint
        self.frontend = frontend
        self.specaug = specaug
        self.normalize = normalize
        self.encoder = encoder
        self.projector = DownsampleAdapter(
            encoder.output_size(), frame_stack, projector_type, llm.hidden_size
        )
        self.system_prompt = system_prompt
        self.user_template = user_template
        self.mode = mode
        self.frame_stack = frame_stack
        self.transcribe_template = transcribe_template
        self.response_weight = response_weight
        self.kl_weight = kl_weight
        self.extract_feats_in_collect_stats = extract_feats_in_collect_stats

    @cached_property
    def transcribe_layout(self) -> PromptLayout:
        return self.llm.prompt_layout(self.system_prompt, self.transcribe_template)

    def speech_vectors(
        self,
        speech: torch.Tensor,
        speech_lengths: torch.Tensor,
        names: Optional[Sequence[str]] = None,
    ) -> List[torch.Tensor]:
        """Each utterance's vectors for the LLM, one per group of `frame_stack` frames."""
        frames, frame_lengths = self.encode(speech, speech_lengths)
        # Zeros past each utterance's end (a convolutional encoder leaves values there), so
        # an utterance's last group holds its own frames and zeros, as when it is alone.
        frames = zero_padding(frames, frame_lengths)
        vectors, lengths = self.projector(frames, frame_lengths)
        positions = frame_groups(frame_lengths, self.frame_stack)
        return split_utterances(vectors, lengths, positions, names)

    def forward(
        self,
        speech: torch.Tensor,
        speech_lengths: torch.Tensor,
        text: torch.Tensor,
        text_lengths: torch.Tensor,
        response: Optional[torch.Tensor] = None,
        response_lengths: Optional[torch.Tensor] = None,
        utt_id: Optional[Sequence[str]] = None,
        **kwargs,
    ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor], torch.Tensor]:
        """The answer loss through the frozen LLM: the transcript (``transcribe``) or the
        self-generated answer (``instruct``) given the speech vectors.

        `text` and `response` are LLM token ids padded with -1; ``**kwargs`` takes what the
        trainer adds besides `utt_id`.
        """
        self.llm.to(speech.device)
        text = text[:, : text_lengths.max()]
        self._check_token_ids("text", text)
        vectors = self.speech_vectors(speech, speech_lengths, utt_id)
        transcripts = id_lists(text, text_lengths)
        if self.mode == "transcribe":
            loss, stats = self.answer_losses(
                self.transcribe_layout,
                vectors,
                self.complete_answers(text, text_lengths),
                transcripts,
                loss_name="loss_transcript",
                # The transcript's token accuracy: "acc", as AlignChat's stage 1 names it,
                # so the recipe's stage-1 checkpoint (valid.acc.ave.pth) is found alike.
                acc_name="acc",
            )
        else:
            if response is None:
                raise ValueError(
                    "model_conf.mode=instruct needs a 'response' data entry per utterance"
                )
            self._check_token_ids("response", response)
            loss, stats = self.answer_losses(
                self.prompt_layout,
                vectors,
                self.complete_answers(response, response_lengths),
                transcripts,
            )
        stats["loss"] = loss.detach()
        return force_gatherable((loss, stats, speech.shape[0]), loss.device)

    @torch.no_grad()
    def tokenize(
        self, speech: torch.Tensor, speech_lengths: torch.Tensor
    ) -> List[Hypothesis]:
        """The vectors the LLM reads for a batch of waveforms, one hypothesis each; no token
        ids (the adapter writes no transcript) and no search (score 0)."""
        self.llm.to(speech.device)
        return [
            Hypothesis(token_ids=[], vectors=vectors, score=0.0, reached_end=True)
            for vectors in self.speech_vectors(speech, speech_lengths)
        ]
