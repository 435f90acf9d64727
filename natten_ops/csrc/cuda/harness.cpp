// The CPU harness of the CUDA kernels: the entry points of ops.h computed on CPU tensors by the very
// functions of na2d_elements.h that the CUDA threads call (a team of one lane, an identity team sum).
// Built with the host compiler, so CI checks the CUDA kernels' math against the reference on machines
// without a GPU (tests/ops/test_cuda_harness.py). float32 and float64; not meant to be fast.
// Each entry point mirrors its twin in na2d_cuda.cu on purpose: the same signature (ops.h), the same checks
// (na2d_problem.h) and outputs, with a loop over positions where CUDA launches a grid; the repeated signatures
// and preambles are that mirror (a duplicate-code report pairs them), so change both files together.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include "na2d_problem.h"
#include "ops.h"

namespace natten_ops {
namespace harness {
namespace {

using at::Tensor;

constexpr int kHostSlots = 128;  // the whole head_dim in one lane

struct HostSum {
  template <typename Acc>
  Acc operator()(Acc x) const { return x; }
};

// Calls fn(plane, i, j) for every position of the planes of heads [head_begin, head_end).
template <typename Fn>
void for_each_position(int64_t batch, const Plane& p, int64_t head_begin, int64_t head_end, const Fn& fn) {
  const int64_t group_heads = head_end - head_begin;
  at::parallel_for(0, batch * group_heads * p.height, 1, [&](int64_t begin, int64_t end) {
    for (int64_t index = begin; index < end; ++index) {
      const int64_t y = index / p.height, i = index % p.height;
      const int64_t plane = (y / group_heads) * p.heads + head_begin + y % group_heads;
      for (int64_t j = 0; j < p.width; ++j) fn(plane, i, j);
    }
  });
}

Plane checked_plane(const Tensor& x, const char* name, int64_t* batch) {
  const Plane p = plane_of(x, name, c10::DeviceType::CPU, batch);
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, name,
              " must be float32 or float64 in the harness, got ", x.scalar_type());
  TORCH_CHECK(p.dim <= kHostSlots, name, ": head_dim must be <= ", kHostSlots);
  return p;
}

template <typename T>
FusedArgs<T> fused_args(const Tensor& q, const Tensor& k, const Tensor& v, const GroupSpec& g, int64_t group_head,
                        double scale) {
  FusedArgs<T> a{};
  a.q = q.data_ptr<T>(), a.k = k.data_ptr<T>(), a.v = v.data_ptr<T>();
  a.bias = g.bias.defined() ? g.bias.data_ptr<T>() + group_head * g.shape.bias_area() : nullptr;
  a.scale = static_cast<acc_t<T>>(scale);
  return a;
}

}  // namespace

std::vector<Tensor> na2d_forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& group_table,
                                 const std::vector<Tensor>& rpbs, double scale) {
  int64_t batch;
  const Plane p = checked_plane(q, "q", &batch);
  const auto groups = check_na2d(q, k, v, group_table, rpbs);
  Tensor out = at::empty_like(q), lse = at::empty({batch, p.heads, p.height, p.width}, q.options());
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "na2d_forward_harness", [&] {
    for (const GroupSpec& g : groups)
      for_each_position(batch, p, g.begin, g.end, [&](int64_t plane, int64_t i, int64_t j) {
        const auto a = fused_args<scalar_t>(q, k, v, g, plane % p.heads - g.begin, scale);
        fused_forward_query<kHostSlots>(a, out.data_ptr<scalar_t>(), lse.data_ptr<scalar_t>(), g.shape, p, plane,
                                        i, j, 0, 1, HostSum{});
      });
  });
  return {out, lse};
}

std::vector<Tensor> na2d_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                                  const Tensor& out, const Tensor& lse, const Tensor& group_table,
                                  const std::vector<Tensor>& rpbs, double scale) {
  int64_t batch;
  const Plane p = checked_plane(q, "q", &batch);
  const auto groups = check_na2d_backward(dout, q, k, v, out, lse, group_table, rpbs);
  const int64_t rows = p.rows(batch);
  Tensor dq = at::empty_like(q), dk = at::empty_like(k), dv = at::empty_like(v), delta = at::empty({rows}, q.options());
  std::vector<Tensor> result{dq, dk, dv};
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "na2d_backward_harness", [&] {
    scalar_t* delta_ptr = delta.data_ptr<scalar_t>();
    for (int64_t row = 0; row < rows; ++row)
      delta_ptr[row] = dot(dout.data_ptr<scalar_t>() + row * p.dim, out.data_ptr<scalar_t>() + row * p.dim, p.dim);
    for (const GroupSpec& g : groups) {
      Tensor grad_bias = g.bias.defined() ? at::zeros_like(g.bias) : at::empty({0}, q.options());
      for (int64_t plane_index = 0; plane_index < batch * g.heads(); ++plane_index) {  // sequential: dRPB sums
        const int64_t group_head = plane_index % g.heads();
        const int64_t plane = (plane_index / g.heads()) * p.heads + g.begin + group_head;
        auto a = fused_args<scalar_t>(q, k, v, g, group_head, scale);
        a.grad_out = dout.data_ptr<scalar_t>(), a.lse = lse.data_ptr<scalar_t>(), a.delta = delta_ptr;
        scalar_t* bias_row = g.bias.defined() ? grad_bias.data_ptr<scalar_t>() + group_head * g.shape.bias_area()
                                              : nullptr;
        for (int64_t i = 0; i < p.height; ++i)
          for (int64_t j = 0; j < p.width; ++j) {
            fused_grad_query<kHostSlots>(a, dq.data_ptr<scalar_t>(), g.shape, p, plane, i, j, 0, 1, HostSum{},
                                         [&](int64_t entry, scalar_t dlogit) {
                                           if (bias_row) bias_row[entry] += dlogit;
                                         });
            fused_grad_key<kHostSlots>(a, dk.data_ptr<scalar_t>(), dv.data_ptr<scalar_t>(), g.shape, p, plane, i,
                                       j, 0, 1, HostSum{});
          }
      }
      result.push_back(grad_bias);
    }
  });
  return result;
}

Tensor na2d_qk_forward(const Tensor& q, const Tensor& k, const Tensor& group_table, const Tensor& rpb) {
  int64_t batch;
  const Plane p = checked_plane(q, "q", &batch);
  const GroupSpec g = check_na2d_qk(q, k, group_table, rpb);
  const int64_t area = g.shape.kernel_area();
  Tensor attn = at::empty({batch, p.heads, p.height, p.width, area}, q.options());
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "na2d_qk_forward_harness", [&] {
    for_each_position(batch, p, 0, p.heads, [&](int64_t plane, int64_t i, int64_t j) {
      const scalar_t* bias = g.bias.defined() ? g.bias.data_ptr<scalar_t>() + (plane % p.heads) * g.shape.bias_area()
                                              : nullptr;
      for (int64_t u = 0; u < area; ++u)
        attn.data_ptr<scalar_t>()[p.row(plane, i, j) * area + u] =
            qk_element(q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), bias, g.shape, p, plane, i, j, u);
    });
  });
  return attn;
}

std::vector<Tensor> na2d_qk_backward(const Tensor& dattn, const Tensor& q, const Tensor& k, const Tensor& group_table,
                                     bool has_rpb) {
  int64_t batch;
  const Plane p = checked_plane(q, "q", &batch);
  const GroupSpec g = check_na2d_qk_backward(dattn, q, k, group_table);
  const HeadShape& s = g.shape;
  Tensor dq = at::empty_like(q), dk = at::empty_like(k);
  Tensor drpb = has_rpb ? at::zeros({p.heads, 2 * s.kernel_h - 1, 2 * s.kernel_w - 1}, q.options())
                        : at::empty({0}, q.options());
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "na2d_qk_backward_harness", [&] {
    const scalar_t* weights = dattn.data_ptr<scalar_t>();
    for_each_position(batch, p, 0, p.heads, [&](int64_t plane, int64_t i, int64_t j) {
      for (int64_t d = 0; d < p.dim; ++d) {
        const int64_t at = p.row(plane, i, j) * p.dim + d;
        dq.data_ptr<scalar_t>()[at] = window_sum(weights, k.data_ptr<scalar_t>(), s, p, plane, i, j, d);
        dk.data_ptr<scalar_t>()[at] = inverse_window_sum(weights, q.data_ptr<scalar_t>(), s, p, plane, i, j, d);
      }
    });
    if (has_rpb) {
      scalar_t* grad_bias = drpb.data_ptr<scalar_t>();
      for (int64_t plane = 0; plane < batch * p.heads; ++plane)
        for (int64_t e = 0; e < s.bias_area(); ++e)
          for (int64_t i = 0; i < p.height; ++i)
            for (int64_t j = 0; j < p.width; ++j)
              grad_bias[(plane % p.heads) * s.bias_area() + e] +=
                  bias_grad_term(weights, s, p, plane, i, j, e / s.bias_cols(), e % s.bias_cols());
    }
  });
  return {dq, dk, drpb};
}

Tensor na2d_av_forward(const Tensor& attn, const Tensor& v, const Tensor& group_table) {
  int64_t batch;
  const Plane p = checked_plane(v, "v", &batch);
  const GroupSpec g = check_na2d_av(attn, v, group_table);
  Tensor out = at::empty_like(v);
  AT_DISPATCH_FLOATING_TYPES(v.scalar_type(), "na2d_av_forward_harness", [&] {
    for_each_position(batch, p, 0, p.heads, [&](int64_t plane, int64_t i, int64_t j) {
      for (int64_t d = 0; d < p.dim; ++d)
        out.data_ptr<scalar_t>()[p.row(plane, i, j) * p.dim + d] =
            window_sum(attn.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(), g.shape, p, plane, i, j, d);
    });
  });
  return out;
}

std::vector<Tensor> na2d_av_backward(const Tensor& dout, const Tensor& attn, const Tensor& v,
                                     const Tensor& group_table) {
  int64_t batch;
  const Plane p = checked_plane(v, "v", &batch);
  const GroupSpec g = check_na2d_av_backward(dout, attn, v, group_table);
  const int64_t area = g.shape.kernel_area();
  Tensor dattn = at::empty_like(attn), dv = at::empty_like(v);
  AT_DISPATCH_FLOATING_TYPES(v.scalar_type(), "na2d_av_backward_harness", [&] {
    for_each_position(batch, p, 0, p.heads, [&](int64_t plane, int64_t i, int64_t j) {
      const int64_t row = p.row(plane, i, j);
      for (int64_t u = 0; u < area; ++u)
        dattn.data_ptr<scalar_t>()[row * area + u] =
            av_grad_attn_element(dout.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(), g.shape, p, plane, i, j, u);
      for (int64_t d = 0; d < p.dim; ++d)
        dv.data_ptr<scalar_t>()[row * p.dim + d] =
            inverse_window_sum(attn.data_ptr<scalar_t>(), dout.data_ptr<scalar_t>(), g.shape, p, plane, i, j, d);
    });
  });
  return {dattn, dv};
}

}  // namespace harness
}  // namespace natten_ops

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "CPU harness of the natten_ops CUDA kernels' element math (tests only; signatures: ops.h)";
  NATTEN_OPS_BIND_ENTRY_POINTS(m, natten_ops::harness)
}
