// SIMT emulator: NCCL (include/nccl.h) over MPI. The communicator is an MPI communicator split
// from MPI_COMM_WORLD by the unique id; every collective works on host copies in fp32 / fp64 /
// integers and completes before it returns.
#include <mpi.h>
#include <nccl.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "cuda_bf16.h"

struct ncclComm {
  MPI_Comm mpi;
  int rank, nranks;
};

namespace {

size_t elem_size(ncclDataType_t t) {
  switch (t) {
    case ncclInt8:
    case ncclUint8: return 1;
    case ncclBfloat16: return 2;
    case ncclInt32:
    case ncclFloat32: return 4;
    case ncclFloat64: return 8;
  }
  return 0;
}

// Values as doubles (exact for every supported type) and back, rounding bf16 once.
std::vector<double> widen(const void* p, size_t n, ncclDataType_t t) {
  std::vector<double> v(n);
  for (size_t i = 0; i < n; ++i) switch (t) {
      case ncclInt8: v[i] = static_cast<const int8_t*>(p)[i]; break;
      case ncclUint8: v[i] = static_cast<const uint8_t*>(p)[i]; break;
      case ncclInt32: v[i] = static_cast<const int32_t*>(p)[i]; break;
      case ncclFloat32: v[i] = static_cast<const float*>(p)[i]; break;
      case ncclFloat64: v[i] = static_cast<const double*>(p)[i]; break;
      case ncclBfloat16: v[i] = __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]); break;
    }
  return v;
}
void narrow(void* p, const std::vector<double>& v, ncclDataType_t t) {
  for (size_t i = 0; i < v.size(); ++i) switch (t) {
      case ncclInt8: static_cast<int8_t*>(p)[i] = int8_t(v[i]); break;
      case ncclUint8: static_cast<uint8_t*>(p)[i] = uint8_t(v[i]); break;
      case ncclInt32: static_cast<int32_t*>(p)[i] = int32_t(v[i]); break;
      case ncclFloat32: static_cast<float*>(p)[i] = float(v[i]); break;
      case ncclFloat64: static_cast<double*>(p)[i] = v[i]; break;
      case ncclBfloat16: static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(float(v[i])); break;
    }
}

// The reduction over ranks of n values per rank, in rank order, as NCCL's fp32 math would do it
// for fp32 (the values are summed in fp32, not in the doubles that carry them).
std::vector<double> reduce(ncclComm* c, const void* send, size_t n, ncclDataType_t t, ncclRedOp_t op) {
  std::vector<double> mine = widen(send, n, t), all(n * size_t(c->nranks));
  MPI_Allgather(mine.data(), int(n), MPI_DOUBLE, all.data(), int(n), MPI_DOUBLE, c->mpi);
  std::vector<double> r(n);
  const bool single = t == ncclFloat32 || t == ncclBfloat16;
  for (size_t i = 0; i < n; ++i) {
    double acc = all[i];
    float accf = float(all[i]);
    for (int k = 1; k < c->nranks; ++k) {
      const double x = all[size_t(k) * n + i];
      switch (op) {
        case ncclSum:
        case ncclAvg: acc += x; accf += float(x); break;
        case ncclProd: acc *= x; accf *= float(x); break;
        case ncclMax: acc = std::max(acc, x); accf = std::max(accf, float(x)); break;
        case ncclMin: acc = std::min(acc, x); accf = std::min(accf, float(x)); break;
      }
    }
    if (single) acc = accf;
    if (op == ncclAvg) acc = single ? double(float(acc) / float(c->nranks)) : acc / c->nranks;
    r[i] = acc;
  }
  return r;
}

}  // namespace

ncclResult_t ncclGetUniqueId(ncclUniqueId* id) {
  std::random_device rd;
  for (char& ch : id->internal) ch = char(rd());
  return ncclSuccess;
}

ncclResult_t ncclCommInitRankConfig(ncclComm_t* comm, int nranks, ncclUniqueId id, int rank, ncclConfig_t*) {
  int color = 0;
  std::memcpy(&color, id.internal, sizeof(int));
  color &= 0x3fffffff;
  auto* c = new ncclComm{MPI_COMM_NULL, rank, nranks};
  if (MPI_Comm_split(MPI_COMM_WORLD, color, rank, &c->mpi) != MPI_SUCCESS) {
    delete c;
    return ncclSystemError;
  }
  int size = 0;
  MPI_Comm_size(c->mpi, &size);
  if (size != nranks) {
    MPI_Comm_free(&c->mpi);
    delete c;
    return ncclInvalidUsage;
  }
  *comm = c;
  return ncclSuccess;
}
ncclResult_t ncclCommGetAsyncError(ncclComm_t, ncclResult_t* state) {
  *state = ncclSuccess;
  return ncclSuccess;
}
ncclResult_t ncclCommDestroy(ncclComm_t comm) {
  if (comm) {
    MPI_Comm_free(&comm->mpi);
    delete comm;
  }
  return ncclSuccess;
}
ncclResult_t ncclCommAbort(ncclComm_t comm) {  // no MPI_Comm_free: the peers may be gone
  delete comm;
  return ncclSuccess;
}

ncclResult_t ncclAllReduce(const void* send, void* recv, size_t count, ncclDataType_t type, ncclRedOp_t op,
                           ncclComm_t comm, cudaStream_t) {
  bt::simt::DeviceAccess open;
  narrow(recv, reduce(comm, send, count, type, op), type);
  return ncclSuccess;
}
ncclResult_t ncclReduceScatter(const void* send, void* recv, size_t recvcount, ncclDataType_t type, ncclRedOp_t op,
                               ncclComm_t comm, cudaStream_t) {
  bt::simt::DeviceAccess open;
  const std::vector<double> all = reduce(comm, send, recvcount * size_t(comm->nranks), type, op);
  narrow(recv, std::vector<double>(all.begin() + long(recvcount) * comm->rank,
                                   all.begin() + long(recvcount) * (comm->rank + 1)),
         type);
  return ncclSuccess;
}
ncclResult_t ncclAllGather(const void* send, void* recv, size_t sendcount, ncclDataType_t type, ncclComm_t comm,
                           cudaStream_t) {
  bt::simt::DeviceAccess open;
  const size_t bytes = sendcount * elem_size(type);
  std::vector<char> mine(static_cast<const char*>(send), static_cast<const char*>(send) + bytes);  // send may be in recv
  MPI_Allgather(mine.data(), int(bytes), MPI_BYTE, recv, int(bytes), MPI_BYTE, comm->mpi);
  return ncclSuccess;
}
ncclResult_t ncclBroadcast(const void* send, void* recv, size_t count, ncclDataType_t type, int root, ncclComm_t comm,
                           cudaStream_t) {
  bt::simt::DeviceAccess open;
  const size_t bytes = count * elem_size(type);
  if (comm->rank == root && send != recv) std::memmove(recv, send, bytes);
  MPI_Bcast(recv, int(bytes), MPI_BYTE, root, comm->mpi);
  return ncclSuccess;
}

const char* ncclGetErrorString(ncclResult_t r) {
  switch (r) {
    case ncclSuccess: return "no error";
    case ncclUnhandledCudaError: return "unhandled cuda error";
    case ncclSystemError: return "unhandled system error";
    case ncclInternalError: return "internal error";
    case ncclInvalidArgument: return "invalid argument";
    case ncclInvalidUsage: return "invalid usage";
    case ncclRemoteError: return "remote process exited or there was a network error";
    case ncclInProgress: return "NCCL operation in progress";
  }
  return "unknown result code";
}
