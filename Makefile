# The two commands: `make test` and `make demo`. Both create .venv when it is
# missing and (re)install only when pyproject.toml changed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
UMQTT := device/lib/umqtt/simple.py
UPLOT := server/dashboard/vendor/uPlot.iife.min.js
# The 32-bit ESP32-like MicroPython (docs/virtual-board.md), built from ../shared when it is there.
ESP32_LIKE_SRC := ../shared/thirdparty/micropython
ESP32_LIKE := $(VENV)/esp32-like
ESP32_LIKE_BIN := $(ESP32_LIKE)/micropython-esp32-like

# The suite runs in PYTEST_JOBS pytest-xdist workers (tests start real processes and mostly wait on
# them: on 2 cores, 2 workers took 555 s where one took 965 s); `make test PYTEST_JOBS=0` runs it in one.
PYTEST_JOBS ?= 2

.PHONY: test demo bench fuzz install esp32-like clean

# The dashboard's browser test needs Chromium (Debian package `chromium`), installed here when
# missing and we are root; without it that test fails and says so.
test: install esp32-like
	@if ! command -v chromium >/dev/null 2>&1 && [ ! -x /usr/bin/chromium ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium \
				|| echo "could not install chromium: the dashboard's browser test will fail"; \
		else \
			echo "chromium is not installed: run 'sudo apt-get install chromium'" \
			     "(the dashboard's browser test fails without it)"; \
		fi; \
	fi
	$(BIN)/python -m pytest -n $(PYTEST_JOBS) --dist worksteal $(PYTEST_ARGS)

# The whole pipeline locally with a simulated fleet (docs/demo.md);
# `make demo DEMO_ARGS="--devices 50 --duration 120"`.
demo: install
	$(BIN)/ferry demo $(DEMO_ARGS)

# Ferry's broker against Mosquitto (Debian package `mosquitto`), installed here when
# missing and we are root; `make bench BENCH_ARGS="--scenarios qos0-throughput"`.
bench: install
	@if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y mosquitto; \
		else \
			echo "mosquitto is not installed: run 'sudo apt-get install mosquitto' to compare against it" \
			     "(the benchmark runs Ferry alone without it)"; \
		fi; \
	fi
	$(BIN)/ferry bench broker $(BENCH_ARGS)

# The codec and the broker core fuzzed for 1,000,000 inputs each, coverage-guided where atheris
# installs (x86-64), seeded random mutation otherwise (bench/fuzz.py); `make fuzz FUZZ_ARGS="--inputs N"`.
fuzz: install
	$(BIN)/python -m pip install --quiet -e '.[test,fuzz]' || echo "atheris did not install: random engine only"
	$(BIN)/ferry bench fuzz --target codec --inputs 1000000 $(FUZZ_ARGS) \
		$$($(BIN)/python -c 'import atheris' 2>/dev/null && echo --engine atheris)
	$(BIN)/ferry bench fuzz --target core --inputs 1000000 $(FUZZ_ARGS)

install: $(STAMP) $(UMQTT) $(UPLOT)

# The device tests that measure heap run on a 32-bit unix-port MicroPython with the modules stock ESP32
# firmware freezes (a real 64 KB heap); built once into $(ESP32_LIKE) from $(ESP32_LIKE_SRC), again only
# when its script or sources change. It needs gcc-multilib (Debian), installed here when missing and we
# are root. Without the folder, or when the build fails, those tests skip and say why (a failed build
# leaves its log in $(ESP32_LIKE)/build.log and is tried again by the next `make test`).
esp32-like:
	@if [ -d $(ESP32_LIKE_SRC) ]; then \
		$(MAKE) --no-print-directory $(ESP32_LIKE_BIN); \
	else \
		echo "$(ESP32_LIKE_SRC) is absent: the device heap tests on the 32-bit ESP32-like MicroPython will skip"; \
	fi

$(ESP32_LIKE_BIN): $(wildcard $(ESP32_LIKE_SRC)/*) | $(BIN)/python
	@if ! echo 'int main(void){return 0;}' | gcc -m32 -x c - -o /dev/null 2>/dev/null; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y gcc-multilib \
				|| echo "could not install gcc-multilib: the device heap tests will skip"; \
		else \
			echo "gcc cannot build 32-bit programs: run 'sudo apt-get install gcc-multilib'" \
			     "(the device heap tests skip without the ESP32-like MicroPython)"; \
		fi; \
	fi
	@mkdir -p $(ESP32_LIKE)
	@echo "building the 32-bit ESP32-like MicroPython into $(ESP32_LIKE) (~30-60 s)"
	@rm -f $(ESP32_LIKE_BIN)
	@if $(ESP32_LIKE_SRC)/build-esp32-like.sh $(ESP32_LIKE) >$(ESP32_LIKE)/build.log 2>&1; then \
		rm -f $(ESP32_LIKE)/build.log; \
	else \
		rm -f $(ESP32_LIKE_BIN); \
		echo "the ESP32-like MicroPython did not build (see $(ESP32_LIKE)/build.log): the device heap tests will skip"; \
	fi

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "Ferry needs Python 3.11 or newer as $(PYTHON) (set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	@# The distribution was called `ferry` before 0.2; an old editable install would shadow the namespace.
	$(BIN)/python -m pip uninstall --quiet --yes ferry 2>/dev/null || true
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

$(UMQTT): ferry/umqtt_vendor.py | $(STAMP)
	$(BIN)/python -m ferry.umqtt_vendor

# The dashboard's chart library, from the npm registry, pinned by sha512 (docs/dashboard.md).
$(UPLOT): ferry/npm_vendor.py | $(STAMP)
	$(BIN)/python -m ferry.npm_vendor

clean:
	rm -rf $(VENV) device/lib server/dashboard/vendor build *.egg-info .pytest_cache .hypothesis
