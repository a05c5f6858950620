"""What every model that speaks to the frozen LLM shares: speech in, answers trained through it.

`AlignChatModel` (one vector per LLM token of the transcript) and `FrameAdapterModel` (one
vector per group of encoder frames) differ only in how they turn speech into vectors for the
LLM. Both run the same frontend and encoder (`SpeechChatMixin.encode`), put the vectors into
the same chat template in place of the user's words, and train on the LLM's own answer with
the template's prefix run once (`SpeechChatMixin.answer_losses`).
"""

from functools import cached_property
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from espnet_alignchat.llm import FrozenLLM, PromptLayout

IGNORE_ID = -1  # padding of token-id sequences (as ESPnet's ASR task); never an LLM id


def id_lists(ids: torch.Tensor, lengths: torch.Tensor) -> List[List[int]]:
    """The rows of a padded id tensor as Python lists, each cut at its length.

    Prompts are built from Python lists: the ids come to the host in one copy per tensor, not
    one synchronisation per row and slice.
    """
    return [row[:length] for row, length in zip(ids.tolist(), lengths.tolist())]


class SpeechChatMixin:
    """Shared methods of the speech models; the model's ``__init__`` sets the attributes.

    Attributes it reads: ``llm`` (`FrozenLLM`), ``frontend``, ``specaug``, ``normalize``,
    ``encoder`` (ESPnet modules, or None for the first three), ``system_prompt``,
    ``user_template``, ``response_weight`` and ``kl_weight``.
    """

    llm: FrozenLLM
    transcribes: bool  # whether `tokenize` gives the LLM token ids of what was said

    @cached_property
    def prompt_layout(self) -> PromptLayout:
        return self.llm.prompt_layout(self.system_prompt, self.user_template)

    # -- speech ------------------------------------------------------------------------------
    def encode(
        self, speech: torch.Tensor, speech_lengths: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Frontend, SpecAugment (training only), normalization and encoder."""
        with torch.autocast(speech.device.type, enabled=False):
            feats, feats_lengths = self._extract_feats(speech, speech_lengths)
            if self.specaug is not None and self.training:
                feats, feats_lengths = self.specaug(feats, feats_lengths)
            if self.normalize is not None:
                feats, feats_lengths = self.normalize(feats, feats_lengths)
        encoder_out, encoder_lengths, _ = self.encoder(feats, feats_lengths)
        if isinstance(encoder_out, tuple):  # encoders with intermediate CTC outputs
            encoder_out = encoder_out[0]
        return encoder_out, encoder_lengths

    def _extract_feats(self, speech: torch.Tensor, speech_lengths: torch.Tensor):
        speech = speech[:, : speech_lengths.max()]  # DataParallel pads to the longest
        if self.frontend is None:
            return speech, speech_lengths
        return self.frontend(speech, speech_lengths)

    def collect_feats(
        self, speech: torch.Tensor, speech_lengths: torch.Tensor, **kwargs
    ) -> Dict[str, torch.Tensor]:
        feats, feats_lengths = self._extract_feats(speech, speech_lengths)
        return {"feats": feats, "feats_lengths": feats_lengths}

    # -- token ids ---------------------------------------------------------------------------
    def _check_token_ids(self, name: str, ids: torch.Tensor) -> None:
        if int(ids.max()) >= self.llm.vocab_size:
            raise ValueError(
                f"{name} has token id {int(ids.max())}, but the LLM has "
                f"{self.llm.vocab_size} embedding rows: was it tokenized for another LLM?"
            )

    def complete_answers(
        self, ids: torch.Tensor, lengths: torch.Tensor
    ) -> List[List[int]]:
        """The answers as the LLM ends them: self-generated answers keep the stop token the
        LLM emitted; others (given as text, or cut at a length limit) get the turn's end.
        """
        stops = self.llm.stop_token_ids
        return [
            answer if answer and answer[-1] in stops else answer + self.llm.turn_end
            for answer in id_lists(ids, lengths)
        ]

    # -- training through the frozen LLM -----------------------------------------------------
    def answer_losses(
        self,
        layout: PromptLayout,
        speech: Sequence[torch.Tensor],
        answers: Sequence[List[int]],
        transcripts: Optional[Sequence[List[int]]],
        loss_name: str = "loss_response",
        acc_name: str = "acc_response",
    ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """Cross-entropy of the frozen LLM on `answers` given each utterance's `speech`
        vectors in `layout`'s user turn, and with ``kl_weight`` the KL to the LLM's
        distribution given the `transcripts` typed there instead (one extra no-grad pass).

        Every prompt starts with the template's prefix: the LLM runs it once, without
        gradients (`FrozenLLM.logits_after_prefix`), and each row's answer ends its
        sequence, so the answer's logits sit at the same (last) positions in the speech and
        the text prompt, however many positions the speech takes.
        """
        speech_rests = [
            [vectors, layout.suffix, answer] for vectors, answer in zip(speech, answers)
        ]
        span = max(len(answer) for answer in answers)
        # Position -k-1 predicts the token at -k, so span + 1 logits suffice.
        logits = self.llm.logits_after_prefix(layout.prefix, speech_rests, span + 1)
        logits = logits[:, :-1].float()
        labels = torch.tensor(
            [[IGNORE_ID] * (span - len(answer)) + answer for answer in answers],
            device=logits.device,
        )
        valid = labels != IGNORE_ID
        loss_answer = F.cross_entropy(logits[valid], labels[valid])
        stats = {
            loss_name: loss_answer.detach(),
            acc_name: (logits[valid].argmax(-1) == labels[valid])
            .float()
            .mean()
            .detach(),
        }
        loss = self.response_weight * loss_answer
        if self.kl_weight > 0:
            if transcripts is None:
                raise ValueError("model_conf.kl_weight > 0 needs the transcripts")
            with torch.no_grad():
                text_rests = [
                    [ids, layout.suffix, answer]
                    for ids, answer in zip(transcripts, answers)
                ]
                text_logits = self.llm.logits_after_prefix(
                    layout.prefix, text_rests, span + 1
                )[:, :-1].float()
            loss_kl = F.kl_div(
                logits[valid].log_softmax(-1),
                text_logits[valid].log_softmax(-1),
                log_target=True,
                reduction="batchmean",
            )
            loss = loss + self.kl_weight * loss_kl
            stats["loss_kl"] = loss_kl.detach()
        return loss, stats
