// SIMT emulator (simt.h): fibers, barriers, warp exchanges, launch checks, and the host side of
// the fake CUDA runtime (cuda_runtime.h): device memory is host memory, streams and events are
// no-ops because every launch completes before it returns; stream capture records work into a
// graph that cudaGraphLaunch runs.
#include <sys/mman.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <new>
#include <string>
#include <vector>

#include "cuda_runtime.h"

#if defined(__x86_64__) && !defined(__SANITIZE_ADDRESS__)
#define BT_SIMT_ASM_SWITCH 1
#else
#include <ucontext.h>
#endif

namespace bt::simt {

uint3 g_threadIdx{0, 0, 0}, g_blockIdx{0, 0, 0};
dim3 g_blockDim, g_gridDim;

namespace {

constexpr int kWarpSize = 32;
constexpr int kMaxThreads = 1024;
constexpr size_t kStackBytes = size_t(128) << 10;  // per fiber, plus a guard page
constexpr int kDefaultSmem = 48 * 1024;
constexpr int kMaxSmemOptin = 227 * 1024;  // sm_90

#ifdef BT_SIMT_ASM_SWITCH
// Saves the callee-saved registers of the System V ABI on the current stack, stores the stack
// pointer in *from and continues on the stack `to` (made by switch_to or fresh_stack).
extern "C" void bt_simt_switch(void** from, void* to);
asm(R"(
  .pushsection .text
  .globl bt_simt_switch
  .type bt_simt_switch, @function
bt_simt_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size bt_simt_switch, .-bt_simt_switch
  .popsection
)");
#endif

enum class State { ready, waiting, done };
enum class Coll { none, shuffle, syncwarp };

struct Fiber {
  char* stack = nullptr;  // mmap'ed: guard page + kStackBytes
#ifdef BT_SIMT_ASM_SWITCH
  void* sp = nullptr;
#else
  ucontext_t ctx;
#endif
  int tid = 0;
  State state = State::ready;
  const uint64_t* wait_gen = nullptr;  // resume when *wait_gen != wait_value
  uint64_t wait_value = 0;
  uint64_t collectives = 0;  // warp collectives this lane has entered
};

struct Warp {
  int size = 0, live = 0, arrived = 0;
  uint64_t gen = 0;
  Coll kind = Coll::none;
  uint64_t slots[2][kWarpSize];
};

struct Grid {
  std::vector<Fiber> fibers;  // the pool; the first nthreads serve the running block
  std::vector<Warp> warps;
  std::vector<unsigned char> smem;
  int nthreads = 0, live = 0, arrived = 0;
  uint64_t gen = 0;
  int current = -1;
  const std::function<void()>* thread = nullptr;
  std::string error;  // undefined behaviour seen in the running block
#ifdef BT_SIMT_ASM_SWITCH
  void* sched_sp = nullptr;
#else
  ucontext_t sched;
#endif
};

Grid g;
std::recursive_mutex g_launch_mutex;  // one launch at a time (static __shared__ is per process)
bool g_reverse = [] {
  const char* e = std::getenv("BT_SIMT_ORDER");
  return e && std::string(e) == "reverse";
}();
cudaError_t g_last_error = cudaSuccess;
std::map<const void*, int> g_smem_limit;  // cudaFuncAttributeMaxDynamicSharedMemorySize per kernel

cudaError_t record(cudaError_t e) {
  if (e != cudaSuccess) g_last_error = e;
  return e;
}

Fiber& self() { return g.fibers[size_t(g.current)]; }

void to_scheduler() {
#ifdef BT_SIMT_ASM_SWITCH
  bt_simt_switch(&self().sp, g.sched_sp);
#else
  swapcontext(&self().ctx, &g.sched);
#endif
}

// Undefined behaviour: remember the first message; the fiber never runs again.
[[noreturn]] void undefined(const std::string& what) {
  if (g.error.empty()) g.error = what;
  self().state = State::done;
  for (;;) to_scheduler();
}

void wait_for(const uint64_t* gen) {
  Fiber& f = self();
  f.state = State::waiting;
  f.wait_gen = gen;
  f.wait_value = *gen;
  to_scheduler();
}

void thread_exit() {
  Fiber& f = self();
  f.state = State::done;
  --g.live;
  if (g.arrived > 0 && g.arrived == g.live) {  // the others wait only for this one
    g.arrived = 0;
    ++g.gen;
  }
  Warp& w = g.warps[size_t(f.tid / kWarpSize)];
  --w.live;
  if (w.arrived > 0)
    undefined("thread " + std::to_string(f.tid) + " exited while the other lanes of its warp wait in a warp " +
              "collective (a full-mask shuffle or __syncwarp needs all 32 lanes)");
}

void fiber_main() {
  (*g.thread)();
  thread_exit();
  for (;;) to_scheduler();
}

#ifdef BT_SIMT_ASM_SWITCH
extern "C" void bt_simt_entry() { fiber_main(); }
#else
void ucontext_entry() { fiber_main(); }
#endif

void ensure_fibers(int n) {
  while (int(g.fibers.size()) < n) {
    Fiber f;
    const size_t page = 4096;
    void* p = mmap(nullptr, kStackBytes + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
    mprotect(p, page, PROT_NONE);  // a stack overflow faults instead of corrupting a neighbour
    f.stack = static_cast<char*>(p) + page;
    g.fibers.push_back(f);
  }
}

void start_fiber(Fiber& f) {
#ifdef BT_SIMT_ASM_SWITCH
  // A stack that bt_simt_switch "returns" into bt_simt_entry on, aligned as after a call.
  auto top = reinterpret_cast<uintptr_t>(f.stack + kStackBytes) & ~uintptr_t(15);
  void** sp = reinterpret_cast<void**>(top);
  *--sp = nullptr;                                      // bt_simt_entry's return address (never used)
  *--sp = reinterpret_cast<void*>(&bt_simt_entry);     // popped by ret
  for (int i = 0; i < 6; ++i) *--sp = nullptr;          // rbp rbx r12 r13 r14 r15
  f.sp = sp;
#else
  getcontext(&f.ctx);
  f.ctx.uc_stack.ss_sp = f.stack;
  f.ctx.uc_stack.ss_size = kStackBytes;
  f.ctx.uc_link = nullptr;
  makecontext(&f.ctx, &ucontext_entry, 0);
#endif
  f.state = State::ready;
  f.wait_gen = nullptr;
  f.collectives = 0;
}

void resume(int i) {
  g.current = i;
  Fiber& f = g.fibers[size_t(i)];
  const unsigned bx = g_blockDim.x, by = g_blockDim.y;
  g_threadIdx = uint3{unsigned(f.tid) % bx, (unsigned(f.tid) / bx) % by, unsigned(f.tid) / (bx * by)};
  f.state = State::ready;
#ifdef BT_SIMT_ASM_SWITCH
  bt_simt_switch(&g.sched_sp, f.sp);
#else
  swapcontext(&g.sched, &f.ctx);
#endif
  g.current = -1;
}

// Runs the current block to completion; false (with g.error) on undefined behaviour.
bool run_block() {
  const int n = g.nthreads;
  g.live = n;
  g.arrived = 0;
  for (int w = 0; w * kWarpSize < n; ++w) {
    Warp& wp = g.warps[size_t(w)];
    wp.size = wp.live = std::min(kWarpSize, n - w * kWarpSize);
    wp.arrived = 0;
    wp.kind = Coll::none;
  }
  for (int t = 0; t < n; ++t) {
    g.fibers[size_t(t)].tid = t;
    start_fiber(g.fibers[size_t(t)]);
  }
  // Warp-major order: each warp runs until all its lanes wait at __syncthreads (or exit)
  // before the next warp starts, so warps drift as far apart as the barriers allow.
  const int nwarps = (n + kWarpSize - 1) / kWarpSize;
  for (;;) {
    bool any_left = false, progressed = false;
    for (int wk = 0; wk < nwarps; ++wk) {
      const int w = g_reverse ? nwarps - 1 - wk : wk;
      const int lanes = std::min(kWarpSize, n - w * kWarpSize);
      for (bool warp_progressed = true; warp_progressed;) {
        warp_progressed = false;
        for (int k = 0; k < lanes; ++k) {
          const int i = w * kWarpSize + (g_reverse ? lanes - 1 - k : k);
          Fiber& f = g.fibers[size_t(i)];
          if (f.state == State::done) continue;
          any_left = true;
          if (f.state == State::waiting && *f.wait_gen == f.wait_value) continue;
          resume(i);
          warp_progressed = progressed = true;
          if (!g.error.empty()) return false;
        }
      }
    }
    if (!any_left) return true;
    if (!progressed) {
      int at_block = 0, at_warp = 0;
      for (int t = 0; t < n; ++t) {
        const Fiber& f = g.fibers[size_t(t)];
        if (f.state != State::waiting) continue;
        (f.wait_gen == &g.gen ? at_block : at_warp)++;
      }
      g.error = "deadlock: " + std::to_string(at_block) + " threads wait in __syncthreads and " +
                std::to_string(at_warp) + " in warp collectives that the other threads never reach (" +
                std::to_string(n - g.live) + " of " + std::to_string(n) + " threads exited)";
      return false;
    }
  }
}

std::string dims(dim3 d) {
  return "(" + std::to_string(d.x) + ", " + std::to_string(d.y) + ", " + std::to_string(d.z) + ")";
}

}  // namespace

void syncthreads() {
  if (g.current < 0) return;  // host code: nothing to wait for
  if (++g.arrived == g.live) {
    g.arrived = 0;
    ++g.gen;
    return;
  }
  wait_for(&g.gen);
}

namespace {

// Enters a warp collective of `kind`; returns the slot parity of this collective.
int warp_enter(Coll kind, unsigned mask, const char* what) {
  Fiber& f = self();
  Warp& w = g.warps[size_t(f.tid / kWarpSize)];
  if (mask != 0xffffffffu) undefined(std::string(what) + " with a partial mask is not emulated");
  if (w.size != kWarpSize)
    undefined(std::string(what) + " with a full mask in a warp of " + std::to_string(w.size) +
              " threads (the block size is not a multiple of 32)");
  if (w.live != w.size)
    undefined(std::string(what) + " with a full mask after " + std::to_string(w.size - w.live) +
              " lanes of the warp exited");
  if (w.arrived == 0) w.kind = kind;
  else if (w.kind != kind) undefined("lanes of a warp are at different warp collectives (shuffle vs __syncwarp)");
  return int(f.collectives++ & 1);
}

void warp_wait() {
  Warp& w = g.warps[size_t(self().tid / kWarpSize)];
  if (++w.arrived == w.size) {
    w.arrived = 0;
    ++w.gen;
    return;
  }
  wait_for(&w.gen);
}

}  // namespace

void syncwarp(unsigned mask) {
  if (g.current < 0) return;
  warp_enter(Coll::syncwarp, mask, "__syncwarp");
  warp_wait();
}

uint64_t exchange(unsigned mask, uint64_t bits, ShuffleKind kind, int arg, int width) {
  if (g.current < 0) return bits;  // host code: a warp of one
  if (width != kWarpSize) undefined("shuffles with width != 32 are not emulated");
  const int parity = warp_enter(Coll::shuffle, mask, "a warp shuffle");
  const int lane = self().tid % kWarpSize;
  Warp& w = g.warps[size_t(self().tid / kWarpSize)];
  w.slots[parity][lane] = bits;
  warp_wait();
  // Every lane wrote before anyone passed the barrier; the next collective uses the other
  // slots, and the one after can only start when all lanes have finished reading these.
  int src = lane;
  switch (kind) {
    case ShuffleKind::index: src = arg & (kWarpSize - 1); break;
    case ShuffleKind::bfly: src = lane ^ (arg & (kWarpSize - 1)); break;
    case ShuffleKind::down: src = lane + arg < kWarpSize ? lane + arg : lane; break;
    case ShuffleKind::up: src = lane - arg >= 0 ? lane - arg : lane; break;
  }
  return w.slots[parity][src];
}

void fail(const std::string& what) {
  if (g.current < 0) {
    std::fprintf(stderr, "simt: %s (outside a kernel)\n", what.c_str());
    std::abort();
  }
  undefined(what);
}

void* dynamic_shared() {  // 128-byte aligned, as the kernels declare it
  auto p = reinterpret_cast<uintptr_t>(g.smem.data());
  return reinterpret_cast<void*>((p + 127) & ~uintptr_t(127));
}

void set_reverse_order(bool reverse) { g_reverse = reverse; }

namespace {

// What the GPU checks when a kernel is launched (or captured): cudaSuccess or the error.
cudaError_t check_config(const void* fn, dim3 grid, dim3 block, size_t smem) {
  const uint64_t threads = uint64_t(block.x) * block.y * block.z;
  if (threads == 0 || threads > kMaxThreads || block.z > 64 || grid.x == 0 || grid.y == 0 || grid.z == 0 ||
      grid.y > 65535 || grid.z > 65535) {
    std::fprintf(stderr, "simt: invalid launch configuration: grid %s, block %s\n", dims(grid).c_str(),
                 dims(block).c_str());
    return record(cudaErrorInvalidConfiguration);
  }
  auto lim = g_smem_limit.find(fn);
  const size_t limit = lim == g_smem_limit.end() ? kDefaultSmem : size_t(lim->second);
  if (smem > limit) {
    std::fprintf(stderr, "simt: %zu bytes of dynamic shared memory exceed this kernel's limit of %zu\n", smem, limit);
    return record(cudaErrorInvalidValue);
  }
  return cudaSuccess;
}

}  // namespace

int run_grid(const void* fn, dim3 grid, dim3 block, size_t smem, const std::function<void()>& thread) {
  std::lock_guard<std::recursive_mutex> lock(g_launch_mutex);
  const uint64_t threads = uint64_t(block.x) * block.y * block.z;
  if (const cudaError_t e = check_config(fn, grid, block, smem); e != cudaSuccess) return e;
  if (g.current >= 0) {
    std::fprintf(stderr, "simt: a kernel launched a kernel (dynamic parallelism is not emulated)\n");
    return record(cudaErrorLaunchFailure);
  }
  DeviceAccess open;  // device memory is readable while the kernel runs
  g.nthreads = int(threads);
  ensure_fibers(g.nthreads);
  g.warps.resize(size_t((g.nthreads + kWarpSize - 1) / kWarpSize));
  g.smem.assign((smem + 15) / 16 * 16 + 128, 0xFF);  // garbage, like real shared memory
  g.thread = &thread;
  g.error.clear();
  g_blockDim = block;
  g_gridDim = grid;
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        g_blockIdx = uint3{x, y, z};
        std::fill(g.smem.begin(), g.smem.end(), 0xFF);
        if (!run_block()) {
          std::fprintf(stderr, "simt: undefined behaviour in block (%u, %u, %u) of grid %s, block %s: %s\n", x, y, z,
                       dims(grid).c_str(), dims(block).c_str(), g.error.c_str());
          g.thread = nullptr;
          return record(cudaErrorLaunchFailure);
        }
      }
  g.thread = nullptr;
  return cudaSuccess;
}

// ---- stream capture and graphs ------------------------------------------------------------------

namespace {

struct GraphNodes {
  std::vector<std::function<int()>> work;  // in stream order
};
struct Capture {
  GraphNodes* graph = nullptr;
  bool invalid = false;
  bool relaxed = false;
};
std::map<const void*, Capture> g_captures;  // by stream
std::recursive_mutex g_capture_mutex;

}  // namespace

bool capturing(const void* stream) {
  std::lock_guard<std::recursive_mutex> lock(g_capture_mutex);
  return g_captures.count(stream) > 0;
}

int enqueue(const void* stream, std::function<int()> work) {
  {
    std::lock_guard<std::recursive_mutex> lock(g_capture_mutex);
    auto it = g_captures.find(stream);
    if (it != g_captures.end()) {
      it->second.graph->work.push_back(std::move(work));
      return cudaSuccess;
    }
  }
  return work();
}

int capture_grid(const void* stream, const void* fn, dim3 grid, dim3 block, size_t smem,
                 std::function<void()> thread) {
  std::lock_guard<std::recursive_mutex> lock(g_launch_mutex);
  if (const cudaError_t e = check_config(fn, grid, block, smem); e != cudaSuccess) return e;
  return enqueue(stream, [fn, grid, block, smem, thread = std::move(thread)] {
    return run_grid(fn, grid, block, smem, thread);
  });
}

// A synchronizing call: fails inside a (not relaxed) capture and invalidates it.
cudaError_t unsafe_during_capture(const char* what) {
  std::lock_guard<std::recursive_mutex> lock(g_capture_mutex);
  bool strict = false;
  for (auto& [s, c] : g_captures)
    if (!c.relaxed) {
      c.invalid = true;
      strict = true;
    }
  if (!strict) return cudaSuccess;
  std::fprintf(stderr, "simt: %s during a stream capture (not allowed on the GPU; the capture is invalidated)\n",
               what);
  return record(cudaErrorStreamCaptureUnsupported);
}

}  // namespace bt::simt

// ---- the runtime API ----------------------------------------------------------------------------

namespace {
constexpr size_t kTotalMemory = size_t(16) << 30;  // what the emulated device reports
size_t g_allocated = 0;
struct Allocation {
  size_t bytes, mapped;
};
std::map<void*, Allocation> g_allocations;
std::recursive_mutex g_alloc_mutex;
int g_open = 0;  // > 0: inside a launch or a copy, device memory is accessible
// Device memory is mapped PROT_NONE outside launches and copies, so host code that reads or
// writes a device pointer faults here as it would on a GPU (BT_SIMT_PROTECT=0 turns this off).
const bool g_protect = [] {
  const char* e = std::getenv("BT_SIMT_PROTECT");
  return !(e && std::string(e) == "0");
}();

void protect(void* p, const Allocation& a, bool open) {
  if (g_protect) mprotect(p, a.mapped, open ? PROT_READ | PROT_WRITE : PROT_NONE);
}

}  // namespace

namespace bt::simt {

DeviceAccess::DeviceAccess() {
  std::lock_guard<std::recursive_mutex> lock(g_alloc_mutex);
  if (g_open++ == 0)
    for (auto& [p, a] : g_allocations) protect(p, a, true);
}
DeviceAccess::~DeviceAccess() {
  std::lock_guard<std::recursive_mutex> lock(g_alloc_mutex);
  if (--g_open == 0)
    for (auto& [p, a] : g_allocations) protect(p, a, false);
}

}  // namespace bt::simt

// BT_SIMT_DEVICES (default 1) emulated devices, all the same CPU: ranks of an mpirun on one
// machine each take one (local rank = device), as on a node with that many GPUs.
int device_count() {
  static const int n = [] {
    const char* e = std::getenv("BT_SIMT_DEVICES");
    const int v = e ? std::atoi(e) : 1;
    return v > 0 ? v : 1;
  }();
  return n;
}
cudaError_t cudaGetDeviceCount(int* n) {
  *n = device_count();
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int device) {
  return device >= 0 && device < device_count() ? cudaSuccess : bt::simt::record(cudaErrorInvalidDevice);
}
cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device) {
  if (device < 0 || device >= device_count()) return bt::simt::record(cudaErrorInvalidDevice);
  *prop = cudaDeviceProp{};
  std::snprintf(prop->name, sizeof(prop->name), "SIMT emulator (CPU)");
  prop->major = 9;
  prop->minor = 0;
  prop->totalGlobalMem = kTotalMemory;
  prop->sharedMemPerBlock = bt::simt::kDefaultSmem;
  prop->sharedMemPerBlockOptin = bt::simt::kMaxSmemOptin;
  prop->multiProcessorCount = 1;
  prop->maxThreadsPerBlock = bt::simt::kMaxThreads;
  prop->warpSize = bt::simt::kWarpSize;
  prop->clockRate = 1000000;
  return cudaSuccess;
}
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  if (device < 0 || device >= device_count()) return bt::simt::record(cudaErrorInvalidDevice);
  if (attr != cudaDevAttrMaxSharedMemoryPerBlockOptin) return bt::simt::record(cudaErrorInvalidValue);
  *value = bt::simt::kMaxSmemOptin;
  return cudaSuccess;
}
cudaError_t cudaDeviceSynchronize() { return bt::simt::unsafe_during_capture("cudaDeviceSynchronize"); }

cudaError_t cudaMalloc(void** p, size_t bytes) {
  if (const cudaError_t e = bt::simt::unsafe_during_capture("cudaMalloc"); e != cudaSuccess) return e;
  std::lock_guard<std::recursive_mutex> lock(g_alloc_mutex);
  if (g_allocated + bytes > kTotalMemory) return bt::simt::record(cudaErrorMemoryAllocation);
  const size_t page = 4096, mapped = std::max(page, (bytes + page - 1) / page * page);
  void* q = mmap(nullptr, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (q == MAP_FAILED) return bt::simt::record(cudaErrorMemoryAllocation);
  std::memset(q, 0xFF, bytes);  // device memory starts as garbage (NaN as floats)
  const Allocation a{bytes, mapped};
  g_allocations[q] = a;
  g_allocated += bytes;
  if (g_open == 0) protect(q, a, false);
  *p = q;
  return cudaSuccess;
}
cudaError_t cudaFree(void* p) {
  if (!p) return cudaSuccess;
  if (const cudaError_t e = bt::simt::unsafe_during_capture("cudaFree"); e != cudaSuccess) return e;
  std::lock_guard<std::recursive_mutex> lock(g_alloc_mutex);
  auto it = g_allocations.find(p);
  if (it == g_allocations.end()) return bt::simt::record(cudaErrorInvalidValue);
  g_allocated -= it->second.bytes;
  munmap(p, it->second.mapped);
  g_allocations.erase(it);
  return cudaSuccess;
}
cudaError_t cudaMemGetInfo(size_t* free_b, size_t* total_b) {
  std::lock_guard<std::recursive_mutex> lock(g_alloc_mutex);
  *free_b = kTotalMemory - g_allocated;
  *total_b = kTotalMemory;
  return cudaSuccess;
}
namespace {
cudaError_t copy_now(void* dst, const void* src, size_t bytes) {
  bt::simt::DeviceAccess open;
  if (bytes) std::memmove(dst, src, bytes);
  return cudaSuccess;
}
cudaError_t set_now(void* p, int value, size_t bytes) {
  bt::simt::DeviceAccess open;
  if (bytes) std::memset(p, value, bytes);
  return cudaSuccess;
}
}  // namespace
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind) {
  if (const cudaError_t e = bt::simt::unsafe_during_capture("cudaMemcpy"); e != cudaSuccess) return e;
  return copy_now(dst, src, bytes);
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind, cudaStream_t s) {
  return cudaError_t(bt::simt::enqueue(s, [=] { return int(copy_now(dst, src, bytes)); }));
}
cudaError_t cudaMemset(void* p, int value, size_t bytes) {
  if (const cudaError_t e = bt::simt::unsafe_during_capture("cudaMemset"); e != cudaSuccess) return e;
  return set_now(p, value, bytes);
}
cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t s) {
  return cudaError_t(bt::simt::enqueue(s, [=] { return int(set_now(p, value, bytes)); }));
}

// Streams and events: distinct non-null handles; all work is complete when a call returns.
namespace {
struct Handle {
  char unused;
};
}  // namespace
cudaError_t cudaStreamCreate(cudaStream_t* s) {
  *s = reinterpret_cast<cudaStream_t>(new Handle);
  return cudaSuccess;
}
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned) { return cudaStreamCreate(s); }
cudaError_t cudaStreamDestroy(cudaStream_t s) {
  delete reinterpret_cast<Handle*>(s);
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t) { return bt::simt::unsafe_during_capture("cudaStreamSynchronize"); }
cudaError_t cudaStreamQuery(cudaStream_t s) {
  return bt::simt::capturing(s) ? bt::simt::unsafe_during_capture("cudaStreamQuery") : cudaSuccess;
}
cudaError_t cudaStreamWaitEvent(cudaStream_t, cudaEvent_t, unsigned) { return cudaSuccess; }
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned) {
  *e = reinterpret_cast<cudaEvent_t>(new Handle);
  return cudaSuccess;
}
cudaError_t cudaEventCreate(cudaEvent_t* e) { return cudaEventCreateWithFlags(e, 0); }
cudaError_t cudaEventRecord(cudaEvent_t, cudaStream_t) { return cudaSuccess; }
cudaError_t cudaEventSynchronize(cudaEvent_t) { return bt::simt::unsafe_during_capture("cudaEventSynchronize"); }
cudaError_t cudaEventDestroy(cudaEvent_t e) {
  delete reinterpret_cast<Handle*>(e);
  return cudaSuccess;
}

cudaError_t cudaGetLastError() {
  const cudaError_t e = bt::simt::g_last_error;
  bt::simt::g_last_error = cudaSuccess;
  return e;
}
cudaError_t cudaPeekAtLastError() { return bt::simt::g_last_error; }

const char* cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInsufficientDriver: return "cudaErrorInsufficientDriver";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorNoKernelImageForDevice: return "cudaErrorNoKernelImageForDevice";
    case cudaErrorUnsupportedPtxVersion: return "cudaErrorUnsupportedPtxVersion";
    case cudaErrorNotReady: return "cudaErrorNotReady";
    case cudaErrorIllegalAddress: return "cudaErrorIllegalAddress";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    case cudaErrorStreamCaptureUnsupported: return "cudaErrorStreamCaptureUnsupported";
    case cudaErrorStreamCaptureInvalidated: return "cudaErrorStreamCaptureInvalidated";
    case cudaErrorStreamCaptureUnmatched: return "cudaErrorStreamCaptureUnmatched";
    case cudaErrorStreamCaptureImplicit: return "cudaErrorStreamCaptureImplicit";
  }
  return "cudaErrorUnknown";
}
const char* cudaGetErrorString(cudaError_t e) {
  return e == cudaErrorLaunchFailure ? "undefined behaviour in a kernel (see the simt: line above)"
                                     : cudaGetErrorName(e);
}

cudaError_t cudaFuncSetAttribute(const void* fn, cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize || value < 0 || value > bt::simt::kMaxSmemOptin)
    return bt::simt::record(cudaErrorInvalidValue);
  std::lock_guard<std::recursive_mutex> lock(bt::simt::g_launch_mutex);
  bt::simt::g_smem_limit[fn] = value;
  return cudaSuccess;
}
cudaError_t cudaFuncGetAttributes(cudaFuncAttributes* attr, const void* fn) {
  std::lock_guard<std::recursive_mutex> lock(bt::simt::g_launch_mutex);
  auto it = bt::simt::g_smem_limit.find(fn);
  *attr = cudaFuncAttributes{};
  attr->maxDynamicSharedSizeBytes = it == bt::simt::g_smem_limit.end() ? bt::simt::kDefaultSmem : it->second;
  attr->maxThreadsPerBlock = bt::simt::kMaxThreads;
  return cudaSuccess;
}

// ---- graphs ---------------------------------------------------------------------------------------

cudaError_t cudaStreamBeginCapture(cudaStream_t s, cudaStreamCaptureMode mode) {
  std::lock_guard<std::recursive_mutex> lock(bt::simt::g_capture_mutex);
  if (bt::simt::g_captures.count(s)) return bt::simt::record(cudaErrorStreamCaptureImplicit);
  bt::simt::Capture& c = bt::simt::g_captures[s];
  c.graph = new bt::simt::GraphNodes;
  c.relaxed = mode == cudaStreamCaptureModeRelaxed;
  return cudaSuccess;
}
cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t* graph) {
  std::lock_guard<std::recursive_mutex> lock(bt::simt::g_capture_mutex);
  *graph = nullptr;
  auto it = bt::simt::g_captures.find(s);
  if (it == bt::simt::g_captures.end()) return bt::simt::record(cudaErrorStreamCaptureUnmatched);
  bt::simt::Capture c = it->second;
  bt::simt::g_captures.erase(it);
  if (c.invalid) {
    delete c.graph;
    return bt::simt::record(cudaErrorStreamCaptureInvalidated);
  }
  *graph = reinterpret_cast<cudaGraph_t>(c.graph);
  return cudaSuccess;
}
cudaError_t cudaStreamIsCapturing(cudaStream_t s, cudaStreamCaptureStatus* status) {
  std::lock_guard<std::recursive_mutex> lock(bt::simt::g_capture_mutex);
  auto it = bt::simt::g_captures.find(s);
  *status = it == bt::simt::g_captures.end() ? cudaStreamCaptureStatusNone
            : it->second.invalid              ? cudaStreamCaptureStatusInvalidated
                                              : cudaStreamCaptureStatusActive;
  return cudaSuccess;
}
cudaError_t cudaGraphInstantiate(cudaGraphExec_t* exec, cudaGraph_t graph, unsigned long long) {
  if (!graph) return bt::simt::record(cudaErrorInvalidValue);
  *exec = reinterpret_cast<cudaGraphExec_t>(new bt::simt::GraphNodes(*reinterpret_cast<bt::simt::GraphNodes*>(graph)));
  return cudaSuccess;
}
cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t s) {
  if (!exec) return bt::simt::record(cudaErrorInvalidValue);
  if (bt::simt::capturing(s)) return bt::simt::record(cudaErrorStreamCaptureUnsupported);  // not emulated
  for (const auto& w : reinterpret_cast<bt::simt::GraphNodes*>(exec)->work)
    if (const int e = w(); e != cudaSuccess) return bt::simt::record(cudaError_t(e));
  return cudaSuccess;
}
cudaError_t cudaGraphDestroy(cudaGraph_t graph) {
  delete reinterpret_cast<bt::simt::GraphNodes*>(graph);
  return cudaSuccess;
}
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec) {
  delete reinterpret_cast<bt::simt::GraphNodes*>(exec);
  return cudaSuccess;
}
