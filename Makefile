# Veil's two commands: `make demo` shows it working, `make test` runs every test.
SHELL := /bin/bash
CARGO ?= cargo
POLICY_OUT := target/policies
# Shipped policies, then test fixtures (hostile and wrong-world components).
POLICY_CRATES := aws-sensitive risky-actions secrets-by-team
FIXTURE_CRATES := hostile other-world
# The same policies in Python and JavaScript (policies/python, policies/js).
LANG_POLICIES := risky-actions secrets-by-team
WIT := wit/veil-policy.wit
PY_SDK := $(wildcard policy-sdk/python/veil_policy/*.py)
JS_SDK := policy-sdk/js/veil-policy.js
COMPONENTIZE_JS := policy-sdk/js/node_modules/.bin/componentize-js
# Build the component whose source is the rule's first prerequisite.
PY_COMPONENT = componentize-py -d $(WIT) -w scoped-policy componentize -p policy-sdk/python -p $(<D) app -o $@ >/dev/null
JS_COMPONENT = $(COMPONENTIZE_JS) $< --wit $(WIT) -n scoped-policy -d http fetch-event -o $@ >/dev/null

.PHONY: build policies rust-policies lang-policies demo test deps bench-deps bench fuzz

build:
	$(CARGO) build --release --locked

policies: rust-policies lang-policies

# The Rust policies Veil ships (the container image builds only these) and the
# test fixtures.
rust-policies:
	@rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2 >/dev/null
	$(CARGO) build --locked --profile wasm --target wasm32-wasip2 $(addprefix -p ,$(POLICY_CRATES) $(FIXTURE_CRATES))
	@mkdir -p $(POLICY_OUT)/fixtures
	@for c in $(POLICY_CRATES); do cp target/wasm32-wasip2/wasm/$${c//-/_}.wasm $(POLICY_OUT)/$$c.wasm; done
	@for c in $(FIXTURE_CRATES); do cp target/wasm32-wasip2/wasm/$${c//-/_}.wasm $(POLICY_OUT)/fixtures/$$c.wasm; done
	@# Two versions of one policy, for the hot-reload tests.
	@for v in 1 2; do \
	  VEIL_FIXTURE_VERSION=$$v.0.0 $(CARGO) build --quiet --locked --profile wasm --target wasm32-wasip2 -p versioned && \
	  cp target/wasm32-wasip2/wasm/versioned.wasm $(POLICY_OUT)/fixtures/versioned-$$v.wasm || exit 1; \
	done

# The Python and JS ports, rebuilt only when their sources change: each
# build runs the language's interpreter to snapshot it (10-20 s).
LANG_POLICY_FILES := $(foreach p,$(LANG_POLICIES),$(POLICY_OUT)/python/$(p).wasm $(POLICY_OUT)/js/$(p).wasm)
lang-policies: $(LANG_POLICY_FILES) \
	$(foreach f,hostile template,$(POLICY_OUT)/fixtures/$(f)-python.wasm $(POLICY_OUT)/fixtures/$(f)-js.wasm)

$(POLICY_OUT)/python/%.wasm: policies/python/%/app.py $(PY_SDK) $(WIT)
	@mkdir -p $(@D)
	$(PY_COMPONENT)

$(POLICY_OUT)/js/%.wasm: policies/js/%/policy.js $(JS_SDK) $(WIT)
	@mkdir -p $(@D)
	$(JS_COMPONENT)

# Hostile fixtures and the SDKs' templates in both languages, for the host's tests.
$(POLICY_OUT)/fixtures/hostile-python.wasm: tests/policies/python/hostile/app.py $(PY_SDK) $(WIT)
	@mkdir -p $(@D)
	$(PY_COMPONENT)

$(POLICY_OUT)/fixtures/hostile-js.wasm: tests/policies/js/hostile/policy.js $(JS_SDK) $(WIT)
	@mkdir -p $(@D)
	$(JS_COMPONENT)

$(POLICY_OUT)/fixtures/template-python.wasm: policy-sdk/python/template/app.py $(PY_SDK) $(WIT)
	@mkdir -p $(@D)
	$(PY_COMPONENT)

$(POLICY_OUT)/fixtures/template-js.wasm: policy-sdk/js/template/policy.js $(JS_SDK) $(WIT)
	@mkdir -p $(@D)
	$(JS_COMPONENT)

# Coverage-guided fuzzing (libFuzzer) of every untrusted-input parser:
# `make test` runs each target FUZZ_SECS; `make fuzz FUZZ_SECS=600` for a real run.
FUZZ_SECS ?= 10
fuzz: deps
	fuzz/run.sh $(FUZZ_SECS)

demo: deps build policies
	@python3 scripts/demo.py

deps:
	@bash scripts/deps.sh

bench-deps:
	@bash scripts/deps.sh bench

test: deps build policies
	$(CARGO) test --release --locked --workspace --exclude risky-actions --exclude secrets-by-team --exclude hostile --exclude other-world --exclude versioned --exclude veil-bench-peers --exclude veil-fuzz -- --test-threads=1
	fuzz/run.sh $(FUZZ_SECS)
	cd policy-sdk/python && python3 -m pytest -q -p no:cacheprovider
	cd policy-sdk/js && node --import ./host-stub.mjs --test
	cd tests/e2e && python3 -m pytest -q -p no:cacheprovider

# Benchmarks (not part of `make test`): every part side by side in one run,
# written to bench/results.md and bench/results/*.png (see bench/run.py).
# The bench needs neither the browser nor the host tests' language fixtures.
# The gateway and the bench's examples build in one cargo run: examples bring
# dev-dependencies, which change a few shared crates' features, and a
# separate run would compile the gateway library a second time.
bench: bench-deps rust-policies $(LANG_POLICY_FILES)
	$(CARGO) build --profile dist --locked --bin veil --example bench_upstream --example bench_proxy --example identify_bench --example audit_bench --example policy_decisions
	python3 bench/run.py
