// The entry points every natten_ops kernel family exports, with one signature for all of them, so the
// Python side (natten_ops/functional.py) drives the CPU kernels, the CUDA kernels and the CUDA kernels'
// CPU harness through the same autograd Functions.
//
//   group_table: int64 [G, 6] on the CPU = (head_begin, head_end, kh, kw, dh, dw) per head group;
//   rpbs:        one bias table [group_heads, 2 kh - 1, 2 kw - 1] per group, an empty tensor for none;
//   lse:         [B, heads, H, W], saved by na2d_forward for na2d_backward.
#pragma once

#include <torch/extension.h>

#include <vector>

// Declares the entry points in the enclosing namespace.
#define NATTEN_OPS_DECLARE_ENTRY_POINTS                                                                        \
  std::vector<at::Tensor> na2d_forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,          \
                                       const at::Tensor& group_table, const std::vector<at::Tensor>& rpbs,     \
                                       double scale);                                                          \
  std::vector<at::Tensor> na2d_backward(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,      \
                                        const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,     \
                                        const at::Tensor& group_table, const std::vector<at::Tensor>& rpbs,    \
                                        double scale);                                                         \
  at::Tensor na2d_qk_forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& group_table,          \
                             const at::Tensor& rpb);                                                           \
  std::vector<at::Tensor> na2d_qk_backward(const at::Tensor& dattn, const at::Tensor& q, const at::Tensor& k,  \
                                           const at::Tensor& group_table, bool has_rpb);                       \
  at::Tensor na2d_av_forward(const at::Tensor& attn, const at::Tensor& v, const at::Tensor& group_table);      \
  std::vector<at::Tensor> na2d_av_backward(const at::Tensor& dout, const at::Tensor& attn, const at::Tensor& v, \
                                           const at::Tensor& group_table);

// Binds the entry points of namespace `ns` into pybind11 module `m`.
#define NATTEN_OPS_BIND_ENTRY_POINTS(m, ns)                                                              \
  m.def("na2d_forward", &ns::na2d_forward, "fused NA forward -> (out, lse)");                           \
  m.def("na2d_backward", &ns::na2d_backward, "fused NA backward -> (dq, dk, dv, drpb per group...)");   \
  m.def("na2d_qk_forward", &ns::na2d_qk_forward, "unfused QK (+rpb) -> attn [B, h, H, W, kh*kw]");      \
  m.def("na2d_qk_backward", &ns::na2d_qk_backward, "unfused QK backward -> (dq, dk, drpb)");            \
  m.def("na2d_av_forward", &ns::na2d_av_forward, "unfused AV -> out");                                  \
  m.def("na2d_av_backward", &ns::na2d_av_backward, "unfused AV backward -> (dattn, dv)");
