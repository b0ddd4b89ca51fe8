#!/usr/bin/env bash
# The integration suite: dropkit.convert on the real timm, torchvision and transformers.
# PyPI's torchvision does not load beside the CPU build of torch 2.13.0 that the main suite uses,
# so this suite gets its own environment, .venv-integration, with torch 2.14.1 and torchvision
# 0.29.1 (versions that load together), pinned timm and transformers, and dropkit.
set -euo pipefail
cd "$(dirname "$0")/../.."
python3 -m venv .venv-integration
. .venv-integration/bin/activate
pip install torch==2.14.1 torchvision==0.29.1
pip install timm==1.0.31 transformers==5.25.0 -e ".[integration]"
python -m pytest tests/integration
