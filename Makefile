# Set-up is idempotent: `.venv` is created and the package installed (editable, with
# the test, app and ray extras) only when pyproject.toml or constraints.txt changed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint mini-models clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -c constraints.txt torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -c constraints.txt -e '.[test,app,ray]'
	touch $(STAMP)

setup: $(STAMP)

# Rectifies held-out examples with the bundled mini models; prints where the HTML report is.
demo: $(STAMP)
	$(BIN)/stablemotion demo --out outputs/demo

# Retrains the bundled stablemotion-mini models from scratch on this machine (CPU, ~1.5 h):
# see configs/mini_recipe.sh. ABLATION=1 also trains the regression baselines.
mini-models: $(STAMP)
	STABLEMOTION=$(BIN)/stablemotion bash configs/mini_recipe.sh

# pytest exits 5 when it collected no test: that is a failure here, not a pass.
test: $(STAMP)
	$(BIN)/ruff check .
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; fi; exit $$rc

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) outputs build *.egg-info src/*.egg-info
