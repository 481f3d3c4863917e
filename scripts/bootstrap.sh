#!/usr/bin/env bash
# Installs the Debian packages Parley builds, tests and runs with.
# Skips what is already installed and says what it installs.
set -euo pipefail

PACKAGES=(
  build-essential cmake pkg-config git
  liblua5.4-dev
  libwebsockets-dev libwebsockets-evlib-uv libuv1-dev libssl-dev
  libprotobuf-c-dev protobuf-c-compiler
  libyaml-dev
  libcurl4-openssl-dev
  libsqlite3-dev sqlite3
  # The gateway's PostgreSQL backend (libpq) and the server its tests start
  postgresql libpq-dev
  libsodium-dev
  libjansson-dev
  libicu-dev
  lua-cjson-dev lua-cjson
  libcmocka-dev
  libfaketime
  clang libclang-rt-14-dev
  curl python3 openssl
  # bench/: the peers measured side by side with Parley, and the report's tools
  mosquitto libmosquitto-dev nats-server libnats-dev libcjson-dev
  gnuplot-nox lua5.4
  # web/: the browser tests and the browser benchmark drive Debian's Chromium
  # (nothing downloads a browser); fonts so that screenshots show text.
  chromium fonts-dejavu-core
)
# The Node.js peer of bench/ (a ws server). A machine that already has a
# Node.js of its own (from nodesource, say) keeps it: Debian's npm would
# replace it.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  PACKAGES+=(nodejs npm)
fi

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

# PostgreSQL refuses to run as root, and CI runs as root: the tests start
# their server as this unprivileged system user (tests/pg/pgserver.h).
# Debian's package starts no cluster of its own in a container without
# systemd, and the tests never use one: each starts its own.
pg_test_user() {
  if [ "$(id -u)" -eq 0 ] && ! getent passwd parleypg >/dev/null; then
    echo "bootstrap: creating the unprivileged user parleypg for test PostgreSQL servers"
    useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin parleypg
  fi
}

if [ ${#missing[@]} -eq 0 ]; then
  echo "bootstrap: all ${#PACKAGES[@]} packages already installed"
  pg_test_user
  exit 0
fi

echo "bootstrap: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
pg_test_user
echo "bootstrap: done"
