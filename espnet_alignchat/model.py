"""`AlignChatModel`: the speech tokenizer and its two training modes, as an ESPnet model.

``pretrain`` (stage 1) aligns the decoder's vectors ``z_i`` with the LLM's embedding rows
``E[y_i]`` of the transcript's LLM tokens; it needs ``E`` alone, never the LLM's layers.
``instruct`` (stage 2) splices the decoder's vectors into the LLM's chat template in place of
the user's words, runs the frozen LLM once and trains on the LLM's own (self-generated) answer
to the text; the stage-1 losses stay on (``align_weight``) so the tokenizer keeps transcribing.
The vectors come from the decoder teacher-forced on the transcript, or on its own greedy
hypothesis (``stage2_inputs``), which is what it reads at inference.
"""

import math
from functools import cached_property
from typing import Dict, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from espnet2.asr.encoder.abs_encoder import AbsEncoder
from espnet2.asr.frontend.abs_frontend import AbsFrontend
from espnet2.asr.specaug.abs_specaug import AbsSpecAug
from espnet2.layers.abs_normalize import AbsNormalize
from espnet2.torch_utils.device_funcs import force_gatherable
from espnet2.train.abs_espnet_model import AbsESPnetModel

from espnet_alignchat.decoder import SpeechTokenDecoder
from espnet_alignchat.encoders import ConfigError
from espnet_alignchat.llm import FingerprintBuffer, FrozenLLM
from espnet_alignchat.search import (
    Hypothesis,
    beam_search,
    greedy_search,
    length_limits,
)
from espnet_alignchat.speech_chat import IGNORE_ID, SpeechChatMixin, id_lists

MODES = ("pretrain", "instruct")
OUTPUT_MODES = ("continuous", "snap", "canonical", "expected")
SPEECH_VECTORS = ("head", "expected")
VECTOR_SCALES = ("free", "normalize", "gain")
STAGE2_INPUTS = ("teacher", "on_policy", "scheduled")
# CLIP's bound on its learned logit scale (100): a learned temperature cannot make the
# cosine logits sharper than ±100, where the softmax saturates and its gradient vanishes.
MIN_TEMPERATURE = 0.01
# An on-policy hypothesis is cut at twice its reference's length (plus the end token): it
# is already wrong there, and a decoder that loops would otherwise cost a step up to the
# decoding limit.
HYPOTHESIS_LENGTH_FACTOR = 2


def vocabulary_temperature(vocab_size: int, confidence: float = 0.99) -> float:
    """The logit temperature of cosine token logits for a vocabulary of `vocab_size` rows.

    Cosine logits lie in ``[-1/τ, 1/τ]``. A vector pointing exactly at its token's row, with
    the other ``V - 1`` rows orthogonal to it (random directions in a wide embedding space
    nearly are), gets the probability ``e^{1/τ} / (e^{1/τ} + V - 1)``; this is the τ at which
    that probability is `confidence`: ``1/τ = ln((V - 1) · c / (1 - c))``. A fixed τ = 0.1
    caps it at 0.31 for 49,152 rows but allows 0.99 for the mini LLM's 180 (τ = 0.102 here),
    so τ must fall as the vocabulary grows: 0.065 for 49,152 rows, 0.0605 for 152,064.
    """
    return 1.0 / math.log((vocab_size - 1) * confidence / (1 - confidence))


def check_choice(name: str, value: str, choices: Tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"model_conf.{name} must be one of {choices}: {value}")


class AlignChatModel(SpeechChatMixin, AbsESPnetModel):
    """Speech → one vector per LLM token of the transcript, trained against a frozen LLM.

    Args (``model_conf``):
        mode: ``pretrain`` (stage 1, embeddings only) or ``instruct`` (stage 2, through the LLM).
        end_token_id: LLM token that ends the transcript (default: the tokenizer's EOS).
        ce_weight: cross-entropy of the token logits ``z·Eᵀ / τ``.
        cosine_weight: ``1 - cos(z_i, E[y_i])``.
        nmse_weight: ``||z_i - E[y_i]||² / ||E[y_i]||²`` (pulls ``z`` to the scale of ``E``).
        vector_scale: the norm of the vectors ``z`` (what the LLM reads in stage 2 and in
            ``continuous`` decoding, and what the losses see): ``free``, as the decoder's
            head emits it (only ``nmse_weight`` pulls it towards ``E``'s); ``normalize``,
            every ``z`` rescaled to the mean row norm of ``E``; ``gain``, rescaled to that
            norm times a learned scalar (log-parameterised, starting at 1; the LLM's
            answers train it in stage 2, ``nmse_weight`` in stage 1). The stat
            ``norm_ratio`` is ``z``'s mean norm over that of its targets' rows of ``E``.
        ctc_weight: CTC on the encoder output, scored against ``E`` plus a blank vector.
        logit_temperature: τ of the token logits ``z·Eᵀ / τ`` (and of CTC's); ``null``: set
            from the vocabulary size (`vocabulary_temperature`; needs cosine logits). With
            ``decoder_conf.vocabulary: whisper`` the decoder scores tokens with Whisper's
            own logits (its hidden states against its token table, as Whisper was
            trained, at τ = 1) and τ applies to CTC alone.
        learn_temperature: learn τ (log-parameterised, starting from ``logit_temperature``,
            at least 0.01). Refused with ``vocabulary: whisper``: there the final
            LayerNorm's weights already scale the logits, and τ would not touch the token
            scores.
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
        stage2_inputs: the tokens the decoder reads for the vectors the LLM gets in stage 2:
            ``teacher``, the transcript; ``on_policy``, the decoder's own greedy hypothesis
            (decoded without gradients and with dropout off, as at inference, then run
            teacher-forced on it with gradients), so the LLM reads one vector per
            hypothesis token, as at inference, and is trained on its answer to the
            transcript; ``scheduled``, the transcript with each token replaced, with
            probability ``scheduled_prob``, by the decoder's own prediction at that position
            (scheduled sampling in two passes). The stage-1 losses are always on the
            teacher-forced transcript. An empty hypothesis keeps the transcript (stat
            ``hyp_empty``); ``hyp_exact`` and ``hyp_length_ratio`` say how far the
            hypotheses are from the transcripts.
        scheduled_prob: see ``stage2_inputs: scheduled``.
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
        logit_temperature: Optional[float] = 0.1,
        learn_temperature: bool = False,
        normalize_logits: bool = True,
        label_smoothing: float = 0.0,
        ce_negatives: int = 0,
        align_weight: float = 1.0,
        response_weight: float = 1.0,
        kl_weight: float = 0.0,
        speech_vectors: str = "head",
        vector_scale: str = "free",
        stage2_inputs: str = "teacher",
        scheduled_prob: float = 0.5,
        extract_feats_in_collect_stats: bool = True,
    ):
        super().__init__()
        check_choice("mode", mode, MODES)
        check_choice("speech_vectors", speech_vectors, SPEECH_VECTORS)
        check_choice("vector_scale", vector_scale, VECTOR_SCALES)
        check_choice("stage2_inputs", stage2_inputs, STAGE2_INPUTS)
        if not 0 <= scheduled_prob <= 1:
            raise ConfigError(
                f"model_conf.scheduled_prob must be in [0, 1]: {scheduled_prob}"
            )
        if logit_temperature is None:
            if not normalize_logits:
                raise ConfigError(
                    "model_conf.logit_temperature: null (set from the vocabulary size) "
                    "needs cosine logits (normalize_logits: true)"
                )
            logit_temperature = vocabulary_temperature(llm.vocab_size)
        if learn_temperature and decoder.vocabulary != "llm":
            raise ConfigError(
                f"model_conf.learn_temperature: decoder_conf.vocabulary "
                f"{decoder.vocabulary} scores tokens with its own logits, which the "
                "temperature does not scale"
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
        if learn_temperature:
            self.log_temperature = torch.nn.Parameter(
                torch.tensor(math.log(logit_temperature))
            )
        self.normalize_logits = normalize_logits
        self.label_smoothing = label_smoothing
        self.ce_negatives = ce_negatives
        self.align_weight = align_weight
        self.response_weight = response_weight
        self.kl_weight = kl_weight
        self.speech_vectors = speech_vectors
        self.vector_scale = vector_scale
        if vector_scale == "gain":
            self.log_vector_gain = torch.nn.Parameter(torch.zeros(()))
        self.stage2_inputs = stage2_inputs
        self.scheduled_prob = scheduled_prob
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
        # A learned temperature or gain is part of what the checkpoint's vectors mean: a
        # model that would drop it (and read them at another scale) is refused.
        for name, option in (
            ("log_temperature", "learn_temperature: true"),
            ("log_vector_gain", "vector_scale: gain"),
        ):
            if prefix + name in state_dict and not hasattr(self, name):
                raise ConfigError(
                    f"the checkpoint has a learned {name[4:]} "
                    f"({float(state_dict[prefix + name].exp()):.4g}): set model_conf."
                    f"{option} to load it"
                )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # -- shared pieces -----------------------------------------------------------------------
    @property
    def temperature(self) -> Union[float, torch.Tensor]:
        """τ of the token logits: the configured value, or the learned one."""
        if hasattr(self, "log_temperature"):
            return self.log_temperature.exp().clamp(min=MIN_TEMPERATURE)
        return self.logit_temperature

    @cached_property
    def embedding_norm(self) -> float:
        """The mean row norm of the LLM's embedding matrix ``E``."""
        return float(self.llm.embeddings.float().norm(dim=-1).mean())

    def scale_vectors(self, z: torch.Tensor) -> torch.Tensor:
        """The decoder's head output at the scale ``vector_scale`` gives it: what the LLM
        reads and the losses see, in training and decoding alike."""
        if self.vector_scale == "free":
            return z
        norm = self.embedding_norm
        if self.vector_scale == "gain":
            norm = norm * self.log_vector_gain.exp().to(z.dtype)
        return F.normalize(z, dim=-1) * norm

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
        return logits / self.temperature

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
        z, hidden = self.decode(memory, memory_lengths, text)  # (batch, N + 1, ·)

        loss, stats = self._alignment_losses(
            z, hidden, text, text_lengths, memory, memory_lengths
        )
        if self.mode == "instruct":
            if response is None:
                raise ValueError(
                    "model_conf.mode=instruct needs a 'response' data entry per utterance"
                )
            self._check_token_ids("response", response)
            speech_vectors, input_stats = self._stage2_vectors(
                z, hidden, memory, memory_lengths, text, text_lengths
            )
            answer_loss, answer_stats = self._answer_losses(
                speech_vectors, text, text_lengths, response, response_lengths
            )
            loss = self.align_weight * loss + answer_loss
            stats.update(input_stats, **answer_stats)
        if hasattr(self, "log_temperature"):
            stats["temperature"] = self.temperature.detach()
        if hasattr(self, "log_vector_gain"):
            stats["vector_gain"] = self.log_vector_gain.detach().exp()
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

    def decode(
        self,
        memory: torch.Tensor,
        memory_lengths: torch.Tensor,
        token_ids: torch.Tensor,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """The decoder teacher-forced on `token_ids` (batch, N), padded with -1: the
        scaled vectors z (batch, N + 1, D) and the final hidden states."""
        valid = token_ids != IGNORE_ID
        previous = self.decoder_inputs(token_ids.clamp(min=0)) * valid[..., None]
        z, hidden = self.decoder(memory, memory_lengths, previous)
        return self.scale_vectors(z), hidden

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

    def expected_vectors(
        self, z: torch.Tensor, hidden: torch.Tensor, temperature: float = 1.0
    ) -> torch.Tensor:
        """``softmax(token logits / temperature) @ E`` for the decoder outputs (z, hidden),
        in z's dtype. Below 1 the mixture moves towards the most likely token's row.
        """
        probabilities = (self.scores(z, hidden).float() / temperature).softmax(dim=-1)
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

    # -- stage 2 -----------------------------------------------------------------------------
    def _stage2_vectors(
        self, z, hidden, memory, memory_lengths, text, text_lengths
    ) -> Tuple[List[torch.Tensor], Dict[str, torch.Tensor]]:
        """The vectors the LLM reads for each row (``stage2_inputs``, ``speech_vectors``)
        and stats of the decoder's inputs; `z`, `hidden` are the teacher-forced outputs.
        """
        stats: Dict[str, torch.Tensor] = {}
        lengths = text_lengths
        if self.stage2_inputs == "on_policy":
            ids, lengths, stats = self._on_policy_inputs(
                memory, memory_lengths, text, text_lengths
            )
            z, hidden = self.decode(memory, memory_lengths, ids)
        elif self.stage2_inputs == "scheduled":
            ids, stats = self._scheduled_inputs(z, hidden, text)
            z, hidden = self.decode(memory, memory_lengths, ids)
        if self.speech_vectors == "expected":
            z = self.expected_vectors(z, hidden)
        return [row[:n] for row, n in zip(z, lengths.tolist())], stats

    def _on_policy_inputs(self, memory, memory_lengths, text, text_lengths):
        """The decoder's own greedy hypotheses, padded with -1, their lengths and stats.

        They are decoded as at inference: without gradients and with dropout off (training
        mode is restored after). A row whose hypothesis is empty keeps its transcript: an
        empty user turn would give its answer no vector to train.
        """
        limits = HYPOTHESIS_LENGTH_FACTOR * text_lengths + 1
        if self.decoder.max_tokens is not None:
            limits = limits.clamp(max=self.decoder.max_tokens)
        training = self.training
        self.eval()
        try:
            hypotheses = self._search(memory, memory_lengths, limits)
        finally:
            self.train(training)
        references = [row[:n] for row, n in zip(text.tolist(), text_lengths.tolist())]
        own = [hypothesis.token_ids for hypothesis in hypotheses]
        rows = [ids or reference for ids, reference in zip(own, references)]
        stats = {
            "hyp_exact": sum(a == b for a, b in zip(own, references)) / len(own),
            "hyp_empty": sum(not ids for ids in own) / len(own),
            "hyp_length_ratio": sum(map(len, own)) / sum(map(len, references)),
        }
        ids = torch.full((len(rows), max(map(len, rows))), IGNORE_ID)
        for row, tokens in enumerate(rows):
            ids[row, : len(tokens)] = torch.tensor(tokens)
        lengths = torch.tensor([len(tokens) for tokens in rows])
        stats = {name: torch.tensor(value) for name, value in stats.items()}
        return ids.to(text.device), lengths, stats

    def _scheduled_inputs(self, z, hidden, text):
        """The transcript with each token replaced, with probability ``scheduled_prob``, by
        the decoder's teacher-forced prediction of it; and the share of wrong inputs."""
        valid = text != IGNORE_ID
        with torch.no_grad():  # z[:, i] predicts text[:, i]
            predicted = self.scores(z[:, :-1], hidden[:, :-1]).argmax(-1)
        drawn = torch.rand(text.shape, device=text.device) < self.scheduled_prob
        ids = torch.where(drawn & valid, predicted, text)
        wrong = ((ids != text) & valid).sum() / valid.sum()
        return ids, {"scheduled_wrong": wrong.float()}

    def _answer_losses(
        self,
        speech_vectors: List[torch.Tensor],
        text: torch.Tensor,
        text_lengths: torch.Tensor,
        response: torch.Tensor,
        response_lengths: torch.Tensor,
    ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """Cross-entropy (and KL to the text-conditioned LLM) on the self-generated answer.

        `speech_vectors` holds each row's vectors, one per token of what the decoder read
        (the transcript, or its own hypothesis); the text prompt is always the transcript.
        """
        return self.answer_losses(
            self.prompt_layout,
            speech_vectors,
            self.complete_answers(response, response_lengths),
            id_lists(text, text_lengths),
        )

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
        expected_temperature: float = 1.0,
    ) -> List[Hypothesis]:
        """The speech tokenizer: LLM tokens and their vectors for a batch of waveforms.

        ``output_mode`` says what each hypothesis' ``vectors`` hold for the LLM: the decoder's
        own ``z`` (``continuous``), the embeddings ``E[token]`` of the decoded ids (``snap``),
        the embeddings of the decoded text as the LLM's tokenizer splits it (``canonical``:
        its ``token_ids`` are replaced by those), or the embeddings weighted by the decoder's
        token probabilities (``expected``), sharpened by ``expected_temperature`` < 1 (which
        tends to ``snap`` as it tends to 0; the other modes ignore it).
        """
        if output_mode not in OUTPUT_MODES:
            raise ValueError(
                f"output_mode must be one of {OUTPUT_MODES}: {output_mode}"
            )
        if not expected_temperature > 0:
            raise ValueError(
                f"expected_temperature must be > 0: {expected_temperature}"
            )
        self.llm.to(speech.device)
        memory, memory_lengths = self.encode(speech, speech_lengths)
        limits = length_limits(memory_lengths, maxlenratio, max_tokens)
        hypotheses = self._search(
            memory, memory_lengths, limits, beam_size, length_bonus
        )
        if output_mode == "canonical":
            # The decoder can spell a rare word in pieces the LLM's tokenizer never writes
            # (" grizz" "ly" for " grizzly"); a frozen LLM reads its own split of it better.
            for hypothesis in hypotheses:
                hypothesis.token_ids = self.llm.canonical_ids(hypothesis.token_ids)
        if output_mode in ("snap", "canonical"):
            for hypothesis in hypotheses:
                ids = torch.tensor(
                    hypothesis.token_ids, dtype=torch.long, device=memory.device
                )
                hypothesis.vectors = self.llm.embed(ids)
        elif output_mode == "expected":
            self._expected_vectors(
                hypotheses, memory, memory_lengths, expected_temperature
            )
        return hypotheses

    def _search(
        self,
        memory: torch.Tensor,
        memory_lengths: torch.Tensor,
        limits: torch.Tensor,
        beam_size: int = 1,
        length_bonus: float = 0.0,
    ) -> List[Hypothesis]:
        """Greedy or beam search; the hypotheses' vectors are scaled as in training."""
        search = dict(
            decoder=self.decoder,
            memory=memory,
            memory_lengths=memory_lengths,
            # Scaling each vector after the search is the same as during it, as long as
            # the token scores see the scaled vectors too.
            logits_fn=lambda z, hidden: self.scores(self.scale_vectors(z), hidden),
            embed_fn=self.decoder_inputs,
            end_id=self.end_token_id,
            limits=limits,
        )
        if beam_size > 1:
            hypotheses = beam_search(
                **search, beam_size=beam_size, length_bonus=length_bonus
            )
        else:
            hypotheses = greedy_search(**search)
        for hypothesis in hypotheses:
            hypothesis.vectors = self.scale_vectors(hypothesis.vectors)
        return hypotheses

    def _expected_vectors(
        self,
        hypotheses: List[Hypothesis],
        memory: torch.Tensor,
        memory_lengths: torch.Tensor,
        temperature: float = 1.0,
    ) -> None:
        """Replace each hypothesis' vectors by ``softmax(logits / temperature) @ E`` at its
        positions: the embedding of the token where the decoder is sure, a blend of its
        candidates where it is not. The logits come from one teacher-forced pass over the
        decoded ids, which gives what the search saw at each step.
        """
        lengths = [len(hypothesis.token_ids) for hypothesis in hypotheses]
        ids = torch.full((len(hypotheses), max(lengths)), IGNORE_ID)
        for row, hypothesis in enumerate(hypotheses):
            ids[row, : lengths[row]] = torch.tensor(hypothesis.token_ids)
        z, hidden = self.decode(memory, memory_lengths, ids.to(memory.device))
        vectors = self.expected_vectors(z, hidden, temperature)
        for row, hypothesis in enumerate(hypotheses):
            hypothesis.vectors = vectors[row, : lengths[row]]
