"""Tiny local stand-ins for a real LLM and a tiny run of the recipe, for tests, benchmarks and
the kill-and-resume check (`espnet_alignchat.kill_resume`): nothing is downloaded.

The LLM is a random `LlamaForCausalLM` with a tokenizer trained on the spot and a chat template,
saved with `save_pretrained`, so it is loaded back exactly as Llama-3 would be. The tokenizer is
word-level (one token per word, easy to reason about) or byte-level BPE with a ChatML template
and a default system prompt, as SmolLM2's and Qwen2.5's are (merges, leading spaces and the
template's cut behave as in a real LLM).
"""

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import torch
import yaml
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

SPECIAL_TOKENS = [
    "<unk>",
    "<pad>",
    "<s>",
    "<|end|>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
]
# ChatML with a default system prompt, as SmolLM2-Instruct's template has it.
CHATML_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> "
    "{% endfor %}{% if add_generation_prompt %}<|assistant|> {% endif %}"
)


def build_word_tokenizer(words: Sequence[str]) -> PreTrainedTokenizerFast:
    """One token per word, the chat markers as special tokens, `<|end|>` as EOS."""
    model = Tokenizer(models.WordLevel(unk_token="<unk>"))
    model.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    model.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    model.train_from_iterator(
        [" ".join(words)], trainers.WordLevelTrainer(special_tokens=SPECIAL_TOKENS)
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=model,
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="<|end|>",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_bpe_tokenizer(
    texts: Sequence[str], vocab_size: int = 400
) -> PreTrainedTokenizerFast:
    """Byte-level BPE (GPT-2's pre-tokenizer) trained on `texts`, ChatML, ``<|im_end|>`` EOS."""
    model = Tokenizer(models.BPE())
    model.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    model.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=CHATML_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    model.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=model,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def save_random_llm(
    path: Union[str, Path],
    words: Sequence[str],
    num_layers: int = 2,
    hidden_size: int = 32,
    vocab_size: Optional[int] = None,
    seed: int = 0,
    max_shard_size: Optional[str] = None,
    bpe: bool = False,
) -> Path:
    """A random Llama and its tokenizer in `path`, like a hub checkpoint.

    The tokenizer is word-level over `words`, or with `bpe` byte-level BPE trained on them
    (each item a text) with ChatML. `vocab_size` may exceed the tokenizer's size, as real LLMs
    pad their embedding matrix.
    """
    tokenizer = build_bpe_tokenizer(words) if bpe else build_word_tokenizer(words)
    end_id = tokenizer.eos_token_id
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size or len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=end_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=end_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    kwargs = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
    model.save_pretrained(path, **kwargs)
    tokenizer.save_pretrained(path)
    return Path(path)


REPO = Path(__file__).resolve().parent.parent
RECIPE = REPO / "egs2" / "alignchat"
# The recipe's scripts, linked (not copied) into a recipe copy, as ESPnet recipes share them.
RECIPE_SCRIPTS = ("alignchat.sh", "run.sh", "path.sh", "cmd.sh", "db.sh", "utils")

# A speech tokenizer small enough for the mini world's recipe to train in seconds per stage.
TINY_MODEL = {
    "frontend_conf": {"n_fft": 512, "win_length": 400, "hop_length": 160, "n_mels": 40},
    "normalize": "global_mvn",
    "encoder": "transformer",
    "encoder_conf": {
        "output_size": 32,
        "attention_heads": 2,
        "linear_units": 64,
        "num_blocks": 1,
        "input_layer": "conv2d6",
    },
    "decoder_conf": {
        "attention_dim": 32,
        "attention_heads": 2,
        "linear_units": 64,
        "num_blocks": 1,
    },
    "optim": "adam",
    "optim_conf": {"lr": 0.001},
    "batch_type": "folded",
    "batch_size": 8,
    "fold_length": [80000],
    "max_epoch": 1,
    "num_workers": 0,
    "num_att_plot": 0,
}
# A training config of `AlignChatTask` small enough for one epoch in seconds on a CPU (the
# tests' and the bad-input suite's).
TINY_TRAINING = {
    "frontend_conf": {"n_fft": 256, "hop_length": 160, "n_mels": 20},
    "normalize": "global_mvn",
    "encoder": "conformer",
    "encoder_conf": {
        "output_size": 32,
        "attention_heads": 2,
        "linear_units": 64,
        "num_blocks": 1,
        "input_layer": "conv2d",
        "cnn_module_kernel": 7,
    },
    "decoder_conf": {
        "attention_dim": 32,
        "attention_heads": 2,
        "linear_units": 64,
        "num_blocks": 1,
    },
    "batch_type": "folded",
    "fold_length": [80000],
    "batch_size": 4,
    "max_epoch": 1,
    "num_workers": 0,
    "optim": "adam",
    "optim_conf": {"lr": 0.001},
    "use_tensorboard": False,
    "use_matplotlib": True,
    "num_att_plot": 1,
}
# The mini world at a tiny size: 24 utterances per set, a mini LLM trained for 10 steps.
TINY_MINI_WORLD = (
    "--world", "mini",
    "--local_data_opts", "--max_utts 24",
    "--mini_llm_opts", "--steps 10 --log_interval 5",
)  # fmt: skip


def link_recipe(root: Path) -> Path:
    """A copy of egs2/alignchat at `root` (created) made of links to the recipe's scripts,
    ``conf/`` and ``local/``, so its data, dumps and experiments stay under `root`."""
    if not RECIPE.is_dir():
        raise FileNotFoundError(
            f"{RECIPE}: no recipe dir (the package must be installed from its source tree)"
        )
    root.mkdir(parents=True)
    for name in RECIPE_SCRIPTS:
        (root / name).symlink_to(RECIPE / name)
    (root / "conf").symlink_to(REPO / "conf")
    (root / "local").symlink_to(REPO / "local")
    return root


def write_tiny_configs(where: Path, max_epoch: int = 1) -> Dict[str, Path]:
    """`TINY_MODEL`'s two training configs and a short decoding config in `where`:
    ``{"pretrain": path, "instruct": path, "decode": path}``."""
    model = dict(TINY_MODEL, max_epoch=max_epoch)
    pretrain = dict(model, model_conf={"mode": "pretrain", "ctc_weight": 0.3})
    pretrain["best_model_criterion"] = [["valid", "acc", "max"]]
    instruct = dict(model, model_conf={"mode": "instruct", "kl_weight": 0.5})
    instruct["best_model_criterion"] = [["valid", "acc_response", "max"]]
    decode = {"batch_size": 4, "max_new_tokens": 8}
    return write_configs(where, pretrain=pretrain, instruct=instruct, decode=decode)


def write_configs(where: Path, **configs: Dict) -> Dict[str, Path]:
    """Each of `configs` as ``<where>/<name>.yaml``: ``{name: path}``."""
    paths = {}
    for name, conf in configs.items():
        paths[name] = where / f"{name}.yaml"
        paths[name].write_text(yaml.safe_dump(conf))
    return paths


def recipe_command(configs: Dict[str, Path], *options: str) -> List[str]:
    """`./run.sh` with two jobs per stage, the configs {pretrain, instruct, decode} under the
    fixed tags ``pretrain``, ``instruct`` and ``decode``, and `options`."""
    return [
        "./run.sh",
        "--nj", "2",
        "--inference_nj", "2",
        "--pretrain_config", str(configs["pretrain"]),
        "--instruct_config", str(configs["instruct"]),
        "--inference_config", str(configs["decode"]),
        "--pretrain_tag", "pretrain",
        "--instruct_tag", "instruct",
        "--inference_tag", "decode",
        *options,
    ]  # fmt: skip
