"""Data preprocessing: checked speech, and text turned into the LLM's own token ids."""

from typing import Dict, Iterable, Optional, Union

import numpy as np

from espnet_alignchat.errors import InputError
from espnet_alignchat.llm import load_tokenizer

TEXT_NAMES = ("text", "response")


def check_speech(utt_id: str, speech: np.ndarray) -> np.ndarray:
    """A mono float32 waveform with samples, all finite; `InputError` otherwise.

    Audio of several channels, (samples, channels) as soundfile reads it, is their mean.
    """
    if speech.size == 0:
        raise InputError(f"{utt_id}: the audio is empty")
    if speech.ndim == 2 and speech.shape[0] >= speech.shape[1]:
        speech = speech.mean(axis=1)
    if speech.ndim != 1:
        raise InputError(
            f"{utt_id}: speech has shape {speech.shape}; the model takes mono audio as "
            "(samples,) or (samples, channels)"
        )
    if not np.isfinite(speech).all():
        raise InputError(f"{utt_id}: the audio has NaN or infinite samples")
    return speech.astype(np.float32, copy=False)


def check_features(utt_id: str, feats: np.ndarray, size: int) -> np.ndarray:
    """Features (frames, `size`) with frames, all finite, as float32; `InputError` otherwise.

    For data that hold features instead of audio (``--input_size``), such as the cached
    outputs of a frozen encoder.
    """
    if feats.ndim != 2 or feats.shape[1] != size:
        raise InputError(
            f"{utt_id}: features have shape {feats.shape}, expected (frames, {size})"
        )
    if feats.shape[0] == 0:
        raise InputError(f"{utt_id}: the features have no frames")
    if not np.isfinite(feats).all():
        raise InputError(f"{utt_id}: the features have NaN or infinite values")
    return feats.astype(np.float32, copy=False)


class AlignChatPreprocessor:
    """ESPnet preprocess function: ``(utt_id, data) -> data`` with arrays only.

    ``text`` and ``response`` arrive as strings (ESPnet's ``text`` data type) and leave as the
    LLM tokenizer's ids with ``add_special_tokens=False``; token ids prepared beforehand
    (``text_int``) pass through. The tokenizer is loaded lazily, so the object stays cheap to
    pickle into DataLoader workers. ``speech`` is a waveform, or with `feature_size` features of
    that width (``--input_size``).
    """

    def __init__(
        self,
        llm: str,
        trust_remote_code: bool = False,
        text_names: Iterable[str] = TEXT_NAMES,
        feature_size: Optional[int] = None,
    ):
        self.llm = llm
        self.trust_remote_code = trust_remote_code
        self.text_names = tuple(text_names)
        self.feature_size = feature_size
        self._tokenizer = None

    def __getstate__(self):
        return {**self.__dict__, "_tokenizer": None}

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.llm, self.trust_remote_code)
        return self._tokenizer

    def __call__(
        self, utt_id: str, data: Dict[str, Union[str, np.ndarray]]
    ) -> Dict[str, np.ndarray]:
        data = dict(data)
        if "speech" in data:
            if self.feature_size is None:
                data["speech"] = check_speech(utt_id, data["speech"])
            else:
                data["speech"] = check_features(
                    utt_id, data["speech"], self.feature_size
                )
        for name in self.text_names:
            if name not in data:
                continue
            value = data[name]
            if isinstance(value, str):
                value = self.tokenizer(value.strip(), add_special_tokens=False)[
                    "input_ids"
                ]
            ids = np.asarray(value, dtype=np.int64)
            # An LLM may answer with nothing (its answer is then just the turn's end), but a
            # transcript with no token has no speech to align.
            if ids.size == 0 and name == "text":
                raise InputError(f"{utt_id}: the text is empty")
            data[name] = ids
        return data
