# Two entry points, each doing the whole set-up on a fresh machine:
#   make demo   -> venv + torch 2.13.0 (CPU) + this project with every extra, then the demo run
#   make test   -> the same set-up, then the whole test suite (slow and distributed tests included)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0

.PHONY: setup demo test bench clean

$(VENV)/.installed: setup.cfg setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==$(TORCH_VERSION)
	$(PY) -m pip install --quiet -e '.[all,test]'
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(PY) tools/train_net.py --config-file configs/demo.yaml
	$(PY) tools/vis_train_log.py --log-file outputs/demo/metrics.json --output-dir outputs/demo/plots

test: setup
	$(PY) -m pytest

bench: setup
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) bench/bench_storage.py

clean:
	rm -rf $(VENV) outputs training_plots
