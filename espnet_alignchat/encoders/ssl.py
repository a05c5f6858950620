"""Self-supervised speech models (WavLM, HuBERT, wav2vec 2.0, ...) on the raw waveform.

Any `transformers.AutoModel` that reads ``input_values`` and has a convolutional feature
encoder followed by ``encoder.layers`` fits. Whether it takes an attention mask is read from its
config, as Hugging Face's own feature extractors decide it: models whose first convolution is
layer-normalized (``feat_extract_norm: layer``, e.g. WavLM-Large, HuBERT-Large) take one; those
with group normalization (``group``, e.g. HuBERT-Base) were trained on zero-padded batches
without one, and their outputs depend slightly on the padding.
"""

from typing import Iterable, Optional, Tuple

import torch
from torch import nn
from transformers import AutoConfig, AutoFeatureExtractor, AutoModel

from espnet_alignchat.encoders.base import ConfigError, WaveformEncoder, length_mask


def load_ssl_model(
    name_or_path: Optional[str], load_pretrained: bool, overrides: dict
) -> nn.Module:
    """The model with its weights, or its architecture with random weights."""
    if name_or_path is None:
        if load_pretrained or "model_type" not in overrides:
            raise ConfigError(
                "hf_ssl without name_or_path builds from config_overrides, which then "
                "needs a model_type (e.g. wavlm) and load_pretrained: false"
            )
        config = AutoConfig.for_model(**overrides)
    else:
        config = AutoConfig.from_pretrained(name_or_path, **overrides)
    if load_pretrained:
        model = AutoModel.from_pretrained(
            name_or_path, config=config, dtype=torch.float32
        )
    else:
        model = AutoModel.from_config(config)
    where = name_or_path or overrides["model_type"]
    if getattr(model, "main_input_name", None) != "input_values" or not hasattr(
        getattr(model, "encoder", None), "layers"
    ):
        raise ConfigError(
            f"hf_ssl needs a model that reads the waveform (input_values) and has "
            f"encoder.layers: {where} is a {type(model).__name__}"
        )
    return model


def normalizes_waveform(name_or_path: Optional[str]) -> bool:
    """Whether the model's feature extractor normalizes each waveform (``do_normalize``)."""
    if name_or_path is None:
        return False
    try:
        extractor = AutoFeatureExtractor.from_pretrained(name_or_path)
    except OSError:  # no preprocessor_config.json
        return False
    return bool(getattr(extractor, "do_normalize", False))


class HFSSLEncoder(WaveformEncoder):
    """A self-supervised speech model (Hugging Face `transformers`) as an ESPnet encoder.

    Args:
        input_size: 1, the waveform (ESPnet passes it); or the model's hidden size when
            training reads the frozen model's cached outputs (see `WaveformEncoder`).
        name_or_path: hub id or local directory (e.g. ``microsoft/wavlm-large``); None builds
            the architecture from `config_overrides` (which then needs ``model_type``).
        load_pretrained: read the weights; False reads only ``config.json``: random weights.
        config_overrides: config fields to change (e.g. ``mask_time_prob``, dropouts).
            ``layerdrop`` is 0 unless set here: a skipped layer gets no gradient in that step,
            which DDP refuses (set ``--unused_parameters true`` to use it).
        normalize_waveform: zero mean and unit variance per utterance, as the model's feature
            extractor does; None: as its ``preprocessor_config.json`` says (off without one).
        freeze, frozen_layers, downsample_rate, downsample_type, output_size: see
            `WaveformEncoder`.

    The masked-frame vector of HuBERT-style models (``masked_spec_embed``) never trains: it is
    used only in the steps where a time mask is drawn, and DDP wants a gradient every step.
    """

    def __init__(
        self,
        input_size: int = 1,
        name_or_path: Optional[str] = None,
        load_pretrained: bool = True,
        config_overrides: Optional[dict] = None,
        normalize_waveform: Optional[bool] = None,
        freeze: str = "all",
        frozen_layers: int = 0,
        downsample_rate: int = 1,
        downsample_type: str = "stack",
        output_size: Optional[int] = None,
    ):
        super().__init__()
        overrides = {"layerdrop": 0.0, **(config_overrides or {})}
        model = load_ssl_model(name_or_path, load_pretrained, overrides)
        self.use_attention_mask = (
            getattr(model.config, "feat_extract_norm", "layer") == "layer"
        )
        self.normalize_waveform = (
            normalizes_waveform(name_or_path)
            if normalize_waveform is None
            else normalize_waveform
        )
        self._setup(
            model,
            input_size,
            model.config.hidden_size,
            freeze,
            frozen_layers,
            downsample_rate,
            downsample_type,
            output_size,
        )

    @property
    def layers(self) -> nn.ModuleList:
        return self.model.encoder.layers

    def fixed_parameters(self) -> Iterable[nn.Parameter]:
        embed = getattr(self.model, "masked_spec_embed", None)
        return [] if embed is None else [embed]

    def frame_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return self.model._get_feat_extract_output_lengths(lengths)

    def encode_waveform(
        self, speech: torch.Tensor, lengths: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        mask = length_mask(lengths, speech.shape[1])
        if self.normalize_waveform:
            with torch.autocast(speech.device.type, enabled=False):
                speech = normalize_per_utterance(speech.float(), mask)
        output = self.model(
            input_values=speech,
            attention_mask=mask.long() if self.use_attention_mask else None,
        )
        return output.last_hidden_state, self.frame_lengths(lengths)


def normalize_per_utterance(speech: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit variance over each waveform's own samples; padding stays zero.

    As `Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm` (population variance, eps 1e-7).
    """
    count = mask.sum(-1, keepdim=True).clamp(min=1)
    mean = (speech * mask).sum(-1, keepdim=True) / count
    variance = ((speech - mean) ** 2 * mask).sum(-1, keepdim=True) / count
    return ((speech - mean) / torch.sqrt(variance + 1e-7)).masked_fill(~mask, 0.0)
