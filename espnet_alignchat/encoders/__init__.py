"""Speech encoders on the raw waveform, backed by Hugging Face `transformers`.

``whisper``: Whisper's encoder with its own log-mel features; ``hf_ssl``: WavLM, HuBERT and other
self-supervised models. Both load a hub id or a local directory, or build the architecture from
its config with random weights; both can freeze all, the bottom layers or nothing, and add a
downsampling adapter in front of the decoder's cross-attention.
"""

from espnet_alignchat.encoders.base import (
    ConfigError,
    DownsampleAdapter,
    WaveformEncoder,
)
from espnet_alignchat.encoders.ssl import HFSSLEncoder
from espnet_alignchat.encoders.whisper import HFWhisperEncoder

__all__ = [
    "ConfigError",
    "DownsampleAdapter",
    "HFSSLEncoder",
    "HFWhisperEncoder",
    "WaveformEncoder",
]
