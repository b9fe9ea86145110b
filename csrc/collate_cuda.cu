// CUDA side of the packing extension. Built only where torch has CUDA; compile-checked with
// `nvcc -arch=sm_90 -c` in the tests on CPU boxes. No torch headers here, so it compiles in ~1 s:
// the launchers take raw pointers and the .cpp side wraps them.
#include <cstdint>
#include <cuda_runtime.h>

namespace s1fast {

// Exclusive scan of document lengths into int32 cu_seqlens, one block (documents per micro-batch
// are few: a sequential scan in one thread is cheaper than a launch of a parallel scan).
__global__ void cu_seqlens_kernel(const int64_t* __restrict__ lengths, int32_t* __restrict__ out, int64_t n) {
  if (blockIdx.x != 0 || threadIdx.x != 0) return;
  int32_t acc = 0;
  out[0] = 0;
  for (int64_t i = 0; i < n; ++i) {
    acc += static_cast<int32_t>(lengths[i]);
    out[i + 1] = acc;
  }
}

cudaError_t launch_cu_seqlens(const int64_t* lengths, int32_t* out, int64_t n, cudaStream_t stream) {
  cu_seqlens_kernel<<<1, 1, 0, stream>>>(lengths, out, n);
  return cudaGetLastError();
}

}  // namespace s1fast
