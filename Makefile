# Set-up and everyday commands. Every target creates .venv first if it is missing.
VENV := .venv
PY := $(VENV)/bin/python
# torch first and pinned: this version installs a CPU build from the local disk; letting the
# project's range pick one would download a multi-GB CUDA build.
TORCH := torch==2.13.0

.PHONY: venv demo run test bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(VENV)/bin/crossfold demo examples/digits-adam.json

run: venv
	$(VENV)/bin/crossfold serve

# Two test processes: most tests wait on services (a fold, a server starting) more than
# they compute. Modules that share one expensive fixture (a whole service, an MLflow
# server, a Ray cluster) keep their tests in one process (xdist_group, tests/conftest.py).
test: venv
	$(PY) -m pytest -q -n 2 --dist loadgroup

bench: venv
	$(PY) bench/train_throughput.py

clean:
	rm -rf crossfold-data
