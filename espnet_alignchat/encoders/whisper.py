"""Whisper's encoder on the raw waveform, with Whisper's own log-mel features computed in torch.

The features are those of `transformers.WhisperFeatureExtractor` (same filters, window, hop and
``(max(log10 mel, max - 8) + 4) / 4`` scaling), computed on the model's device. Hugging Face's
``WhisperEncoder.forward`` insists on 30-s inputs (3000 frames); this module runs the encoder's
own submodules instead, so it can either pad to 30 s as Whisper was trained (``pad_to_30s``) or
run on the real length with the positional table sliced and padded frames masked out.
"""

from typing import Iterable, Optional, Tuple

import torch
from espnet2.asr.specaug.specaug import SpecAug
from torch import nn
from transformers import WhisperConfig, WhisperFeatureExtractor
from transformers.models.whisper import modeling_whisper
from transformers.utils import logging as hf_logging

from espnet_alignchat.encoders.base import (
    ConfigError,
    WaveformEncoder,
    length_mask,
    zero_padding,
)

# Checkpoints of whole Whisper models store the encoder under these prefixes.
_ENCODER_KEYS = {r"^(?:model\.)?encoder\.": ""}


def load_whisper_encoder(
    name_or_path: Optional[str], load_pretrained: bool, overrides: dict
) -> modeling_whisper.WhisperEncoder:
    """Whisper's encoder alone: its weights from a hub id or directory, or random ones.

    The attention is SDPA, whose boolean mask this module passes for padded batches.
    """
    if name_or_path is None:
        if load_pretrained:
            raise ConfigError("whisper: load_pretrained needs a name_or_path")
        config = WhisperConfig(**overrides)
    else:
        config = WhisperConfig.from_pretrained(name_or_path, **overrides)
    if load_pretrained:
        # A whole Whisper model's decoder weights are left out on purpose: keep transformers
        # from listing each of them as unexpected, but refuse an encoder left random.
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            encoder, loading = modeling_whisper.WhisperEncoder.from_pretrained(
                name_or_path,
                config=config,
                dtype=torch.float32,
                attn_implementation="sdpa",
                key_mapping=_ENCODER_KEYS,
                output_loading_info=True,
            )
        finally:
            hf_logging.set_verbosity(verbosity)
        if loading["missing_keys"]:
            missing = sorted(loading["missing_keys"])
            raise ConfigError(
                f"whisper: {name_or_path} has no weights for {len(missing)} encoder "
                f"tensors (e.g. {missing[0]}): is it a Whisper checkpoint?"
            )
        return encoder
    config._attn_implementation = "sdpa"
    return modeling_whisper.WhisperEncoder(config)


class HFWhisperEncoder(WaveformEncoder):
    """Whisper's encoder (Hugging Face `transformers`) as an ESPnet encoder on the waveform.

    Args:
        input_size: 1, the waveform (ESPnet passes it); or the model's hidden size when
            training reads the frozen model's cached outputs (see `WaveformEncoder`).
        name_or_path: hub id or local directory of a Whisper model (whole model or encoder
            alone). None builds the architecture from `config_overrides` alone.
        load_pretrained: read the weights; False reads only ``config.json`` and starts from
            random weights (train from scratch).
        config_overrides: `WhisperConfig` fields to change: dropouts, or with random weights
            the whole shape (``d_model``, ``encoder_layers``, ``num_mel_bins``, ...).
        pad_to_30s: pad every utterance to 30 s as Whisper was trained (1500 frames each,
            outputs cut to the real length); False runs on the real length, cheaper, with
            slightly different outputs than Whisper's own.
        specaug_conf: ESPnet `SpecAug` options, applied to the log-mels in training; None: off.
        freeze, frozen_layers, downsample_rate, downsample_type, output_size: see
            `WaveformEncoder`.

    LayerDrop is never applied: a skipped layer's weights get no gradient in that step, which
    DDP refuses.
    """

    def __init__(
        self,
        input_size: int = 1,
        name_or_path: Optional[str] = None,
        load_pretrained: bool = True,
        config_overrides: Optional[dict] = None,
        pad_to_30s: bool = False,
        specaug_conf: Optional[dict] = None,
        freeze: str = "all",
        frozen_layers: int = 0,
        downsample_rate: int = 1,
        downsample_type: str = "stack",
        output_size: Optional[int] = None,
    ):
        super().__init__()
        model = load_whisper_encoder(
            name_or_path, load_pretrained, config_overrides or {}
        )
        config = model.config
        features = WhisperFeatureExtractor(feature_size=config.num_mel_bins)  # 16 kHz
        self.n_fft = features.n_fft
        self.hop_length = features.hop_length
        self.max_samples = features.n_samples  # 30 s
        # Not in the state_dict: they follow from the config, like the features themselves.
        self.register_buffer(
            "mel_filters",
            torch.tensor(features.mel_filters, dtype=torch.float32).T,
            persistent=False,
        )
        self.register_buffer("window", torch.hann_window(self.n_fft), persistent=False)
        self.pad_to_30s = pad_to_30s
        self.specaug = SpecAug(**specaug_conf) if specaug_conf is not None else None
        self._setup(
            model,
            input_size,
            config.d_model,
            freeze,
            frozen_layers,
            downsample_rate,
            downsample_type,
            output_size,
        )

    @property
    def layers(self) -> nn.ModuleList:
        return self.model.layers

    def fixed_parameters(self) -> Iterable[nn.Parameter]:
        return [self.model.embed_positions.weight]  # Whisper's fixed sinusoids

    def mel_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return lengths // self.hop_length

    def frame_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return (self.mel_lengths(lengths) - 1) // 2 + 1  # conv2 has stride 2

    def computed_frames(self, samples: torch.Tensor) -> int:
        if self.pad_to_30s:
            samples = torch.tensor(self.max_samples)
        return super().computed_frames(samples)

    def log_mel(
        self, speech: torch.Tensor, lengths: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Whisper's log-mel features (batch, frames, n_mels) and their lengths.

        Past its end every waveform is zeros (a padded batch, or 30-s padding), as in
        `WhisperFeatureExtractor`, which pads with zeros before its STFT.
        """
        with torch.autocast(speech.device.type, enabled=False):
            speech = speech.float()
            target = self.max_samples if self.pad_to_30s else speech.shape[1]
            # n_fft / 2 more zeros: the centred STFT then reflects zeros, not speech, at the end.
            speech = nn.functional.pad(
                speech, (0, target - speech.shape[1] + self.n_fft // 2)
            )
            stft = torch.stft(
                speech,
                self.n_fft,
                self.hop_length,
                window=self.window,
                return_complex=True,
            )
            frames = target // self.hop_length
            power = stft[..., :frames].abs() ** 2
            log_spec = (self.mel_filters @ power).clamp(min=1e-10).log10()
            feats_lengths = self.mel_lengths(lengths)
            valid = length_mask(feats_lengths, frames)[:, None, :]
            peak = log_spec.masked_fill(~valid, -torch.inf).amax(
                dim=(1, 2), keepdim=True
            )
            log_spec = (torch.maximum(log_spec, peak - 8.0) + 4.0) / 4.0
        return log_spec.transpose(1, 2), feats_lengths

    def encode_waveform(
        self, speech: torch.Tensor, lengths: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        positions = self.model.embed_positions.weight
        if speech.shape[1] > self.max_samples:
            raise ValueError(
                f"whisper takes at most 30 s ({positions.shape[0]} positions), got "
                f"{speech.shape[1] / self.sample_rate:.1f} s: filter long utterances out "
                "(alignchat.sh --max_duration 30)"
            )
        feats, feats_lengths = self.log_mel(speech, lengths)
        if self.specaug is not None and self.training:
            feats, _ = self.specaug(feats, feats_lengths)
        if not self.pad_to_30s:  # convolutions see zeros past the end, alone or batched
            feats = zero_padding(feats, feats_lengths)
        model = self.model
        hidden = nn.functional.gelu(model.conv1(feats.transpose(1, 2)))
        if not self.pad_to_30s:
            hidden = zero_padding(hidden.transpose(1, 2), feats_lengths).transpose(1, 2)
        hidden = nn.functional.gelu(model.conv2(hidden)).transpose(1, 2)
        hidden = hidden + positions[: hidden.shape[1]]
        hidden = nn.functional.dropout(
            hidden, p=model.config.dropout, training=model.training
        )
        frame_lengths = self.frame_lengths(lengths)
        # (batch, 1, 1, frames): padded frames are never attended to; with 30-s padding
        # Whisper attends to its padding, as it was trained to.
        mask = (
            None
            if self.pad_to_30s
            else length_mask(frame_lengths, hidden.shape[1])[:, None, None, :]
        )
        for layer in self.layers:
            hidden = layer(hidden, mask)
        hidden = model.layer_norm(hidden)
        return hidden[:, : int(frame_lengths.max())], frame_lengths
