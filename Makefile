# Thin front door over CMake. `make run` and `make test` are the two commands of the README.
#   make run    install what is missing, build, generate text from $(DSLA_MODEL)
#   make test   install what is missing, build with warnings as errors, run every test
#               (then the unit and integration tests again under AddressSanitizer +
#               UndefinedBehaviorSanitizer; the integration tests' servers are sanitized too;
#               then each libFuzzer target of tests/fuzz for a few seconds)
BUILD ?= build
ASAN_BUILD ?= build-asan
FUZZ_BUILD ?= build-fuzz
FUZZ_SECONDS ?= 4
DSLA_MODEL ?= ../shared/models/stories260K-hf
PROMPT ?= Once upon a time
JOBS ?= $(shell nproc)
# nvcc is not always on PATH; CMake finds it through CUDACXX. Without it the CUDA backend is off.
NVCC := $(firstword $(wildcard /usr/local/cuda/bin/nvcc) $(shell command -v nvcc 2>/dev/null))
CMAKE_ENV := $(if $(NVCC),CUDACXX=$(NVCC),)

.PHONY: deps build run test test-asan test-fuzz bench clean

deps:
	@bash scripts/install-deps.sh

build: deps
	$(CMAKE_ENV) cmake -S . -B $(BUILD) -DDSLA_WERROR=ON
	cmake --build $(BUILD) -j $(JOBS)

run: build
	$(BUILD)/bin/dsla generate --model "$(DSLA_MODEL)" --prompt "$(PROMPT)" --max-tokens 200

test: build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)
	$(MAKE) test-asan
	$(MAKE) test-fuzz

test-asan: deps
	cmake -S . -B $(ASAN_BUILD) -DDSLA_CUDA=OFF -DDSLA_SANITIZE=ON -DDSLA_WERROR=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo
	cmake --build $(ASAN_BUILD) -j $(JOBS)
	cd $(ASAN_BUILD) && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
		ctest --output-on-failure -j $(JOBS) -L 'unit|integration'

# The fuzz targets (docs/security.md): clang, every library instrumented, each run FUZZ_SECONDS.
test-fuzz: deps
	CC=clang-14 cmake -S . -B $(FUZZ_BUILD) -DDSLA_CUDA=OFF -DDSLA_FUZZ=ON \
		-DDSLA_FUZZ_SECONDS=$(FUZZ_SECONDS) -DCMAKE_BUILD_TYPE=RelWithDebInfo
	cmake --build $(FUZZ_BUILD) -j $(JOBS) --target fuzz_envelope fuzz_safetensors fuzz_config \
		fuzz_tokenizer fuzz_http_body
	cd $(FUZZ_BUILD) && ctest --output-on-failure -j $(JOBS) -L fuzz

bench: build
	$(BUILD)/bin/bench_cpu_infer

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) $(FUZZ_BUILD)

# A relocatable tarball of the binaries, their libraries and the client stub (deploy/README.md).
.PHONY: bundle
bundle: build
	bash deploy/bundle.sh $(BUILD)
