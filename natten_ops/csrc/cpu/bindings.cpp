// Python bindings of the natten_ops kernels (one module per device family, same function names).
#include <torch/extension.h>

#include <vector>

namespace natten_ops {
namespace cpu {
using at::Tensor;
std::vector<Tensor> na2d_forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& group_table,
                                 const std::vector<Tensor>& rpbs, double scale);
std::vector<Tensor> na2d_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                                  const Tensor& out, const Tensor& lse, const Tensor& group_table,
                                  const std::vector<Tensor>& rpbs, double scale);
Tensor na2d_qk_forward(const Tensor& q, const Tensor& k, const Tensor& group_table, const Tensor& rpb);
std::vector<Tensor> na2d_qk_backward(const Tensor& dattn, const Tensor& q, const Tensor& k,
                                     const Tensor& group_table, bool has_rpb);
Tensor na2d_av_forward(const Tensor& attn, const Tensor& v, const Tensor& group_table);
std::vector<Tensor> na2d_av_backward(const Tensor& dout, const Tensor& attn, const Tensor& v,
                                     const Tensor& group_table);
Tensor axis_tables(int64_t length, int64_t kernel, int64_t dilation);
}  // namespace cpu
}  // namespace natten_ops

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  namespace ops = natten_ops::cpu;
  m.doc() = "natten_ops CPU kernels. groups: int64 [G, 6] = (head_begin, head_end, kh, kw, dh, dw); "
            "rpbs: one tensor per group, empty for none.";
  m.def("na2d_forward", &ops::na2d_forward, "fused NA forward -> (out, lse)");
  m.def("na2d_backward", &ops::na2d_backward, "fused NA backward -> (dq, dk, dv, drpb per group...)");
  m.def("na2d_qk_forward", &ops::na2d_qk_forward, "unfused QK (+rpb) -> attn [B, h, H, W, kh*kw]");
  m.def("na2d_qk_backward", &ops::na2d_qk_backward, "unfused QK backward -> (dq, dk, drpb)");
  m.def("na2d_av_forward", &ops::na2d_av_forward, "unfused AV -> out");
  m.def("na2d_av_backward", &ops::na2d_av_backward, "unfused AV backward -> (dattn, dv)");
  m.def("axis_tables", &ops::axis_tables, "[L, 3] = (window start, inverse first, inverse end)");
}
