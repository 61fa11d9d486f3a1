#!/usr/bin/env bash
# Wheels for bench/gpu_check.py on the lent GPU machine (Python 3.12, no network): the packages its
# image lacks (pydantic, sqlite-utils) and the versions of transformers / accelerate / peft / hub /
# tokenizers this project is tested with here. Downloads into .whl/ (git-ignored) and prints the
# device.run command that installs them and runs the check. Run it from the repository root.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
grep -qxF '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
rm -rf .whl && mkdir -p .whl
pinned=$("$PY" - <<'PY'
from importlib.metadata import version
print(" ".join(f"{n}=={version(n)}" for n in
      ("transformers", "accelerate", "peft", "huggingface-hub", "tokenizers", "pydantic", "pydantic-core",
       "annotated-types", "typing-inspection", "sqlite-utils", "sqlite-fts4", "click-default-group", "hf-xet",
       # hub 2.x and transformers 5.2x need these newer than (or absent from) the image's
       "httpx2", "httpcore2", "truststore", "h11", "anyio", "click", "typing-extensions", "regex", "kernels",
       "tomlkit", "typer", "annotated-doc", "safetensors")))
PY
)
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl $pinned
du -sh .whl
cat <<'CMD'
device.run, carry [".whl"], timeout_s 600, command:
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 || exit; nvidia-smi --query-gpu=name,memory.total --format=csv; python3 bench/gpu_check.py 2>&1 | grep -v '^Loading weights'
CMD
