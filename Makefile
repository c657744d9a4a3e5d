# ft_dist — every target sets up .venv first when it is missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test test-heavy lint format clean

install: $(STAMP)

# Torch comes first and pinned so pip takes the release on local disk, not a fresh download.
$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

# The slowest tests are listed at the end, so a test that grows slow gets noticed.
test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not heavy" --durations=10

# Minutes of CPU each: inductor compiles, ResNet-50 export sizes, the GPU check on CPU.
test-heavy: $(STAMP)
	$(BIN)/python -m pytest -q -m heavy

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache

# Submit the ImageNet ensembles (ResNet-50) to the Ray cluster at RAY_ADDRESS as Ray jobs:
#   make imagenet-edst DATA=/shared/imagenet-shards RAY_ADDRESS=http://HEAD:8265 [ARGS="k=v ..."]
# DATA: shards written by `ft-dist shards imagefolder`, readable from every node.
.PHONY: imagenet-edst imagenet-dst-ensemble
imagenet-edst imagenet-dst-ensemble: | $(STAMP)
	@if [ -z "$(RAY_ADDRESS)" ]; then echo "error: set RAY_ADDRESS=http://HEAD:8265, the dashboard address of the Ray cluster (see launch/README.md)" >&2; exit 2; fi
	@if [ -z "$(DATA)" ]; then echo "error: set DATA=/path/to/imagenet-shards (from ft-dist shards imagefolder, on storage every node can read)" >&2; exit 2; fi
	launch/submit.sh configs/$(subst -,_,$@).yaml data.root=$(DATA) $(ARGS)

# The old name of imagenet-dst-ensemble; still works.
.PHONY: imagenet-pdst
imagenet-pdst:
	@echo "note: make imagenet-pdst is now make imagenet-dst-ensemble" >&2
	@$(MAKE) --no-print-directory imagenet-dst-ensemble

# The main job: EDST (M=3, density 0.2) on bundled MNIST through a local Ray cluster,
# evaluated, with a report; prints the path of report.json last. RUN_NAME=x for a new run.
# Fault injection (not part of `make test`; ~12 minutes on 2 cores): an elastic EDST run and
# a DST Ensemble on the local multi-node cluster through seeded schedules of faults (kills
# during the exploration, in a checkpoint write, of a node across an elastic resize, of the
# job driver, of a member; a full disk), each checked bit-identical against an
# uninterrupted run; prints a table of the faults per seed. SEEDS="1 2" for other or more
# schedules (default 0; ~8 minutes a seed), KEEP=1 to keep the runs and logs (/tmp/ftchaos).
.PHONY: chaos
chaos: $(STAMP)
	$(BIN)/python launch/chaos.py --seeds $(or $(SEEDS),0) $(if $(KEEP),--keep)

.PHONY: demo compare
demo: $(STAMP)
	bash launch/demo.sh

# The miniature paper table: dense, DST, static ensemble, EDST and DST Ensemble on the
# bundled data with matched budgets, plus channel-level EDST (half of the channels, three
# quarters of the first conv's: on 28 px digits its one-input-channel conv, ReLU and pooling
# cost time in proportion to its channels, so it decides whether 3 slim members beat 1 dense).
compare: $(STAMP)
	@test -f data/mnist/train/manifest.json || $(BIN)/ft-dist shards mnist --out data/mnist
	$(BIN)/ft-dist compare configs/demo_edst.yaml --channel-group-sparsity features.0=0.75

# GPU readiness in one command (about 5 minutes on one GPU): sparse vs dense images/s
# (eager and torch.compile), DDP/DeepSpeed invariants on the GPU, GPU JPEG decode, the demo
# through Ray on the GPU. Table on stderr, JSON on stdout and in runs/gpu-check.json;
# says so and exits 0 on a machine without a GPU. ARGS="--budget 540" for more time.
.PHONY: gpu-check
gpu-check: $(STAMP)
	$(BIN)/ft-dist bench gpu --json --out runs/gpu-check.json $(ARGS)
