// The SIMT emulator itself (simt/): thread and block indices, warp shuffles, block
// reductions, and that what a GPU would get wrong or leave undefined shows here too: a
// missing __syncthreads gives wrong results, divergent barriers and collectives are reported
// as launch failures, and bad launch configurations fail as on the device. Stream capture:
// launches and async copies on a capturing stream are recorded (arguments by value) and run at
// each graph launch; synchronizing calls during a capture fail and invalidate it.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <vector>

#include "model/cuda/common.cuh"

namespace {

using namespace bt::cuda;

__global__ void indices_kernel(int* out) {
  const int block = int(blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z));
  const int thread = int(threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z));
  const int per_block = int(blockDim.x * blockDim.y * blockDim.z);
  out[block * per_block + thread] = block * 10000 + thread;
}

TEST(Simt, EveryThreadOfEveryBlockRunsOnceWithItsIndices) {
  const dim3 grid(3, 2, 2), block(8, 4, 2);
  std::vector<int> out(12 * 64, -1);
  BT_LAUNCH(grid, block, 0, nullptr, indices_kernel)(out.data());
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  for (int b = 0; b < 12; ++b)
    for (int t = 0; t < 64; ++t) ASSERT_EQ(out[size_t(b) * 64 + t], b * 10000 + t) << b << " " << t;
}

template <class T>
__global__ void shuffle_kernel(T* out) {
  // out [8][blockDim.x]: xor 1 and 16, index 5, down 3, up 7, warp_sum, block_sum, lane id
  __shared__ T red[kWarp];
  const int tid = threadIdx.x, n = blockDim.x, lane = tid % kWarp;
  const T v = T(tid * 3 + 1);
  out[0 * n + tid] = __shfl_xor_sync(0xffffffffu, v, 1);
  out[1 * n + tid] = __shfl_xor_sync(0xffffffffu, v, 16);
  out[2 * n + tid] = __shfl_sync(0xffffffffu, v, 5);
  out[3 * n + tid] = __shfl_down_sync(0xffffffffu, v, 3);
  out[4 * n + tid] = __shfl_up_sync(0xffffffffu, v, 7);
  out[5 * n + tid] = warp_sum(v);
  out[6 * n + tid] = block_sum(v, red);
  out[7 * n + tid] = T(lane);
}

template <class T>
void check_shuffles() {
  const int n = 128;
  std::vector<T> out(8 * n);
  BT_LAUNCH(2, n, 0, nullptr, shuffle_kernel<T>)(out.data());
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  auto v = [](int t) { return T(t * 3 + 1); };
  T total = 0;
  for (int t = 0; t < n; ++t) total += v(t);
  for (int t = 0; t < n; ++t) {
    const int lane = t % 32, base = t - lane;
    T wsum = 0;
    for (int l = 0; l < 32; ++l) wsum += v(base + l);
    EXPECT_EQ(out[0 * n + t], v(base + (lane ^ 1))) << t;
    EXPECT_EQ(out[1 * n + t], v(base + (lane ^ 16))) << t;
    EXPECT_EQ(out[2 * n + t], v(base + 5)) << t;
    EXPECT_EQ(out[3 * n + t], v(lane + 3 < 32 ? t + 3 : t)) << t;
    EXPECT_EQ(out[4 * n + t], v(lane >= 7 ? t - 7 : t)) << t;
    EXPECT_EQ(out[5 * n + t], wsum) << t;
    EXPECT_EQ(out[6 * n + t], total) << t;
    EXPECT_EQ(out[7 * n + t], T(lane)) << t;
  }
}

TEST(Simt, WarpShufflesAndReductionsFloat) { check_shuffles<float>(); }
TEST(Simt, WarpShufflesAndReductionsDouble) { check_shuffles<double>(); }

__global__ void neighbour_kernel(float* out, bool sync) {
  // each thread writes its slot, then reads the slot 32 threads (one warp) further on
  BT_EXTERN_SHARED(float, s);
  const int tid = threadIdx.x, n = blockDim.x;
  s[tid] = float(tid);
  if (sync) __syncthreads();
  out[tid] = s[(tid + 32) % n];
}

TEST(Simt, AMissingBarrierGivesWrongResultsInBothOrders) {
  const int n = 128;
  for (bool reverse : {false, true}) {
    bt::simt::set_reverse_order(reverse);
    for (bool sync : {true, false}) {
      std::vector<float> out(n, -1.f);
      BT_LAUNCH(1, n, n * sizeof(float), nullptr, neighbour_kernel)(out.data(), sync);
      ASSERT_EQ(cudaGetLastError(), cudaSuccess);
      int right = 0;
      for (int t = 0; t < n; ++t) right += out[t] == float((t + 32) % n);
      if (sync) EXPECT_EQ(right, n) << "reverse " << reverse;
      else EXPECT_LT(right, n) << "reverse " << reverse << ": the race went unnoticed";
    }
  }
  bt::simt::set_reverse_order(false);
}

__global__ void uninitialized_shared_kernel(float* out) {
  BT_EXTERN_SHARED(float, s);
  out[threadIdx.x] = s[threadIdx.x];
}

TEST(Simt, SharedMemoryStartsAsNaN) {
  std::vector<float> out(32, 0.f);
  BT_LAUNCH(1, 32, 32 * sizeof(float), nullptr, uninitialized_shared_kernel)(out.data());
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  for (float x : out) EXPECT_TRUE(std::isnan(x));
}

__global__ void exited_threads_kernel(int* out) {
  // threads of the upper half leave; the barrier still releases the lower half (as on the GPU)
  __shared__ int s[64];
  const int tid = threadIdx.x;
  if (tid >= 32) return;
  s[tid] = tid;
  __syncthreads();
  out[tid] = s[31 - tid];
}

TEST(Simt, ExitedThreadsCountAsArrivedAtBarriers) {
  std::vector<int> out(32, -1);
  BT_LAUNCH(1, 64, 0, nullptr, exited_threads_kernel)(out.data());
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  for (int t = 0; t < 32; ++t) EXPECT_EQ(out[t], 31 - t);
}

__global__ void deadlock_kernel(float* out) {
  // lane 0 waits at the block barrier while its warp waits for it in a shuffle
  float v = float(threadIdx.x);
  if (threadIdx.x == 0) __syncthreads();
  else v = __shfl_xor_sync(0xffffffffu, v, 1);
  out[threadIdx.x] = v;
}

__global__ void shuffle_after_exit_kernel(float* out) {
  if (threadIdx.x == 3) return;
  out[threadIdx.x] = warp_sum(1.f);
}

__global__ void partial_warp_shuffle_kernel(float* out) { out[threadIdx.x] = warp_sum(1.f); }

TEST(Simt, UndefinedBehaviourIsALaunchFailure) {
  std::vector<float> out(64);
  BT_LAUNCH(1, 64, 0, nullptr, deadlock_kernel)(out.data());
  EXPECT_EQ(cudaGetLastError(), cudaErrorLaunchFailure) << "divergent barrier and shuffle";
  BT_LAUNCH(1, 32, 0, nullptr, shuffle_after_exit_kernel)(out.data());
  EXPECT_EQ(cudaGetLastError(), cudaErrorLaunchFailure) << "full-mask shuffle after a lane exited";
  BT_LAUNCH(1, 48, 0, nullptr, partial_warp_shuffle_kernel)(out.data());
  EXPECT_EQ(cudaGetLastError(), cudaErrorLaunchFailure) << "full-mask shuffle in a warp of 16";
  EXPECT_THROW(
      {
        BT_LAUNCH(1, 32, 0, nullptr, shuffle_after_exit_kernel)(out.data());
        BT_KERNEL_CHECK("shuffle_after_exit_kernel");
      },
      bt::Error);
  BT_LAUNCH(1, 32, 0, nullptr, partial_warp_shuffle_kernel)(out.data());  // still usable afterwards
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  EXPECT_EQ(out[0], 32.f);
}

__global__ void big_shared_kernel(float* out) {
  BT_EXTERN_SHARED(float, s);
  s[threadIdx.x] = 1.f;
  out[threadIdx.x] = s[threadIdx.x];
}

TEST(Simt, LaunchLimitsAreTheDevicesLimits) {
  std::vector<float> out(1024);
  BT_LAUNCH(1, 1025, 0, nullptr, big_shared_kernel)(out.data());
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidConfiguration) << "1025 threads per block";
  BT_LAUNCH(dim3(1, 65536), 32, 0, nullptr, big_shared_kernel)(out.data());
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidConfiguration) << "grid.y > 65535";
  const size_t big = 64 * 1024;
  BT_LAUNCH(1, 32, big, nullptr, big_shared_kernel)(out.data());
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidValue) << "64 KiB of dynamic shared memory without opting in";
  ASSERT_EQ(cudaFuncSetAttribute(reinterpret_cast<const void*>(&big_shared_kernel),
                                 cudaFuncAttributeMaxDynamicSharedMemorySize, int(big)),
            cudaSuccess);
  BT_LAUNCH(1, 32, big, nullptr, big_shared_kernel)(out.data());
  EXPECT_EQ(cudaGetLastError(), cudaSuccess) << "after cudaFuncSetAttribute";
  EXPECT_NE(cudaFuncSetAttribute(reinterpret_cast<const void*>(&big_shared_kernel),
                                 cudaFuncAttributeMaxDynamicSharedMemorySize, 228 * 1024),
            cudaSuccess)
      << "more than sm_90's 227 KiB";
  (void)cudaGetLastError();
}

__global__ void add_one_kernel(float* x, int n) {
  for (int i = threadIdx.x; i < n; i += blockDim.x) x[i] += 1.f;
}

TEST(Simt, DeviceMemoryIsOnlyReachableThroughTheRuntime) {
  float* d = nullptr;
  ASSERT_EQ(cudaMalloc(&d, 100 * sizeof(float)), cudaSuccess);
  std::vector<float> h(100, 2.f), back(100);
  ASSERT_EQ(cudaMemcpy(d, h.data(), 100 * sizeof(float), cudaMemcpyHostToDevice), cudaSuccess);
  BT_LAUNCH(1, 64, 0, nullptr, add_one_kernel)(d, 100);
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(back.data(), d, 100 * sizeof(float), cudaMemcpyDeviceToHost), cudaSuccess);
  for (float x : back) EXPECT_EQ(x, 3.f);
  // A host read of a device pointer faults, as it does with a real GPU.
  EXPECT_DEATH({ std::printf("%f\n", static_cast<double>(*static_cast<volatile float*>(d))); }, "");
  EXPECT_EQ(cudaFree(d), cudaSuccess);
}

TEST(Simt, Bf16ConversionsRoundToNearestEven) {
  EXPECT_EQ(__float2bfloat16_rn(1.0f).__x, 0x3f80);
  EXPECT_EQ(__float2bfloat16_rn(1.00390625f).__x, 0x3f80);   // halfway, even stays
  EXPECT_EQ(__float2bfloat16_rn(1.01171875f).__x, 0x3f82);   // halfway, odd rounds up
  EXPECT_EQ(__float2bfloat16_rn(-2.5f).__x, 0xc020);
  EXPECT_TRUE(std::isnan(__bfloat162float(__float2bfloat16_rn(NAN))));
  EXPECT_EQ(__bfloat162float(__float2bfloat16_rn(3.4e38f)), INFINITY);  // past bf16's max 3.39e38
  for (uint32_t h = 0; h < 0x10000; h += 7) {  // every finite bf16 converts back to itself
    __nv_bfloat16 b;
    b.__x = uint16_t(h);
    const float f = __bfloat162float(b);
    if (std::isfinite(f)) {
      EXPECT_EQ(__float2bfloat16_rn(f).__x, b.__x);
    }
  }
}

__global__ void axpy_kernel(float* y, const float* x, float a, int n) {
  for (int i = threadIdx.x + blockIdx.x * blockDim.x; i < n; i += blockDim.x * gridDim.x) y[i] += a * x[i];
}

TEST(Simt, StreamCaptureRecordsAndGraphLaunchReplays) {
  cudaStream_t s = nullptr;
  ASSERT_EQ(cudaStreamCreate(&s), cudaSuccess);
  const int n = 100;
  float *x = nullptr, *y = nullptr;
  ASSERT_EQ(cudaMalloc(&x, n * sizeof(float)), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&y, n * sizeof(float)), cudaSuccess);
  std::vector<float> hx(n), hy(n, 0.f), back(n);
  for (int i = 0; i < n; ++i) hx[i] = float(i);
  ASSERT_EQ(cudaMemcpy(x, hx.data(), n * sizeof(float), cudaMemcpyHostToDevice), cudaSuccess);
  ASSERT_EQ(cudaMemset(y, 0, n * sizeof(float)), cudaSuccess);

  ASSERT_EQ(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal), cudaSuccess);
  cudaStreamCaptureStatus status;
  ASSERT_EQ(cudaStreamIsCapturing(s, &status), cudaSuccess);
  EXPECT_EQ(status, cudaStreamCaptureStatusActive);
  float a = 2.f;
  BT_LAUNCH(2, 32, 0, s, axpy_kernel)(y, x, a, n);  // y += 2 x
  a = 100.f;                                         // the launch keeps the value it was given
  BT_LAUNCH(1, 32, 0, s, add_one_kernel)(y, n);      // y += 1
  ASSERT_EQ(cudaMemcpyAsync(back.data(), y, n * sizeof(float), cudaMemcpyDeviceToHost, s), cudaSuccess);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  cudaGraph_t graph = nullptr;
  ASSERT_EQ(cudaStreamEndCapture(s, &graph), cudaSuccess);
  ASSERT_NE(graph, nullptr);
  // Nothing ran while capturing.
  ASSERT_EQ(cudaMemcpy(hy.data(), y, n * sizeof(float), cudaMemcpyDeviceToHost), cudaSuccess);
  for (int i = 0; i < n; ++i) ASSERT_EQ(hy[i], 0.f) << i;
  cudaGraphExec_t exec = nullptr;
  ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
  ASSERT_EQ(cudaGraphDestroy(graph), cudaSuccess);  // the executable graph is independent of it
  for (int launch = 1; launch <= 3; ++launch) {
    ASSERT_EQ(cudaGraphLaunch(exec, s), cudaSuccess);
    ASSERT_EQ(cudaStreamSynchronize(s), cudaSuccess);
    for (int i = 0; i < n; ++i) ASSERT_EQ(back[i], launch * (2.f * i + 1.f)) << "launch " << launch << ", " << i;
  }
  EXPECT_EQ(cudaGraphExecDestroy(exec), cudaSuccess);
  // Plain launches run at once again.
  BT_LAUNCH(1, 32, 0, s, add_one_kernel)(y, n);
  ASSERT_EQ(cudaMemcpy(hy.data(), y, n * sizeof(float), cudaMemcpyDeviceToHost), cudaSuccess);
  EXPECT_EQ(hy[5], 3 * 11.f + 1.f);
  cudaFree(x);
  cudaFree(y);
  cudaStreamDestroy(s);
}

TEST(Simt, SynchronizingDuringACaptureInvalidatesIt) {
  cudaStream_t s = nullptr;
  ASSERT_EQ(cudaStreamCreate(&s), cudaSuccess);
  float* y = nullptr;
  ASSERT_EQ(cudaMalloc(&y, 32 * sizeof(float)), cudaSuccess);
  struct Case {
    const char* what;
    std::function<cudaError_t()> call;
  };
  std::vector<float> h(32);
  const std::vector<Case> cases = {
      {"cudaStreamSynchronize", [&] { return cudaStreamSynchronize(s); }},
      {"cudaMalloc", [&] {
         void* p = nullptr;
         return cudaMalloc(&p, 64);
       }},
      {"cudaMemcpy", [&] { return cudaMemcpy(h.data(), y, 32 * sizeof(float), cudaMemcpyDeviceToHost); }},
      {"cudaDeviceSynchronize", [&] { return cudaDeviceSynchronize(); }},
  };
  for (const Case& c : cases) {
    ASSERT_EQ(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal), cudaSuccess);
    BT_LAUNCH(1, 32, 0, s, add_one_kernel)(y, 32);
    EXPECT_EQ(c.call(), cudaErrorStreamCaptureUnsupported) << c.what;
    cudaStreamCaptureStatus status;
    cudaStreamIsCapturing(s, &status);
    EXPECT_EQ(status, cudaStreamCaptureStatusInvalidated) << c.what;
    cudaGraph_t graph = reinterpret_cast<cudaGraph_t>(1);
    EXPECT_EQ(cudaStreamEndCapture(s, &graph), cudaErrorStreamCaptureInvalidated) << c.what;
    EXPECT_EQ(graph, nullptr);
    (void)cudaGetLastError();
  }
  EXPECT_EQ(cudaStreamSynchronize(s), cudaSuccess) << "after the capture ended";
  cudaGraph_t graph = nullptr;
  EXPECT_EQ(cudaStreamEndCapture(s, &graph), cudaErrorStreamCaptureUnmatched) << "no capture to end";
  (void)cudaGetLastError();
  cudaFree(y);
  cudaStreamDestroy(s);
}

TEST(Simt, ABadLaunchInACaptureFailsAtLaunch) {
  cudaStream_t s = nullptr;
  ASSERT_EQ(cudaStreamCreate(&s), cudaSuccess);
  std::vector<float> out(1024);
  ASSERT_EQ(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal), cudaSuccess);
  BT_LAUNCH(1, 1025, 0, s, big_shared_kernel)(out.data());
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidConfiguration) << "checked when captured, as a launch is";
  cudaGraph_t graph = nullptr;
  EXPECT_EQ(cudaStreamEndCapture(s, &graph), cudaSuccess);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(s);
}

}  // namespace
