# Convenience entry points; the build itself is CMake.
#   make demo   install dependencies, build, run the demo VM on the best backend available
#   make check  install dependencies, build with -Werror, run the whole test suite, then the
#               same suite under AddressSanitizer + UndefinedBehaviorSanitizer, then the docs,
#               then each fuzz target for FUZZ_SECONDS
#   make fuzz   build the libFuzzer targets with clang in $(BUILD)-fuzz and run each briefly
BUILD ?= build
JOBS ?= $(shell nproc)
FUZZ_SECONDS ?= 20

.PHONY: all deps build demo check check-asan docs fuzz clean

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
	$(MAKE) check-asan docs fuzz

check-asan: deps
	cmake -S . -B $(BUILD)-asan -DVMM_WERROR=ON -DVMM_SANITIZE=ON -DVMM_BUILD_BENCH=OFF -DVMM_BUILD_DOCS=OFF >/dev/null
	cmake --build $(BUILD)-asan -j $(JOBS)
	cd $(BUILD)-asan && ctest --output-on-failure -j $(JOBS) -LE nested

docs: build
	cmake --build $(BUILD) --target docs

# Each target runs on a scratch copy of its seed corpus (tests/fuzz/corpus/NAME) for
# FUZZ_SECONDS; a crash fails the build and leaves the input in $(BUILD)-fuzz/findings.
fuzz: deps
	@if ! command -v clang >/dev/null 2>&1; then echo "fuzz: clang not found, skipped"; exit 0; fi; \
	set -e; \
	cmake -S . -B $(BUILD)-fuzz -DCMAKE_C_COMPILER=clang -DVMM_FUZZ=ON -DVMM_SANITIZE=ON -DVMM_WITH_BT=OFF \
	  -DVMM_WITH_PV=OFF -DVMM_BUILD_BENCH=OFF -DVMM_BUILD_DOCS=OFF >/dev/null; \
	cmake --build $(BUILD)-fuzz --target fuzz -j $(JOBS); \
	mkdir -p $(BUILD)-fuzz/findings; \
	for d in tests/fuzz/corpus/*/; do \
	  t=$$(basename $$d); rm -rf $(BUILD)-fuzz/work-$$t; cp -r $$d $(BUILD)-fuzz/work-$$t; \
	  echo "fuzz_$$t: $(FUZZ_SECONDS) s"; \
	  $(BUILD)-fuzz/tests/fuzz/fuzz_$$t -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 \
	    -print_final_stats=1 -artifact_prefix=$(BUILD)-fuzz/findings/ $(BUILD)-fuzz/work-$$t \
	    2>&1 | tail -n 12; \
	  test -z "$$(ls $(BUILD)-fuzz/findings)" || { echo "fuzz_$$t found a crash:"; ls $(BUILD)-fuzz/findings; exit 1; }; \
	done

clean:
	rm -rf $(BUILD) $(BUILD)-asan $(BUILD)-fuzz
