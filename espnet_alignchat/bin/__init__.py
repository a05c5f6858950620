"""Entry points, run as ``python -m espnet_alignchat.bin.<name>``."""
