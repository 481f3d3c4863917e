# The two commands of the README:
#   make run    bootstrap, build, run the FAQ bot against the embedded gateway
#   make test   bootstrap, build (normal and sanitizer builds), run every test
# Build output goes to stderr so that `echo hi | make -s run` prints only the
# conversation on stdout.
# Tests labelled "long" (full-size fault and soak runs) are left out unless
# asked for: make test LABELS=long runs only them, at full size. Tests labelled
# "known_failure" (they reproduce a known bug, see docs/reliability.md) are
# left out too; make test LABELS=known_failure runs them.

JOBS ?= $(shell nproc 2>/dev/null || echo 2)
BOT ?= bots/faq
RUN_ARGS ?=
LABELS ?=
# Seconds each libFuzzer target runs in `make test` (tests/fuzz, docs/fuzzing.md).
FUZZ_SECONDS ?= 10

ifeq ($(LABELS),)
CTEST_SEL := -LE 'long|known_failure'
ASAN_SEL := -LE 'long|nosan|known_failure'
else
CTEST_SEL := -L $(LABELS)
ASAN_SEL := -L $(LABELS) -LE nosan
endif

.PHONY: run test bench fuzz bootstrap build build-asan clean

run: bootstrap build
	@./build/cli/parley run $(BOT) $(RUN_ARGS)

test: bootstrap build build-asan
	cd build && ctest --output-on-failure --timeout 300 -j$(JOBS) $(CTEST_SEL)
	./scripts/fuzz.sh $(FUZZ_SECONDS)
	cd build-asan && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
	  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  ctest --output-on-failure --timeout 600 -j$(JOBS) $(ASAN_SEL)

# Benchmarks side by side with their peers; writes docs/benchmarks.md and
# docs/bench/*.png (bench/report --help).
bench: bootstrap build
	./bench/report --no-build
	PARLEY_BIN=build/cli/parley node bench/web/run.mjs --md docs/benchmarks.md

bootstrap:
	@./scripts/bootstrap.sh >&2

build:
	@cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >&2
	@cmake --build build -j$(JOBS) >&2

build-asan:
	@cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DPARLEY_SANITIZE=ON -DPARLEY_BUILD_BENCH=OFF >&2
	@cmake --build build-asan -j$(JOBS) >&2

fuzz: bootstrap
	./scripts/fuzz.sh $(FUZZ_SECONDS)

clean:
	rm -rf build build-asan build-fuzz
