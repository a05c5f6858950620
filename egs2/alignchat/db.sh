# shellcheck shell=bash
# Where an existing corpus lives: an ESPnet recipe dir whose data/ (or dump/raw/) holds the sets
# to import, e.g. CORPUS_DIR=/path/to/espnet/egs2/librispeech/asr1. Empty: the embedded mini
# world. --corpus_dir on the command line overrides it.
CORPUS_DIR=${CORPUS_DIR:-}
