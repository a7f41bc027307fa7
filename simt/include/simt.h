// SIMT emulator (simt/): runs CUDA kernels, compiled as C++, on the CPU with the
// execution model they are written for. Each thread block runs as one fiber per CUDA thread on
// the calling host thread; blocks run one after another. __syncthreads is a real barrier over
// the block's live threads (exited threads count as arrived, as on the GPU), warp shuffles and
// __syncwarp are real exchanges among the 32 lanes of a warp. Scheduling is warp-major: a warp
// runs until all its lanes wait at __syncthreads before the next warp starts (warps in order,
// or reversed: set_reverse_order / BT_SIMT_ORDER=reverse), and the lanes of a warp run one
// after another between collectives. So warps drift as far apart as the barriers allow, and a
// missing barrier lets a read of shared memory overtake its write, which gives wrong
// results. What the GPU leaves undefined is an error here, raised by the launch that did it:
// a barrier that not every thread reaches (deadlock), a full-mask shuffle with a lane missing
// or lanes at different collectives, a block of more than 1024 threads, a grid past its limits
// and dynamic shared memory over the function's limit (48 KiB unless cudaFuncSetAttribute
// raised it, 227 KiB at most). Device memory is protected outside launches and copies, so host
// code that dereferences a device pointer crashes as it would with a GPU. Not emulated: concurrency between blocks, the memory model,
// timing, and everything the device does not guarantee about ordering.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

struct uint3;
struct dim3;

namespace bt::simt {

extern uint3 g_threadIdx, g_blockIdx;
extern dim3 g_blockDim, g_gridDim;

void syncthreads();
void syncwarp(unsigned mask);
enum class ShuffleKind { index, bfly, down, up };
// The 8 bytes `bits` of the calling lane go to the warp; returns those of the source lane.
uint64_t exchange(unsigned mask, uint64_t bits, ShuffleKind kind, int arg, int width);

template <class T>
T shuffle(unsigned mask, T v, ShuffleKind kind, int arg, int width) {
  static_assert(sizeof(T) <= 8, "shuffles move at most 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  bits = exchange(mask, bits, kind, arg, width);
  T r;
  std::memcpy(&r, &bits, sizeof(T));
  return r;
}

// Undefined behaviour seen by device code: the launch fails with this message.
[[noreturn]] void fail(const std::string& what);

// The dynamic shared memory of the running block (the launch's byte count, 128-byte aligned).
void* dynamic_shared();

// Runs `thread` for every thread of every block of the grid; returns cudaSuccess or the error
// the GPU would report at launch (bad configuration) or at the next synchronization (a fault:
// here, the undefined behaviour listed above), which is also kept for cudaGetLastError.
int run_grid(const void* fn, dim3 grid, dim3 block, size_t smem, const std::function<void()>& thread);

// Work for a stream: runs now, or, while the stream is being captured into a graph
// (cudaStreamBeginCapture), is recorded to run at each launch of the graph. Returns what `work`
// returns (a cudaError_t) when it ran now, cudaSuccess when it was recorded.
int enqueue(const void* stream, std::function<int()> work);
bool capturing(const void* stream);
// A launch on a capturing stream: the configuration is checked now (as at a launch), the grid
// is recorded. Returns cudaSuccess or the configuration error.
int capture_grid(const void* stream, const void* fn, dim3 grid, dim3 block, size_t smem,
                 std::function<void()> thread);

// Device memory (cudaMalloc) is inaccessible to host code except while one of these lives:
// launches and the runtime's copies open it, so a host dereference of a device pointer faults.
struct DeviceAccess {
  DeviceAccess();
  ~DeviceAccess();
  DeviceAccess(const DeviceAccess&) = delete;
  DeviceAccess& operator=(const DeviceAccess&) = delete;
};

// Thread order between barriers: false = 0, 1, 2, ... (default), true = reversed.
void set_reverse_order(bool reverse);

// kernel<<<grid, block, smem, stream>>>(args...) on the emulator: make_launch(...)(args...).
// On a capturing stream the arguments are copied into the recorded launch (by value, as the GPU
// copies kernel parameters at launch).
template <class... P>
struct Launch {
  dim3 grid, block;
  size_t smem;
  const void* stream;
  void (*kernel)(P...);
  template <class... A>
  void operator()(A&&... args) const {
    auto k = kernel;
    if (capturing(stream)) {
      auto params = std::make_shared<std::tuple<P...>>(std::forward<A>(args)...);
      capture_grid(stream, reinterpret_cast<const void*>(k), grid, block, smem,
                   [params, k] { std::apply(k, *params); });
      return;
    }
    std::tuple<P...> params(std::forward<A>(args)...);
    run_grid(reinterpret_cast<const void*>(k), grid, block, smem, [&params, k] { std::apply(k, params); });
  }
};
template <class S, class... P>
Launch<P...> make_launch(dim3 grid, dim3 block, size_t smem, S stream, void (*kernel)(P...)) {
  const void* s = nullptr;  // a literal 0 is the default stream
  if constexpr (!std::is_integral_v<S>) s = static_cast<const void*>(stream);
  return Launch<P...>{grid, block, smem, s, kernel};
}

}  // namespace bt::simt
