# guppy: `make demo` trains the fish (on CPU, in minutes); `make test` runs the whole suite.
# Both create or refresh a local virtualenv in .venv first.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# torch is pinned here (a CPU wheel that lies on disk); the package itself asks only torch>=2.3.
TORCH  := torch==2.13.0

.PHONY: demo demo-induction reference reference-figures dashboard test test-fast lint venv venv-tl4 clean

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

# TransformerLens 4 and nnsight live in a second virtualenv: SAELens (in .venv) needs transformer-lens<4 and
# transformers<6, TransformerLens 4 transformers>=5.9, so one environment cannot hold both (pyproject.toml,
# the interop extra). It runs only their tests; GUPPY_TL4_RUN=1 makes a missing TransformerLens 4 or nnsight
# a failure there, not a skip
TL4       := .venv-tl4
TL4_STAMP := $(TL4)/.installed-stamp
TL4_TESTS := tests/test_transformer_lens4.py tests/test_nnsight.py

venv-tl4: $(TL4_STAMP)

$(TL4_STAMP): pyproject.toml Makefile
	test -x $(TL4)/bin/python || $(PYTHON) -m venv $(TL4)
	$(TL4)/bin/python -m pip install -q --upgrade pip
	$(TL4)/bin/python -m pip install -q $(TORCH)
	$(TL4)/bin/python -m pip install -q -e '.[interop]' 'pytest>=8'
	touch $@

# the main job: data, a recorded training run of the demo preset, then the fish talks and is scored
# (--loss-on all: learning the prompts too lifts the held-out persona eval from ~84% to ~89%; a peak lr
#  of 2e-3 instead of 3e-3 helps a little; 12 held-out prompts per topic (720) measure the pass rate
#  to about +-1%, where 2 per topic (120) scatter by +-3% between runs of one recipe)
DEMO_RUN := demo-$(shell date +%Y%m%d-%H%M%S)
demo: $(STAMP)
	$(BIN)/guppy-data --persona fish --samples 3
	$(BIN)/guppy-train --preset demo --epochs 2 --loss-on all --lr 2e-3 --min-lr 2e-4 --record --run-name $(DEMO_RUN)
	$(BIN)/guppy-chat --run runs/$(DEMO_RUN) --temperature 0 -p "hi guppy" -p "what is the meaning of life?" \
		-p "do you like money?" -p "IS THE WATER COLD?" -p "the cat is watching you"
	$(BIN)/guppy-eval --run runs/$(DEMO_RUN) --prompts 12
	@$(call next_step,$(DEMO_RUN))

# the reference fish: the 8.7M `guppy` preset, recorded, on its recipe (PRESET_RECIPES in
# guppy/config.py: 1 epoch, lr 1e-3 -> 1e-4, warmup 100, loss on every token, no dropout);
# docs/reference.md has what it measured
REFERENCE_RUN := reference-$(shell date +%Y%m%d-%H%M%S)
reference: $(STAMP)
	$(BIN)/guppy-data --persona fish --samples 0
	$(BIN)/guppy-train --preset guppy --record --run-name $(REFERENCE_RUN)
	$(BIN)/guppy-eval --run runs/$(REFERENCE_RUN) --prompts 12
	@$(call next_step,$(REFERENCE_RUN))

# docs/reference.md's "What the reference fish learned" figures (docs/reference/*.png) from a recorded reference run,
# the newest runs/reference-* unless RUN=runs/<name>: the probe scripts on its snapshots, then the PNGs and
# their numbers (~4 minutes for the 8.7M model on a busy 2-core machine)
RUN ?= $(lastword $(sort $(wildcard runs/reference-*)))
reference-figures: $(STAMP)
	@test -n "$(RUN)" || { echo "make reference-figures: no runs/reference-* folder: make reference first, or give RUN=runs/<name>"; exit 1; }
	$(BIN)/python experiments/reference_figures.py --run $(RUN) --out docs/reference

# an induction head forming on memory chats and say-it-back chats of random tokens (docs/induction.md):
# train with recall and head scores measured every 50 steps, ablate each head, draw docs/induction.md's figures (see there for its time)
INDUCTION_RUN := induction-$(shell date +%Y%m%d-%H%M%S)
demo-induction: $(STAMP)
	$(BIN)/python -m experiments.induction --run-name $(INDUCTION_RUN)
	$(BIN)/python probes/recall_heads.py --run runs/$(INDUCTION_RUN)
	$(BIN)/python probes/induction_frames.py --run runs/$(INDUCTION_RUN)
	$(BIN)/python probes/head_types.py --run runs/$(INDUCTION_RUN)
	$(BIN)/python experiments/induction_figures.py --run runs/$(INDUCTION_RUN) --out docs/induction
	@$(call next_step,$(INDUCTION_RUN))

# the dashboard on localhost over runs/ (PORT=8502 make dashboard for another port); the trainings above end by
# printing its command and the link to their own run
PORT ?= 8501
next_step = echo "next: make dashboard, then open http://localhost:$(PORT)/?run=$(1)"
dashboard: $(STAMP)
	$(BIN)/streamlit run dashboards/app.py --server.port $(PORT) -- --runs-dir runs

# pyflakes and import order over the whole tree (settings in pyproject.toml), before the tests
lint: $(STAMP)
	$(BIN)/ruff check .

# the browser test drives Debian's Chromium (never a downloaded browser build): installed where this
# user can (root with apt-get, as in CI); elsewhere that one test is skipped with its reason.
# The TransformerLens 4 / nnsight tests run first, in .venv-tl4, so the last summary line is the main suite's
test: lint $(TL4_STAMP)
	@test -x /usr/bin/chromium || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
		&& apt-get update -qq && apt-get install -y -qq chromium; } \
		|| echo "make test: no /usr/bin/chromium and it cannot be installed here: the browser test is skipped"
	GUPPY_TL4_RUN=1 $(TL4)/bin/python -m pytest -q $(TL4_TESTS)
	$(BIN)/python -m pytest -q

# the suite without the tests marked slow (a quick check while working; CI runs `make test`)
test-fast: lint
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) $(TL4) .pytest_cache .hypothesis
