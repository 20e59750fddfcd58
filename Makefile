# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# Both create .venv when missing and install the pinned stack from requirements.lock.
PY      := .venv/bin/python
PIP     := .venv/bin/pip
STAMP   := .venv/.installed

.PHONY: demo test test-slow bench bench-targets bench-speed bench-cwac bench-recon bench-vit bench-qft arm-setup venv clean

venv: $(STAMP)

# Every package is pinned in requirements.lock and installed with --no-deps, so nothing
# outside the lock is ever pulled: no CUDA torch, no torchvision (PyPI only has CUDA builds
# of it, which fail to load next to the CPU torch), no NCCL for xgboost.
$(STAMP): requirements.lock pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PIP) install -q --disable-pip-version-check --no-deps -r requirements.lock
	$(PIP) install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m tvmptq demo

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

bench: $(STAMP)
	$(PY) scripts/bench_baseline.py

# aarch64 without a board (issue 5): Debian's cross compiler and qemu-user (apt, as root or with
# sudo), then an arm64 sysroot with python3.11 and the aarch64 TVM wheel in build/arm64
# (scripts/setup_arm64.sh: about 110 MB downloaded, 450 MB on disk, under a minute).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
arm-setup: $(STAMP)
	command -v qemu-aarch64 >/dev/null && command -v aarch64-linux-gnu-gcc >/dev/null || \
	  { $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq \
	    gcc-aarch64-linux-gnu g++-aarch64-linux-gnu qemu-user; }
	scripts/setup_arm64.sh

# results/targets.md (EfficientNet-Lite0 and digits; see scripts/bench_targets.py)
bench-targets: $(STAMP) arm-setup
	$(PY) scripts/bench_targets.py

# results/speed.md (issue 6): PyTorch, ONNX Runtime and TVM FP32/int8 at batch 1, 1 and 2 threads,
# kernel proof, bit-exactness, Arm instruction counts (see scripts/bench_speed.py; about an hour)
bench-speed: $(STAMP) arm-setup
	$(PY) scripts/bench_speed.py

# results/cwac.md (issue 4; about 85 min on 2 cores), then EfficientNet W4A4 fitted on all
# calibration samples and the cross-scene check that explains it (about 35 min more)
# results/reconstruction.md: digits, EfficientNet-Lite0 and MiniLM rows (hours on 2 cores)
bench-recon: $(STAMP)
	$(PY) scripts/bench_reconstruction.py

# results/vit.md (issue 26): digits_vit W8A8..W2A4, baseline/CWAC/AdaRound/BRECQ/WAPS, ORT int8 latency
bench-vit: $(STAMP)
	$(PY) scripts/bench_vit.py

# results/qft.md (issue 20): digits, EfficientNet-Lite0 and MiniLM rows: baseline, CLE, CWAC, QFT,
# CWAC+QFT, BRECQ+QFT (digits with --compile: ~10 min; EfficientNet/MiniLM rows take hours on 2 cores)
bench-qft: $(STAMP)
	$(PY) scripts/bench_qft.py --rows digits_resnet:W4A8 digits_resnet:W4A4 digits_resnet:W2A4 --compile
	$(PY) scripts/bench_qft.py --append --rows efficientnet_lite0:W4A8 efficientnet_lite0:W8A8 \
	  efficientnet_lite0:W4A4 minilm_l6:W4A8

bench-cwac: $(STAMP)
	$(PY) scripts/bench_cwac.py --models digits_resnet efficientnet_lite0 minilm_l6 --fit-samples 64 \
	  --ablation --ablation-bits digits_resnet:W2A4 digits_resnet:W4A4 efficientnet_lite0:W4A4 minilm_l6:W8A8 --latency-bits W4A4
	$(PY) scripts/bench_cwac.py --models efficientnet_lite0 --bits W4A4 --fit-samples 256 --ablation --ablation-set select \
	  --no-latency --out results/cwac_efficientnet_w4a4_fit256.md
	$(PY) scripts/cwac_scene_shift.py

clean:
	rm -rf .venv build *.egg-info
