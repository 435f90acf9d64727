// Host-side argument checks shared by the CUDA kernels and their CPU harness: tensor shapes, the
// head-group table and the bias tables, each failure a message that names the argument.
#pragma once

#include <torch/extension.h>

#include <vector>

#include "na2d_elements.h"

namespace natten_ops {

// One head group: heads [begin, end) with one shape, and its bias table (undefined for none).
struct GroupSpec {
  int64_t begin, end;
  HeadShape shape;
  at::Tensor bias;
  int64_t heads() const { return end - begin; }
};

// The batch size and Plane of a [B, heads, H, W, D] tensor on `device`.
inline Plane plane_of(const at::Tensor& x, const char* name, c10::DeviceType device, int64_t* batch) {
  TORCH_CHECK(x.dim() == 5, name, " must be [B, heads, H, W, D], got ", x.sizes());
  TORCH_CHECK(x.device().type() == device, name, " must be a ", c10::DeviceTypeName(device), " tensor, got ",
              x.device());
  TORCH_CHECK(x.is_contiguous(), name, " must be contiguous");
  *batch = x.size(0);
  return {x.size(1), x.size(2), x.size(3), x.size(4)};
}

// x must match ref in device, dtype, layout and the first 4 (or all 5) dims.
inline void check_like(const at::Tensor& x, const at::Tensor& ref, const char* name, bool same_last_dim = true) {
  TORCH_CHECK(x.dim() == 5 && x.is_contiguous(), name, " must be a contiguous 5-D tensor");
  TORCH_CHECK(x.device() == ref.device(), name, " is on ", x.device(), ", expected ", ref.device());
  TORCH_CHECK(x.scalar_type() == ref.scalar_type(), name, " has dtype ", x.scalar_type(), ", expected ",
              ref.scalar_type());
  for (int d = 0; d < (same_last_dim ? 5 : 4); ++d)
    TORCH_CHECK(x.size(d) == ref.size(d), name, " has shape ", x.sizes(), ", expected ", ref.sizes());
}

// Parses the [G, 6] group table (see ops.h) and pairs each group with its bias table (rpbs may be
// empty: no biases at all).
inline std::vector<GroupSpec> parse_groups(const at::Tensor& table, const std::vector<at::Tensor>& rpbs,
                                           const at::Tensor& ref) {
  TORCH_CHECK(table.dim() == 2 && table.size(1) == 6 && table.scalar_type() == at::kLong && table.device().is_cpu(),
              "group_table must be a CPU int64 tensor [G, 6]");
  TORCH_CHECK(rpbs.empty() || static_cast<int64_t>(rpbs.size()) == table.size(0),
              "expected one rpb entry per head group, got ", rpbs.size(), " for ", table.size(0), " groups");
  const at::Tensor t = table.contiguous();
  const int64_t* row = t.data_ptr<int64_t>();
  const int64_t heads = ref.size(1), height = ref.size(2), width = ref.size(3);
  std::vector<GroupSpec> groups;
  int64_t next = 0;
  for (int64_t g = 0; g < t.size(0); ++g, row += 6) {
    const int64_t begin = row[0], end = row[1], kh = row[2], kw = row[3], dh = row[4], dw = row[5];
    TORCH_CHECK(begin == next && end > begin, "head groups must tile the heads contiguously");
    TORCH_CHECK(kh > 1 && kw > 1 && kh % 2 == 1 && kw % 2 == 1, "kernel sizes must be odd and > 1");
    TORCH_CHECK(dh >= 1 && dw >= 1, "dilations must be >= 1");
    TORCH_CHECK(kh * dh <= height && kw * dw <= width, "kernel_size * dilation exceeds the input");
    GroupSpec spec{begin, end, HeadShape{kh, kw, dh, dw, g, 0}, at::Tensor()};
    if (!rpbs.empty() && rpbs[g].numel() > 0) {
      const at::Tensor& bias = rpbs[g];
      TORCH_CHECK(bias.is_contiguous() && bias.device() == ref.device() && bias.scalar_type() == ref.scalar_type(),
                  "rpb of group ", g, " must be a contiguous tensor of the input's device and dtype");
      TORCH_CHECK(bias.dim() == 3 && bias.size(0) == end - begin && bias.size(1) == 2 * kh - 1 &&
                      bias.size(2) == 2 * kw - 1,
                  "rpb of group ", g, " must be [", end - begin, ", ", 2 * kh - 1, ", ", 2 * kw - 1, "], got ",
                  bias.sizes());
      spec.bias = bias;
    }
    groups.push_back(spec);
    next = end;
  }
  TORCH_CHECK(next == heads, "the head groups cover ", next, " heads, the input has ", heads);
  return groups;
}

// The one group of an unfused op (na2d_qk / na2d_av take a single shape for all heads).
inline GroupSpec single_group(const at::Tensor& table, const at::Tensor& ref, const at::Tensor& rpb = at::Tensor()) {
  TORCH_CHECK(table.size(0) == 1, "the unfused ops take one head group, got ", table.size(0));
  std::vector<at::Tensor> rpbs;
  if (rpb.defined()) rpbs.push_back(rpb);
  return parse_groups(table, rpbs, ref)[0];
}

// Accumulation / log-sum-exp dtype of inputs of dtype x: float64 for float64, else float32.
inline at::ScalarType acc_scalar_type(const at::Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// The checks every kernel family makes of each entry point's arguments, after its own check of the first
// tensor (device, dtype, layout): the other tensors match it, and the groups / bias tables are valid.

inline std::vector<GroupSpec> check_na2d(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                         const at::Tensor& group_table, const std::vector<at::Tensor>& rpbs) {
  check_like(k, q, "k");
  check_like(v, q, "v");
  return parse_groups(group_table, rpbs, q);
}

inline std::vector<GroupSpec> check_na2d_backward(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
                                                  const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,
                                                  const at::Tensor& group_table,
                                                  const std::vector<at::Tensor>& rpbs) {
  check_like(out, q, "out");
  check_like(dout, q, "grad_out");
  TORCH_CHECK(lse.is_contiguous() && lse.device() == q.device() && lse.scalar_type() == acc_scalar_type(q) &&
                  lse.numel() == q.numel() / q.size(4),
              "lse must be the [B, heads, H, W] tensor na2d_forward returned");
  return check_na2d(q, k, v, group_table, rpbs);
}

inline GroupSpec check_na2d_qk(const at::Tensor& q, const at::Tensor& k, const at::Tensor& group_table,
                               const at::Tensor& rpb = at::Tensor()) {
  check_like(k, q, "k");
  return single_group(group_table, q, rpb);
}

inline GroupSpec check_na2d_qk_backward(const at::Tensor& dattn, const at::Tensor& q, const at::Tensor& k,
                                        const at::Tensor& group_table) {
  check_like(dattn, q, "grad_attn", false);
  const GroupSpec g = check_na2d_qk(q, k, group_table);
  TORCH_CHECK(dattn.size(4) == g.shape.kernel_area(), "grad_attn must have kernel_h * kernel_w slots");
  return g;
}

inline GroupSpec check_na2d_av(const at::Tensor& attn, const at::Tensor& v, const at::Tensor& group_table) {
  check_like(attn, v, "attn", false);
  const GroupSpec g = single_group(group_table, v);
  TORCH_CHECK(attn.size(4) == g.shape.kernel_area(), "attn must have kernel_h * kernel_w slots");
  return g;
}

inline GroupSpec check_na2d_av_backward(const at::Tensor& dout, const at::Tensor& attn, const at::Tensor& v,
                                        const at::Tensor& group_table) {
  check_like(dout, v, "grad_out");
  return check_na2d_av(attn, v, group_table);
}

}  // namespace natten_ops
