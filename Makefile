# cityviz — the two commands a new user needs:
#   make demo   build the embedded synthetic data set, precompute everything, serve the dashboard
#   make test   lint + the test suite (unit, pipeline, AppTest, real browser) except the tests
#               marked `scale`; about 15 minutes on a quiet 2-core CPU
# and for the slow checks kept out of it:
#   make test-slow   the tests marked `scale` (pytest -m scale): repeats of what `make test`
#                    already proves, at a larger size or through another entry point
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
CACHE  ?= cache/synthetic-demo
PROFILE ?= demo
PORT   ?= 8501
HOST   ?= 127.0.0.1
ARGS   ?=

.PHONY: demo precompute serve test test-slow lint bench soak clean-cache

$(BIN)/.runtime: requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt
	touch $@

$(BIN)/.dev: $(BIN)/.runtime requirements-dev.txt requirements-scale.txt
	$(BIN)/python -m pip install -q -r requirements-dev.txt
	touch $@

demo: precompute
	@echo ""
	@echo "Serving the dashboard at http://$(HOST):$(PORT)  (Ctrl-C to stop)"
	$(BIN)/streamlit run app.py --server.address $(HOST) --server.port $(PORT) \
		--server.headless true --browser.gatherUsageStats false -- --cache $(CACHE)

precompute: $(BIN)/.runtime
	$(BIN)/python -m precompute --profile $(PROFILE) --cache $(CACHE) $(ARGS)

serve: $(BIN)/.runtime
	$(BIN)/streamlit run app.py --server.address $(HOST) --server.port $(PORT) \
		--server.headless true --browser.gatherUsageStats false -- --cache $(CACHE)

lint: $(BIN)/.dev
	$(BIN)/ruff check .

test: $(BIN)/.dev
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -p no:cacheprovider -m "not scale" $(ARGS)

test-slow: $(BIN)/.dev
	$(BIN)/python -m pytest -q -p no:cacheprovider -m scale $(ARGS)

bench: $(BIN)/.dev
	$(BIN)/python -m bench.train
	$(BIN)/python -m bench.cam
	$(BIN)/python -m bench.embed

# 200 uploads on one server (RSS before, during, after) and 8 browser sessions at once (p50/p95
# against one session alone); not part of `make test`
soak: $(BIN)/.dev
	$(BIN)/python -m bench.soak --uploads 200 --sessions 8 $(if $(wildcard $(CACHE)/manifest.json),--cache $(CACHE))

clean-cache:
	rm -rf $(CACHE)
