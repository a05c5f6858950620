"""What the waveform encoders share: padding masks, freezing, and the downsampling adapter.

A waveform encoder takes the raw 16 kHz waveform (``frontend: none``) and computes its own
features, so a pretrained model sees exactly the input it was trained on. It wraps a Hugging Face
model (``self.model``) whose Transformer layers are ``self.layers``; freezing is expressed on
those two, and frozen parts run in eval mode (no dropout: they are fixed feature extractors).

A wholly frozen model gives the same frames for an utterance in every epoch, so training may
read them from disk instead (``python -m espnet_alignchat.bin.dump_encoder_outputs``, with
``--input_size`` set to the model's hidden size): the encoder then takes ``(batch, frames,
hidden)`` and runs only the trainable adapter. It still takes the waveform as well, which is
what a trained model is given at inference.
"""

from abc import abstractmethod
from typing import Iterable, Optional, Tuple

import torch
from espnet2.asr.encoder.abs_encoder import AbsEncoder
from torch import nn

FREEZE_MODES = ("all", "bottom", "none")
DOWNSAMPLE_TYPES = ("stack", "conv", "average")


class ConfigError(ValueError):
    """An encoder option or a combination of task options that cannot work."""


def length_mask(lengths: torch.Tensor, size: int) -> torch.Tensor:
    """(batch, size) booleans, True where a frame is inside its utterance."""
    positions = torch.arange(size, device=lengths.device)
    return positions[None, :] < lengths[:, None]


def zero_padding(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """`x` (batch, frames, ...) with the frames past each utterance's length set to zero.

    Convolutions then see the same zeros in a padded batch as at the edge of a lone utterance,
    so an utterance's output does not depend on what it was batched with.
    """
    mask = length_mask(lengths.to(x.device), x.shape[1])
    return x.masked_fill(~mask.view(*mask.shape, *([1] * (x.dim() - 2))), 0.0)


class DownsampleAdapter(nn.Module):
    """Cuts the encoder's frame rate by `rate` before the decoder's cross-attention.

    ``stack`` concatenates `rate` consecutive frames and maps them with Linear-GELU-Linear (the
    projector of LLaMA-Omni and SLAM-LLM); ``conv`` applies log2(`rate`) convolutions (kernel 3,
    stride 2) with GELU, so neighbouring output frames see overlapping windows (as BLSP's);
    ``average`` averages `rate` consecutive frames and learns nothing, so the frames stay in
    the encoder's own space (what a decoder initialised from Whisper's expects).
    """

    def __init__(
        self, input_size: int, rate: int, kind: str, output_size: Optional[int]
    ):
        super().__init__()
        if kind not in DOWNSAMPLE_TYPES:
            raise ConfigError(
                f"downsample_type must be one of {DOWNSAMPLE_TYPES}: {kind}"
            )
        if rate < 1 or (kind == "conv" and rate & (rate - 1)):
            raise ConfigError(
                f"downsample_rate must be >= 1 (a power of 2 for conv): {rate}"
            )
        self.rate = rate
        self.kind = kind
        self.output_size = output_size or input_size
        size = self.output_size
        if kind == "average":
            if self.output_size != input_size:
                raise ConfigError(
                    f"downsample_type average keeps the frames' size ({input_size}): "
                    f"output_size {output_size}"
                )
            self.convs, self.proj = nn.ModuleList(), nn.Identity()
        elif kind == "stack":
            self.convs = nn.ModuleList()
            self.proj = nn.Sequential(
                nn.Linear(rate * input_size, size), nn.GELU(), nn.Linear(size, size)
            )
        else:
            self.convs = nn.ModuleList(
                nn.Conv1d(input_size if i == 0 else size, size, 3, stride=2, padding=1)
                for i in range(rate.bit_length() - 1)
            )
            self.proj = nn.Linear(input_size if rate == 1 else size, size)

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        if self.kind in ("stack", "average"):
            return (lengths + self.rate - 1) // self.rate
        for _ in self.convs:
            lengths = (lengths - 1) // 2 + 1
        return lengths

    def forward(
        self, x: torch.Tensor, lengths: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """`x` (batch, frames, input_size), zero past `lengths` → (batch, frames', output_size)."""
        if self.kind == "average":
            batch, frames, size = x.shape
            x = nn.functional.pad(x, (0, 0, 0, -frames % self.rate))
            summed = x.reshape(batch, -1, self.rate, size).sum(dim=2)
            # The last group of an utterance may hold fewer real frames than `rate`.
            counts = (
                lengths[:, None]
                - self.rate * torch.arange(summed.shape[1], device=x.device)
            ).clamp(1, self.rate)
            return summed / counts[..., None], self.output_lengths(lengths)
        if self.kind == "stack":
            batch, frames, size = x.shape
            x = nn.functional.pad(x, (0, 0, 0, -frames % self.rate))
            x = x.reshape(batch, -1, self.rate * size)
            return self.proj(x), self.output_lengths(lengths)
        for conv in self.convs:
            lengths = (lengths - 1) // 2 + 1
            x = nn.functional.gelu(conv(x.transpose(1, 2))).transpose(1, 2)
            x = zero_padding(x, lengths)
        return self.proj(x), lengths


class WaveformEncoder(AbsEncoder):
    """Base of the encoders that read the waveform (batch, samples) instead of features.

    Subclasses build ``self.model``, call `_setup` and implement `layers` (the model's
    Transformer layers), `encode_waveform` (the model's frames and their lengths) and
    `frame_lengths` (the same lengths from sample counts alone).

    The options every waveform encoder takes:
        freeze: ``all`` (the model is a fixed feature extractor), ``bottom`` (only the layers
            above the first `frozen_layers` train; the input stem stays frozen) or ``none``.
        frozen_layers: with ``bottom``, how many of the lowest Transformer layers stay frozen.
        downsample_rate, downsample_type: an optional `DownsampleAdapter` after the model.
        output_size: size of the frames given to the decoder (default: the model's own); a value
            without downsampling adds the adapter's projection alone.
    """

    sample_rate = 16000

    def _setup(
        self,
        model: nn.Module,
        input_size: int,
        hidden_size: int,
        freeze: str,
        frozen_layers: int,
        downsample_rate: int,
        downsample_type: str,
        output_size: Optional[int],
    ) -> None:
        if freeze not in FREEZE_MODES:
            raise ConfigError(f"freeze must be one of {FREEZE_MODES}: {freeze}")
        self.model = model
        if freeze == "bottom" and not 0 < frozen_layers < len(self.layers):
            raise ConfigError(
                f"freeze=bottom needs 0 < frozen_layers < {len(self.layers)} (the "
                f"model's layers): {frozen_layers}"
            )
        self.freeze = freeze
        self.frozen_layers = frozen_layers if freeze == "bottom" else 0
        self.hidden_size = hidden_size
        self.adapter = (
            DownsampleAdapter(
                hidden_size, downsample_rate, downsample_type, output_size
            )
            if downsample_rate > 1 or output_size is not None
            else None
        )
        self._check_input_size(input_size)
        model.requires_grad_(freeze == "none")
        for layer in self.trainable_layers:
            layer.requires_grad_(True)
        for parameter in self.fixed_parameters():
            parameter.requires_grad_(False)
        self.train()

    def _check_input_size(self, input_size: int) -> None:
        """1: the data are waveforms; the hidden size: the frozen model's own outputs."""
        name = type(self).__name__
        if input_size not in (1, self.hidden_size):
            raise ConfigError(
                f"{name} reads the waveform (input_size 1) or its own cached outputs "
                f"(input_size {self.hidden_size}): {input_size}"
            )
        if input_size == self.hidden_size and self.freeze != "all":
            raise ConfigError(
                f"{name}: cached encoder outputs (input_size {input_size}) need "
                f"freeze: all, not {self.freeze}: a trained layer changes its outputs"
            )

    @property
    @abstractmethod
    def layers(self) -> nn.ModuleList:
        """The model's Transformer layers, bottom first (not registered twice: a property)."""

    @property
    def trainable_layers(self) -> nn.ModuleList:
        """The Transformer layers whose weights train."""
        return (
            self.layers[self.frozen_layers :]
            if self.freeze != "all"
            else self.layers[:0]
        )

    def fixed_parameters(self) -> Iterable[nn.Parameter]:
        """Parameters that never train, whatever `freeze` says (e.g. fixed positions)."""
        return []

    def train(self, mode: bool = True) -> "WaveformEncoder":
        super().train(mode)
        if mode and self.freeze != "none":
            self.model.eval()
            for layer in self.trainable_layers:
                layer.train()
        return self

    def output_size(self) -> int:
        return self.adapter.output_size if self.adapter else self.hidden_size

    @abstractmethod
    def encode_waveform(
        self, speech: torch.Tensor, lengths: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """The model's frames (batch, frames, hidden_size) and their lengths."""

    @abstractmethod
    def frame_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Frames of the model (before the adapter) for waveforms of `lengths` samples."""

    def computed_frames(self, samples: torch.Tensor) -> int:
        """Frames the Transformer layers run on for one waveform of `samples` samples."""
        return int(self.frame_lengths(samples))

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Frames given to the decoder for waveforms of `lengths` samples."""
        frames = self.frame_lengths(lengths)
        return self.adapter.output_lengths(frames) if self.adapter else frames

    @torch.no_grad()
    def frozen_outputs(
        self, speech: torch.Tensor, lengths: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """The frozen model's frames, zero past each length: what ``dump_encoder_outputs``
        stores and `forward` reads back in place of the waveform."""
        if self.freeze != "all":
            raise ConfigError(
                f"{type(self).__name__}: only a wholly frozen model (freeze: all) has "
                "outputs that can be cached"
            )
        return self._model_frames(speech, lengths)

    def _model_frames(
        self, speech: torch.Tensor, lengths: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        hidden, frames = self.encode_waveform(zero_padding(speech, lengths), lengths)
        return zero_padding(hidden, frames), frames

    def forward(
        self,
        xs_pad: torch.Tensor,
        ilens: torch.Tensor,
        prev_states: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor, None]:
        """A waveform (batch, samples), or the cached frames (batch, frames, hidden) of the
        frozen model, with their lengths."""
        name = type(self).__name__
        if xs_pad.dim() == 3 and xs_pad.shape[-1] == self.hidden_size:
            if self.freeze != "all":
                raise ConfigError(
                    f"{name}: cached encoder outputs need freeze: all, not {self.freeze}"
                )
            dtype = next(self.model.parameters()).dtype
            hidden, lengths = zero_padding(xs_pad.to(dtype), ilens), ilens
        elif xs_pad.dim() == 2:
            hidden, lengths = self._model_frames(xs_pad, ilens)
        else:
            raise ConfigError(
                f"{name} reads the waveform (batch, samples) or its own cached outputs "
                f"(batch, frames, {self.hidden_size}), got shape {tuple(xs_pad.shape)}: "
                "set frontend: none"
            )
        if self.adapter is not None:
            hidden, lengths = self.adapter(hidden, lengths)
        return hidden, lengths, None
