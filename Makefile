# The two commands of the README: `make demo` and `make test`, on a fresh machine
# with nothing but Python 3.11 and make.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO := demo
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: readme record-tests record-demo install demo tune-demo export-demo test test-fast test-exports lint format notebook benchmark clean

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

# Sample ABO data in the real layout -> data report -> records -> data audit -> a short training run
# -> SavedModel -> evaluation report -> classical baselines and the comparison table -> predictions.
# It replaces only what it writes (the folders below and summary.json): demo/tune and anything else stay.
DEMO_OUTPUTS := abo truth.json records analysis audit features run evaluation baselines summary.json
demo: install
	rm -rf $(addprefix $(DEMO)/,$(DEMO_OUTPUTS))
	mkdir -p $(DEMO)
	$(BIN)/python -m abo_tf.sample $(DEMO)/abo --listings 800 --seed 0 --truth $(DEMO)/truth.json
	$(BIN)/python -m abo_tf.build_records --listings $(DEMO)/abo --images $(DEMO)/abo \
		--output $(DEMO)/records --image-selection all --min-examples-per-class 20
	$(BIN)/python -m abo_tf.analyze --listings $(DEMO)/abo --images $(DEMO)/abo --records $(DEMO)/records \
		--report $(DEMO)/analysis --no-progress
	$(BIN)/python -m abo_tf.audit --records $(DEMO)/records --report $(DEMO)/audit --cache-dir $(DEMO)/features \
		--truth $(DEMO)/truth.json --no-progress
	$(BIN)/python -m abo_tf.train --config pipelines/demo.toml --records $(DEMO)/records --output $(DEMO)/run
	$(BIN)/python -m abo_tf.evaluate --model $(DEMO)/run --records $(DEMO)/records \
		--report $(DEMO)/evaluation --no-progress
	$(BIN)/python -m abo_tf.baselines --records $(DEMO)/records --features handcrafted \
		--model logreg linear_svm rbf_svm sgd --output $(DEMO)/baselines --cache-dir $(DEMO)/features --runs $(DEMO) --no-progress
	$(BIN)/python -m abo_tf.predict --model $(DEMO)/run/saved_model $$(ls $(DEMO)/abo/images/small/0*/*.jpg | head -n 4)
	$(BIN)/python -m abo_tf.summarize $(DEMO)

# After `make demo`: the demo model in every export format, with parity and latency (benchmarks/results/export.md).
export-demo: install
	test -f $(DEMO)/run/saved_model/saved_model.pb || $(MAKE) demo
	$(BIN)/python benchmarks/export_benchmark.py --run $(DEMO)/run

# After `make demo`: a short hyperparameter search around pipelines/demo.toml (6 trials of 3 epochs, pruned).
tune-demo: install
	test -f $(DEMO)/records/manifest.json || $(MAKE) demo
	$(BIN)/python -m abo_tf.tune --config pipelines/demo.toml --records $(DEMO)/records --output $(DEMO)/tune \
		--trials 6 --epochs 3 --seed 0

test: install
	$(BIN)/python -m pytest -q -n 2

# The export matrix with VGG16, ResNet50, EfficientNetV2 and ConvNeXt too (their conversions take minutes; `make test`
# converts the small two), and the whole parity matrix: every backbone under every --weights (`make test` builds a
# covering set: each backbone and each --weights route once, every route on VGG16).
test-exports: install
	ABO_TF_EXPORT_ALL_BACKBONES=1 $(BIN)/python -m pytest -q -n 2 tests/test_conversion.py tests/test_parity.py

# The tests not marked slow (no training, no subprocess pipelines): under a minute.
test-fast: install
	$(BIN)/python -m pytest -q -n 2 -m "not slow"

# The README's measured figures: rendered from benchmarks/results/ (tests/test_readme.py fails on a stale block).
readme: install
	$(BIN)/python benchmarks/readme.py

# The whole suite, its size and time recorded for the README (benchmarks/results/test_suite.json).
record-tests: install
	ABO_TF_SUITE_REPORT=$(CURDIR)/.suite-report.json $(BIN)/python -m pytest -q -n 2
	$(BIN)/python benchmarks/readme.py --record-suite "make test" .suite-report.json

# After `make demo`: its summary recorded for the README (benchmarks/results/demo.json).
record-demo: install
	$(BIN)/python benchmarks/readme.py --record-demo $(DEMO)

lint: install
	$(BIN)/ruff check abo_tf tests benchmarks notebooks/execute.py
	$(BIN)/ruff format --check abo_tf tests benchmarks notebooks/execute.py

format: install
	$(BIN)/ruff check --fix abo_tf tests benchmarks notebooks/execute.py
	$(BIN)/ruff format abo_tf tests benchmarks notebooks/execute.py

# Runs the exploration notebook and saves it with its outputs (figures embedded), as committed.
notebook: install
	$(BIN)/python notebooks/execute.py notebooks/abo_exploration.ipynb

# Figures for the README; about 1 h 30 on 2 cores. Run on an otherwise idle machine.
benchmark: install
	$(BIN)/python benchmarks/build_records_benchmark.py
	$(BIN)/python benchmarks/input_pipeline_benchmark.py
	$(BIN)/python benchmarks/baselines_benchmark.py
	$(BIN)/python benchmarks/baselines_search_benchmark.py
	$(BIN)/python benchmarks/audit_benchmark.py
	$(BIN)/python benchmarks/tune_benchmark.py

clean:
	rm -rf $(VENV) $(DEMO) runs
