# SPDX-License-Identifier: GPL-2.0-or-later
#
# sQemu: make targets over configure, upstream's ninja build and our scripts.
# "make help" lists them.

SHELL := /bin/bash
TOP := $(abspath $(dir $(lastword $(MAKEFILE_LIST))))
OBJ := $(TOP)/build/qemu
NINJA_TARGETS := qemu-img qemu-io qemu-nbd qemu-system-x86_64 \
	storage-daemon/qemu-storage-daemon sqemu-unit-tests

# Paths under the checkout are hashed relative to it, so a fresh clone at
# another path still hits the compiler cache.
export CCACHE_BASEDIR := $(TOP)
# QEMU compiles with -g; do not hash the build directory into the key.
export CCACHE_NOHASHDIR := 1

.PHONY: all configure check check-python check-unit check-iotests demo bench deb \
	patches check-series series-status reset-src clean distclean help

# The build has modules, as Debian's does (TCG and qtest are modules too,
# which the binaries cannot run without): build every top-level module
# ninja knows, as listed by the configured build.
MODULES = $$(ninja -C $(OBJ) -t targets all | sed -n 's/^\([a-z0-9_-]*\.so\):.*/\1/p')

all: configure
	ninja -C $(OBJ) $(NINJA_TARGETS) $(MODULES)

# configure is cheap when nothing changed: it re-applies the series only
# when patches/ changed and re-links our files, so run it every time.
configure:
	@$(TOP)/configure

# configure first: it installs what the Python scripts need to start
# (python3 is not on a fresh machine)
check: configure
	$(TOP)/scripts/sqemu/run-tests

# the Python package's unit tests and flake8 (no build needed)
check-python: configure
	$(TOP)/scripts/sqemu/install-deps python
	$(TOP)/scripts/sqemu/run-tests --no-build --only python

check-unit: all
	meson test -C $(OBJ) --no-rebuild --suite sqemu --print-errorlogs

check-iotests: all
	cd $(OBJ)/tests/qemu-iotests && ./check -qcow2 -g sqemu

demo: configure
	$(TOP)/scripts/sqemu/demo

bench: all
	$(TOP)/scripts/sqemu/bench $(BENCH_ARGS)

# Debian packages from Debian's source package with the series added
deb: configure
	$(TOP)/scripts/sqemu/mkdeb $(DEB_ARGS)

patches:
	$(TOP)/scripts/sqemu/series export

check-series:
	$(TOP)/scripts/sqemu/series check

series-status:
	$(TOP)/scripts/sqemu/series status

reset-src:
	$(TOP)/scripts/sqemu/series reset

clean:
	rm -rf $(OBJ)

distclean:
	rm -rf $(TOP)/build

help:
	@echo 'make               configure (if needed) and build sQemu'
	@echo 'make check         build and run all tests (the CI command)'
	@echo 'make check-python  the Python package'"'"'s unit tests and flake8'
	@echo 'make check-unit    cmocka unit tests only'
	@echo 'make check-iotests the project'"'"'s iotests only'
	@echo 'make demo          the main job: chain, benchmark, VM boot'
	@echo 'make bench         scripts/sqemu/bench $$BENCH_ARGS'
	@echo 'make deb           Debian packages in build/deb (scripts/sqemu/mkdeb)'
	@echo 'make patches       export build/src commits to patches/'
	@echo 'make check-series  apply patches/ to upstream, run checkpatch'
	@echo 'make series-status what build/src holds beyond patches/'
	@echo 'make reset-src     drop unexported work in build/src'
	@echo 'make clean         remove build/qemu; distclean: all of build/'
