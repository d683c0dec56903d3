# The two commands of the README. Both create .venv and install what is needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# PyPI's torch is a CUDA build of several GB. On a machine without a GPU,
# `make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu` takes PyTorch's CPU build instead.
TORCH_INDEX ?=

.PHONY: demo test lock bench bench-peers bench-gpu clean

# Every install takes its versions from constraints.txt, the lock of all extras for Python 3.11 to
# 3.13 (`make lock` refreshes it): pip then has one candidate per package and never backtracks.
# The demo installs clipsae alone; the tests add the test extras on top.
PIP_VERSION := 26.3
PIP_INSTALL = $(BIN)/python -m pip install --progress-bar on -c constraints.txt $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))
TEST_STAMP := $(VENV)/.installed-test

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q pip==$(PIP_VERSION)

$(STAMP): pyproject.toml constraints.txt | $(VENV)/bin/python
	@echo "installing clipsae and its dependencies into $(VENV) (torch: $(if $(TORCH_INDEX),from $(TORCH_INDEX),PyPI's CUDA build; set TORCH_INDEX for another))"
	$(PIP_INSTALL) -e .
	touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	@echo "installing the test extras into $(VENV)"
	$(PIP_INSTALL) -e '.[test]'
	touch $(TEST_STAMP)

# uv resolves every extra for every supported Python at once (--universal) in seconds, and keeps
# the versions constraints.txt already pins unless told otherwise: `make lock UPGRADE=--upgrade`,
# or UPGRADE='--upgrade-package zarr' for one package.
UV_VERSION := 0.13.9
UPGRADE ?=
lock: | $(VENV)/bin/python
	$(BIN)/python -m pip install -q uv==$(UV_VERSION)
	$(BIN)/uv pip compile pyproject.toml --all-extras --universal --python-version 3.11 --custom-compile-command "make lock" $(UPGRADE) -o constraints.txt

demo: $(STAMP)
	$(BIN)/clipsae demo --out demo_out

test: $(TEST_STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

bench: $(TEST_STAMP)
	$(BIN)/python bench/extract_vs_forward.py
	$(BIN)/python bench/store_write.py
	$(BIN)/python bench/store_read.py
	$(BIN)/python bench/checksum.py
	$(BIN)/python bench/train_step.py
	$(BIN)/python bench/train_loader.py
	$(BIN)/python bench/encode.py
	$(BIN)/python bench/topk.py
	$(BIN)/python bench/analyze_memory.py
	$(BIN)/python bench/correlate.py
	$(BIN)/python bench/monosemanticity.py
	$(BIN)/python bench/report.py
	$(BIN)/python bench/report_index.py  # needs Debian's chromium and chromium-driver
	$(BIN)/python bench/checkpoint.py
	$(BIN)/python bench/train_run.py
	$(BIN)/python bench/train_memory.py
	$(BIN)/python bench/sparse_probe.py
	$(BIN)/python bench/baselines.py
	$(BIN)/python bench/patch_probe.py
	$(BIN)/python -m bench.absorption

# The peers' own training steps, in a venv of their own so their pins never touch ours.
PEERS := .venv-peers
$(PEERS)/.installed:
	test -x $(PEERS)/bin/python || $(PYTHON) -m venv $(PEERS)
	$(PEERS)/bin/python -m pip install -q "torch>=2.14" eai-sparsify sae-lens
	touch $@

bench-peers: $(TEST_STAMP) $(PEERS)/.installed
	$(BIN)/python bench/train_step.py --peers-python $(PEERS)/bin/python

# The GPU figures of docs/benchmarks.md, on a machine with CUDA (ViT-L-14 at bf16, SAEs at d=1024).
bench-gpu: $(TEST_STAMP) $(PEERS)/.installed
	$(BIN)/python bench/extract_vs_forward.py --model ViT-L-14 --layers 20,22 --tokens all --batch 256 --images 4096 --image-size 400 --loader-workers 14 --device cuda --precision bf16
	$(BIN)/python bench/extract_vs_forward.py --model ViT-L-14 --layers embed --tokens cls --batch 256 --images 4096 --image-size 400 --loader-workers 14 --device cuda --precision bf16
	$(BIN)/python bench/train_step.py --d 1024 --expansion 16 --batch 4096 --device cuda --precision bf16 --peers-python $(PEERS)/bin/python
	$(BIN)/python bench/train_step.py --d 1024 --expansion 64 --batch 4096 --device cuda --precision bf16
	$(BIN)/python bench/train_memory.py --device cuda
	$(BIN)/python bench/train_run.py --d 1024 --tokens 257 --images 8192 --steps 600 --device cuda --precision bf16 --threads 16
	$(BIN)/python bench/checkpoint.py
	$(BIN)/python bench/encode.py --d 1024 --expansion 16 --device cuda
	$(BIN)/python bench/topk.py --d 1024 --latents 16384,65536 --device cuda
	$(BIN)/python bench/correlate.py --device cuda
	$(BIN)/python bench/patch_probe.py --device cuda

clean:
	rm -rf $(VENV) $(PEERS) demo_out
