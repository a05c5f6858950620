"""`AlignChatTask`: AlignChat as an ESPnet task, trained by ESPnet's own `Trainer` (made safe to
kill: `espnet_alignchat.trainer`).

The model, frontend, SpecAugment, normalization and encoder are ESPnet `ClassChoices`: the
model is AlignChat's speech tokenizer (``model: alignchat``, the default) or the frame-rate
adapter baseline (``model: frame_adapter``), on the same encoders. The decoder and the losses
are configured by ``decoder_conf`` and ``model_conf``; the frozen LLM by ``--llm`` and its
options. A stage-1 (``mode: pretrain``) model reads only the LLM's embedding matrix, and
``--collect_stats`` does not touch the LLM's weights at all.
"""

import argparse
import dataclasses
from pathlib import Path
from typing import Any, Callable, Collection, Dict, List, Optional, Set, Tuple, Union

import humanfriendly
import numpy as np
import torch
from espnet2.asr.encoder.abs_encoder import AbsEncoder
from espnet2.asr.encoder.branchformer_encoder import BranchformerEncoder
from espnet2.asr.encoder.conformer_encoder import ConformerEncoder
from espnet2.asr.encoder.e_branchformer_encoder import EBranchformerEncoder
from espnet2.asr.encoder.transformer_encoder import TransformerEncoder
from espnet2.asr.frontend.abs_frontend import AbsFrontend
from espnet2.asr.frontend.default import DefaultFrontend
from espnet2.asr.specaug.abs_specaug import AbsSpecAug
from espnet2.asr.specaug.specaug import SpecAug
from espnet2.layers.abs_normalize import AbsNormalize
from espnet2.layers.global_mvn import GlobalMVN
from espnet2.layers.utterance_mvn import UtteranceMVN
from espnet2.tasks.abs_task import AbsTask, IteratorOptions
from espnet2.train.abs_espnet_model import AbsESPnetModel
from espnet2.train.class_choices import ClassChoices
from espnet2.train.collate_fn import CommonCollateFn
from espnet2.train.dataset import AbsDataset
from espnet2.utils.get_default_kwargs import get_default_kwargs
from espnet2.utils.nested_dict_action import NestedDictAction
from espnet2.utils.types import int_or_none, str2bool, str_or_none
from torch.utils.data import DataLoader

from espnet_alignchat.datadir import read_kaldi_map
from espnet_alignchat.dataset import (
    AlignChatDataset,
    LoadableUtterances,
    SkippingDataset,
)
from espnet_alignchat.decoder import SpeechTokenDecoder
from espnet_alignchat.encoders import (
    ConfigError,
    HFSSLEncoder,
    HFWhisperEncoder,
    WaveformEncoder,
)
from espnet_alignchat.frame_adapter import FrameAdapterModel
from espnet_alignchat.llm import (
    DTYPES,
    SPEECH_PLACEHOLDER,
    FingerprintBuffer,
    FrozenLLM,
    LLMFingerprint,
)
from espnet_alignchat.model import IGNORE_ID, AlignChatModel
from espnet_alignchat.preprocessor import AlignChatPreprocessor
from espnet_alignchat.speech_chat import SpeechChatMixin
from espnet_alignchat.trainer import KillSafeTrainer
from espnet_alignchat.whisper_decoder import init_from_whisper

model_choices = ClassChoices(
    "model",
    classes=dict(alignchat=AlignChatModel, frame_adapter=FrameAdapterModel),
    type_check=AbsESPnetModel,
    default="alignchat",
)
frontend_choices = ClassChoices(
    name="frontend",
    classes=dict(default=DefaultFrontend),
    type_check=AbsFrontend,
    default="default",
    optional=True,  # none: the encoder reads the waveform (whisper, hf_ssl)
)
specaug_choices = ClassChoices(
    name="specaug",
    classes=dict(specaug=SpecAug),
    type_check=AbsSpecAug,
    default=None,
    optional=True,
)
normalize_choices = ClassChoices(
    "normalize",
    classes=dict(global_mvn=GlobalMVN, utterance_mvn=UtteranceMVN),
    type_check=AbsNormalize,
    default="utterance_mvn",
    optional=True,
)
encoder_choices = ClassChoices(
    "encoder",
    classes=dict(
        conformer=ConformerEncoder,
        transformer=TransformerEncoder,
        e_branchformer=EBranchformerEncoder,
        branchformer=BranchformerEncoder,
        whisper=HFWhisperEncoder,
        hf_ssl=HFSSLEncoder,
    ),
    type_check=AbsEncoder,
    default="conformer",
)


class AlignChatTask(AbsTask):
    num_optimizers: int = 1
    class_choices_list = [
        model_choices,  # --model and --model_conf (the chosen class's keyword arguments)
        frontend_choices,
        specaug_choices,
        normalize_choices,
        encoder_choices,
    ]
    trainer = KillSafeTrainer

    @classmethod
    def add_task_arguments(cls, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group(description="Task related")
        # `required` is checked after parsing, so that --print_config works without it.
        required = parser.get_default("required")
        required += ["llm"]
        group.add_argument(
            "--llm",
            type=str_or_none,
            default=None,
            help="The frozen LLM: a Hugging Face hub id or a local model directory",
        )
        group.add_argument(
            "--llm_dtype",
            type=str,
            default="auto",
            choices=["auto", *DTYPES],
            help="dtype of the frozen LLM (auto: bfloat16 on GPU, float32 on CPU)",
        )
        group.add_argument(
            "--trust_remote_code",
            type=str2bool,
            default=False,
            help="Let transformers run the LLM repository's own code",
        )
        group.add_argument(
            "--system_prompt",
            type=str_or_none,
            default=None,
            help="System message of the LLM's chat template (none by default)",
        )
        group.add_argument(
            "--user_template",
            type=str,
            default=SPEECH_PLACEHOLDER,
            help="The user turn, with {speech} where the speech (or transcript) goes",
        )
        group.add_argument(
            "--llm_fingerprint",
            action=NestedDictAction,
            default=None,
            help="Set by training: identifies the LLM the model was trained for; "
            "a model is refused with another LLM",
        )
        group.add_argument(
            "--input_size",
            type=int_or_none,
            default=None,
            help="Feature dimension when features come from the data, not the frontend",
        )
        group.add_argument(
            "--decoder_conf",
            action=NestedDictAction,
            default=get_default_kwargs(SpeechTokenDecoder),
            help="Keyword arguments of the speech-token decoder (vocab_size is the "
            "LLM's), and init_from_whisper: a Whisper model whose text decoder starts it",
        )
        group = parser.add_argument_group(description="Preprocess related")
        group.add_argument(
            "--use_preprocessor",
            type=str2bool,
            default=True,
            help="Tokenize text/response with the LLM's tokenizer while loading data",
        )
        for class_choices in cls.class_choices_list:
            class_choices.add_arguments(group)

    @classmethod
    def build_collate_fn(cls, args: argparse.Namespace, train: bool) -> Callable[
        [Collection[Tuple[str, Dict[str, np.ndarray]]]],
        Tuple[List[str], Dict[str, torch.Tensor]],
    ]:
        return CommonCollateFn(float_pad_value=0.0, int_pad_value=IGNORE_ID)

    # Where --collect_stats reads audio and reports what it skips: ESPnet builds its data
    # iterators without `args`, so `main_worker` keeps them here (one task per process).
    collecting: Optional[Tuple[int, Path]] = None

    @classmethod
    def main_worker(cls, args: argparse.Namespace) -> None:
        cls.collecting = (sample_rate(args), Path(args.output_dir))
        super().main_worker(args)

    @classmethod
    def build_dataset(
        cls,
        args: argparse.Namespace,
        iter_options: IteratorOptions,
        keys_to_load: Optional[Set[Union[int, str]]] = None,
    ) -> AbsDataset:
        """`AlignChatDataset`, with unloadable utterances reported and replaced
        (`SkippingDataset`; the report is ``<output_dir>/skipped_{train,valid}``)."""
        if args.multi_task_dataset:
            return super().build_dataset(args, iter_options, keys_to_load)
        dataset = AlignChatDataset(
            iter_options.data_path_and_name_and_type,
            sample_rate(args),
            preprocess=iter_options.preprocess_fn,
            float_dtype=args.train_dtype,
        )
        cls.check_task_requirements(
            dataset, args.allow_variable_data_keys, train=iter_options.train
        )
        split = "train" if iter_options.train else "valid"
        return SkippingDataset(dataset, Path(args.output_dir) / f"skipped_{split}")

    @classmethod
    def build_streaming_iterator(
        cls,
        data_path_and_name_and_type,
        preprocess_fn,
        collate_fn,
        key_file: Optional[str] = None,
        batch_size: int = 1,
        dtype: Optional[Any] = np.float32,
        num_workers: int = 1,
        allow_variable_data_keys: bool = False,
        ngpu: int = 0,
        inference: bool = False,
        mode: Optional[str] = None,
        multi_task_dataset: bool = False,
    ) -> DataLoader:
        """--collect_stats' data (``mode`` train or valid): the utterances of `key_file` that
        can be loaded (`LoadableUtterances`), so the shape files list only those; the others
        are reported in ``<output_dir>/skipped_{train,valid}``."""
        if cls.collecting is None or mode not in ("train", "valid"):
            raise NotImplementedError(
                "AlignChatTask streams data only to --collect_stats"
            )
        rate, output_dir = cls.collecting
        dataset = SkippingDataset(
            AlignChatDataset(
                data_path_and_name_and_type, rate, preprocess_fn, float_dtype=dtype
            ),
            output_dir / f"skipped_{mode}",
        )
        cls.check_task_requirements(dataset, allow_variable_data_keys, train=False)
        keys = dataset.keys
        if key_file is not None:
            # Its unreadable or repeated lines are those of the data files it was cut from,
            # which the dataset reported.
            keys = list(read_kaldi_map(Path(key_file), left_out={}))
        return DataLoader(
            LoadableUtterances(dataset, keys),
            batch_size=batch_size,
            collate_fn=collate_fn,
            num_workers=num_workers,
            pin_memory=ngpu > 0,
        )

    @classmethod
    def build_preprocess_fn(
        cls, args: argparse.Namespace, train: bool
    ) -> Optional[Callable[[str, Dict[str, np.ndarray]], Dict[str, np.ndarray]]]:
        if not args.use_preprocessor:
            return None
        # --input_size > 1: the data hold features (e.g. a frozen encoder's cached outputs).
        feature_size = args.input_size if (args.input_size or 1) > 1 else None
        return AlignChatPreprocessor(
            args.llm, args.trust_remote_code, feature_size=feature_size
        )

    @classmethod
    def required_data_names(
        cls, train: bool = True, inference: bool = False
    ) -> Tuple[str, ...]:
        return ("speech",) if inference else ("speech", "text")

    @classmethod
    def optional_data_names(
        cls, train: bool = True, inference: bool = False
    ) -> Tuple[str, ...]:
        return ("text", "response") if inference else ("response",)

    @classmethod
    def build_model(
        cls, args: argparse.Namespace, read_llm: bool = True
    ) -> SpeechChatMixin:
        """The model ``args.model`` (AlignChat's speech tokenizer unless told otherwise) for
        the LLM ``args.llm``.

        ``read_llm=False`` reads the LLM's ``config.json`` alone (no embeddings, no tokenizer),
        e.g. to plan memory: such a model has no LLM fingerprint and no end token.
        """
        # Configs written before the adapter existed have no `model`: they are AlignChat's.
        model_class = model_choices.get_class(
            vars(args).setdefault("model", model_choices.default)
        )
        llm = FrozenLLM(args.llm, args.llm_dtype, args.trust_remote_code)
        fingerprint = None
        # Feature statistics need no LLM weights; planning reads the LLM's config alone.
        if read_llm and not args.collect_stats:
            fingerprint = llm.fingerprint
            if (
                args.llm_fingerprint
            ):  # a trained model's config: it must be the same LLM
                fingerprint.check_same_llm(LLMFingerprint(**args.llm_fingerprint))
            args.llm_fingerprint = dataclasses.asdict(fingerprint)

        encoder_class = encoder_choices.get_class(args.encoder)
        if issubclass(encoder_class, WaveformEncoder):
            check_waveform_options(args)
            args.frontend, args.frontend_conf = None, {}
            # No features, so no statistics to collect: the stats jobs only measure shapes.
            args.model_conf["extract_feats_in_collect_stats"] = False
            # 1: waveforms; the encoder's hidden size: its cached frozen outputs.
            frontend, input_size = None, args.input_size or 1
        elif args.input_size is None:
            frontend = frontend_choices.get_class(args.frontend)(**args.frontend_conf)
            input_size = frontend.output_size()
        else:
            args.frontend, args.frontend_conf = None, {}
            frontend, input_size = None, args.input_size
        specaug = (
            specaug_choices.get_class(args.specaug)(**args.specaug_conf)
            if args.specaug is not None
            else None
        )
        # Collecting statistics produces what global_mvn reads, and uses only the frontend.
        normalize = (
            normalize_choices.get_class(args.normalize)(**args.normalize_conf)
            if args.normalize is not None and not args.collect_stats
            else None
        )
        encoder = encoder_class(input_size=input_size, **args.encoder_conf)
        parts = dict(
            llm=llm,
            fingerprint=FingerprintBuffer(fingerprint),
            frontend=frontend,
            specaug=specaug,
            normalize=normalize,
            encoder=encoder,
            system_prompt=args.system_prompt,
            user_template=args.user_template,
        )
        if model_class is FrameAdapterModel:  # no decoder: the frames go to the LLM
            return FrameAdapterModel(**parts, **args.model_conf)
        if read_llm and args.model_conf.get("end_token_id") is None:
            # Written into config.yaml, so inference uses the id the model was trained with.
            args.model_conf["end_token_id"] = llm.eos_token_id
        decoder_conf = dict(args.decoder_conf, vocab_size=llm.vocab_size)
        whisper = decoder_conf.pop("init_from_whisper", None)
        decoder = SpeechTokenDecoder(
            llm.hidden_size, encoder.output_size(), **decoder_conf
        )
        if whisper is not None and read_llm and not args.collect_stats:
            init_from_whisper(
                decoder, whisper, llm.tokenizer, args.model_conf["end_token_id"]
            )
        return AlignChatModel(**parts, decoder=decoder, **args.model_conf)


def check_waveform_options(args: argparse.Namespace) -> None:
    """A waveform encoder computes its own features: no frontend, normalize or specaug.

    `--input_size` is checked by the encoder: 1 (waveforms) or its hidden size (its cached
    outputs, see `espnet_alignchat.encoders.base`).
    """
    name = args.encoder
    if args.frontend is not None and args.input_size is None:
        raise ConfigError(f"encoder {name} reads the waveform: set frontend: none")
    if args.normalize is not None:
        raise ConfigError(f"encoder {name} reads the waveform: set normalize: none")
    if args.specaug is not None:
        raise ConfigError(
            f"encoder {name} reads the waveform: set specaug: none (whisper applies "
            "SpecAugment to its log-mels with encoder_conf.specaug_conf)"
        )


def sample_rate(args: argparse.Namespace) -> int:
    """The rate the model reads audio at: its frontend's ``fs`` (ESPnet's default frontend:
    16 kHz unless set, also as ``"16k"``), 16 kHz for an encoder that reads the waveform.
    """
    fs = (args.frontend_conf or {}).get("fs", 16000)
    return humanfriendly.parse_size(fs) if isinstance(fs, str) else int(fs)
