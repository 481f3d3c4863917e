# The two commands of the README:
#   make run    bootstrap, build, run the FAQ bot against the embedded gateway
#   make test   bootstrap, build (normal and sanitizer builds), run every test
# CTEST_ARGS passes options to ctest, e.g. make test CTEST_ARGS="-L chaos".

JOBS ?= $(shell nproc 2>/dev/null || echo 2)
BOT ?= bots/faq
CTEST_ARGS ?=

.PHONY: run test bootstrap build build-asan clean

run: bootstrap build
	./build/cli/parley run $(BOT)

test: bootstrap build build-asan
	cd build && ctest --output-on-failure -j$(JOBS) $(CTEST_ARGS)
	cd build-asan && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  ctest --output-on-failure -j$(JOBS) -LE nosan $(CTEST_ARGS)

bootstrap:
	@./scripts/bootstrap.sh

build:
	@cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	@cmake --build build -j$(JOBS) 2>&1 | grep -vE '^\[ *[0-9]+%\]' || true
	@test -x build/cli/parley

build-asan:
	@cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DPARLEY_SANITIZE=ON >/dev/null
	@cmake --build build-asan -j$(JOBS) 2>&1 | grep -vE '^\[ *[0-9]+%\]' || true
	@test -x build-asan/cli/parley

clean:
	rm -rf build build-asan
