"""``config.json`` files of the real models' shapes, written locally: no weights, no download.

The values are those of the models' published ``config.json`` files.
"""

from pathlib import Path

from transformers import LlamaConfig, Qwen2Config, WhisperConfig

# conf/tuning/ configs for real LLMs and pretrained encoders: too big to build on a test CPU.
REAL_SCALE_CONFIGS = tuple(
    f"train_{stage}_{encoder}.yaml"
    for stage in ("pretrain", "instruct")
    for encoder in (
        "whisper_large_v3_frozen",
        "whisper_large_v3_top8",
        "conformer_large",
    )
)


def save_llama31_8b_config(path: Path) -> Path:
    """meta-llama/Llama-3.1-8B-Instruct."""
    LlamaConfig(
        vocab_size=128256,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=131072,
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        bos_token_id=128000,
        eos_token_id=[128001, 128008, 128009],
        tie_word_embeddings=False,
    ).save_pretrained(path)
    return path


def save_qwen25_7b_config(path: Path) -> Path:
    """Qwen/Qwen2.5-7B-Instruct."""
    Qwen2Config(
        vocab_size=152064,
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        max_position_embeddings=32768,
        rms_norm_eps=1e-6,
        rope_theta=1000000.0,
        bos_token_id=151643,
        eos_token_id=151645,
        tie_word_embeddings=False,
    ).save_pretrained(path)
    return path


def save_whisper_large_v3_config(path: Path) -> Path:
    """openai/whisper-large-v3."""
    WhisperConfig(
        vocab_size=51866,
        num_mel_bins=128,
        d_model=1280,
        encoder_layers=32,
        encoder_attention_heads=20,
        encoder_ffn_dim=5120,
        decoder_layers=32,
        decoder_attention_heads=20,
        decoder_ffn_dim=5120,
        max_source_positions=1500,
        max_target_positions=448,
        pad_token_id=50256,
        bos_token_id=50257,
        eos_token_id=50257,
        decoder_start_token_id=50258,
    ).save_pretrained(path)
    return path


def save_whisper_tiny_en_config(path: Path) -> Path:
    """openai/whisper-tiny.en (the real track's encoder, converted into downloads/)."""
    WhisperConfig(
        vocab_size=51864,
        num_mel_bins=80,
        d_model=384,
        encoder_layers=4,
        encoder_attention_heads=6,
        encoder_ffn_dim=1536,
        decoder_layers=4,
        decoder_attention_heads=6,
        decoder_ffn_dim=1536,
        max_source_positions=1500,
        max_target_positions=448,
        pad_token_id=50256,
        bos_token_id=50257,
        eos_token_id=50256,
        decoder_start_token_id=50257,
    ).save_pretrained(path)
    return path
