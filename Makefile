# p11fwd: build, test, demo and install.
#
#   make deps      install the Debian 12 packages the tests and the demo need (as root)
#   make build     cargo build --workspace
#   make test      deps, toolchain check, fmt check, clippy, doc check, fuzz crate check, build,
#                  tests
#                  (cargo-nextest if present)
#   make demo      deps, build, scripts/demo.sh
#   make bench     deps, release build, the benchmark harness (writes docs/benchmarks.*)
#   make dist      release build laid out as an install tree in dist/ (DIST=dir elsewhere;
#                  PROFILE=debug lays out the debug build instead: the tests do, to reuse it)
#   make install   install that tree under $(PREFIX) (default /usr/local; DESTDIR honoured)
#   make clean

CARGO ?= cargo
PREFIX ?= /usr/local
BINDIR ?= $(PREFIX)/bin
LIBDIR ?= $(PREFIX)/lib
DATADIR ?= $(PREFIX)/share
DESTDIR ?=
DIST ?= dist

# Same rule as cargo: CARGO_TARGET_DIR, else ./target.
TARGET_DIR := $(if $(CARGO_TARGET_DIR),$(CARGO_TARGET_DIR),$(CURDIR)/target)
RELEASE_DIR := $(TARGET_DIR)/release

# The cargo profile `make dist` lays out: release, or debug (cargo's `dev`, in target/debug).
PROFILE ?= release
CARGO_PROFILE := $(if $(filter debug dev,$(PROFILE)),dev,$(PROFILE))
PROFILE_DIR := $(TARGET_DIR)/$(if $(filter dev,$(CARGO_PROFILE)),debug,$(CARGO_PROFILE))

# The Rust version the workspace needs (rust-version in Cargo.toml).
RUST_MIN := $(shell sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml)

# Everything the tests and the demo drive: the token side (SoftHSM, stock p11-kit server and
# client), the peers (pkcs11-tool, GnuTLS, NSS, OpenSSL engine, OpenSSH, curl), and the build
# needs of the openssl-sys based crates and of libfuzzer-sys (g++, for the fuzz check).
DEB_PACKAGES := \
	ca-certificates \
	gcc \
	libc6-dev \
	pkg-config \
	libssl-dev \
	openssl \
	softhsm2 \
	p11-kit \
	p11-kit-modules \
	opensc \
	opensc-pkcs11 \
	gnutls-bin \
	libnss3-tools \
	libengine-pkcs11-openssl \
	openssh-server \
	openssh-client \
	curl \
	python3 \
	valgrind \
	g++

SUDO := $(shell [ "$$(id -u)" = 0 ] || command -v sudo)

.PHONY: all deps toolchain build test check-fmt clippy doc-check fuzz-check nextest demo bench dist install \
	uninstall clean

all: build

# apt only runs when a package is missing, so repeated runs are fast.
deps:
	@missing=""; \
	for p in $(DEB_PACKAGES); do \
		dpkg-query -W -f='$${db:Status-Abbrev}' "$$p" 2>/dev/null | grep -q '^ii' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "make deps: installing$$missing"; \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -q && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(DEB_PACKAGES); \
	else \
		echo "make deps: all Debian packages present"; \
	fi

# Rust is not a Debian package here (Debian 12's rustc is too old): check that cargo is there
# and recent enough, and that the rustfmt and clippy components are installed (with rustup
# when it is there, they are added).
toolchain:
	@command -v $(CARGO) >/dev/null 2>&1 || { \
		echo "make: $(CARGO) not found: install Rust $(RUST_MIN) or later with rustup (https://rustup.rs)" >&2; \
		exit 1; }
	@have=$$($(CARGO) --version | sed -n 's/^cargo \([0-9][0-9.]*\).*/\1/p'); \
	if [ "$$(printf '%s\n%s\n' "$(RUST_MIN)" "$$have" | sort -V | head -n1)" != "$(RUST_MIN)" ]; then \
		echo "make: cargo $$have is older than Rust $(RUST_MIN) (rust-version in Cargo.toml): rustup update stable" >&2; \
		exit 1; \
	fi
	@for c in fmt:rustfmt clippy:clippy; do \
		sub=$${c%%:*}; comp=$${c#*:}; \
		$(CARGO) $$sub --version >/dev/null 2>&1 && continue; \
		if command -v rustup >/dev/null 2>&1; then \
			echo "make: cargo $$sub missing: rustup component add $$comp"; \
			rustup component add $$comp || exit 1; \
		else \
			echo "make: cargo $$sub not found: install the $$comp component of your Rust toolchain" >&2; \
			exit 1; \
		fi; \
	done
	@$(CARGO) nextest --version >/dev/null 2>&1 || \
		echo "make: cargo-nextest not found; the tests will run with cargo test (install it: cargo install --locked cargo-nextest)"

build:
	$(CARGO) build --workspace

check-fmt:
	$(CARGO) fmt --all --check

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# The API docs, private items included (the crate docs are maps of their modules): no broken
# links, no stray HTML.
doc-check:
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --workspace --no-deps --document-private-items

# The fuzz crate is a workspace of its own (cargo fuzz wants nightly to run it, see design.md
# §2.3), but it compiles on stable: check that it still does (libfuzzer-sys builds libFuzzer's
# C++ once, about 30 s, then this is incremental).
fuzz-check:
	$(CARGO) check --manifest-path fuzz/Cargo.toml

# The tests need the built binaries and cdylibs (tests/src/artifacts.rs), hence `build` first.
nextest: build
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		echo "$(CARGO) nextest run --workspace --no-fail-fast"; \
		$(CARGO) nextest run --workspace --no-fail-fast; \
	else \
		echo "cargo-nextest not found, using cargo test"; \
		echo "$(CARGO) test --workspace --no-fail-fast"; \
		$(CARGO) test --workspace --no-fail-fast; \
	fi

test: deps toolchain
	$(MAKE) --no-print-directory check-fmt
	$(MAKE) --no-print-directory clippy
	$(MAKE) --no-print-directory doc-check
	$(MAKE) --no-print-directory fuzz-check
	$(MAKE) --no-print-directory nextest

demo: deps build
	./scripts/demo.sh

# The benchmark harness (docs/benchmarks.md): every stack and workload at 0 and 10 ms one-way
# delay, the forwarder alone, pass/fail per target. Release build; the SoftHSM fixture's
# provisioning helper comes from the debug build. BENCH_ARGS=--quick for a short run,
# BENCH_ARGS=--no-write to leave docs/ alone.
bench: deps
	$(CARGO) build --workspace --release
	$(CARGO) build -p p11fwd-tests --bin p11fwd-test-token
	$(RELEASE_DIR)/p11fwd-bench $(BENCH_ARGS)

# `--workspace`, as `make build` and `make bench`: the same feature set, so the artefacts are
# reused rather than rebuilt (with PROFILE=debug after `make build`, cargo has nothing to do).
dist:
	$(CARGO) build --workspace --profile $(CARGO_PROFILE)
	rm -rf $(DIST)
	install -D -m 0755 $(PROFILE_DIR)/p11fwd $(DIST)/bin/p11fwd
	install -D -m 0755 $(PROFILE_DIR)/libp11fwd_provider.so $(DIST)/lib/ossl-modules/p11fwd.so
	install -D -m 0755 $(PROFILE_DIR)/libp11fwd_client.so $(DIST)/lib/pkcs11/p11fwd-client.so
	install -d $(DIST)/share/p11fwd
	# The templates (systemd user units, p11-kit module file) rendered for $(PREFIX).
	for t in conf/templates/*; do \
		sed -e 's|@BINDIR@|$(BINDIR)|g' -e 's|@LIBDIR@|$(LIBDIR)|g' "$$t" \
			> $(DIST)/share/p11fwd/$$(basename "$$t"); \
	done
	@echo "install tree in $(DIST)/ (for PREFIX=$(PREFIX)):"; find $(DIST) | sort

install: dist
	install -D -m 0755 $(DIST)/bin/p11fwd $(DESTDIR)$(BINDIR)/p11fwd
	install -D -m 0755 $(DIST)/lib/ossl-modules/p11fwd.so $(DESTDIR)$(LIBDIR)/ossl-modules/p11fwd.so
	install -D -m 0755 $(DIST)/lib/pkcs11/p11fwd-client.so $(DESTDIR)$(LIBDIR)/pkcs11/p11fwd-client.so
	install -d $(DESTDIR)$(DATADIR)/p11fwd
	@if [ -n "$$(ls -A $(DIST)/share/p11fwd)" ]; then cp -R $(DIST)/share/p11fwd/. $(DESTDIR)$(DATADIR)/p11fwd/; fi

uninstall:
	rm -f $(DESTDIR)$(BINDIR)/p11fwd $(DESTDIR)$(LIBDIR)/ossl-modules/p11fwd.so \
		$(DESTDIR)$(LIBDIR)/pkcs11/p11fwd-client.so
	rm -rf $(DESTDIR)$(DATADIR)/p11fwd

clean:
	$(CARGO) clean
	rm -rf $(DIST)
