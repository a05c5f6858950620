"""`Speech2Chat`: a trained AlignChat model and its frozen LLM, ready to transcribe and answer.

chat = Speech2Chat.from_model_dir("exp/alignchat_instruct", device="cuda")
hypotheses = chat.transcribe([waveform_16k])
print(chat.detokenize(hypotheses[0].token_ids), chat.respond(hypotheses)[0])
"""

import argparse
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
import yaml

from espnet_alignchat.model import AlignChatModel
from espnet_alignchat.search import Hypothesis
from espnet_alignchat.task import AlignChatTask

# What ESPnet's n-best averaging leaves behind, best first, for the two training modes.
MODEL_FILES = (
    "valid.acc_response.ave.pth",
    "valid.acc.ave.pth",
    "valid.loss.ave.pth",
    "latest.pth",
)


def find_model_file(model_dir: Path, model_file: Optional[str] = None) -> Path:
    """`model_file` inside `model_dir` (or as given), else the first of `MODEL_FILES` found."""
    if model_file is not None:
        path = Path(model_file)
        path = path if path.is_file() else model_dir / model_file
        if not path.is_file():
            raise FileNotFoundError(f"{model_dir}: no model file {model_file}")
        return path
    for name in MODEL_FILES:
        if (model_dir / name).is_file():
            return model_dir / name
    raise FileNotFoundError(f"{model_dir}: none of {', '.join(MODEL_FILES)}")


def load_model(
    model_dir: Union[str, Path],
    model_file: Optional[str] = None,
    llm: Optional[str] = None,
    device: Union[str, torch.device] = "cpu",
) -> AlignChatModel:
    """Rebuild a trained model from its ``config.yaml`` and checkpoint.

    `llm` replaces the configured LLM path (e.g. the same LLM stored elsewhere); the model's
    LLM fingerprint makes sure it is the same LLM.
    """
    model_dir = Path(model_dir)
    with open(model_dir / "config.yaml", encoding="utf-8") as f:
        args = argparse.Namespace(**yaml.safe_load(f))
    if llm is not None:
        args.llm = llm
    model = AlignChatTask.build_model(args)
    path = find_model_file(model_dir, model_file)
    logging.info(f"Loading {path}")
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.to(device).eval()


class Speech2Chat:
    """Speech in, transcript and the frozen LLM's answer out; batched."""

    def __init__(
        self,
        model: AlignChatModel,
        beam_size: int = 1,
        maxlenratio: float = 1.0,
        max_tokens: int = 512,
        length_bonus: float = 0.0,
        output_mode: str = "continuous",
        system_prompt: Optional[str] = None,
        generation: Optional[Dict[str, Any]] = None,
    ):
        self.model = model
        self.llm = model.llm
        self.decoding = dict(
            beam_size=beam_size,
            maxlenratio=maxlenratio,
            max_tokens=max_tokens,
            length_bonus=length_bonus,
            output_mode=output_mode,
        )
        self.layout = (
            model.prompt_layout
            if system_prompt is None
            else self.llm.prompt_layout(system_prompt, model.user_template)
        )
        self.generation = generation or {}

    @classmethod
    def from_model_dir(
        cls,
        model_dir: Union[str, Path],
        model_file: Optional[str] = None,
        llm: Optional[str] = None,
        device: Union[str, torch.device] = "cpu",
        **options,
    ) -> "Speech2Chat":
        return cls(load_model(model_dir, model_file, llm, device), **options)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def sample_rate(self) -> int:
        frontend = self.model.frontend
        return getattr(frontend, "fs", 16000) if frontend is not None else 16000

    def transcribe(self, speech: Sequence[np.ndarray]) -> List[Hypothesis]:
        """Decode each waveform (mono, at `sample_rate`) into LLM tokens and their vectors."""
        lengths = torch.tensor([len(samples) for samples in speech])
        batch = torch.zeros(len(speech), int(lengths.max()))
        for row, samples in enumerate(speech):
            batch[row, : len(samples)] = torch.from_numpy(np.asarray(samples))
        return self.model.transcribe(
            batch.to(self.device), lengths.to(self.device), **self.decoding
        )

    def respond(self, hypotheses: Sequence[Hypothesis], **generation) -> List[str]:
        """The LLM's answers with each utterance's speech vectors as the user's turn."""
        layout = self.layout
        prompts = [[layout.prefix, h.vectors, layout.suffix] for h in hypotheses]
        return self.llm.generate(
            self.llm.build_inputs(prompts), **{**self.generation, **generation}
        )

    def respond_to_text(self, texts: Sequence[str], **generation) -> List[str]:
        """The LLM's answers to the same prompts with the text in place of the speech."""
        layout = self.layout
        prompts = [[layout.prefix, self.llm.tokenize(t), layout.suffix] for t in texts]
        return self.llm.generate(
            self.llm.build_inputs(prompts), **{**self.generation, **generation}
        )
