"""`AlignChatModel`: the speech tokenizer and its two training modes, as an ESPnet model.

``pretrain`` (stage 1) aligns the decoder's vectors ``z_i`` with the LLM's embedding rows
``E[y_i]`` of the transcript's LLM tokens; it needs ``E`` alone, never the LLM's layers.
``instruct`` (stage 2) splices the teacher-forced ``z`` into the LLM's chat template in place of
the user's words, runs the frozen LLM once and trains on the LLM's own (self-generated) answer
to the text; the stage-1 losses stay on (``align_weight``) so the tokenizer keeps transcribing.
"""

from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from espnet2.asr.encoder.abs_encoder import AbsEncoder
from espnet2.asr.frontend.abs_frontend import AbsFrontend
from espnet2.asr.specaug.abs_specaug import AbsSpecAug
from espnet2.layers.abs_normalize import AbsNormalize
from espnet2.torch_utils.device_funcs import force_gatherable
from espnet2.train.abs_espnet_model import AbsESPnetModel

from espnet_alignchat.decoder import SpeechTokenDecoder
from espnet_alignchat.llm import FingerprintBuffer, FrozenLLM
from espnet_alignchat.search import (
    Hypothesis,
    beam_search,
    greedy_search,
    length_limits,
)
from espnet_alignchat.speech_chat import IGNORE_ID, SpeechChatMixin, id_lists

MODES = ("pretrain", "instruct")
OUTPUT_MODES = ("continuous", "snap", "expected")
SPEECH_VECTORS = ("head", "expected")


class AlignChatModel(SpeechChatMixin, AbsESPnetModel):
    """Speech → one vector per LLM token of the transcript, trained against a frozen LLM.

    Args (``model_conf``):
        mode: ``pretrain`` (stage 1, embeddings only) or ``instruct`` (stage 2, through the LLM).
        end_token_id: LLM token that ends the transcript (default: the tokenizer's EOS).
        ce_weight: cross-entropy of the token logits ``z·Eᵀ / τ``.
        cosine_weight: ``1 - cos(z_i, E[y_i])``.
        nmse_weight: ``||z_i - E[y_i]||² / ||E[y_i]||²`` (keeps ``z`` at the scale of ``E``).
        ctc_weight: CTC on the encoder output, scored against ``E`` plus a blank vector.
        logit_temperature: τ of the token logits.
        normalize_logits: score tokens by cosine (``True``) instead of dot product.
        label_smoothing: of the token cross-entropy.
        ce_negatives: 0: the token cross-entropy is over the whole vocabulary; N > 0: in
            training, over the batch's own target tokens and N other rows drawn at random
            each step (a sampled softmax: the logits against a 49k-152k-row matrix are most
            of a stage-1 step's cost). Validation and decoding always use the whole
            vocabulary, so ``valid.acc`` stays exact; the training ``acc`` is then over
            the sampled rows.
        align_weight: weight of the stage-1 losses above in ``instruct`` mode.
        response_weight: cross-entropy of the LLM's answer given the speech (``instruct``).
        kl_weight: KL from the LLM's text-conditioned to its speech-conditioned distribution
            over the answer's positions (``instruct``; costs one extra no-grad LLM forward).
        speech_vectors: what stage 2 gives the LLM: ``head``, the decoder's own ``z``, or
            ``expected``, ``softmax(token logits) @ E`` (the embeddings weighted by the
            decoder's token probabilities: exactly ``E[token]`` where it is sure, so the LLM
            reads vectors it knows, and the answer's gradient reaches the token logits).
            Decode such a model with ``output_mode: expected``.
        extract_feats_in_collect_stats: ESPnet's flag; feature statistics need the frontend.
    """

    transcribes = True

    def __init__(
        self,
        llm: FrozenLLM,
        fingerprint: FingerprintBuffer,
        frontend: Optional[AbsFrontend],
        specaug: Optional[AbsSpecAug],
        normalize: Optional[AbsNormalize],
        encoder: AbsEncoder,
        decoder: SpeechTokenDecoder,
        system_prompt: Optional[str],
        user_template: str,
        mode: str = "pretrain",
        end_token_id: Optional[int] = None,
        ce_weight: float = 1.0,
        cosine_weight: float = 1.0,
        nmse_weight: float = 0.0,
        ctc_weight: float = 0.0,
        logit_temperature: float = 0.1,
        normalize_logits: bool = True,
        label_smoothing: float = 0.0,
        ce_negatives: int = 0,
        align_weight: float = 1.0,
        response_weight: float = 1.0,
        kl_weight: float = 0.0,
        speech_vectors: str = "head",
        extract_feats_in_collect_stats: bool = True,
    ):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"model_conf.mode must be one of {MODES}: {mode}")
        if speech_vectors not in SPEECH_VECTORS:
            raise ValueError(
                f"model_conf.speech_vectors must be one of {SPEECH_VECTORS}: "
                f"{speech_vectors}"
            )
        self.llm = llm  # a plain object, so not a submodule: see espnet_alignchat.llm
        self.llm_fingerprint = fingerprint
        self.frontend = frontend
        self.specaug = specaug
        self.normalize = normalize
        self.encoder = encoder
        self.decoder = decoder
        self.system_prompt = system_prompt
        self.user_template = user_template
        self.mode = mode
        self.end_token_id = end_token_id
        self.weights = dict(
            ce=ce_weight, cos=cosine_weight, nmse=nmse_weight, ctc=ctc_weight
        )
        self.logit_temperature = logit_temperature
        self.normalize_logits = normalize_logits
        self.label_smoothing = label_smoothing
        self.ce_negatives = ce_negatives
        self.align_weight = align_weight
        self.response_weight = response_weight
        self.kl_weight = kl_weight
        self.speech_vectors = speech_vectors
        self.extract_feats_in_collect_stats = extract_feats_in_collect_stats
        if (
            ctc_weight > 0
        ):  # created only when used: DDP wants every parameter to get a grad
            self.ctc_proj = torch.nn.Linear(encoder.output_size(), llm.hidden_size)
            self.ctc_blank = torch.nn.Parameter(torch.randn(llm.hidden_size) * 0.02)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # The CTC head only helps training. A model without one (e.g. stage 2 with CTC off,
        # initialised from a stage 1 with CTC on) leaves a checkpoint's head out.
        if not hasattr(self, "ctc_proj"):
            for name in ("ctc_blank", "ctc_proj.weight", "ctc_proj.bias"):
                state_dict.pop(prefix + name, None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # -- shared pieces -----------------------------------------------------------------------
    def token_logits(
        self,
        z: torch.Tensor,
        extra_rows: Optional[torch.Tensor] = None,
        rows: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Logits over the LLM vocabulary (plus `extra_rows`, e.g. a CTC blank) for vectors z;
        over the token ids `rows` only, if given."""
        table = self.llm.embeddings_as(z.dtype)
        if rows is not None:
            table = table[rows]
        if extra_rows is not None:
            table = torch.cat([table, extra_rows.to(table.dtype)])
        if self.normalize_logits:
            logits = F.normalize(z, dim=-1) @ table.T
            logits = logits / table.norm(dim=-1).clamp(min=1e-6)
        else:
            logits = z @ table.T
        return logits / self.logit_temperature

    # -- training ----------------------------------------------------------------------------
    def forward(
        self,
        speech: torch.Tensor,
        speech_lengths: torch.Tensor,
        text: torch.Tensor,
        text_lengths: torch.Tensor,
        response: Optional[torch.Tensor] = None,
        response_lengths: Optional[torch.Tensor] = None,
        **kwargs,
    ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor], torch.Tensor]:
        """Stage-1 losses, plus in ``instruct`` mode the answer loss through the frozen LLM.

        `text` and `response` are LLM token ids padded with -1; ``**kwargs`` takes what the
        trainer adds (``utt_id``).
        """
        self.llm.to(speech.device)
        text = text[:, : text_lengths.max()]
        self._check_token_ids("text", text)
        memory, memory_lengths = self.encode(speech, speech_lengths)
        valid = text != IGNORE_ID
        previous = self.decoder_inputs(text.clamp(min=0)) * valid[..., None]
        z, hidden = self.decoder(memory, memory_lengths, previous)  # (batch, N + 1, ·)

        loss, stats = self._alignment_losses(
            z, hidden, text, text_lengths, memory, memory_lengths
        )
        if self.mode == "instruct":
            if response is None:
                raise ValueError(
                    "model_conf.mode=instruct needs a 'response' data entry per utterance"
                )
            self._check_token_ids("response", response)
            if self.speech_vectors == "expected":
                z = self.expected_vectors(z, hidden)
            answer_loss, answer_stats = self._answer_losses(
                z, text, text_lengths, response, response_lengths
            )
            loss = self.align_weight * loss + answer_loss
            stats.update(answer_stats)
        stats["loss"] = loss.detach()
        return force_gatherable((loss, stats, speech.shape[0]), loss.device)

    def _targets(self, text: torch.Tensor, text_lengths: torch.Tensor) -> torch.Tensor:
        """The transcript followed by the end token, padded with -1: (batch, N + 1)."""
        targets = F.pad(text, (0, 1), value=IGNORE_ID)
        targets[torch.arange(len(text)), text_lengths] = self.end_token_id
        return targets

    def _candidate_rows(self, targets: torch.Tensor) -> torch.Tensor:
        """The targets' rows and `ce_negatives` others drawn at random, sorted and unique."""
        drawn = torch.randint(
            self.llm.vocab_size, (self.ce_negatives,), device=targets.device
        )
        return torch.unique(torch.cat([targets, drawn]))

    def decoder_inputs(self, token_ids: torch.Tensor) -> torch.Tensor:
        """What the decoder reads for tokens: its own vocabulary's vectors, or ``E[ids]``."""
        vectors = self.decoder.embed_tokens(token_ids)
        return self.llm.embed(token_ids) if vectors is None else vectors

    def scores(
        self,
        z: torch.Tensor,
        hidden: torch.Tensor,
        rows: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Token logits of decoder outputs: the decoder's own vocabulary scores its hidden
        states; otherwise ``z`` is scored against the LLM's embeddings (`token_logits`).
        """
        if self.decoder.vocabulary == "llm":
            return self.token_logits(z, rows=rows)
        return self.decoder.token_scores(hidden, rows)

    def expected_vectors(self, z: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """``softmax(token logits) @ E`` for the decoder outputs (z, hidden), in z's dtype."""
        probabilities = self.scores(z, hidden).float().softmax(dim=-1)
        return (probabilities @ self.llm.embeddings_as(torch.float32)).to(z.dtype)

    def _alignment_losses(self, z, hidden, text, text_lengths, memory, memory_lengths):
        targets = self._targets(text, text_lengths)
        valid = targets != IGNORE_ID
        z_valid, y_valid = z[valid], targets[valid]
        if self.ce_negatives > 0 and self.training:
            rows = self._candidate_rows(y_valid)
            logits = self.scores(z_valid, hidden[valid], rows)
            classes = torch.searchsorted(rows, y_valid)  # the targets among the rows
        else:
            logits, classes = self.scores(z_valid, hidden[valid]), y_valid
        target_vectors = self.llm.embed(y_valid).to(z_valid.dtype)
        losses = {
            "ce": F.cross_entropy(
                logits.float(), classes, label_smoothing=self.label_smoothing
            ),
            "cos": 1 - F.cosine_similarity(z_valid, target_vectors, dim=-1).mean(),
            "nmse": (
                (z_valid - target_vectors).pow(2).sum(-1)
                / target_vectors.pow(2).sum(-1).clamp(min=1e-8)
            ).mean(),
        }
        if self.weights["ctc"] > 0:
            losses["ctc"] = self._ctc_loss(memory, memory_lengths, text, text_lengths)
        loss = sum(self.weights[name] * value for name, value in losses.items())
        stats = {f"loss_{name}": value.detach() for name, value in losses.items()}
        stats["acc"] = (logits.argmax(-1) == classes).float().mean().detach()
        # What the LLM reads in continuous mode should have the scale of its embeddings.
        stats["norm_ratio"] = z_valid.detach().norm(
            dim=-1
        ).mean() / target_vectors.norm(dim=-1).mean().clamp(min=1e-8)
        return loss, stats

    def _ctc_loss(self, memory, memory_lengths, text, text_lengths):
        """CTC whose classes are the LLM's tokens (scored like z) and one learned blank.

        With a sampled softmax (``ce_negatives``) in training, the classes are the batch's
        own tokens and the blank: every frame scores a few hundred rows instead of the
        whole vocabulary, which is what lets CTC teach a new decoder to align on a CPU.
        """
        tokens = text.clamp(min=0)
        if self.ce_negatives > 0 and self.training:
            rows = torch.unique(tokens[text != IGNORE_ID])
            tokens = torch.searchsorted(rows, tokens)  # padding is cut by the lengths
        else:
            rows = None
        logits = self.token_logits(self.ctc_proj(memory), self.ctc_blank[None], rows)
        log_probs = logits.float().log_softmax(-1).transpose(0, 1)  # (frames, batch, C)
        return F.ctc_loss(
            log_probs,
            tokens,
            memory_lengths,
            text_lengths,
            blank=logits.shape[-1] - 1,  # the last class
            zero_infinity=True,
        )

    def _answer_losses(self, z, text, text_lengths, response, response_lengths):
        """Cross-entropy (and KL to the text-conditioned LLM) on the self-generated answer."""
        transcripts = id_lists(text, text_lengths)
        # One vector per transcript token (z's last row is the end token's), so the speech
        # takes as many positions in the prompt as the transcript would.
        speech = [vectors[: len(ids)] for vectors, ids in zip(z, transcripts)]
        answers = self.complete_answers(response, response_lengths)
        return self.answer_losses(self.prompt_layout, speech, answers, transcripts)

    # -- inference ---------------------------------------------------------------------------
    @torch.no_grad()
    def tokenize(
        self,
        speech: torch.Tensor,
        speech_lengths: torch.Tensor,
        beam_size: int = 1,
        maxlenratio: float = 1.0,
        max_tokens: int = 512,
        length_bonus: float = 0.0,
        output_mode: str = "continuous",
    ) -> List[Hypothesis]:
        """The speech tokenizer: LLM tokens and their vectors for a batch of waveforms.

        ``output_mode`` says what each hypothesis' ``vectors`` hold for the LLM: the decoder's
        own ``z`` (``continuous``), the embeddings ``E[token]`` of the decoded ids (``snap``),
        or the embeddings weighted by the decoder's token probabilities (``expected``).
        """
        if output_mode not in OUTPUT_MODES:
            raise ValueError(
                f"output_mode must be one of {OUTPUT_MODES}: {output_mode}"
            )
        self.llm.to(speech.device)
        memory, memory_lengths = self.encode(speech, speech_lengths)
        search = dict(
            decoder=self.decoder,
            memory=memory,
            memory_lengths=memory_lengths,
            logits_fn=self.scores,
            embed_fn=self.decoder_inputs,
            end_id=self.end_token_id,
            limits=length_limits(memory_lengths, maxlenratio, max_tokens),
        )
        if beam_size > 1:
            hypotheses = beam_search(
                **search, beam_size=beam_size, length_bonus=length_bonus
            )
        else:
            hypotheses = greedy_search(**search)
        if output_mode == "snap":
            for hypothesis in hypotheses:
                ids = torch.tensor(
                    hypothesis.token_ids, dtype=torch.long, device=memory.device
                )
                hypothesis.vectors = self.llm.embed(ids)
        elif output_mode == "expected":
            self._expected_vectors(hypotheses, memory, memory_lengths)
        return hypotheses

    def _expected_vectors(
        self,
        hypotheses: List[Hypothesis],
        memory: torch.Tensor,
        memory_lengths: torch.Tensor,
    ) -> None:
        """Replace each hypothesis' vectors by ``softmax(logits) @ E`` at its positions: the
        embedding of the token where the decoder is sure, a blend of its candidates where it
        is not. The logits come from one teacher-forced pass over the decoded ids, which
        gives what the search saw at each step.
        """
        lengths = [len(hypothesis.token_ids) for hypothesis in hypotheses]
        ids = torch.zeros(len(hypotheses), max(lengths), dtype=torch.long)
        for row, hypothesis in enumerate(hypotheses):
            ids[row, : lengths[row]] = torch.tensor(hypothesis.token_ids)
        z, hidden = self.decoder(
            memory, memory_lengths, self.decoder_inputs(ids.to(memory.device))
        )
        vectors = self.expected_vectors(z, hidden)
        for row, hypothesis in enumerate(hypotheses):
            hypothesis.vectors = vectors[row, : lengths[row]]
