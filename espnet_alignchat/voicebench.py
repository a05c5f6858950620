"""An AlignChat model as a VoiceBench voice assistant (https://github.com/MatthewCYM/VoiceBench).

VoiceBench builds its assistants without arguments, so this one reads where the model is from
the environment: ``ALIGNCHAT_MODEL`` (a model dir or a packed .zip; default
``alignchat.zip`` in the current directory), ``ALIGNCHAT_LLM`` (the model's LLM, if not where
the model says), ``ALIGNCHAT_DEVICE`` (default: cuda if there is one),
``ALIGNCHAT_OUTPUT_MODE`` (what the LLM reads: ``canonical``, the default, as both worlds
decode; ``snap``, ``continuous`` or ``expected``) and ``ALIGNCHAT_MAX_NEW_TOKENS`` (default:
VoiceBench's 2048). VoiceBench's ``src/models/__init__.py`` imports every assistant it has,
with all their dependencies, so adding this one there is not enough; run VoiceBench's
``main.py`` through ``python -m espnet_alignchat.bin.voicebench_main`` instead (from the
VoiceBench folder, with main.py's own arguments, e.g. ``--model alignchat --data sd-qa
--split usa``): it gives main.py a model registry that holds this assistant alone. Offline,
on local files, ``python -m espnet_alignchat.bin.voicebench_infer`` writes the same output
files, batched, and ``python -m espnet_alignchat.bin.voicebench_score`` scores them.
"""

import os
import time
from typing import Any, Dict, List, Optional

from espnet_alignchat.inference import Speech2Chat

DEFAULT_MODEL = "alignchat.zip"
MAX_NEW_TOKENS = 2048  # VoiceBench's default for every assistant


def _output_mode_from_environment() -> Dict[str, str]:
    mode = os.environ.get("ALIGNCHAT_OUTPUT_MODE")
    return {"output_mode": mode} if mode else {}


class AlignChatAssistant:
    """VoiceBench's assistant interface: ``generate_audio``, ``generate_text``, ``generate_ttft``.

    The answers are greedy, with the model's own system prompt, and at most `max_new_tokens`
    long (VoiceBench's default), as VoiceBench runs every assistant; `options` go to
    `Speech2Chat` (e.g. ``beam_size``). ``generate_text`` gives the frozen LLM the prompt's text where the speech would
    go: the text-conditioned upper bound of the same model.
    """

    def __init__(
        self,
        model: Optional[str] = None,
        llm: Optional[str] = None,
        device: Optional[str] = None,
        max_new_tokens: Optional[int] = None,
        **options,
    ):
        self.max_new_tokens = max_new_tokens or int(
            os.environ.get("ALIGNCHAT_MAX_NEW_TOKENS") or MAX_NEW_TOKENS
        )
        self.chat = Speech2Chat.from_pretrained(
            model or os.environ.get("ALIGNCHAT_MODEL") or DEFAULT_MODEL,
            llm=llm or os.environ.get("ALIGNCHAT_LLM") or None,
            device=device or os.environ.get("ALIGNCHAT_DEVICE") or None,
            **{**_output_mode_from_environment(), **options},
        )

    def generate_audio(
        self, audio: Dict[str, Any], max_new_tokens: Optional[int] = None
    ) -> str:
        """The answer to ``{"array": samples, "sampling_rate": rate}`` (any rate) or to the
        torchcodec ``AudioDecoder`` that `datasets` >= 4 gives in its place."""
        return self.generate_audio_batch([audio], max_new_tokens)[0]

    def generate_text(self, text: str) -> str:
        return self.generate_text_batch([text])[0]

    def generate_ttft(self, audio: Dict[str, Any]) -> float:
        """Seconds to the first token of the answer, as VoiceBench measures it."""
        start = time.perf_counter()
        self.generate_audio(audio, max_new_tokens=1)
        return time.perf_counter() - start

    def generate_audio_batch(
        self, audios: List[Any], max_new_tokens: Optional[int] = None
    ) -> List[str]:
        """Answers to a batch of speech (audio dicts or anything `Speech2Chat` takes)."""
        limit = max_new_tokens or self.max_new_tokens
        return self.chat(list(audios), max_new_tokens=limit)

    def generate_text_batch(self, texts: List[str]) -> List[str]:
        typed = [[{"role": "user", "content": text}] for text in texts]
        return self.chat(typed, max_new_tokens=self.max_new_tokens)
