# Two entry points: `make demo` (set up, then purify the embedded Fashion-MNIST BadNets victim two ways)
# and `make test` (set up, then run the test suite). Both work on a fresh Debian machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
FMNIST := /usr/share/datasets/fashion-mnist
CGAL := /usr/share/datasets/cgal-meshes
# Debian packages holding the embedded real data: images, translation pairs, WordNet, Apertium (paraphrases)
APT_DATA := dataset-fashion-mnist trans-de-en wordnet-base apertium apertium-eng-spa espeak-ng
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup apt-data demo test bench clean

$(BIN)/nftkit: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e ".[test]"
	touch $@

apt-data:
	@dpkg -s $(APT_DATA) >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(APT_DATA); }

# the CGAL demo meshes (point clouds) are unpacked from the .deb, not installed (installing pulls 82 packages)
$(CGAL): | apt-data
	cd /tmp && $(SUDO) apt-get download libcgal-demo && $(SUDO) dpkg -x libcgal-demo_*_all.deb /tmp/cgal-demo
	$(SUDO) mkdir -p $(CGAL)
	$(SUDO) tar xzf /tmp/cgal-demo/usr/share/doc/libcgal-dev/data.tar.gz -C $(CGAL) --strip-components=2 data/meshes

setup: $(BIN)/nftkit apt-data $(CGAL)

# the same cached victim purified twice: with NFT (which leaves this backdoor) and with the projection (which cuts it)
demo: setup
	$(BIN)/nftkit recipe run image/fmnist_badnets
	$(BIN)/nftkit recipe run image/fmnist_badnets defense.method=clean_subspace

test: setup
	$(BIN)/pytest

clean:
	rm -rf $(VENV) runs build *.egg-info
