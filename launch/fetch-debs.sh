#!/usr/bin/env bash
# Downloads (never installs) the .deb files of blockformer's build dependencies and the runtime
# libraries they pull in, into one folder (default .debs/ in the checkout), so that
# launch/gpu-check.sh can build on a GPU machine that has CUDA, CMake and Ninja but not our apt
# packages, and possibly no network. gpu-check.sh unpacks them with `dpkg-deb -x` into a local
# prefix only when configuring against the system fails.
#
# Run it where apt works, on the same distribution release as the GPU machine (the libraries
# are linked against that release's glibc); copy the folder next to the checkout there.
#   launch/fetch-debs.sh [out_dir]          BT_DEBS_MPI=1 also fetches Open MPI
# Packages: HDF5, yaml-cpp, OpenBLAS, fmt, CLI11, nlohmann-json, SentencePiece, GoogleTest,
# pkg-config (and Open MPI on request), plus the closure of their Depends, minus the base
# system every Debian/Ubuntu machine with a C++ compiler has (Priority required/important, libc,
# the gcc runtime) and minus the alternative flavours we do not use (gnutls/nss curl, openmp and
# serial OpenBLAS).
set -euo pipefail

out=${1:-.debs}
pkgs=(libhdf5-dev libyaml-cpp-dev libopenblas-dev libopenblas-pthread-dev libfmt-dev libcli11-dev
      nlohmann-json3-dev libsentencepiece-dev libgtest-dev pkgconf)
if [[ ${BT_DEBS_MPI:-0} == 1 ]]; then
  pkgs+=(libopenmpi-dev openmpi-bin)
fi

command -v apt-get >/dev/null || { echo "fetch-debs: apt-get not found (Debian/Ubuntu only)" >&2; exit 1; }

skip_re='-gnutls|-nss|^nss-|^libnss|^libnspr|-openmp|-serial|^libc6|^libc-dev-bin$|^linux-libc-dev$|^libcrypt|^libgcc|^gcc-[0-9]+-base$|^libstdc\+\+|^libgomp'
mapfile -t closure < <(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts \
  --no-breaks --no-replaces --no-enhances "${pkgs[@]}" | awk '/^[a-z0-9]/ {print $1}' | sort -u)

want=()
for p in "${closure[@]}"; do
  [[ $p =~ $skip_re ]] && continue
  prio=$(apt-cache show --no-all-versions "$p" 2>/dev/null | awk -F': ' '/^Priority:/ {print $2; exit}')
  [[ $prio == required || $prio == important ]] && continue
  want+=("$p")
done
# The flavour gpu-check.sh points at, even though the pattern above skips its siblings.
want+=(libopenblas0-pthread)

mkdir -p "$out"
cd "$out"
echo "fetch-debs: downloading ${#want[@]} packages into $(pwd)"
apt-get download "${want[@]}"
du -sh .
