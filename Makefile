# ferry — see README.md. Every target that needs Docker sets the host up first
# (tests/setup-host.sh is idempotent: a second run only checks).

CARGO    ?= cargo
FERRY    := target/release/ferry
SHELL    := /bin/bash

.PHONY: all build setup engines test unit e2e demo bench-core clean stop-engines

all: build

build:
	$(CARGO) build --release --locked

setup:
	bash tests/setup-host.sh

# Unit tests (no Docker needed) then the end-to-end tests against real engines.
test: setup build
	$(CARGO) test --release --locked
	bash tests/with-engines.sh a -- $(CARGO) test --release --locked -- --ignored --test-threads=1

unit:
	$(CARGO) test --locked

# Sets the host up, starts a counter, checkpoints it, restores it into a new
# container and shows the counter carrying on.
demo: setup build
	bash tests/with-engines.sh a -- bash tests/demo.sh

bench-core: setup build
	bash tests/with-engines.sh a -- bash tests/bench-core.sh

stop-engines:
	bash tests/engines.sh stop all

clean:
	$(CARGO) clean
