// cuBLASLt wrapper (see cublaslt.h): plan cache keyed by everything the heuristic looks at.
#include "model/cuda/cublaslt.h"

#include <cublasLt.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "model/cuda/check.h"

namespace bt::cuda {

namespace {

const char* cublas_hint(cublasStatus_t s) {
  switch (s) {
    case CUBLAS_STATUS_NOT_INITIALIZED:
      return " (cuBLASLt could not start: check nvidia-smi and that libcublasLt matches the driver)";
    case CUBLAS_STATUS_ALLOC_FAILED:
      return " (out of GPU memory: lower train.micro_batch)";
    case CUBLAS_STATUS_NOT_SUPPORTED:
    case CUBLAS_STATUS_INVALID_VALUE:
      return " (this GEMM configuration is not supported; set BT_CUDA_GEMM=simple to use the fallback kernel and "
             "report the shapes)";
    case CUBLAS_STATUS_ARCH_MISMATCH:
      return " (this GPU lacks a feature the GEMM needs; bf16 needs sm_80 or newer)";
    default:
      return "";
  }
}

}  // namespace

}  // namespace bt::cuda

#define BT_CUBLAS_CHECK(call)                                                                                   \
  do {                                                                                                          \
    cublasStatus_t bt_st_ = (call);                                                                             \
    if (bt_st_ != CUBLAS_STATUS_SUCCESS)                                                                        \
      ::bt::fail_at(__FILE__, __LINE__, "cuBLASLt error ", cublasLtGetStatusName(bt_st_), " (",                 \
                    cublasLtGetStatusString(bt_st_), ") in ", #call, ::bt::cuda::cublas_hint(bt_st_));          \
  } while (0)

namespace bt::cuda {

namespace {

cudaDataType_t cuda_type(DType t) {
  switch (t) {
    case DType::f32: return CUDA_R_32F;
    case DType::bf16: return CUDA_R_16BF;
    default: BT_FAIL("gemm: dtype ", dtype_name(t), " is not supported (f32 or bf16)");
  }
}

// The largest power of two (up to 256) that divides the address: what the heuristic may assume.
int alignment(const void* p) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  int al = 256;
  while (al > 1 && (a % al) != 0) al >>= 1;
  return al;
}

}  // namespace

struct Gemm::Plan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
  cublasLtMatmulAlgo_t algo{};
  bool ok = false;  // the heuristic found an algorithm
  ~Plan() {
    if (desc) cublasLtMatmulDescDestroy(desc);
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (d) cublasLtMatrixLayoutDestroy(d);
  }
};

Gemm::Gemm(void* workspace, size_t ws_bytes) : ws_(workspace), ws_bytes_(ws_bytes) {
  cublasLtHandle_t h = nullptr;
  BT_CUBLAS_CHECK(cublasLtCreate(&h));
  handle_ = h;
  const char* env = std::getenv("BT_CUDA_GEMM");
  simple_only_ = env && std::strcmp(env, "simple") == 0;
}

Gemm::~Gemm() {
  plans_.clear();
  if (handle_) cublasLtDestroy(static_cast<cublasLtHandle_t>(handle_));
}

Gemm::Plan& Gemm::plan(const GemmDesc& g, bool with_bias) {
  const int bias_al = with_bias ? alignment(g.bias) : 0;
  Key key{g.ta, g.tb, g.m, g.n, g.k, g.lda, g.ldb, g.ldd, int(g.ab), int(g.d), g.beta != 0.0f, bias_al,
          alignment(g.A), alignment(g.B), alignment(g.D), with_bias};
  auto it = plans_.find(key);
  if (it != plans_.end()) return *it->second;
  auto p = std::make_unique<Plan>();
  // fp32 compute and scale; CUBLAS_COMPUTE_32F never uses TF32, so the fp32 mode is exact fp32.
  BT_CUBLAS_CHECK(cublasLtMatmulDescCreate(&p->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t ta = g.ta ? CUBLAS_OP_T : CUBLAS_OP_N, tb = g.tb ? CUBLAS_OP_T : CUBLAS_OP_N;
  BT_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
  BT_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
  if (with_bias) {
    const cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
    BT_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi)));
    const cudaDataType_t bt = cuda_type(g.d);
    BT_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof(bt)));
    BT_CUBLAS_CHECK(
        cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &g.bias, sizeof(g.bias)));
  }
  // Stored (pre-op) shapes: A is m x k, or k x m when transposed; B is k x n, or n x k.
  BT_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->a, cuda_type(g.ab), g.ta ? g.k : g.m, g.ta ? g.m : g.k, g.lda));
  BT_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->b, cuda_type(g.ab), g.tb ? g.n : g.k, g.tb ? g.k : g.n, g.ldb));
  BT_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->d, cuda_type(g.d), g.m, g.n, g.ldd));

  cublasLtMatmulPreference_t pref = nullptr;
  BT_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  const uint64_t ws = ws_bytes_;
  BT_CUBLAS_CHECK(
      cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
  const uint32_t al_a = alignment(g.A), al_b = alignment(g.B), al_d = alignment(g.D);
  BT_CUBLAS_CHECK(
      cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al_a, sizeof(al_a)));
  BT_CUBLAS_CHECK(
      cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al_b, sizeof(al_b)));
  BT_CUBLAS_CHECK(
      cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al_d, sizeof(al_d)));
  BT_CUBLAS_CHECK(
      cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al_d, sizeof(al_d)));
  cublasLtMatmulHeuristicResult_t res{};
  int found = 0;
  const cublasStatus_t cublasLtMatmulAlgoGetHeuristic_status = cublasLtMatmulAlgoGetHeuristic(
      static_cast<cublasLtHandle_t>(handle_), p->desc, p->a, p->b, p->d, p->d, pref, 1, &res, &found);
  const cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic_status;
  cublasLtMatmulPreferenceDestroy(pref);
  // NOT_SUPPORTED means "no algorithm for this configuration": the simple kernel takes it.
  if (st != CUBLAS_STATUS_NOT_SUPPORTED) BT_CUBLAS_CHECK(cublasLtMatmulAlgoGetHeuristic_status);
  p->ok = st == CUBLAS_STATUS_SUCCESS && found > 0 && res.state == CUBLAS_STATUS_SUCCESS;
  if (p->ok) p->algo = res.algo;
  return *plans_.emplace(key, std::move(p)).first->second;
}

void Gemm::run(const GemmDesc& g, cudaStream_t stream) {
  if (g.m == 0 || g.n == 0) return;
  BT_CHECK(g.bias == nullptr || g.beta == 0.0f, "gemm: a bias epilogue needs beta = 0");
  if (g.k == 0) {  // D = beta * D (+ bias): nothing to multiply
    if (g.beta != 1.0f || g.bias) gemm_simple(g, stream);
    return;
  }
  if (simple_only_) {
    gemm_simple(g, stream);
    return;
  }
  auto launch = [&](Plan& p, const GemmDesc& d) {
    const float alpha = 1.0f, beta = d.beta;
    if (d.bias)
      BT_CUBLAS_CHECK(
          cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &d.bias, sizeof(d.bias)));
    BT_CUBLAS_CHECK(cublasLtMatmul(static_cast<cublasLtHandle_t>(handle_), p.desc, &alpha, d.A, p.a, d.B, p.b, &beta,
                                   d.D, p.d, d.D, p.d, &p.algo, ws_, ws_bytes_, stream));
  };
  if (g.bias) {
    // A bias vector off the 16-byte grid (a view into the middle of a buffer) is never given to
    // the epilogue: its alignment rules are not documented.
    Plan* p = alignment(g.bias) >= 16 ? &plan(g, true) : nullptr;
    if (p && p->ok) {
      launch(*p, g);
      return;
    }
    // No fused-bias algorithm: write the bias, then accumulate the product onto it.
    GemmDesc acc = g;
    acc.bias = nullptr;
    acc.beta = 1.0f;
    Plan& q = plan(acc, false);
    if (!q.ok) {
      gemm_simple(g, stream);
      return;
    }
    broadcast_bias(g, stream);
    launch(q, acc);
    return;
  }
  Plan& p = plan(g, false);
  if (p.ok) launch(p, g);
  else gemm_simple(g, stream);
}

}  // namespace bt::cuda
