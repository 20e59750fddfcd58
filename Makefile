# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# Both create .venv when missing and install the pinned stack from requirements.lock.
PY      := .venv/bin/python
PIP     := .venv/bin/pip
STAMP   := .venv/.installed

.PHONY: demo test test-slow bench venv clean

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

clean:
	rm -rf .venv build *.egg-info
