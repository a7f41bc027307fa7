#!/usr/bin/env bash
# Prepares a GPU check on a machine WITHOUT a GPU, so that the GPU machine only runs it:
# builds bt and the GPU tests for sm_90 (static CUDA runtime, no MPI/NCCL), and packs them with
# the shared libraries a bare CUDA image may lack (HDF5, yaml-cpp, OpenBLAS, SentencePiece, ...)
# and the configs into .gpu-bundle/bundle.tar.xz (git-ignored), with a run.sh that runs the GPU
# tests, the bf16 training benchmarks and the decoding benchmark (batch auto) and writes a report.
#
#   launch/gpu-bundle.sh                      # here (Debian 12, CUDA toolkit installed)
#   bash .gpu-bundle/run.sh OUT_DIR           # on the GPU machine (needs a CUDA 13 driver, >= 580,
#                                             # and libcublasLt.so.13 from its CUDA toolkit)
set -euo pipefail
cd "$(dirname "$0")/.."

build=build/gpu-bundle
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DBT_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
  -DBT_MPI=OFF -DBT_NCCL=OFF -DBT_CUDA_STATIC_RUNTIME=ON >/dev/null
targets=(bt bt_gpu_test_cuda_ops bt_gpu_test_cuda_model bt_gpu_test_cuda_train bt_gpu_test_cuda_cli
  bt_gpu_test_cuda_decode bt_gpu_test_cuda_eval_tasks)
cmake --build "$build" -j "${JOBS:-2}" --target "${targets[@]}"

out=.gpu-bundle
rm -rf "$out"
mkdir -p "$out/bin" "$out/lib"
cp "$build/bt" "$out/bin/"
for t in "${targets[@]:1}"; do cp "$build/tests/$t" "$out/bin/"; done
cp -r configs "$out/"
# Every shared library the binaries load, except the C runtime, the C++ runtime (the GPU
# image's is newer) and the CUDA driver/libraries (those must come from the GPU machine).
for b in "$out"/bin/*; do
  ldd "$b" | awk '/=> \//{print $3}'
done | sort -u | while read -r lib; do
  case "$(basename "$lib")" in
    libc.so*|libm.so*|libdl.so*|librt.so*|libpthread.so*|ld-linux*|libstdc++.so*|libgcc_s.so*) ;;
    libcuda.so*|libcudart.so*|libcublas*|libnccl*|libnvidia*) ;;
    *) cp -L "$lib" "$out/lib/" ;;
  esac
done
strip --strip-unneeded "$out"/bin/* "$out"/lib/* 2>/dev/null || true
# The device call carries at most 64 MiB: ship one xz archive and the runner that unpacks it.
tar -C "$out" -cJf "$build/bundle.tar.xz" bin lib configs
rm -rf "${out:?}"/*
mv "$build/bundle.tar.xz" "$out/"
cp launch/gpu-bundle-run.sh "$out/run.sh"
du -sh "$out"
echo "bundle ready: carry .gpu-bundle and run: bash .gpu-bundle/run.sh \$OUT"
