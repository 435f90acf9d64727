// Python bindings of the natten_ops CUDA kernels.
#include "ops.h"

namespace natten_ops {
namespace cuda {
NATTEN_OPS_DECLARE_ENTRY_POINTS
}  // namespace cuda
}  // namespace natten_ops

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "natten_ops CUDA kernels (signatures: natten_ops/csrc/ops.h)";
  NATTEN_OPS_BIND_ENTRY_POINTS(m, natten_ops::cuda)
}
