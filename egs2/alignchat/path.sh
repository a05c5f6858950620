# shellcheck shell=bash
# Environment of the recipe's commands; sourced by alignchat.sh.
export LC_ALL=C
export PYTHONIOENCODING=UTF-8
export PYTHONUNBUFFERED=1
# Keep NCCL off interfaces that cannot reach the other GPUs' hosts (as ESPnet's path.sh).
export NCCL_SOCKET_IFNAME="^lo,docker,virbr,vmnet,vboxnet"
# sclite (SCTK) for scoring: Debian's sctk package keeps it off PATH and says where.
if ! command -v sclite > /dev/null && command -v sctk > /dev/null; then
    PATH=$(sctk path):${PATH}
fi
export PATH
