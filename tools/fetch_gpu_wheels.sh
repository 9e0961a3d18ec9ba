#!/usr/bin/env bash
# Download, here, the wheels the GPU machine lacks (it has no package index): megatron-core for Python 3.12 on
# manylinux x86-64, into .whl/ (git-ignored; the device call carries it). Everything else the check needs is
# already on that machine (torch 2.11 + CUDA 13, transformers, safetensors, tensorboard, pytest, ...).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl "megatron-core==0.16.1"
ls -l .whl
