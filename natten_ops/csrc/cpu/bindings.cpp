// Python bindings of the natten_ops CPU kernels.
#include "ops.h"

namespace natten_ops {
namespace cpu {
NATTEN_OPS_DECLARE_ENTRY_POINTS
at::Tensor axis_tables(int64_t length, int64_t kernel, int64_t dilation);
int64_t parallel_threads(int64_t tasks);
std::string kernel_variant();
std::string vector_isa();
}  // namespace cpu
}  // namespace natten_ops

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "natten_ops CPU kernels (signatures: natten_ops/csrc/ops.h)";
  NATTEN_OPS_BIND_ENTRY_POINTS(m, natten_ops::cpu)
  m.def("axis_tables", &natten_ops::cpu::axis_tables, "[L, 3] = (window start, inverse first, inverse end)");
  m.def("kernel_variant", &natten_ops::cpu::kernel_variant, "the fused float32 kernels: avx512-tiled or portable");
  m.def("vector_isa", &natten_ops::cpu::vector_isa, "the widest vector ISA compiled for: avx512, avx2, neon or scalar");
  m.def("parallel_threads", &natten_ops::cpu::parallel_threads, "threads at::parallel_for uses for that many tasks");
}
