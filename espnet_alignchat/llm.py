"""The frozen LLM: loading, its embedding matrix, its chat template and generation.

Everything that touches the Hugging Face LLM lives in this module. The LLM is never trained and
is never an ESPnet submodule: `FrozenLLM` is a plain object, so the LLM stays out of the
ESPnet state_dict (an 8B LLM must not be written into every checkpoint), the optimizer, DDP's
parameter synchronisation and ESPnet's ``model.to(dtype=train_dtype)`` cast. It follows the
speech tokenizer's device on demand (``FrozenLLM.to``) and picks its own dtype: bfloat16 on GPU,
float32 on CPU, unless told otherwise.

Stage 1 needs only the input-embedding matrix, which `load_embeddings` reads from the
safetensors files without building the model; the full model is loaded the first time
`FrozenLLM.model` is used.
"""

import hashlib
import inspect
import json
import logging
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    DynamicCache,
    GenerationConfig,
    PretrainedConfig,
    PreTrainedTokenizerBase,
)

# Stands for the user's content while the chat template is rendered; the rendered text is split
# around it. Plain ASCII without spaces survives templates that trim or escape content.
_SLOT = "ALIGNCHAT_USER_CONTENT_SLOT"
_RESPONSE = "ALIGNCHAT_ASSISTANT_RESPONSE_SLOT"
_NUMBERED_SLOT = re.compile(_SLOT + r"_(\d+)_")  # the user turns of a conversation
SPEECH_PLACEHOLDER = "{speech}"

DTYPES = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


class LLMMismatchError(RuntimeError):
    """A speech tokenizer was trained for another LLM than the one it is used with."""


class PromptError(ValueError):
    """The chat template or the pieces of a prompt do not fit together."""


class LLMNotFoundError(FileNotFoundError):
    """The LLM named (``--llm``) is not there, or what is there is no LLM."""


def _not_an_llm(name_or_path: str, error: Exception) -> LLMNotFoundError:
    first_line = (
        str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
    )
    if Path(name_or_path).exists():
        return LLMNotFoundError(
            f"{name_or_path}: cannot load it as an LLM ({first_line})"
        )
    return LLMNotFoundError(
        f"{name_or_path}: no such LLM: neither a local model dir nor a hub model this "
        f"machine can reach ({first_line})"
    )


def load_tokenizer(
    name_or_path: str, trust_remote_code: bool = False
) -> PreTrainedTokenizerBase:
    """The LLM's own tokenizer (never resized: our ids are the LLM's ids)."""
    try:
        return AutoTokenizer.from_pretrained(
            name_or_path, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError) as error:  # not found, not reachable, not a tokenizer
        raise _not_an_llm(name_or_path, error) from error


def _local_or_hub_file(name_or_path: str, filename: str) -> Optional[Path]:
    """Path of one file of a model dir or hub repo, fetching only that file; None if absent."""
    local = Path(name_or_path)
    if local.is_dir():
        path = local / filename
        return path if path.is_file() else None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        return Path(hf_hub_download(name_or_path, filename))
    except EntryNotFoundError:
        return None


def input_embedding_key(
    config: PretrainedConfig, trust_remote_code: bool = False
) -> str:
    """The state-dict name of the input embedding, found by building the model on `meta`.

    Building on the meta device allocates nothing, and asking the model itself
    (`get_input_embeddings`) works for every architecture without matching on names.
    """
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(
            config, trust_remote_code=trust_remote_code
        )
    weight = model.get_input_embeddings().weight
    return next(name for name, param in model.named_parameters() if param is weight)


def _match_key(wanted: str, available: Sequence[str], where: str) -> str:
    """`wanted`, or the one key ending like it (checkpoints saved without the base prefix)."""
    if wanted in available:
        return wanted
    tail = wanted.split(".", 1)[-1]
    candidates = [key for key in available if key.endswith(tail)]
    if len(candidates) != 1:
        raise KeyError(f"{where}: cannot find the input embedding '{wanted}'")
    return candidates[0]


def weight_files(name_or_path: str) -> List[Path]:
    """The LLM's safetensors files: the shards its index names, or its one model.safetensors."""
    index_file = _local_or_hub_file(name_or_path, "model.safetensors.index.json")
    if index_file is not None:
        weight_map: Dict[str, str] = json.loads(index_file.read_text())["weight_map"]
        names = sorted(set(weight_map.values()))
    else:
        names = ["model.safetensors"]
    files = [_local_or_hub_file(name_or_path, name) for name in names]
    if any(path is None for path in files):
        raise FileNotFoundError(
            f"{name_or_path}: no model.safetensors or model.safetensors.index.json "
            "(re-save the model with save_pretrained(safe_serialization=True))"
        )
    return [path for path in files if path is not None]


def load_embeddings(name_or_path: str, trust_remote_code: bool = False) -> torch.Tensor:
    """The LLM's input-embedding matrix ``[vocab, hidden]``, read without building the model.

    Only the safetensors file (or, for a sharded checkpoint, the one shard) that holds the
    embedding is opened, and only that tensor is read from it. The tensor keeps the stored dtype.
    """
    config = AutoConfig.from_pretrained(
        name_or_path, trust_remote_code=trust_remote_code
    )
    key = input_embedding_key(config, trust_remote_code)
    index_file = _local_or_hub_file(name_or_path, "model.safetensors.index.json")
    if index_file is not None:
        weight_map: Dict[str, str] = json.loads(index_file.read_text())["weight_map"]
        key = _match_key(key, list(weight_map), str(index_file))
        shard = _local_or_hub_file(name_or_path, weight_map[key])
    else:
        shard = _local_or_hub_file(name_or_path, "model.safetensors")
    if shard is None:
        raise FileNotFoundError(
            f"{name_or_path}: no model.safetensors or model.safetensors.index.json "
            "(re-save the model with save_pretrained(safe_serialization=True))"
        )
    from safetensors import safe_open

    with safe_open(str(shard), framework="pt") as reader:
        key = _match_key(key, list(reader.keys()), str(shard))
        embeddings = reader.get_tensor(key)
    text_config = config.get_text_config()
    expected = (text_config.vocab_size, text_config.hidden_size)
    if tuple(embeddings.shape) != expected:
        raise ValueError(
            f"{shard}: '{key}' has shape {tuple(embeddings.shape)}, "
            f"but the config says {expected}"
        )
    return embeddings


@dataclass(frozen=True)
class LLMFingerprint:
    """What identifies an LLM to a speech tokenizer: its embedding space."""

    name_or_path: str
    vocab_size: int
    hidden_size: int
    embedding_sha256: str

    @classmethod
    def of(cls, name_or_path: str, embeddings: torch.Tensor) -> "LLMFingerprint":
        """Hash the embedding values in float32, so the stored and the loaded dtype agree."""
        vocab_size, hidden_size = embeddings.shape
        digest = hashlib.sha256(f"{vocab_size}x{hidden_size}".encode())
        for rows in embeddings.detach().split(8192):
            digest.update(rows.to("cpu", torch.float32).contiguous().numpy().tobytes())
        return cls(str(name_or_path), vocab_size, hidden_size, digest.hexdigest())

    def describe(self) -> str:
        return (
            f"'{self.name_or_path}' (vocab {self.vocab_size}, hidden {self.hidden_size}, "
            f"embedding sha256 {self.embedding_sha256[:12]}…)"
        )

    def check_same_llm(self, trained: "LLMFingerprint") -> None:
        """Raise `LLMMismatchError` unless `trained` (from a checkpoint) is this LLM."""
        if trained.embedding_sha256 != self.embedding_sha256:
            raise LLMMismatchError(
                f"this speech tokenizer was trained for the LLM {trained.describe()}, "
                f"but the LLM given is {self.describe()}; pass the LLM it was trained "
                "with (--llm)"
            )


class FingerprintBuffer(torch.nn.Module):
    """Puts the LLM's embedding hash into the state_dict, so every checkpoint names its LLM.

    The 32 digest bytes are stored as integer-valued floats: ESPnet's n-best averaging divides
    float entries by n (exact for equal small integers) but would sum integer ones, and ESPnet's
    dtype cast keeps 0..255 exact even in float16. Loading a state_dict of another LLM raises
    `LLMMismatchError`, which covers both `build_model_from_file` and `--init_param`.
    """

    UNSET = bytes(32)  # a model built without its LLM's embeddings (collect-stats mode)

    def __init__(self, fingerprint: Optional[LLMFingerprint]):
        super().__init__()
        self.fingerprint = fingerprint
        digest = (
            bytes.fromhex(fingerprint.embedding_sha256) if fingerprint else self.UNSET
        )
        self.register_buffer("digest", torch.tensor(list(digest), dtype=torch.float32))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        stored = state_dict.get(prefix + "digest")
        if stored is not None and self.fingerprint is not None:
            digest = bytes(int(round(value)) for value in stored.tolist())
            if digest not in (
                self.UNSET,
                bytes.fromhex(self.fingerprint.embedding_sha256),
            ):
                raise LLMMismatchError(
                    "this checkpoint was trained for an LLM whose embeddings hash to "
                    f"{digest.hex()[:12]}…, but the LLM given is "
                    f"{self.fingerprint.describe()}; pass the LLM it was trained with (--llm)"
                )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


@dataclass(frozen=True)
class PromptLayout:
    """The LLM's chat template cut around the user's content, as token ids.

    A single-turn prompt is ``prefix + <user content> + suffix``; the suffix ends with the
    assistant header (the generation prompt). A training target is ``response + turn_end``.
    """

    prefix: List[int]
    suffix: List[int]
    turn_end: List[int]


@dataclass
class LLMInputs:
    """A left-padded batch for the LLM: every sequence ends at the last position."""

    inputs_embeds: torch.Tensor  # (batch, length, hidden)
    attention_mask: torch.Tensor  # (batch, length), 1 for real positions
    position_ids: torch.Tensor  # (batch, length), counted from each sequence's start


PromptPiece = Union[
    List[int], torch.Tensor
]  # token ids, or vectors (n, hidden) to splice in


@dataclass(frozen=True)
class Turn:
    """One message of a conversation for `FrozenLLM.conversation_prompt`.

    A user turn holds typed text (``str``) or speech as a prompt piece: the speech tokenizer's
    vectors ``(n, hidden)`` or token ids (e.g. its transcript). An assistant turn holds text.
    """

    role: str  # "user" or "assistant"
    content: Union[str, PromptPiece]


def _pack(pieces: Sequence[PromptPiece]) -> Tuple[List[int], List[bool]]:
    """One prompt's token ids (0 where a vector goes) and which positions take vectors."""
    ids: List[int] = []
    slots: List[bool] = []
    for piece in pieces:
        if isinstance(piece, torch.Tensor):
            ids += [0] * piece.shape[0]
            slots += [True] * piece.shape[0]
        else:
            ids += list(piece)
            slots += [False] * len(piece)
    return ids, slots


def splice_vectors(
    inputs_embeds: torch.Tensor, slots: torch.Tensor, vectors: Sequence[torch.Tensor]
) -> torch.Tensor:
    """Put `vectors` (in order) into the positions `slots` marks, row by row.

    The speech tokenizer emits exactly one vector per LLM token, so the count is known in
    advance; a mismatch means the prompt and the speech disagree, and is an error rather than
    a silent truncation.
    """
    n_vectors = sum(v.shape[0] for v in vectors)
    n_slots = int(slots.sum())
    if n_slots != n_vectors:
        raise PromptError(f"{n_vectors} speech vectors for {n_slots} prompt positions")
    if not vectors:
        return inputs_embeds
    spliced = torch.cat(list(vectors)).to(inputs_embeds.device, inputs_embeds.dtype)
    return inputs_embeds.masked_scatter(slots[..., None], spliced)


class FrozenLLM:
    """A Hugging Face causal LM with its tokenizer, frozen and held outside the ESPnet model."""

    def __init__(
        self,
        name_or_path: str,
        dtype: str = "auto",
        trust_remote_code: bool = False,
    ):
        if dtype != "auto" and dtype not in DTYPES:
            raise ValueError(
                f"llm dtype must be auto or one of {list(DTYPES)}: {dtype}"
            )
        self.name_or_path = str(name_or_path)
        self.dtype_option = dtype
        self.trust_remote_code = trust_remote_code
        try:
            config = AutoConfig.from_pretrained(
                self.name_or_path, trust_remote_code=trust_remote_code
            )
        except (OSError, ValueError) as error:  # not found, not reachable, not a model
            raise _not_an_llm(self.name_or_path, error) from error
        self.config = config.get_text_config()
        self.device = torch.device("cpu")
        self._embeddings: Optional[torch.Tensor] = None
        self._model: Optional[torch.nn.Module] = None
        self._embeddings_by_dtype: Dict[torch.dtype, torch.Tensor] = {}
        # Keys and values of prompt prefixes every prompt shares (the system prompt), by
        # prefix; computed once per device and dtype (see `logits_after_prefix`).
        self._prefix_caches: Dict[Tuple[int, ...], List[Tuple[torch.Tensor, ...]]] = {}

    # -- what it is --------------------------------------------------------------------------
    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def vocab_size(self) -> int:
        """Rows of the embedding matrix; may exceed ``len(tokenizer)`` (padded vocabularies)."""
        return self.config.vocab_size

    @property
    def dtype(self) -> torch.dtype:
        if self.dtype_option != "auto":
            return DTYPES[self.dtype_option]
        if self.device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32

    @cached_property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return load_tokenizer(self.name_or_path, self.trust_remote_code)

    @cached_property
    def eos_token_id(self) -> int:
        """The tokenizer's end-of-sequence token: the speech tokenizer ends transcripts with it."""
        eos = self.tokenizer.eos_token_id
        if eos is None:
            raise PromptError(
                f"{self.name_or_path}: its tokenizer has no EOS token (eos_token in "
                "tokenizer_config.json); the speech tokenizer ends every transcript with it"
            )
        return eos

    @cached_property
    def fingerprint(self) -> LLMFingerprint:
        return LLMFingerprint.of(self.name_or_path, self.embeddings)

    # -- weights -----------------------------------------------------------------------------
    @property
    def is_loaded(self) -> bool:
        """Whether the full model (not only its embeddings) is in memory."""
        return self._model is not None

    @property
    def embeddings(self) -> torch.Tensor:
        """The input-embedding matrix ``E`` (vocab, hidden) on `device`, never trainable."""
        if self._model is not None:
            return self._model.get_input_embeddings().weight
        if self._embeddings is None:
            logging.info(f"Reading the input embeddings of {self.name_or_path}")
            self._embeddings = load_embeddings(
                self.name_or_path, self.trust_remote_code
            ).to(self.device, self.dtype)
        return self._embeddings

    @property
    def model(self) -> torch.nn.Module:
        """The full causal LM, loaded on first use straight onto `device`."""
        if self._model is None:
            logging.info(
                f"Loading the frozen LLM {self.name_or_path} ({self.dtype}, {self.device})"
            )
            model = AutoModelForCausalLM.from_pretrained(
                self.name_or_path,
                dtype=self.dtype,
                device_map={"": self.device},
                trust_remote_code=self.trust_remote_code,
            )
            model.eval().requires_grad_(False)
            self._model = model
            self._embeddings = None  # the model holds its own copy
            self._embeddings_by_dtype.clear()
            self._prefix_caches.clear()
        return self._model

    def to(self, device: Union[str, torch.device]) -> "FrozenLLM":
        """Follow the speech tokenizer to `device`; the dtype follows the device (see `dtype`)."""
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        if device != self.device:
            self.device = device
            if self._model is not None:
                self._model.to(device=device, dtype=self.dtype)
            if self._embeddings is not None:
                self._embeddings = self._embeddings.to(device, self.dtype)
            self._embeddings_by_dtype.clear()
            self._prefix_caches.clear()
        return self

    def embeddings_as(self, dtype: torch.dtype) -> torch.Tensor:
        """``E`` in `dtype`, converted once and cached (for logits against float32 vectors)."""
        if dtype == self.embeddings.dtype:
            return self.embeddings
        if dtype not in self._embeddings_by_dtype:
            self._embeddings_by_dtype[dtype] = self.embeddings.to(dtype)
        return self._embeddings_by_dtype[dtype]

    def embed(self, token_ids: torch.Tensor) -> torch.Tensor:
        """``E[token_ids]``."""
        return torch.nn.functional.embedding(token_ids, self.embeddings)

    # -- prompts -----------------------------------------------------------------------------
    def tokenize(self, text: str) -> List[int]:
        """Token ids of plain text, as the speech tokenizer is trained to produce them."""
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def canonical_ids(self, token_ids: Sequence[int]) -> List[int]:
        """`token_ids` as the tokenizer itself splits their text (a BPE text has many
        spellings in tokens; the tokenizer writes one of them)."""
        text = self.tokenizer.decode(token_ids, clean_up_tokenization_spaces=False)
        return self.tokenize(text)

    def prompt_layout(
        self, system: Optional[str] = None, user_template: str = SPEECH_PLACEHOLDER
    ) -> PromptLayout:
        """Cut the LLM's own chat template around the user's content (one user turn).

        `user_template` wraps the content (speech vectors or transcript tokens), e.g.
        ``"Continue this text: {speech}"``; see `conversation_prompt` for how the template is
        cut.
        """
        prefix, _, suffix = self.conversation_prompt(
            [Turn("user", [])], system, user_template
        )
        return PromptLayout(prefix, suffix, self.turn_end)

    def template_mismatch(
        self,
        text: str,
        system: Optional[str] = None,
        user_template: str = SPEECH_PLACEHOLDER,
    ) -> Optional[Tuple[List[str], List[str]]]:
        """None if the prompt built for `text` is token for token what the LLM's own
        ``apply_chat_template`` makes of the same message; else both, as token strings.

        We tokenize the transcript on its own (that is what the speech tokenizer emits) and
        put it between the template's pieces; a tokenizer whose merges cross the cut (a
        template with no space or newline before the content, or a SentencePiece prefix
        space) would make the text-conditioned prompt differ from the LLM's usual one.
        """
        layout = self.prompt_layout(system, user_template)
        ours = layout.prefix + self.tokenize(text) + layout.suffix
        messages = [{"role": "system", "content": system}] if system else []
        content = user_template.replace(SPEECH_PLACEHOLDER, text)
        messages.append({"role": "user", "content": content})
        theirs = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True
        )
        if not isinstance(theirs, list):  # a BatchEncoding in recent transformers
            theirs = theirs["input_ids"]
        if ours == list(theirs):
            return None
        tokens = self.tokenizer.convert_ids_to_tokens
        return tokens(ours), tokens(list(theirs))

    @cached_property
    def turn_end(self) -> List[int]:
        """The tokens the chat template closes an assistant's answer with (e.g. <|eot_id|>)."""
        messages = [
            {"role": "user", "content": _SLOT},
            {"role": "assistant", "content": _RESPONSE},
        ]
        conversation = self._render(messages, add_generation_prompt=False)
        if conversation.count(_RESPONSE) != 1:
            raise PromptError(
                f"the chat template of {self.name_or_path} does not keep the assistant's "
                "answer verbatim"
            )
        turn_end = self.tokenize(conversation.split(_RESPONSE)[1].rstrip())
        # A template that does not close the assistant's turn: the tokenizer's EOS does.
        return turn_end or [self.eos_token_id]

    def conversation_prompt(
        self,
        turns: Sequence[Turn],
        system: Optional[str] = None,
        user_template: str = SPEECH_PLACEHOLDER,
    ) -> List[PromptPiece]:
        """The pieces of a whole conversation, up to the assistant's next answer.

        The LLM's own chat template is rendered once, as text, with a numbered slot string
        for every user turn; the text is cut at the slots and tokenized piece by piece with
        ``add_special_tokens=False``, as ``apply_chat_template(tokenize=True)`` tokenizes the
        whole text. Every user turn, spoken or typed, goes where `user_template` has
        ``{speech}`` (as in training and self-generation), so a typed turn is exactly the
        text counterpart of the same words spoken. Assistant turns are rendered by the
        template itself. One user turn gives ``[layout.prefix, content, layout.suffix]``
        (`prompt_layout`).

        >>> from espnet_alignchat.testing import save_random_llm
        >>> llm = FrozenLLM(save_random_llm("/tmp/llm", "hi two plus three five".split()))
        >>> speech = torch.zeros(4, llm.hidden_size)  # the tokenizer's vectors of 4 tokens
        >>> turns = [Turn("user", speech), Turn("assistant", "five"), Turn("user", "hi")]
        >>> pieces = llm.conversation_prompt(turns)
        >>> answer = llm.generate(llm.build_inputs([pieces]), max_new_tokens=4)
        """
        messages = [{"role": "system", "content": system}] if system else []
        users = []
        for turn in turns:
            speech = not isinstance(turn.content, str)
            if turn.role not in ("user", "assistant") or (
                turn.role == "assistant" and speech
            ):
                kind = "speech" if speech else "text"
                raise PromptError(
                    "a turn is a user's (text or speech) or an assistant's (text), "
                    f"not {turn.role} {kind}"
                )
            if turn.role == "assistant":
                messages.append({"role": "assistant", "content": turn.content})
                continue
            if user_template.count(SPEECH_PLACEHOLDER) != 1:
                raise PromptError(
                    f"the user template must contain {SPEECH_PLACEHOLDER} once: "
                    f"{user_template!r}"
                )
            slot = user_template.replace(SPEECH_PLACEHOLDER, f"{_SLOT}_{len(users)}_")
            messages.append({"role": "user", "content": slot})
            users.append(turn.content)
        rendered = _NUMBERED_SLOT.split(self._render(messages, True))
        texts, numbers = rendered[::2], [int(n) for n in rendered[1::2]]
        if numbers != list(range(len(users))):
            raise PromptError(
                f"the chat template of {self.name_or_path} does not keep every user "
                "message verbatim and in order, so the speech cannot be placed in it"
            )
        pieces: List[PromptPiece] = [self.tokenize(texts[0])]
        for content, text in zip(users, texts[1:]):
            pieces.append(
                self.tokenize(content) if isinstance(content, str) else content
            )
            pieces.append(self.tokenize(text))
        return pieces

    def _render(
        self, messages: List[Dict[str, str]], add_generation_prompt: bool
    ) -> str:
        if self.tokenizer.chat_template is None:
            raise PromptError(
                f"{self.name_or_path}: the tokenizer has no chat template"
            )
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def build_inputs(self, prompts: Sequence[Sequence[PromptPiece]]) -> LLMInputs:
        """Embed a batch of prompts whose pieces are token ids or vectors to splice in.

        Each prompt is packed on its own and the batch is padded once, on the left, so no
        padding ever sits inside a sequence and every sequence ends at the last position.
        """
        packed = [_pack(pieces) for pieces in prompts]
        length = max(len(ids) for ids, _ in packed)
        pad = [length - len(ids) for ids, _ in packed]
        token_ids = torch.tensor([[0] * p + ids for p, (ids, _) in zip(pad, packed)])
        slots = torch.tensor([[False] * p + mask for p, (_, mask) in zip(pad, packed)])
        attention_mask = (
            torch.arange(length)[None, :] >= torch.tensor(pad)[:, None]
        ).long()
        vectors = [
            p for pieces in prompts for p in pieces if isinstance(p, torch.Tensor)
        ]
        inputs_embeds = splice_vectors(
            self.embed(token_ids.to(self.device)), slots.to(self.device), vectors
        )
        attention_mask = attention_mask.to(self.device)
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        return LLMInputs(inputs_embeds, attention_mask, position_ids)

    # -- running the LLM ---------------------------------------------------------------------
    def logits_after_prefix(
        self,
        prefix: Sequence[int],
        rests: Sequence[Sequence[PromptPiece]],
        n_positions: int,
    ) -> torch.Tensor:
        """Logits of the last `n_positions` positions of the prompts ``prefix + rest``,
        (batch, n_positions, vocab), with the shared prefix run once.

        Every training prompt starts with the same tokens (the chat template's system prompt
        and user header: 24 of SmolLM2's ~75 positions). Their keys and values are computed
        once without gradients and reused; only the rests run, padded on the right behind
        the prefix, so the prefix's positions are the same in every row. Each row's logits
        are its own last positions (zeros where its rest is shorter than `n_positions`);
        asking only for those keeps a (batch, length, 152k) tensor out of memory.
        """
        packed = [_pack(rest) for rest in rests]
        lengths = [len(ids) for ids, _ in packed]
        batch, length, start = len(rests), max(lengths), len(prefix)
        token_ids = torch.tensor([ids + [0] * (length - len(ids)) for ids, _ in packed])
        slots = torch.tensor(
            [mask + [False] * (length - len(mask)) for _, mask in packed]
        )
        vectors = [p for rest in rests for p in rest if isinstance(p, torch.Tensor)]
        inputs_embeds = splice_vectors(
            self.embed(token_ids.to(self.device)), slots.to(self.device), vectors
        )
        rest_mask = torch.arange(length)[None, :] < torch.tensor(lengths)[:, None]
        attention_mask = torch.cat(
            [torch.ones(batch, start, dtype=torch.long), rest_mask.long()], dim=1
        ).to(self.device)
        positions = (start + torch.arange(length, device=self.device)).expand(batch, -1)
        # The earliest position any row needs, so logits are kept for no more than that.
        first = min(max(0, n - n_positions) for n in lengths)
        kwargs = dict(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=positions,
            past_key_values=self._prefix_cache(prefix, batch) if prefix else None,
            use_cache=False,
        )
        if self._supports_logits_to_keep:
            kwargs["logits_to_keep"] = length - first
        logits = self.model(**kwargs).logits[:, first - length :]
        out = logits.new_zeros(batch, n_positions, logits.shape[-1])
        for row, n in enumerate(lengths):
            k = min(n_positions, n)
            out[row, n_positions - k :] = logits[row, n - k - first : n - first]
        return out

    def _prefix_cache(self, prefix: Sequence[int], batch: int) -> DynamicCache:
        """A fresh cache holding `prefix`'s keys and values for `batch` rows (the model
        appends to the cache it is given)."""
        key = tuple(prefix)
        if key not in self._prefix_caches:
            with torch.no_grad():
                output = self.model(
                    input_ids=torch.tensor([list(prefix)], device=self.device),
                    use_cache=True,
                )
            self._prefix_caches[key] = [
                (layer.keys, layer.values) for layer in output.past_key_values.layers
            ]
        return DynamicCache(
            ddp_cache_data=[
                (keys.expand(batch, -1, -1, -1), values.expand(batch, -1, -1, -1))
                for keys, values in self._prefix_caches[key]
            ],
            config=self.model.config,
        )

    @cached_property
    def _supports_logits_to_keep(self) -> bool:
        return "logits_to_keep" in inspect.signature(self.model.forward).parameters

    @cached_property
    def stop_token_ids(self) -> List[int]:
        """Tokens that end a response: the generation config's, the tokenizer's, the turn end.

        Read from ``generation_config.json`` (or the model config), not from the loaded model.
        """
        try:
            generation = GenerationConfig.from_pretrained(self.name_or_path)
        except OSError:  # no generation_config.json
            generation = GenerationConfig.from_model_config(self.config)
        stops = generation.eos_token_id
        stops = set([stops] if isinstance(stops, int) else stops or [])
        if self.tokenizer.eos_token_id is not None:
            stops.add(self.tokenizer.eos_token_id)
        stops.add(self.turn_end[0])
        return sorted(stops)

    @torch.no_grad()
    def generate_ids(
        self,
        inputs: LLMInputs,
        max_new_tokens: int = 256,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        repetition_penalty: float = 1.0,
        streamer=None,
    ) -> List[List[int]]:
        """Answer a batch of prompts (greedy unless `do_sample`): the new token ids of each,
        up to and including the stop token that ended it (none if `max_new_tokens` did).
        """
        sampling = dict(temperature=temperature, top_p=top_p, top_k=top_k)
        stops = self.stop_token_ids
        pad_id = self.tokenizer.pad_token_id
        output = self.model.generate(
            inputs_embeds=inputs.inputs_embeds,
            attention_mask=inputs.attention_mask,
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            repetition_penalty=repetition_penalty,
            pad_token_id=stops[0] if pad_id is None else pad_id,
            eos_token_id=stops,
            streamer=streamer,
            **(sampling if do_sample else {}),
        )
        answers = []
        for row in output.tolist():
            end = next(
                (i + 1 for i, token in enumerate(row) if token in stops), len(row)
            )
            answers.append(row[:end])
        return answers

    def generate(self, inputs: LLMInputs, **options) -> List[str]:
        """Answer a batch of prompts as text; options as `generate_ids`."""
        return [self.decode(ids) for ids in self.generate_ids(inputs, **options)]

    def decode(self, token_ids: Sequence[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True).strip()
