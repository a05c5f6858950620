"""Data preprocessing: checked speech, and text turned into the LLM's own token ids."""

from typing import Dict, Iterable, Union

import numpy as np

from espnet_alignchat.llm import load_tokenizer

TEXT_NAMES = ("text", "response")


class InputError(ValueError):
    """One utterance's data cannot be used; the message names the utterance."""


def check_speech(utt_id: str, speech: np.ndarray) -> np.ndarray:
    """A mono float32 waveform with samples, all finite; `InputError` otherwise."""
    if speech.ndim == 2 and speech.shape[1] == 1:
        speech = speech[:, 0]
    if speech.ndim != 1:
        raise InputError(
            f"{utt_id}: speech has shape {speech.shape}; the model takes mono audio"
        )
    if speech.size == 0:
        raise InputError(f"{utt_id}: the audio is empty")
    if not np.isfinite(speech).all():
        raise InputError(f"{utt_id}: the audio has NaN or infinite samples")
    return speech.astype(np.float32, copy=False)


class AlignChatPreprocessor:
    """ESPnet preprocess function: ``(utt_id, data) -> data`` with arrays only.

    ``text`` and ``response`` arrive as strings (ESPnet's ``text`` data type) and leave as the
    LLM tokenizer's ids with ``add_special_tokens=False``; token ids prepared beforehand
    (``text_int``) pass through. The tokenizer is loaded lazily, so the object stays cheap to
    pickle into DataLoader workers.
    """

    def __init__(
        self,
        llm: str,
        trust_remote_code: bool = False,
        text_names: Iterable[str] = TEXT_NAMES,
    ):
        self.llm = llm
        self.trust_remote_code = trust_remote_code
        self.text_names = tuple(text_names)
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
            data["speech"] = check_speech(utt_id, data["speech"])
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
