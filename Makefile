# Relay: build, run, test, bench. `make run` and `make test` install what is missing first.
CC       ?= gcc
BUILD    ?= build
SANITIZE ?=
PKGS      = libwebsockets libuv hiredis libcjson lua5.4 yaml-0.1 libcrypto
DEB_PKGS  = libwebsockets-dev libuv1-dev libhiredis-dev libcjson-dev liblua5.4-dev libyaml-dev \
            libssl-dev libcmocka-dev redis-server haproxy pkg-config python3-websockets

CFLAGS  += -std=c11 -D_GNU_SOURCE -O2 -g -MMD -MP \
           -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes -Wwrite-strings -Werror \
           -Icommon -Inode -Iplugins
CFLAGS  += $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
LDLIBS  += $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lm
ifneq ($(SANITIZE),)
CFLAGS  += -fsanitize=$(SANITIZE) -fno-omit-frame-pointer -fno-sanitize-recover=all
LDFLAGS += -fsanitize=$(SANITIZE)
endif

LIB_SRC  = $(wildcard common/*.c) $(filter-out node/main.c,$(wildcard node/*.c)) $(wildcard plugins/*.c)
LIB_OBJ  = $(LIB_SRC:%.c=$(BUILD)/%.o)
UNIT_SRC = $(wildcard tests/unit/test_*.c)
UNIT_BIN = $(UNIT_SRC:tests/unit/%.c=$(BUILD)/tests/%)
TOOLS    = $(BUILD)/relay-bench

.PHONY: all deps run test unit integration bench clean check
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

$(BUILD)/librelay.a: $(LIB_OBJ)
	@rm -f $@
	@ar rcs $@ $^

$(BUILD)/relay-node: $(BUILD)/node/main.o $(BUILD)/librelay.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

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
	/usr/bin/python3 tests/integration/run.py --node $(BUILD)/relay-node

test: deps
	$(MAKE) all
	$(MAKE) unit
	$(MAKE) integration

bench: deps
	$(MAKE) all
	bench/run.sh

clean:
	rm -rf $(BUILD)

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
