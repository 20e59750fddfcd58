#!/usr/bin/env bash
# Set up an aarch64 user-mode environment for running tvmptq's aarch64 programs under qemu-user,
# without a board and without root changes to apt's configuration:
#   $ARM64_DIR/root   Debian 12 arm64 sysroot (libc, python3.11) unpacked from .deb files
#   $ARM64_DIR/site   the aarch64 wheels: apache-tvm 0.27.0.post1, apache-tvm-ffi 0.1.14.post0, numpy, ...
#   $ARM64_DIR/python a wrapper: qemu-aarch64 -L root ... root/usr/bin/python3.11 "$@"
#   $ARM64_DIR/libinsn.so  a qemu TCG plugin that counts executed guest instructions (a proxy, not ARM time)
# Needs (once, as root): apt-get install gcc-aarch64-linux-gnu g++-aarch64-linux-gnu qemu-user
# (make arm-setup does both). Downloads about 110 MB; the result is about 400 MB. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
ARM64_DIR=${ARM64_DIR:-build/arm64}
PIP=${PIP:-.venv/bin/pip}
mkdir -p "$ARM64_DIR"
ARM64_DIR=$(cd "$ARM64_DIR" && pwd)
ROOT=$ARM64_DIR/root SITE=$ARM64_DIR/site

for tool in qemu-aarch64 aarch64-linux-gnu-gcc; do
  command -v $tool >/dev/null || { echo "missing $tool: apt-get install gcc-aarch64-linux-gnu g++-aarch64-linux-gnu qemu-user" >&2; exit 1; }
done

if [ ! -x "$ROOT/usr/bin/python3.11" ]; then
  lists=$ARM64_DIR/apt-lists debs=$ARM64_DIR/debs
  mkdir -p "$lists/partial" "$debs"
  o="-oAPT::Architecture=arm64 -oAPT::Architectures=arm64 -oDir::State::Lists=$lists -oDebug::NoLocking=1"
  apt-get $o update -qq
  (cd "$debs" && apt-get $o download libc6 libgcc-s1 libstdc++6 python3.11-minimal libpython3.11-minimal \
     libpython3.11-stdlib libexpat1 zlib1g libffi8 libssl3 libbz2-1.0 liblzma5 libuuid1 libsqlite3-0 \
     libncursesw6 libtinfo6 libreadline8 libcrypt1 libnsl2 libtirpc3 libdb5.3 libgssapi-krb5-2 libkrb5-3 \
     libk5crypto3 libkrb5support0 libcom-err2 libkeyutils1 libgdbm6 media-types)
  for d in "$debs"/*.deb; do dpkg -x "$d" "$ROOT"; done
fi

if [ ! -d "$SITE/tvm" ]; then
  $PIP install -q --disable-pip-version-check --no-deps --target "$SITE" --platform manylinux_2_28_aarch64 \
     --python-version 3.11 --implementation cp --only-binary=:all: \
     apache-tvm==0.27.0.post1 apache-tvm-ffi==0.1.14.post0 numpy==2.4.6 ml_dtypes typing_extensions \
     psutil==7.2.2 cloudpickle==3.1.2 tornado==6.6.1
fi

cat > "$ARM64_DIR/python" <<WRAP
#!/bin/bash
# aarch64 python3.11 under qemu-user; QEMU_PLUGIN_ARGS="-plugin $ARM64_DIR/libinsn.so,outfile=F" counts instructions
exec qemu-aarch64 \${QEMU_PLUGIN_ARGS:-} -L "$ROOT" -E PYTHONPATH="$SITE" -E TVM_NUM_THREADS=\${TVM_NUM_THREADS:-1} -E PYTHONHASHSEED=\${PYTHONHASHSEED:-0} "$ROOT/usr/bin/python3.11" "\$@"
WRAP
chmod +x "$ARM64_DIR/python"

if [ ! -f "$ARM64_DIR/libinsn.so" ] || [ scripts/qemu_insn.c -nt "$ARM64_DIR/libinsn.so" ]; then
  gcc -shared -fPIC -O2 -o "$ARM64_DIR/libinsn.so" scripts/qemu_insn.c
fi
"$ARM64_DIR/python" -c "import sys, platform; print('aarch64 python', sys.version.split()[0], platform.machine())"
echo "arm64 environment ready in $ARM64_DIR"
