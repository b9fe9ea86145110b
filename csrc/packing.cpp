// s1fast native extension: sequence packing ops registered with TORCH_LIBRARY (namespace s1fast).
//
//   plan(lengths, costs, keys, world_size, max_tokens, global_batch, epochs, seed, mode, group_window, accum)
//       -> (order, micro_offsets, step_micro, step_epoch)                             CPU (planner.cpp)
//   pack_collate(input_ids, labels, cu_seqlens, doc_weights)
//       -> (input_ids int64, position_ids, targets, loss_weight)                      CPU, CUDA (collate_cuda.cu)
//
// pack_collate works on one micro-batch already concatenated (s1fast.packing.collate does that on the host
// and computes cu_seqlens / max_seqlen there, once per batch). For document d = [s, e):
//   position_ids[t] = t - s;  targets[t] = labels[t+1] for t < e-1, -100 at t = e-1 (no cross-document target);
//   loss_weight[t] = doc_weights[d] where targets[t] != -100, else 0.
// Fake (meta) kernels for FakeTensor / torch.compile are registered in Python (s1fast/packing.py).
#include <torch/extension.h>
#include <torch/library.h>

#include <cstring>
#include <stdexcept>

#include "planner.h"

#ifdef S1FAST_WITH_CUDA
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime.h>
#endif

namespace s1fast {

constexpr int64_t kIgnore = -100;

at::Tensor to_tensor(const std::vector<int64_t>& v) {
  auto t = at::empty({static_cast<int64_t>(v.size())}, at::kLong);
  if (!v.empty()) std::memcpy(t.data_ptr<int64_t>(), v.data(), v.size() * sizeof(int64_t));
  return t;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> plan_cpu(
    const at::Tensor& lengths, const at::Tensor& costs, const at::Tensor& keys, int64_t world_size, int64_t max_tokens,
    int64_t global_batch, int64_t epochs, int64_t seed, int64_t mode, int64_t group_window, int64_t accum) {
  TORCH_CHECK(lengths.dim() == 1 && costs.dim() == 1 && lengths.numel() == costs.numel(),
              "plan: lengths and costs must be 1-D of equal size, got ", lengths.sizes(), " and ", costs.sizes());
  TORCH_CHECK(costs.scalar_type() == at::kDouble && keys.scalar_type() == at::kDouble &&
                  keys.dim() == 1 && keys.numel() == costs.numel(),
              "plan: costs and keys must be float64 1-D of the same size, got ", costs.scalar_type(), " ",
              keys.scalar_type(), " ", keys.sizes());
  auto l = lengths.to(at::kLong).contiguous();
  auto c = costs.contiguous();
  auto k = keys.contiguous();
  PlanArgs args{world_size, max_tokens, global_batch, epochs, static_cast<uint64_t>(seed), mode, group_window, accum};
  PlanArrays p;
  try {
    p = plan_packing(l.data_ptr<int64_t>(), c.data_ptr<double>(), k.data_ptr<double>(), l.numel(), args);
  } catch (const std::invalid_argument& e) {
    TORCH_CHECK(false, e.what());
  }
  return {to_tensor(p.order), to_tensor(p.offsets), to_tensor(p.step_micro), to_tensor(p.step_epoch)};
}

// Inputs checked and made contiguous int64/int32/float, outputs allocated: shared by the CPU and CUDA collate.
struct CollateIO {
  at::Tensor ids, lab, cu, w, pos, tgt, lw;
  int64_t T, D;
};

CollateIO prepare_collate(const at::Tensor& input_ids, const at::Tensor& labels, const at::Tensor& cu_seqlens,
                          const at::Tensor& doc_weights) {
  TORCH_CHECK(input_ids.dim() == 1 && labels.dim() == 1 && input_ids.numel() == labels.numel(),
              "pack_collate: input_ids ", input_ids.sizes(), " and labels ", labels.sizes(),
              " must be 1-D and aligned");
  TORCH_CHECK(!at::isFloatingType(input_ids.scalar_type()) && !at::isFloatingType(labels.scalar_type()),
              "pack_collate: input_ids and labels must be integer tensors");
  TORCH_CHECK(cu_seqlens.dim() == 1 && cu_seqlens.numel() >= 1 && cu_seqlens.scalar_type() == at::kInt,
              "pack_collate: cu_seqlens must be int32 1-D with D+1 >= 1 entries, got ", cu_seqlens.scalar_type(),
              " ", cu_seqlens.sizes());
  TORCH_CHECK(doc_weights.dim() == 1 && doc_weights.numel() == cu_seqlens.numel() - 1 &&
                  doc_weights.scalar_type() == at::kFloat,
              "pack_collate: doc_weights must be float32 with one entry per document (", cu_seqlens.numel() - 1,
              "), got ", doc_weights.scalar_type(), " ", doc_weights.sizes());
  TORCH_CHECK(input_ids.numel() <= INT32_MAX, "pack_collate: ", input_ids.numel(), " tokens overflow int32");
  TORCH_CHECK(labels.device() == input_ids.device() && cu_seqlens.device() == input_ids.device() &&
                  doc_weights.device() == input_ids.device(),
              "pack_collate: all inputs must be on input_ids' device ", input_ids.device());
  CollateIO io;
  io.T = input_ids.numel();
  io.D = cu_seqlens.numel() - 1;
  io.ids = input_ids.to(at::kLong, /*non_blocking=*/false, /*copy=*/true).contiguous();  // never alias the input
  io.lab = labels.to(at::kLong).contiguous();
  io.cu = cu_seqlens.contiguous();
  io.w = doc_weights.contiguous();
  io.pos = at::empty({io.T}, io.ids.options());
  io.tgt = at::empty({io.T}, io.ids.options());
  io.lw = at::empty({io.T}, io.ids.options().dtype(at::kFloat));
  return io;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> pack_collate_cpu(
    const at::Tensor& input_ids, const at::Tensor& labels, const at::Tensor& cu_seqlens, const at::Tensor& doc_weights) {
  auto io = prepare_collate(input_ids, labels, cu_seqlens, doc_weights);
  const int64_t T = io.T, D = io.D;
  const int32_t* c = io.cu.data_ptr<int32_t>();
  const int64_t* y = io.lab.data_ptr<int64_t>();
  const float* wd = io.w.data_ptr<float>();
  int64_t* p = io.pos.data_ptr<int64_t>();
  int64_t* g = io.tgt.data_ptr<int64_t>();
  float* o = io.lw.data_ptr<float>();
  TORCH_CHECK(c[0] == 0 && c[D] == T, "pack_collate: cu_seqlens must start at 0 and end at the token count ", T,
              ", got ", c[0], " and ", c[D]);
  for (int64_t d = 0; d < D; ++d) {
    const int64_t s = c[d], e = c[d + 1];
    TORCH_CHECK(s <= e, "pack_collate: cu_seqlens decreases at document ", d, " (", s, " > ", e, ")");
    for (int64_t t = s; t < e; ++t) {
      p[t] = t - s;
      g[t] = (t + 1 < e) ? y[t + 1] : kIgnore;
      o[t] = (g[t] != kIgnore) ? wd[d] : 0.0f;
    }
  }
  return {io.ids, io.pos, io.tgt, io.lw};
}

#ifdef S1FAST_WITH_CUDA
// Launchers in collate_cuda.cu (raw pointers: that file includes no torch header).
cudaError_t launch_pack_collate(const int64_t* labels, const int32_t* cu_seqlens, const float* doc_weights,
                                int64_t T, int32_t D, int64_t* position_ids, int64_t* targets, float* loss_weight,
                                cudaStream_t stream);

// Device-side: no check that reads cu_seqlens' values (that would sync); collate() builds them on the host.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> pack_collate_cuda(
    const at::Tensor& input_ids, const at::Tensor& labels, const at::Tensor& cu_seqlens, const at::Tensor& doc_weights) {
  c10::cuda::CUDAGuard guard(input_ids.device());
  auto io = prepare_collate(input_ids, labels, cu_seqlens, doc_weights);
  auto err = launch_pack_collate(io.lab.data_ptr<int64_t>(), io.cu.data_ptr<int32_t>(), io.w.data_ptr<float>(),
                                 io.T, static_cast<int32_t>(io.D), io.pos.data_ptr<int64_t>(),
                                 io.tgt.data_ptr<int64_t>(), io.lw.data_ptr<float>(),
                                 c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "pack_collate: CUDA launch failed: ", cudaGetErrorString(err));
  return {io.ids, io.pos, io.tgt, io.lw};
}
#endif

}  // namespace s1fast

TORCH_LIBRARY(s1fast, m) {
  m.def("plan(Tensor lengths, Tensor costs, Tensor keys, int world_size, int max_tokens, int global_batch, int epochs, "
        "int seed, int mode, int group_window, int accum) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("pack_collate(Tensor input_ids, Tensor labels, Tensor cu_seqlens, Tensor doc_weights) "
        "-> (Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(s1fast, CPU, m) {
  m.impl("plan", &s1fast::plan_cpu);
  m.impl("pack_collate", &s1fast::pack_collate_cpu);
}

#ifdef S1FAST_WITH_CUDA
TORCH_LIBRARY_IMPL(s1fast, CUDA, m) {
  m.impl("pack_collate", &s1fast::pack_collate_cuda);
}
#endif

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {}
