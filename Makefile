# The two commands of the README. Both install what is missing first
# (scripts/deps.sh: apt-get, as root, idempotent).
#   make run    build and start `backbone serve` on ./backbone.db (SQLite)
#   make test   build normal + ASan/UBSan, start a private PostgreSQL, run all tests
.PHONY: run test build asan bench format clean

# run needs only the run packages, so it configures without the test suite
# (cmocka, pytest); test and build turn it back on.
run:
	scripts/deps.sh run
	cmake --preset dev -DBB_TESTS=OFF >/dev/null
	cmake --build build -j$$(nproc)
	./build/backbone serve

test:
	scripts/test.sh

build:
	cmake --preset dev -DBB_TESTS=ON >/dev/null
	cmake --build build -j$$(nproc)

asan:
	cmake --preset asan >/dev/null
	cmake --build build-asan -j$$(nproc)

bench:
	bench/locks/run.sh
	bench/jobs/run.sh
	bench/jobs/keyed.sh
	bench/checkout/run.sh
	bench/checkout/unit.sh

format:
	scripts/format.sh

clean:
	rm -rf build build-asan build-tsan build-release build-fuzz
