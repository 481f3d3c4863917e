#!/usr/bin/env bash
# Installs libparley into a temporary prefix and builds the minimal example
# against it twice: with pkg-config (shared library) and with CMake's
# find_package (static library). Then the same for the program embedding the
# Lua runtime (examples/embed-lua), which must find parley/runtime.h in the
# installed tree, never in the source tree.
set -euo pipefail
BUILD=$1
SRC=$2
tmp=$(mktemp -d /tmp/parley-install-XXXXXX)
trap 'rm -rf "$tmp"' EXIT

cmake --install "$BUILD" --prefix "$tmp/prefix" >/dev/null
pc=$(find "$tmp/prefix" -name parley.pc | head -1)
test -n "$pc"
export PKG_CONFIG_PATH=$(dirname "$pc")
libdir=$(pkg-config --variable=libdir parley)
cc -std=c11 -Wall -Wextra -Werror -o "$tmp/pc_client" "$SRC/examples/minimal_client.c" \
  $(pkg-config --cflags --libs parley) -Wl,-rpath,"$libdir"
# Without arguments it prints its usage and exits 2: it runs and links.
rc=0; "$tmp/pc_client" >/dev/null 2>&1 || rc=$?
test "$rc" -eq 2

test -f "$tmp/prefix/include/parley/runtime.h"
cc -std=c11 -Wall -Wextra -Werror -o "$tmp/pc_embed" "$SRC/examples/embed-lua/embed_lua.c" \
  $(pkg-config --cflags --libs parley-lua) -Wl,-rpath,"$libdir"
rc=0; "$tmp/pc_embed" >/dev/null 2>&1 || rc=$?
test "$rc" -eq 2

mkdir -p "$tmp/consumer"
cat > "$tmp/consumer/CMakeLists.txt" <<CMK
cmake_minimum_required(VERSION 3.20)
project(consumer C)
find_package(parley REQUIRED)
add_executable(cm_client $SRC/examples/minimal_client.c)
target_link_libraries(cm_client PRIVATE parley::parley_static)
add_executable(cm_embed $SRC/examples/embed-lua/embed_lua.c)
target_link_libraries(cm_embed PRIVATE parley::parley_lua)
CMK
cmake -S "$tmp/consumer" -B "$tmp/consumer/build" -DCMAKE_PREFIX_PATH="$tmp/prefix" >/dev/null
cmake --build "$tmp/consumer/build" >/dev/null
test -x "$tmp/consumer/build/cm_client"
rc=0; "$tmp/consumer/build/cm_embed" >/dev/null 2>&1 || rc=$?
test "$rc" -eq 2
echo "install_consumers: pkg-config and find_package builds of minimal_client and embed_lua ok"
