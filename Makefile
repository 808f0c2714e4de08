# The two commands a newcomer types on a fresh machine (see README.md):
#   make demo   set up .venv and analyse the bundled real sample slide
#   make test   set up .venv with the test tools and run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# For the demo, torch is installed first and pinned: pip then takes a local CPU wheel of 2.13.0 where one lies
# in pip's find-links, and PyPI's build for this platform elsewhere. An existing torch in the venv is kept.
# (The test venv below takes torch 2.14.1 with the `pretrained` extra instead.)
TORCH_SPEC ?= torch==2.13.0

.PHONY: demo test sample-report clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed-base: pyproject.toml | $(BIN)/python
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e .
	touch $@

# The test venv also takes the `pretrained` extra (timm and torchvision), so that the suite tests that method
# for real. torchvision's pin decides torch there (2.14.1, a CUDA build that also runs on the CPU), so torch comes
# from this one resolve rather than from TORCH_SPEC first; the base install is then done as well.
$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[dev,server,dask,pretrained]"
	touch $(VENV)/.installed-base $@

demo: $(VENV)/.installed-base
	$(BIN)/tumls-qp demo

test: $(VENV)/.installed-dev groovy-tools
	$(BIN)/python -m pytest

# The QuPath script tests (tests/test_groovy_*.py) run groovy/ with Groovy 4, which ships inside the npm
# package npm-groovy-lint, against stand-ins for QuPath's classes that need Gson and JTS (Debian's
# libgoogle-gson-java and libjts-java, the libraries QuPath itself uses); Java 17 must be installed. Without them
# those tests are skipped, saying why.
GROOVY_LIB := .tools/node_modules/npm-groovy-lint/lib/java/groovy/lib
GSON_JAR := /usr/share/java/gson.jar
JTS_JAR := /usr/share/java/jts-core.jar
.PHONY: groovy-tools
groovy-tools: $(GROOVY_LIB) $(GSON_JAR) $(JTS_JAR)
$(GROOVY_LIB):
	@npm install --prefix .tools --no-audit --no-fund --silent npm-groovy-lint \
	  || echo "note: npm could not install npm-groovy-lint; the QuPath script tests will be skipped"
$(GSON_JAR):
	@DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libgoogle-gson-java >/dev/null 2>&1 \
	  || (apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive \
	      apt-get install -y -qq libgoogle-gson-java >/dev/null 2>&1) \
	  || echo "note: could not install Gson (as root: apt-get install libgoogle-gson-java); the QuPath script tests will be skipped"
$(JTS_JAR):
	@DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libjts-java >/dev/null 2>&1 \
	  || (apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive \
	      apt-get install -y -qq libjts-java >/dev/null 2>&1) \
	  || echo "note: could not install JTS (as root: apt-get install libjts-java); the QuPath script tests will be skipped"
# Not part of `make test`: regenerates reports/sample/ (PDF and page previews) and reports/report_timing.md.
sample-report: $(VENV)/.installed-dev
	$(BIN)/python benchmarks/report_sample.py

clean:
	rm -rf $(VENV) tumls-qp-demo .pytest_cache .tools
