# Convenience entry points; the build itself is CMake.
#   make demo   install dependencies, build, run the demo VM on the best backend available
#   make check  install dependencies, build with -Werror, run the whole test suite, then the
#               same suite under AddressSanitizer + UndefinedBehaviorSanitizer, then the docs
BUILD ?= build
JOBS ?= $(shell nproc)

.PHONY: all deps build demo check check-asan docs clean

all: build

deps:
	@./scripts/deps.sh

build: deps
	cmake -S . -B $(BUILD) -DVMM_WERROR=ON >/dev/null
	cmake --build $(BUILD) -j $(JOBS)

demo: build
	$(BUILD)/examples/hello-vmm $(BUILD)/guest/demo.elf

check: build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)
	$(MAKE) check-asan docs

check-asan: deps
	cmake -S . -B $(BUILD)-asan -DVMM_WERROR=ON -DVMM_SANITIZE=ON -DVMM_BUILD_BENCH=OFF -DVMM_BUILD_DOCS=OFF >/dev/null
	cmake --build $(BUILD)-asan -j $(JOBS)
	cd $(BUILD)-asan && ctest --output-on-failure -j $(JOBS) -LE nested

docs: build
	cmake --build $(BUILD) --target docs

clean:
	rm -rf $(BUILD) $(BUILD)-asan
