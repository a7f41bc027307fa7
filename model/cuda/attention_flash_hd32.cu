// Flash attention kernels for head dims up to 32 (bf16 and f32 on the CUDA cores, bf16 on the tensor cores): one file per bound so the
// instantiations compile in parallel and the file name says what it builds.
#include "model/cuda/attention_flash.cuh"
#include "model/cuda/attention_flash_tc.cuh"

namespace bt::cuda {

template void flash_attention_forward<32>(const AttnArgs&, DType, cudaStream_t);
template void flash_attention_backward<32>(const AttnArgs&, DType, cudaStream_t);
template void flash_attention_setup<32>();
template void flash_tc_forward<32>(const AttnArgs&, cudaStream_t);
template void flash_tc_backward<32>(const AttnArgs&, cudaStream_t);
template void flash_tc_setup<32>();

}  // namespace bt::cuda
