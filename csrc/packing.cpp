// s1fast native extension: sequence packing ops registered with TORCH_LIBRARY (namespace s1fast).
//
// This file starts with the smallest op the packer needs, cu_seqlens from document lengths; the
// packing issue grows it into the planner and the CPU collate.
#include <torch/extension.h>
#include <torch/library.h>

namespace s1fast {

// int32 cumulative sequence offsets [0, l0, l0+l1, ...] from per-document lengths.
at::Tensor cu_seqlens_cpu(const at::Tensor& lengths) {
  TORCH_CHECK(lengths.dim() == 1, "cu_seqlens: lengths must be 1-D, got ", lengths.dim(), "-D");
  auto l = lengths.to(at::kLong).contiguous();
  auto out = at::empty({l.numel() + 1}, l.options().dtype(at::kInt));
  const int64_t* src = l.data_ptr<int64_t>();
  int32_t* dst = out.data_ptr<int32_t>();
  int64_t acc = 0;
  dst[0] = 0;
  for (int64_t i = 0; i < l.numel(); ++i) {
    TORCH_CHECK(src[i] >= 0, "cu_seqlens: length ", i, " is negative (", src[i], ")");
    acc += src[i];
    TORCH_CHECK(acc <= INT32_MAX, "cu_seqlens: total tokens overflow int32");
    dst[i + 1] = static_cast<int32_t>(acc);
  }
  return out;
}

}  // namespace s1fast

TORCH_LIBRARY(s1fast, m) {
  m.def("cu_seqlens(Tensor lengths) -> Tensor");
}

TORCH_LIBRARY_IMPL(s1fast, CPU, m) {
  m.impl("cu_seqlens", &s1fast::cu_seqlens_cpu);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {}
