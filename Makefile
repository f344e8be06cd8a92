# Relay: build, run, test, bench. `make run` and `make test` install what is missing first.
CC       ?= gcc
SANITIZE ?=
comma    := ,
# The node's allocator, chosen by measurement (docs/performance.md): jemalloc (Debian's
# libjemalloc2) or glibc. Sanitized builds always use the sanitizer's.
ALLOCATOR ?= jemalloc
# One build directory per flag set: a sanitized build never reuses plain objects (or the reverse).
BUILD    ?= build$(if $(SANITIZE),-san-$(subst $(comma),-,$(SANITIZE)))$(if $(filter-out jemalloc,$(ALLOCATOR)),-$(ALLOCATOR))
PKGS      = libwebsockets libuv hiredis libcjson lua5.4 yaml-0.1 libcrypto libcurl
# Everything a bare Debian 12 with only `make` needs, named even when another package would pull
# it in: the toolchain, the libraries, and what the tests run (python3, openssl for test certs,
# redis-server and redis-cli, haproxy).
DEB_PKGS  = build-essential pkg-config libwebsockets-dev libuv1-dev libhiredis-dev libcjson-dev \
            liblua5.4-dev libyaml-dev libssl-dev libcmocka-dev libjemalloc-dev libcurl4-openssl-dev \
            python3 python3-websockets openssl redis-server redis-tools haproxy

CFLAGS  += -std=c11 -D_GNU_SOURCE -O2 -g -MMD -MP \
           -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes -Wwrite-strings -Werror \
           -Icommon -Icore -Iedge -Ihub -Icluster -Iplugins -Iapi -Inode
CFLAGS  += $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
LDLIBS  += $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lm
ifneq ($(SANITIZE),)
CFLAGS  += -fsanitize=$(SANITIZE) -fno-omit-frame-pointer -fno-sanitize-recover=all
LDFLAGS += -fsanitize=$(SANITIZE)
endif

# Files built into the node as C strings (edge/rl_console.h): the console page and its client.
GEN       = $(BUILD)/gen
CFLAGS   += -I$(GEN)
CONSOLE_H = $(GEN)/rl_console_assets.h

LAYERS   = common core edge hub cluster plugins api
LIB_SRC  = $(foreach d,$(LAYERS),$(wildcard $(d)/*.c))
LIB_OBJ  = $(LIB_SRC:%.c=$(BUILD)/%.o)
UNIT_SRC = $(wildcard tests/unit/test_*.c)
UNIT_BIN = $(UNIT_SRC:tests/unit/%.c=$(BUILD)/tests/%)
TOOLS    = $(BUILD)/relay-bench

.PHONY: all deps run test unit integration test-browser bench bench-cluster-idle clean check compose-test fresh-test
all: $(BUILD)/relay-node $(UNIT_BIN) $(TOOLS)

# Installs the Debian packages the build, the tests and `make run` need (as root, only when missing).
deps:
	@missing=""; for p in $(DEB_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; fi

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	@echo "  CC      $<"
	@$(CC) $(CFLAGS) -c $< -o $@

$(CONSOLE_H): edge/console.html clients/js/relay.js edge/embed.sh
	@mkdir -p $(dir $@)
	@echo "  GEN     $@"
	@sh edge/embed.sh rl_console_html=edge/console.html rl_console_js=clients/js/relay.js > $@.tmp
	@mv $@.tmp $@

$(BUILD)/edge/rl_http.o $(BUILD)/fuzz/obj/edge/rl_http.o: $(CONSOLE_H)

$(BUILD)/librelay.a: $(LIB_OBJ)
	@rm -f $@
	@ar rcs $@ $^

NODE_LIBS = $(if $(SANITIZE),,$(if $(filter jemalloc,$(ALLOCATOR)),-ljemalloc))

$(BUILD)/relay-node: $(BUILD)/node/main.o $(BUILD)/librelay.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS) $(NODE_LIBS)

$(BUILD)/relay-bench: $(BUILD)/bench/relay_bench.o $(BUILD)/librelay.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/tests/%: $(BUILD)/tests/unit/%.o $(BUILD)/librelay.a
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS) -lcmocka

run: deps
	$(MAKE) $(BUILD)/relay-node
	$(BUILD)/relay-node -c deploy/dev.yaml

check: deps
	$(MAKE) $(BUILD)/relay-node
	$(BUILD)/relay-node --check -c deploy/dev.yaml

unit: $(UNIT_BIN)
	@set -e; for t in $(UNIT_BIN); do echo "== $$t"; $$t; done

integration: $(BUILD)/relay-node
ifneq ($(SANITIZE),)
	@# The binaries under test really carry the sanitizer runtime (not objects of another build).
	@nm -D $(BUILD)/relay-node | grep -qE '__asan_init|__ubsan_handle' || { echo "!! $(BUILD)/relay-node is not sanitized"; exit 1; }
endif
	RELAY_JS_DEPS=$(CURDIR)/$(BUILD)/js /usr/bin/python3 tests/integration/run.py --node $(BUILD)/relay-node

test: deps
	$(MAKE) all
	$(MAKE) unit
	$(MAKE) integration

# The console (/) in headless Chromium (tests/browser/run.py): installs Debian's chromium and
# playwright-core (npm, into $(BUILD)/js) when missing, skips with a message when it cannot;
# screenshots in $(BUILD)/test-browser/.
test-browser: deps
	$(MAKE) $(BUILD)/relay-node
	RELAY_JS_DEPS=$(CURDIR)/$(BUILD)/js /usr/bin/python3 tests/browser/run.py --node $(BUILD)/relay-node --out $(BUILD)/test-browser

# `make bench` (bench/bench.py): the peers and the allocation counter are built here only, and
# the allocators it compares are installed when missing (as root; skipped in the report if not).
BENCH_TOOLS    = $(BUILD)/lws-echo $(BUILD)/malloc_count.so
BENCH_DEB_PKGS = libjemalloc2 libmimalloc2.0 linux-perf

$(BUILD)/lws-echo: $(BUILD)/bench/lws_echo.o
	$(CC) $(LDFLAGS) -o $@ $^ $(shell pkg-config --libs libwebsockets libuv 2>/dev/null)

# An LD_PRELOAD shim: position-independent, no sanitizer, no builtin malloc folding.
$(BUILD)/malloc_count.so: bench/malloc_count.c
	@mkdir -p $(dir $@)
	$(CC) $(filter-out -fsanitize=%,$(CFLAGS)) -fPIC -fno-builtin -shared -o $@ $< -ldl

bench: deps
	@missing=""; for p in $(BENCH_DEB_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null || \
	      echo "bench: could not install$$missing (the report notes what it skipped)"; \
	  else echo "bench: not root, not installing$$missing (the report notes what it skipped)"; fi; \
	fi
	$(MAKE) all $(BENCH_TOOLS)
	$(MAKE) ALLOCATOR=glibc build-glibc/relay-node
	BUILD=$(BUILD) bench/run.sh

# Idle users on a local six-node cluster (bench/cluster_idle.py; IDLE_USERS, IDLE_HOLD, ...).
bench-cluster-idle: deps
	$(MAKE) all
	BUILD=$(BUILD) /usr/bin/python3 bench/cluster_idle.py

clean:
	rm -rf build build-*

# Fuzzing (libFuzzer; tests/fuzz/README.md). The library is built again with clang and the
# sanitizers into $(BUILD)/fuzz/, apart from the normal objects. Each target runs FUZZ_SECONDS on
# its seed corpus plus what it found before; a crash or leak fails the make and leaves the input in
# $(BUILD)/fuzz/artifacts/.
FUZZ_CC      ?= clang
FUZZ_SECONDS ?= 20
FUZZ_MAX_LEN ?= 8192
FUZZ_FLAGS   ?=
FUZZ_SAN      = -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
FUZZ_SRC      = $(wildcard tests/fuzz/fuzz_*.c)
FUZZ_BIN      = $(FUZZ_SRC:tests/fuzz/%.c=$(BUILD)/fuzz/%)
FUZZ_LIB_OBJ  = $(LIB_SRC:%.c=$(BUILD)/fuzz/obj/%.o)

.PHONY: fuzz fuzz-deps
.SECONDARY: $(FUZZ_SRC:%.c=$(BUILD)/fuzz/obj/%.o)

# Installs clang and libFuzzer (as root, only when a fuzz target cannot be linked).
fuzz-deps:
	@t=$$(mktemp -d); \
	printf 'int LLVMFuzzerTestOneInput(const unsigned char *d, unsigned long n);\nint LLVMFuzzerTestOneInput(const unsigned char *d, unsigned long n) { (void)d; (void)n; return 0; }\n' > $$t/probe.c; \
	if ! $(FUZZ_CC) -fsanitize=fuzzer,address,undefined $$t/probe.c -o $$t/probe >/dev/null 2>&1; then \
	  echo "installing: clang libclang-rt-14-dev"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clang libclang-rt-14-dev >/dev/null; \
	fi; rm -rf $$t

$(BUILD)/fuzz/obj/%.o: %.c
	@mkdir -p $(dir $@)
	@echo "  FUZZCC  $<"
	@$(FUZZ_CC) $(CFLAGS) $(FUZZ_SAN) -fsanitize=fuzzer-no-link -c $< -o $@

$(BUILD)/fuzz/librelay.a: $(FUZZ_LIB_OBJ)
	@rm -f $@
	@ar rcs $@ $^

$(BUILD)/fuzz/fuzz_%: $(BUILD)/fuzz/obj/tests/fuzz/fuzz_%.o $(BUILD)/fuzz/librelay.a
	$(FUZZ_CC) $(FUZZ_SAN) -fsanitize=fuzzer $(LDFLAGS) -o $@ $^ $(LDLIBS)

fuzz: deps fuzz-deps
	$(MAKE) $(FUZZ_BIN)
	@rc=0; for t in $(FUZZ_BIN); do n=$$(basename $$t); \
	  mkdir -p $(BUILD)/fuzz/corpus/$$n $(BUILD)/fuzz/artifacts; \
	  echo "== $$n ($(FUZZ_SECONDS)s)"; \
	  $$t -max_total_time=$(FUZZ_SECONDS) -max_len=$(FUZZ_MAX_LEN) -print_final_stats=1 \
	    -artifact_prefix=$(BUILD)/fuzz/artifacts/$$n- $(FUZZ_FLAGS) \
	    $(BUILD)/fuzz/corpus/$$n tests/fuzz/corpus/$$n || { echo "!! $$n failed"; rc=1; }; \
	done; exit $$rc

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)

# The compose file for real: podman builds the images, podman-compose brings the cluster up, a
# client drives it through haproxy and a node is killed (tests/compose/run.sh; a few minutes, so
# not part of `make test`; .ci/run calls it after).
compose-test:
	tests/compose/run.sh

# The committed tree's `make test` in a bare Debian 12 container with only make added.
fresh-test:
	tests/compose/fresh.sh
