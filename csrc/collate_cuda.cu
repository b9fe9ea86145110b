// CUDA side of the packing extension. Built only where torch has CUDA; compile-checked with
// `nvcc -arch=sm_90 -c` in the tests on CPU boxes. No torch headers here, so it compiles in ~1 s:
// the launchers take raw pointers and csrc/packing.cpp wraps them (under S1FAST_WITH_CUDA).
#include <cstdint>
#include <cuda_runtime.h>

namespace s1fast {

// One thread per token. Its document d is the last with cu_seqlens[d] <= t (binary search over D+1 offsets:
// D is a handful per micro-batch, and the offsets stay in L1). Same outputs as pack_collate_cpu:
//   position_ids[t] = t - cu[d]; targets[t] = labels[t+1] inside the document, -100 at its last token;
//   loss_weight[t] = doc_weights[d] where there is a target, else 0.
__global__ void pack_collate_kernel(const int64_t* __restrict__ labels, const int32_t* __restrict__ cu,
                                    const float* __restrict__ doc_weights, int64_t T, int32_t D,
                                    int64_t* __restrict__ position_ids, int64_t* __restrict__ targets,
                                    float* __restrict__ loss_weight) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= T) return;
  int32_t lo = 0, hi = D;  // invariant: cu[lo] <= t < cu[hi]
  while (hi - lo > 1) {
    const int32_t mid = (lo + hi) >> 1;
    if (cu[mid] <= t) lo = mid; else hi = mid;
  }
  const int64_t start = cu[lo], end = cu[lo + 1];
  const int64_t target = (t + 1 < end) ? labels[t + 1] : -100;
  position_ids[t] = t - start;
  targets[t] = target;
  loss_weight[t] = (target != -100) ? doc_weights[lo] : 0.0f;
}

cudaError_t launch_pack_collate(const int64_t* labels, const int32_t* cu_seqlens, const float* doc_weights,
                                int64_t T, int32_t D, int64_t* position_ids, int64_t* targets, float* loss_weight,
                                cudaStream_t stream) {
  if (T == 0) return cudaSuccess;
  constexpr int kThreads = 256;
  const int64_t blocks = (T + kThreads - 1) / kThreads;
  pack_collate_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
      labels, cu_seqlens, doc_weights, T, D, position_ids, targets, loss_weight);
  return cudaGetLastError();
}

}  // namespace s1fast
