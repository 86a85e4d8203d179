#!/usr/bin/env bash
# Sets up pyro-mcp on a Debian/Ubuntu host: the system tools the sandboxes and
# environment builders need, the npm dependencies, and the build (guest agent +
# bundled CLI). Safe to run again. Uses sudo when not root.
set -euo pipefail
cd "$(dirname "$0")/.."

# The same list as `pyro doctor`'s tools (src/operations/doctor.ts, hostTools; a unit test holds them
# equal), plus what development needs: gcc-aarch64-linux-gnu and libc6-dev-arm64-cross build the
# aarch64 agent the npm package carries, qemu-user runs its C tests (npm test), cpio reads back the
# initramfs pyro writes (the vm tier). doctor asks for none of those.
QEMU=qemu-system-x86
[ "$(uname -m)" = aarch64 ] && QEMU=qemu-system-arm
PACKAGES=(bubblewrap mmdebstrap debootstrap ca-certificates busybox-static passt "$QEMU" e2fsprogs lz4 zstd xz-utils
  gcc make libc6-dev gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user cpio)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "setup: installing ${missing[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund --loglevel=error
fi
npm run -s build
echo "setup: done. Try: ./bin/pyro doctor" >&2
