"""Memory and checkpoint planning for a training config, without reading any weights.

The speech tokenizer is built on the ``meta`` device (shapes only) from the training config and
the LLM's ``config.json``; pretrained encoders are built from their config alone. Parameter
counts and checkpoint sizes are therefore exact. Activation memory cannot be measured on
``meta`` (the model's forward needs real lengths), so it is a first-order count of the tensors
autograd keeps for the backward pass, per layer and position, in the style of Korthikanti et
al. (2022, "Reducing Activation Recomputation in Large Transformer Models"), for bf16
autocast (``use_amp: true``). Expect it within about ±30%; the CUDA allocator's caching and
short-lived temporaries come on top.

Per Transformer layer and position, with hidden size h and feed-forward size f (bytes):
    attention: LayerNorm input (fp32) 4h, its bf16 output 2h, q/k/v 6h, attention output 2h,
    output-projection input 2h, dropout mask h → 17h; feed-forward: LayerNorm input 4h, fc1
    input 2h, fc1 output 2f, activation output 2f, dropout masks f + h → 7h + 5f (GELU/ReLU;
    swish also keeps its sigmoid: 7h + 7f). A Conformer's convolution module keeps ~30h.
    Eager attention (ESPnet's) also keeps the attention probabilities and their dropout,
    ~7 bytes per head and query-key pair; SDPA kernels keep none. ESPnet's Conv2d input layers
    keep their first convolution's output (bf16, stride 2 in both axes): channels x mel bins
    bytes per input frame.
Frozen layers below the first trainable one keep nothing (their inputs need no gradient). The
convolutional stem of a waveform encoder is not counted: small for Whisper; for a large SSL
model with ``freeze: none``, add ~30 MB per second of audio.
The frozen LLM of stage 2 has no weight gradients but passes the gradient to its input, so each
layer keeps its RMSNorm inputs (fp32, 2 × 8h), q/k/v and the attention output for SDPA
(4h + 4·kv), and the gated MLP's gate, up and activation outputs (6f).
Vocabulary-sized tensors, the largest at 128k-152k tokens: logits in bf16, their fp32 copy and
the fp32 log-softmax kept for the backward pass, 10 bytes per row entry (CTC: one row per
encoder frame; the token losses: one per target token; stage 2: one per answer token).
These counts were checked against the tensors autograd saves on CPU (bf16 autocast) for small
Whisper, Conformer and Llama stacks: within -15% .. +25%.
"""

import argparse
import math
from dataclasses import dataclass
from typing import List, Optional

import torch
from espnet2.utils.get_default_kwargs import get_default_kwargs
from transformers import AutoModelForCausalLM, PretrainedConfig

from espnet_alignchat.encoders import ConfigError, WaveformEncoder
from espnet_alignchat.model import AlignChatModel

GB = 1e9
SAMPLE_RATE = 16000
VOCAB_ROW_BYTES = 10  # bf16 logits + fp32 copy + fp32 log-softmax, per vocabulary entry
ATTENTION_PROB_BYTES = 7  # eager attention: probabilities, masked copy, dropout
# Optimizer state per trainable parameter (float32): Adam-style moments, SGD momentum.
OPTIMIZER_STATE_BYTES = {"adam": 8, "adamw": 8, "sgd": 4, "adadelta": 8, "adagrad": 4}
# ESPnet's input layers: the factor by which each subsamples the frontend's frames, and whether
# it starts with a 2-D convolution over (frames, mel bins).
ESPNET_INPUT_LAYERS = {
    "linear": (1, False),
    "conv1d2": (2, False),
    "conv2d1": (1, True),
    "conv2d2": (2, True),
    "conv2d": (4, True),
    "conv2d6": (6, True),
    "conv2d8": (8, True),
}


@dataclass
class Workload:
    """What one GPU processes in one step (one micro-batch of ``accum_grad``)."""

    utterances: int
    seconds: float
    transcript_tokens: int
    response_tokens: int
    prompt_tokens: int


@dataclass
class Line:
    name: str
    bytes: float
    note: str = ""


@dataclass
class LayerStack:
    """Transformer layers that keep activations: their count, shape and positions."""

    layers: int
    hidden: int
    ffn: int
    heads: int
    positions: int
    eager_attention: bool
    ffn_blocks: int = 1
    ffn_activation_bytes: int = 5  # per ffn unit: 5 (GELU, ReLU), 7 (swish)
    conv_module: bool = False
    stem_bytes: float = 0  # per utterance, the input layer before the stack

    def activation_bytes(self, batch: int) -> float:
        h, f = self.hidden, self.ffn
        ffn = 7 * h + self.ffn_activation_bytes * f
        per_position = (
            17 * h + self.ffn_blocks * ffn + (30 * h if self.conv_module else 0)
        )
        per_layer = per_position * self.positions
        if self.eager_attention:
            per_layer += ATTENTION_PROB_BYTES * self.heads * self.positions**2
        return batch * (self.layers * per_layer + self.stem_bytes)


def utterances_per_step(args: argparse.Namespace, seconds: float) -> int:
    """Utterances of `seconds` in one batch of the configured sampler, on all GPUs together.

    ESPnet's batch sizes and bins are global: each of the ``ngpu`` ranks takes its share.
    """
    samples = seconds * SAMPLE_RATE
    if args.batch_type == "folded":
        factor = int(samples / args.fold_length[0])
        return max(1, int(args.batch_size / (1 + factor)))
    if args.batch_type in ("numel", "length"):  # the waveform dominates both counts
        return max(1, int(args.batch_bins // samples))
    return args.batch_size


def workload(
    args: argparse.Namespace,
    seconds: float,
    tokens_per_second: float,
    response_tokens: int,
    prompt_tokens: int,
) -> Workload:
    gpus = max(1, args.ngpu)
    return Workload(
        utterances=max(1, utterances_per_step(args, seconds) // gpus),
        seconds=seconds,
        transcript_tokens=math.ceil(seconds * tokens_per_second),
        response_tokens=response_tokens,
        prompt_tokens=prompt_tokens,
    )


def encoder_stack(model: AlignChatModel, args: argparse.Namespace, seconds: float):
    """The encoder's layers with gradients, and the frames it hands to the decoder."""
    encoder = model.encoder
    samples = torch.tensor(int(seconds * SAMPLE_RATE))
    if isinstance(encoder, WaveformEncoder):
        config = encoder.model.config
        stack = LayerStack(
            layers=len(encoder.trainable_layers),
            hidden=encoder.hidden_size,
            ffn=getattr(config, "encoder_ffn_dim", None) or config.intermediate_size,
            heads=getattr(config, "encoder_attention_heads", None)
            or config.num_attention_heads,
            positions=encoder.computed_frames(samples),
            eager_attention=False,
        )
        return stack, int(encoder.output_lengths(samples))
    if model.frontend is None:
        raise ConfigError(
            "features from the data (input_size) have no known frame rate"
        )
    conf = {**get_default_kwargs(type(encoder)), **args.encoder_conf}
    input_frames = int(samples) // model.frontend.hop_length
    subsampling, conv2d = ESPNET_INPUT_LAYERS[conf["input_layer"]]
    frames = input_frames // subsampling
    stack = LayerStack(
        layers=conf["num_blocks"],
        hidden=conf["output_size"],
        ffn=conf["linear_units"],
        heads=conf["attention_heads"],
        positions=frames,
        eager_attention=True,
        ffn_blocks=2 if conf.get("macaron_style") else 1,
        ffn_activation_bytes=7 if conf.get("activation_type") == "swish" else 5,
        conv_module=bool(conf.get("use_cnn_module")),
        stem_bytes=(
            conf["output_size"] * model.frontend.output_size() * input_frames
            if conv2d
            else 0
        ),
    )
    return stack, frames


def decoder_stack(model: AlignChatModel, tokens: int) -> LayerStack:
    """The decoder's layers: self-attention (SDPA) on tokens; cross-attention costs extra."""
    decoder = model.decoder
    first = decoder.blocks[0]
    return LayerStack(
        layers=len(decoder.blocks),
        hidden=decoder.attention_dim,
        ffn=first.feed_forward[0].out_features,
        heads=first.src_attn.h,
        positions=tokens,
        eager_attention=False,
    )


def cross_attention_bytes(model: AlignChatModel, tokens: int, frames: int) -> float:
    """Per utterance: projected memory keys/values and eager attention probabilities."""
    decoder = model.decoder
    heads = decoder.blocks[0].src_attn.h
    per_layer = frames * 4 * decoder.attention_dim + ATTENTION_PROB_BYTES * heads * (
        tokens * frames
    )
    return len(decoder.blocks) * per_layer


def llm_layer_bytes(config: PretrainedConfig) -> float:
    """Bytes one frozen LLM layer keeps per position to pass gradients to its input."""
    h, f = config.hidden_size, config.intermediate_size
    head_dim = getattr(config, "head_dim", None) or h // config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", config.num_attention_heads) * head_dim
    return 16 * h + 4 * h + 4 * kv + 6 * f


def count_parameters(module: torch.nn.Module, trainable: Optional[bool] = None) -> int:
    return sum(
        p.numel()
        for p in module.parameters()
        if trainable is None or p.requires_grad == trainable
    )


def llm_parameters(config: PretrainedConfig, trust_remote_code: bool) -> int:
    """The LLM's parameter count, from its architecture built on ``meta`` (no weights)."""
    with torch.device("meta"):
        llm = AutoModelForCausalLM.from_config(
            config, trust_remote_code=trust_remote_code
        )
    return count_parameters(llm)


@dataclass
class Plan:
    parameters: List[Line]
    memory: List[Line]
    checkpoints: List[Line]
    work: Workload


def plan(model: AlignChatModel, args: argparse.Namespace, work: Workload) -> Plan:
    """Parameters, per-GPU memory of one training step, and checkpoint sizes."""
    llm = model.llm
    vocab, llm_hidden = llm.vocab_size, llm.hidden_size
    instruct = model.mode == "instruct"
    trainable = count_parameters(model, True)
    total = count_parameters(model)
    llm_total = llm_parameters(llm.config, llm.trust_remote_code)
    embedding = vocab * llm_hidden
    parameters = [
        Line("speech tokenizer", total, f"{trainable / 1e6:.1f}M trainable"),
        Line(
            "  encoder", count_parameters(model.encoder), trainable_note(model.encoder)
        ),
        Line(
            "  decoder", count_parameters(model.decoder), trainable_note(model.decoder)
        ),
        Line("frozen LLM", llm_total, f"embedding matrix {vocab} x {llm_hidden}"),
    ]
    if model.weights["ctc"] > 0:
        ctc = model.ctc_proj.weight.numel() + model.ctc_proj.bias.numel() + llm_hidden
        parameters.insert(3, Line("  CTC projection", ctc, "trainable"))

    batch = work.utterances
    encoder, frames = encoder_stack(model, args, work.seconds)
    targets = work.transcript_tokens + 1  # + the end token
    optimizer_bytes = OPTIMIZER_STATE_BYTES.get(args.optim, 8)
    memory = [
        Line("tokenizer weights", 4 * total, "float32 (ESPnet's train_dtype)"),
        Line(
            "grads, optimizer, copies",
            (6 + optimizer_bytes + (4 if args.ngpu > 1 else 0)) * trainable,
            f"per trainable parameter: gradient 4 B, optimizer {optimizer_bytes} B, "
            "autocast's bf16 copy 2 B" + (", DDP bucket 4 B" if args.ngpu > 1 else ""),
        ),
        Line(
            "frozen LLM weights",
            2 * (llm_total if instruct else embedding),
            "bf16, " + ("whole model" if instruct else "embedding matrix only"),
        ),
        Line(
            "encoder activations",
            encoder.activation_bytes(batch),
            f"{encoder.layers} layers with gradients x {encoder.positions} frames",
        ),
        Line(
            "decoder activations",
            decoder_stack(model, targets).activation_bytes(batch)
            + batch * cross_attention_bytes(model, targets, frames),
            f"{targets} tokens x {frames} frames",
        ),
        Line(
            "token losses",
            VOCAB_ROW_BYTES * batch * targets * vocab,
            f"{batch * targets} rows of {vocab} logits",
        ),
    ]
    if model.weights["ctc"] > 0:
        memory.append(
            Line(
                "CTC",
                VOCAB_ROW_BYTES * batch * frames * (vocab + 1) + 2 * embedding,
                f"{batch * frames} frames x {vocab + 1} classes",
            )
        )
    if instruct:
        positions = work.prompt_tokens + work.transcript_tokens + work.response_tokens
        layers = llm.config.num_hidden_layers
        answer_rows = batch * (work.response_tokens + 1)
        memory.append(
            Line(
                "LLM activations",
                batch * positions * layers * llm_layer_bytes(llm.config),
                f"{positions} positions x {layers} layers",
            )
        )
        kl = model.kl_weight > 0  # the text-conditioned logits, kept for the KL term
        memory.append(
            Line(
                "answer losses",
                (VOCAB_ROW_BYTES + (8 if kl else 0)) * answer_rows * vocab,
                f"{answer_rows} rows of {vocab} logits" + (" (+ KL)" if kl else ""),
            )
        )

    state = sum(t.numel() * 4 for t in model.state_dict().values())
    checkpoints = [
        Line(
            "{N}epoch.pth, *.ave.pth",
            state,
            "the tokenizer in float32, frozen encoder weights included; no LLM",
        ),
        Line(
            "checkpoint.pth (resume)",
            state + optimizer_bytes * trainable,
            "+ optimizer state",
        ),
    ]
    return Plan(parameters, memory, checkpoints, work)


def trainable_note(module: torch.nn.Module) -> str:
    trainable = count_parameters(module, True)
    if trainable == count_parameters(module):
        return "trainable"
    return f"{trainable / 1e6:.1f}M trainable" if trainable else "frozen"


def format_count(n: float) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def report(result: Plan, args: argparse.Namespace) -> str:
    """The plan as text."""
    work = result.work
    gpus = max(1, args.ngpu)
    lines = ["Parameters"]
    lines += [
        f"  {line.name:<24}{format_count(line.bytes):>10}   {line.note}"
        for line in result.parameters
    ]
    lines += [
        "",
        f"One step on each of {gpus} GPU(s), accum_grad {args.accum_grad}: "
        f"{work.utterances} utterance(s) of {work.seconds:g} s, "
        f"{work.transcript_tokens} transcript tokens"
        + (
            f", {work.prompt_tokens} template and {work.response_tokens} answer tokens"
            if any(line.name == "LLM activations" for line in result.memory)
            else ""
        ),
        f"  (batch_type {args.batch_type}; utterances per optimizer step: "
        f"{work.utterances * gpus * args.accum_grad})",
        "Memory per GPU (estimate; see espnet_alignchat.planning)",
    ]
    lines += [
        f"  {line.name:<24}{line.bytes / GB:>8.2f} GB   {line.note}"
        for line in result.memory
    ]
    lines.append(
        f"  {'total':<24}{sum(line.bytes for line in result.memory) / GB:>8.2f} GB"
        "   + allocator cache and temporaries (~10-20%)"
    )
    lines += ["", "Checkpoints"]
    lines += [
        f"  {line.name:<24}{line.bytes / GB:>8.2f} GB   {line.note}"
        for line in result.checkpoints
    ]
    return "\n".join(lines)
