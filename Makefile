# Two commands a newcomer needs: `make demo` (the main job) and `make test` (the whole suite).
# Each creates .venv on first use with exactly the tested set: pyproject.toml's ranges,
# constrained to the versions in requirements/lock.txt.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCK := requirements/lock.txt
LOCK_VENV := .venv-lock
NEWEST_VENV := .venv-newest

.PHONY: install demo test test-newest lint format lock clean

$(STAMP): pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c $(LOCK) -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m mlb_jax.train --config=configs/synthetic_av.py --workdir=runs/demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest -n 2 --dist loadfile --no-loadscope-reorder

# The other end of pyproject.toml's ranges: a fresh venv with '.[train,test]' and no lock, so pip
# picks the newest versions the ranges allow (a new release that breaks us fails here first).
# A small selection keeps it short: the balancing core, one tiny training run with its
# evaluation, and the run + compare on a non-local filesystem (etils, TensorFlow, Orbax together).
NEWEST_VERSIONS := jax|jaxlib|flax|optax|orbax[-_]checkpoint|tensorstore|etils|tensorflow[-_]cpu|tensorflow[-_]datasets|tensorboard|numpy
NEWEST_TESTS := tests/test_balancing_transform.py tests/test_balancing_masks.py \
	tests/test_balancing_scores.py tests/test_train.py::test_results_contract_and_loss_decreases \
	tests/test_cloud_paths.py

test-newest:
	rm -rf $(NEWEST_VENV)
	$(PYTHON) -m venv $(NEWEST_VENV)
	$(NEWEST_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(NEWEST_VENV)/bin/python -m pip install --quiet -e '.[train,test]'
	$(NEWEST_VENV)/bin/python -m pip list --format=freeze | grep -iE '^($(NEWEST_VERSIONS))=='
	$(NEWEST_VENV)/bin/python -m pytest -n 2 --dist loadfile $(NEWEST_TESTS)

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Re-resolve the lock: install '.[test]' without constraints into a scratch venv (pip picks the
# newest versions pyproject.toml's ranges allow) and freeze it into $(LOCK), keeping the file's
# comment header. `--all` keeps wheel (a runtime dependency of TensorFlow's astunparse); pip and
# setuptools are the venv's own. Then `make clean test` to test the new set before committing the lock.
lock:
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(LOCK_VENV)/bin/python -m pip install --quiet -e '.[test]'
	grep '^#' $(LOCK) > $(LOCK).new
	$(LOCK_VENV)/bin/python -m pip freeze --exclude-editable --all \
		| grep -vE '^(pip|setuptools)==' >> $(LOCK).new
	mv $(LOCK).new $(LOCK)
	rm -rf $(LOCK_VENV)

clean:
	rm -rf $(VENV) $(LOCK_VENV) $(NEWEST_VENV) .pytest_cache .ruff_cache .jax_cache
