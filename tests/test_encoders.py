"""Waveform encoders (Whisper, WavLM/HuBERT through transformers), tiny and local; and
initialising our encoder from an ESPnet ASR checkpoint with ESPnet's --init_param."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import tiny_model_args, write_data_dir
from espnet2.asr.encoder.conformer_encoder import ConformerEncoder
from transformers import (
    HubertConfig,
    HubertModel,
    Wav2Vec2FeatureExtractor,
    WavLMConfig,
    WavLMModel,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
)
from transformers.models.whisper import modeling_whisper

from espnet_alignchat.bin import (
    alignchat_inference,
    alignchat_train,
    dump_encoder_outputs,
)
from espnet_alignchat.datadir import read_kaldi_map
from espnet_alignchat.encoders import ConfigError, HFSSLEncoder, HFWhisperEncoder
from espnet_alignchat.encoders.whisper import _ENCODER_KEYS
from espnet_alignchat.errors import InputError
from espnet_alignchat.preprocessor import AlignChatPreprocessor
from espnet_alignchat.task import AlignChatTask

SSL_SHAPE = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    conv_dim=(16, 16),
    conv_stride=(5, 4),
    conv_kernel=(10, 8),
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=2,
)
WHISPER_SHAPE = dict(
    num_mel_bins=20,
    d_model=32,
    encoder_layers=2,
    encoder_attention_heads=2,
    encoder_ffn_dim=64,
)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    """Tiny random models saved as a hub checkpoint would be: name → directory."""
    root = tmp_path_factory.mktemp("encoders")
    torch.manual_seed(0)
    whisper = WhisperConfig(
        **WHISPER_SHAPE,
        decoder_layers=1,
        decoder_attention_heads=2,
        decoder_ffn_dim=64,
        vocab_size=100,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=3,
    )
    WhisperForConditionalGeneration(whisper).save_pretrained(root / "whisper")
    stable = dict(feat_extract_norm="layer", do_stable_layer_norm=True)
    WavLMModel(WavLMConfig(**SSL_SHAPE, **stable)).save_pretrained(root / "wavlm")
    # WavLM-Large's feature extractor normalizes each waveform.
    Wav2Vec2FeatureExtractor(do_normalize=True).save_pretrained(root / "wavlm")
    HubertModel(HubertConfig(**SSL_SHAPE, **stable)).save_pretrained(root / "hubert")
    group = HubertConfig(**SSL_SHAPE, feat_extract_norm="group")
    HubertModel(group).save_pretrained(root / "hubert_group")
    return {path.name: path for path in root.iterdir()}


def build(kind: str, path: Path, **options):
    if kind == "whisper":
        return HFWhisperEncoder(name_or_path=str(path), **options)
    return HFSSLEncoder(name_or_path=str(path), **options)


def padded_batch(seconds, seed: int = 0):
    rng = np.random.default_rng(seed)
    lengths = torch.tensor([int(s * 16000) for s in seconds])
    batch = torch.zeros(len(seconds), int(lengths.max()))
    for row, length in enumerate(lengths):
        batch[row, :length] = torch.from_numpy(
            0.1 * rng.standard_normal(int(length))
        ).float()
    return batch, lengths


def test_whisper_padded_to_30s_is_transformers_whisper(models):
    """Features and encoder as transformers' WhisperFeatureExtractor + WhisperEncoder."""
    encoder = build("whisper", models["whisper"], pad_to_30s=True).eval()
    reference = modeling_whisper.WhisperEncoder.from_pretrained(
        models["whisper"], key_mapping=_ENCODER_KEYS
    ).eval()
    extractor = WhisperFeatureExtractor(feature_size=WHISPER_SHAPE["num_mel_bins"])
    batch, lengths = padded_batch([1.0, 0.43])
    with torch.no_grad():
        out, out_lengths, _ = encoder(batch, lengths)
        for row, length in enumerate(lengths):
            features = extractor(
                batch[row, :length].numpy(), sampling_rate=16000, return_tensors="pt"
            ).input_features
            expected = reference(features).last_hidden_state[0]
            frames = out_lengths[row]
            assert torch.allclose(out[row, :frames], expected[:frames], atol=1e-5)


@pytest.mark.parametrize(
    "kind, options",
    [
        ("whisper", {}),
        ("whisper", dict(pad_to_30s=True, downsample_rate=2)),
        ("whisper", dict(downsample_rate=2, downsample_type="average")),
        ("wavlm", dict(downsample_rate=4, downsample_type="conv")),
        ("hubert", dict(output_size=24)),
    ],
    ids=[
        "whisper",
        "whisper-30s-stack2",
        "whisper-average2",
        "wavlm-conv4",
        "hubert-proj",
    ],
)
def test_padded_batch_gives_each_utterance_its_own_output(models, kind, options):
    encoder = build(kind, models[kind], **options).eval()
    batch, lengths = padded_batch([1.0, 0.55, 0.31])
    with torch.no_grad():
        out, out_lengths, _ = encoder(batch, lengths)
        assert out_lengths.tolist() == encoder.output_lengths(lengths).tolist()
        assert (
            out.shape[1] == out_lengths.max() and out.shape[2] == encoder.output_size()
        )
        for row, length in enumerate(lengths):
            alone, alone_lengths, _ = encoder(
                batch[row : row + 1, :length], length[None]
            )
            assert alone_lengths.item() == out_lengths[row]
            frames = out_lengths[row]
            assert torch.allclose(out[row, :frames], alone[0], atol=1e-5)


def test_whisper_frames_are_20_ms_of_the_real_length(models):
    encoder = build("whisper", models["whisper"], downsample_rate=4)
    lengths = torch.tensor([16000, 8000, 3200])
    assert encoder.frame_lengths(lengths).tolist() == [50, 25, 10]
    assert encoder.output_lengths(lengths).tolist() == [13, 7, 3]


def test_group_normalized_model_takes_no_attention_mask(models):
    encoder = build("hubert_group", models["hubert_group"]).eval()
    assert not encoder.use_attention_mask and not encoder.normalize_waveform
    batch, lengths = padded_batch([0.5, 0.2])
    with torch.no_grad():
        out, out_lengths, _ = encoder(batch, lengths)
    expected = encoder.model._get_feat_extract_output_lengths(lengths)
    assert out_lengths.tolist() == expected.tolist() and out.shape[1] == expected[0]


def test_feature_extractor_settings_are_read_from_the_model_dir(models):
    assert build("wavlm", models["wavlm"]).normalize_waveform
    assert not build("hubert", models["hubert"]).normalize_waveform
    assert not build(
        "wavlm", models["wavlm"], normalize_waveform=False
    ).normalize_waveform


def layer_names(prefix: str, layers) -> set:
    return {f"{prefix}.{i}." for i in layers}


@pytest.mark.parametrize("kind", ["whisper", "wavlm"])
@pytest.mark.parametrize("freeze", ["all", "bottom", "none"])
def test_freezing_leaves_exactly_the_intended_parameters_trainable(
    models, kind, freeze
):
    encoder = build(kind, models[kind], freeze=freeze, frozen_layers=1, output_size=16)
    layers = "model.layers" if kind == "whisper" else "model.encoder.layers"
    fixed = (
        "model.embed_positions.weight"
        if kind == "whisper"
        else "model.masked_spec_embed"
    )
    names = {name for name, _ in encoder.named_parameters()}
    trainable = {name for name, p in encoder.named_parameters() if p.requires_grad}
    adapter = {name for name in names if name.startswith("adapter.")}
    if freeze == "all":
        expected = adapter
    elif freeze == "bottom":
        expected = adapter | {n for n in names if n.startswith(f"{layers}.1.")}
    else:
        expected = names - {fixed}
    assert trainable == expected

    # Frozen parts run as fixed feature extractors (no dropout), even in training mode.
    encoder.train()
    assert encoder.layers[1].training == (freeze != "all")
    assert encoder.layers[0].training == (freeze == "none")
    assert encoder.model.training == (freeze == "none")

    # DDP: every trainable parameter gets a gradient in a step, no frozen one does.
    batch, lengths = padded_batch([0.6, 0.3])
    out, out_lengths, _ = encoder(batch, lengths)
    out.sum().backward()
    with_grad = {name for name, p in encoder.named_parameters() if p.grad is not None}
    assert with_grad == expected


def test_architecture_from_config_with_random_weights(models):
    saved = build("whisper", models["whisper"])
    fresh = build("whisper", models["whisper"], load_pretrained=False)
    assert not torch.equal(saved.model.conv1.weight, fresh.model.conv1.weight)
    scratch = HFWhisperEncoder(
        load_pretrained=False,
        config_overrides=dict(WHISPER_SHAPE, encoder_layers=3),
        specaug_conf=dict(apply_time_warp=False, time_mask_width_ratio_range=[0, 0.1]),
        freeze="none",
    )
    assert len(scratch.layers) == 3 and scratch.output_size() == 32
    out, lengths, _ = scratch.train()(*padded_batch([0.4, 0.2]))
    assert lengths.tolist() == [20, 10]
    ssl = HFSSLEncoder(
        load_pretrained=False, config_overrides=dict(SSL_SHAPE, model_type="wavlm")
    )
    assert type(ssl.model).__name__ == "WavLMModel" and ssl.output_size() == 32


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda m: build("whisper", m["whisper"], freeze="some"), "freeze must be"),
        (
            lambda m: build("wavlm", m["wavlm"], freeze="bottom", frozen_layers=2),
            "freeze=bottom needs 0 < frozen_layers < 2",
        ),
        (
            lambda m: build(
                "whisper",
                m["whisper"],
                downsample_rate=3,
                **{"downsample_type": "conv"},
            ),
            "a power of 2 for conv",
        ),
        (
            lambda m: build(
                "whisper",
                m["whisper"],
                downsample_rate=2,
                downsample_type="average",
                output_size=16,
            ),
            "average keeps the frames' size",
        ),
        (lambda m: HFWhisperEncoder(), "load_pretrained needs a name_or_path"),
        (lambda m: HFSSLEncoder(load_pretrained=False), "needs a model_type"),
        (
            lambda m: build("hf_ssl", m["whisper"]),
            "hf_ssl needs a model that reads the waveform",
        ),
    ],
    ids=[
        "freeze",
        "frozen_layers",
        "conv-rate",
        "average-size",
        "no-name",
        "no-model-type",
        "not-ssl",
    ],
)
def test_bad_options_are_one_line_config_errors(models, make, message):
    with pytest.raises(ConfigError) as error:
        make(models)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_whisper_checkpoint_without_encoder_weights_is_refused(models, tmp_path):
    """The decoder's weights are skipped quietly, but an encoder is never left random."""
    from safetensors.torch import load_file, save_file

    state = load_file(models["whisper"] / "model.safetensors")
    kept = {k: v for k, v in state.items() if "encoder.conv1" not in k}
    save_file(kept, tmp_path / "model.safetensors")
    shutil.copy(models["whisper"] / "config.json", tmp_path / "config.json")
    with pytest.raises(ConfigError, match="no weights for 2 encoder tensors"):
        HFWhisperEncoder(name_or_path=str(tmp_path))


def test_task_builds_waveform_encoders_without_frontend(models, tiny_llm):
    args = tiny_model_args(tiny_llm)
    args.encoder, args.encoder_conf = "whisper", {
        "name_or_path": str(models["whisper"])
    }
    with pytest.raises(ConfigError, match="set frontend: none"):
        AlignChatTask.build_model(args)
    args.frontend = None
    with pytest.raises(ConfigError, match="set normalize: none"):
        AlignChatTask.build_model(args)
    args.normalize = None
    model = AlignChatTask.build_model(args)
    assert model.frontend is None and model.encoder.output_size() == 32
    assert args.frontend_conf == {}
    assert args.model_conf["extract_feats_in_collect_stats"] is False


UTTERANCES = {
    f"spk{s}_utt{i}": {"text": text}
    for s in (1, 2)
    for i, text in enumerate(["what is two plus three", "say hello world", "yes no"])
}
DECODER = dict(attention_dim=32, attention_heads=2, linear_units=64, num_blocks=1)


def train(config: dict, llm: Path, data: Path, out: Path, *extra: str) -> None:
    path = out.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(config))
    entries = [f"{data}/wav.scp,speech,sound", f"{data}/text,text,text"]
    alignchat_train.main(
        ["--config", str(path), "--llm", str(llm), "--output_dir", str(out)]
        + [a for e in entries for a in ("--train_data_path_and_name_and_type", e)]
        + [a for e in entries for a in ("--valid_data_path_and_name_and_type", e)]
        + ["--train_shape_file", str(data / "wav.scp")]
        + ["--valid_shape_file", str(data / "wav.scp")]
        + ["--batch_type", "unsorted", "--batch_size", "3", "--max_epoch", "1"]
        + ["--num_workers", "0", "--use_tensorboard", "false"]
        + ["--use_matplotlib", "false", "--num_att_plot", "0"]
        + list(extra)
    )


@pytest.mark.parametrize("kind", ["whisper", "wavlm"])
def test_training_step_through_espnet_main(models, tiny_llm, tmp_path, kind):
    data = write_data_dir(tmp_path / "data", UTTERANCES)
    config = {
        "frontend": None,
        "normalize": None,
        "encoder": "whisper" if kind == "whisper" else "hf_ssl",
        "encoder_conf": {
            "name_or_path": str(models[kind]),
            "freeze": "bottom",
            "frozen_layers": 1,
            "downsample_rate": 2,
        },
        "decoder_conf": DECODER,
        "model_conf": {"mode": "pretrain", "ctc_weight": 0.3},
        "optim": "adam",
    }
    # Statistics: shapes only; waveform encoders have no features to collect.
    train(config, tiny_llm, data, tmp_path / "stats", "--collect_stats", "true")
    assert (tmp_path / "stats/train/speech_shape").is_file()
    assert not (tmp_path / "stats/train/feats_stats.npz").exists()

    train(config, tiny_llm, data, tmp_path / "exp")
    written = yaml.safe_load((tmp_path / "exp/config.yaml").read_text())
    assert written["frontend"] is None and written["encoder"] == config["encoder"]
    state = torch.load(tmp_path / "exp/1epoch.pth", weights_only=True)
    assert any(key.startswith("encoder.adapter.") for key in state)
    if kind == "whisper":  # the trained model decodes like any other
        alignchat_inference.main(
            ["--model_dir", str(tmp_path / "exp"), "--model_file", "1epoch.pth"]
            + ["--data_dir", str(data), "--output_dir", str(tmp_path / "decode")]
            + ["--max_new_tokens", "2", "--max_tokens", "4"]
        )
        assert sorted(read_kaldi_map(tmp_path / "decode/text")) == sorted(UTTERANCES)


@pytest.mark.parametrize("kind", ["whisper", "wavlm"])
def test_cached_frozen_outputs_give_the_waveform_outputs(models, kind):
    """What dump_encoder_outputs stores, read back, gives what the waveform gives."""
    encoder = build(kind, models[kind], downsample_rate=2).eval()
    batch, lengths = padded_batch([0.7, 0.31])
    with torch.no_grad():
        expected, expected_lengths, _ = encoder(batch, lengths)
        frames, frame_lengths = encoder.frozen_outputs(batch, lengths)
        # Each utterance stored on its own, as the dump does, then batched again.
        rows = [frames[i, : frame_lengths[i]] for i in range(len(lengths))]
        cached = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)
        out, out_lengths, _ = encoder(cached, frame_lengths)
    assert torch.equal(out_lengths, expected_lengths)
    assert torch.allclose(out, expected, atol=1e-6)


def test_cached_outputs_need_a_frozen_encoder_of_their_width(models):
    with pytest.raises(ConfigError, match="input_size 1.*or its own cached outputs"):
        build("whisper", models["whisper"], input_size=20)
    with pytest.raises(ConfigError, match="need freeze: all, not bottom"):
        build(
            "whisper",
            models["whisper"],
            input_size=32,
            freeze="bottom",
            frozen_layers=1,
        )
    trained = build("whisper", models["whisper"], freeze="none")
    with pytest.raises(ConfigError, match="only a wholly frozen model"):
        trained.frozen_outputs(*padded_batch([0.3]))
    with pytest.raises(ConfigError, match=r"got shape \(1, 5, 7\)"):
        build("whisper", models["whisper"])(torch.zeros(1, 5, 7), torch.tensor([5]))


def test_training_on_cached_encoder_outputs(models, tiny_llm, tmp_path):
    """dump_encoder_outputs once, then ESPnet trains on the .npy files; the model decodes
    waveforms; a rerun computes nothing again; unreadable audio is skipped with a line.
    """
    data = write_data_dir(tmp_path / "data", UTTERANCES)
    with open(data / "wav.scp", "a") as f:
        f.write(f"spk9_broken {tmp_path / 'missing.wav'}\n")
    config = {
        "frontend": None,
        "normalize": None,
        "encoder": "whisper",
        "encoder_conf": {"name_or_path": str(models["whisper"]), "downsample_rate": 2},
        "decoder_conf": DECODER,
        "model_conf": {"mode": "pretrain"},
        "optim": "adam",
    }
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(config))
    cache = tmp_path / "cache"
    dump = ["--config", str(config_file), "--data_dir", str(data)]
    dump += ["--output_dir", str(cache)]
    dump_encoder_outputs.main(dump)
    scp = read_kaldi_map(cache / "encoder_out.scp")
    assert sorted(scp) == sorted(UTTERANCES)
    assert "spk9_broken" in read_kaldi_map(cache / "skipped")
    first = np.load(scp["spk1_utt0"])
    assert first.dtype == np.float16 and first.shape[1] == 32
    stamp = Path(scp["spk1_utt0"]).stat().st_mtime_ns
    dump_encoder_outputs.main(dump)  # resumed: nothing computed again
    assert Path(scp["spk1_utt0"]).stat().st_mtime_ns == stamp

    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(config))
    entries = [f"{cache}/encoder_out.scp,speech,npy", f"{data}/text,text,text"]
    common = ["--config", str(path), "--llm", str(tiny_llm), "--input_size", "32"]
    common += [a for e in entries for a in ("--train_data_path_and_name_and_type", e)]
    common += [a for e in entries for a in ("--valid_data_path_and_name_and_type", e)]
    common += ["--num_workers", "0", "--batch_type", "unsorted", "--batch_size", "3"]
    shapes = ["--train_shape_file", str(cache / "encoder_out.scp")]
    shapes += ["--valid_shape_file", str(cache / "encoder_out.scp")]
    alignchat_train.main(
        common
        + shapes
        + ["--output_dir", str(tmp_path / "stats")]
        + ["--collect_stats", "true"]
    )
    shape = (tmp_path / "stats/train/speech_shape").read_text().split()
    assert shape[1].endswith(",32")  # frames of the encoder, not samples
    stats = tmp_path / "stats"
    alignchat_train.main(
        common
        + ["--output_dir", str(tmp_path / "exp"), "--max_epoch", "1"]
        + ["--train_shape_file", str(stats / "train/speech_shape")]
        + ["--valid_shape_file", str(stats / "valid/speech_shape")]
        + ["--use_tensorboard", "false", "--use_matplotlib", "false"]
        + ["--num_att_plot", "0"]
    )
    alignchat_inference.main(  # inference reads the waveforms themselves
        ["--model_dir", str(tmp_path / "exp"), "--model_file", "1epoch.pth"]
        + ["--data_dir", str(data), "--output_dir", str(tmp_path / "decode")]
        + ["--max_new_tokens", "2", "--max_tokens", "4"]
    )
    assert sorted(read_kaldi_map(tmp_path / "decode/text")) == sorted(UTTERANCES)


def test_features_of_the_wrong_width_are_one_line_errors():
    preprocess = AlignChatPreprocessor("unused", feature_size=32)
    with pytest.raises(InputError, match=r"u1: features have shape \(5, 7\)"):
        preprocess("u1", {"speech": np.zeros((5, 7), dtype=np.float16)})
    ok = preprocess("u1", {"speech": np.zeros((5, 32), dtype=np.float16)})
    assert ok["speech"].dtype == np.float32


def test_encoder_initialised_from_an_espnet_asr_checkpoint(tiny_llm, tmp_path):
    """``--init_param <asr>/valid.acc.ave.pth:encoder:encoder``, as from an ESPnet ASR model."""
    args = tiny_model_args(tiny_llm)
    torch.manual_seed(3)
    asr_encoder = ConformerEncoder(input_size=20, **args.encoder_conf)
    # An ESPnet ASR model's state_dict: encoder, decoder and CTC under their own prefixes.
    asr_state = {f"encoder.{k}": v for k, v in asr_encoder.state_dict().items()}
    asr_state["decoder.output_layer.weight"] = torch.randn(50, 32)
    asr_state["ctc.ctc_lo.weight"] = torch.randn(50, 32)
    checkpoint = tmp_path / "valid.acc.ave.pth"
    torch.save(asr_state, checkpoint)

    data = write_data_dir(tmp_path / "data", UTTERANCES)
    config = {
        "frontend_conf": args.frontend_conf,
        "encoder": "conformer",
        "encoder_conf": args.encoder_conf,
        "decoder_conf": DECODER,
        "model_conf": {"mode": "pretrain"},
    }
    train(
        config,
        tiny_llm,
        data,
        tmp_path / "exp",
        "--init_param",
        f"{checkpoint}:encoder:encoder",
        "--freeze_param",
        "encoder",  # so that the trained checkpoint still holds the initial weights
    )
    state = torch.load(tmp_path / "exp/1epoch.pth", weights_only=True)
    for name, value in asr_encoder.named_parameters():  # BatchNorm statistics move on
        assert torch.equal(state[f"encoder.{name}"], value), name
