// The CPU entry points of natten_ops/csrc/ops.h: argument checks (na2d_problem.h, shared with the CUDA
// kernels and their harness), then the tiled AVX-512 kernels where they apply, else the portable ones.
#include "../ops.h"
#include "portable_kernels.h"
#include "tiled_kernels.h"

#include <chrono>
#include <thread>

namespace natten_ops {
namespace cpu {
namespace {

// Fused forward for one dtype: the tiled AVX-512 kernels where they apply, else the portable ones.
template <typename T>
void fused_forward_any(const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out, Tensor& lse,
                       const Groups& groups, const BiasTables<T>& bias, const Problem& p, T scale) {
#if defined(NATTEN_OPS_TILED_AVX512)
  if constexpr (std::is_same_v<T, float>) {
    if (tiled::supports(groups)) return tiled::forward(q, k, v, out, lse, groups, bias, p, scale);
  }
#endif
  dispatch_head_dim<T>(p.dim, [&](auto dim) { fused_forward<T, dim()>(q, k, v, out, lse, groups, bias, p, scale); });
}

// Runs fn(partial) on zeroed bias-gradient partials [B * heads * parts, max bias area] (none without a
// bias), then sums them into each group's bias gradient.
template <typename T, typename Fn>
std::vector<Tensor> with_bias_partials(int64_t parts, const Groups& groups, const BiasTables<T>& bias,
                                       const Problem& p, const at::TensorOptions& options, const Fn& fn) {
  const int64_t stride = groups.max_bias_area();
  Tensor partial = at::zeros({bias.any() ? p.batch * p.heads * parts * stride : 0}, options);
  fn(partial.data_ptr<T>(), stride);
  std::vector<bool> has_bias;
  for (const T* t : bias.tables) has_bias.push_back(t != nullptr);
  return reduce_bias_grad(partial.data_ptr<T>(), stride, parts, p, groups, has_bias, options);
}

// Fused backward for one dtype (kernels chosen as in fused_forward_any): fills dq, dk, dv and returns
// the bias gradient of each group.
template <typename T>
std::vector<Tensor> fused_backward_any(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                                       const Tensor& out, const Tensor& lse, Tensor& dq, Tensor& dk, Tensor& dv,
                                       const Groups& groups, const BiasTables<T>& bias, const Problem& p, T scale) {
#if defined(NATTEN_OPS_TILED_AVX512)
  if constexpr (std::is_same_v<T, float>) {
    if (tiled::supports(groups))
      return with_bias_partials(tiled::bias_parts(groups, p.width), groups, bias, p, q.options(), [&](float* partial, int64_t stride) {
        tiled::backward(dout, q, k, v, out, lse, dq, dk, dv, partial, stride, groups, bias, p, scale);
      });
  }
#endif
  return with_bias_partials(p.height, groups, bias, p, q.options(), [&](T* partial, int64_t) {
    dispatch_head_dim<T>(p.dim, [&](auto dim) {
      fused_backward<T, dim()>(dout, q, k, v, out, lse, dq, dk, dv, partial, groups, bias, p, scale);
    });
  });
}


// The CPU kernels take float32 and float64 (functional.py computes half inputs in float32).
Problem checked_problem(const Tensor& x, const char* name) {
  int64_t batch;
  const Plane plane = plane_of(x, name, c10::DeviceType::CPU, &batch);
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, name,
              " must be float32 or float64 in the CPU kernels, got ", x.scalar_type());
  return {batch, plane.heads, plane.height, plane.width, plane.dim};
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Entry points (bound in bindings.cpp).

std::vector<Tensor> na2d_forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& group_table,
                                 const std::vector<Tensor>& rpbs, double scale) {
  const Problem p = checked_problem(q, "q");
  const std::vector<GroupSpec> specs = check_na2d(q, k, v, group_table, rpbs);
  const Groups groups(specs);
  Tensor out = at::empty_like(q);
  Tensor lse = at::empty({p.batch, p.heads, p.height, p.width}, q.options());
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "na2d_forward", [&] {
    fused_forward_any<scalar_t>(q, k, v, out, lse, groups, BiasTables<scalar_t>(specs), p,
                                static_cast<scalar_t>(scale));
  });
  return {out, lse};
}

std::vector<Tensor> na2d_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                                  const Tensor& out, const Tensor& lse, const Tensor& group_table,
                                  const std::vector<Tensor>& rpbs, double scale) {
  const Problem p = checked_problem(q, "q");
  const std::vector<GroupSpec> specs = check_na2d_backward(dout, q, k, v, out, lse, group_table, rpbs);
  const Groups groups(specs);
  Tensor dq = at::empty_like(q), dk = at::empty_like(k), dv = at::empty_like(v);
  std::vector<Tensor> result{dq, dk, dv};
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "na2d_backward", [&] {
    for (auto& g : fused_backward_any<scalar_t>(dout, q, k, v, out, lse, dq, dk, dv, groups,
                                                BiasTables<scalar_t>(specs), p, static_cast<scalar_t>(scale)))
      result.push_back(g);
  });
  return result;
}

Tensor na2d_qk_forward(const Tensor& q, const Tensor& k, const Tensor& group_table, const Tensor& rpb) {
  const Problem p = checked_problem(q, "q");
  const GroupSpec spec = check_na2d_qk(q, k, group_table, rpb);
  const HeadShape& s = spec.shape;
  Tensor attn = at::empty({p.batch, p.heads, p.height, p.width, s.kernel_area()}, q.options());
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "na2d_qk_forward", [&] {
    qk_forward<scalar_t>(q, k, attn, s, spec.bias.defined() ? spec.bias.data_ptr<scalar_t>() : nullptr, p);
  });
  return attn;
}

std::vector<Tensor> na2d_qk_backward(const Tensor& dattn, const Tensor& q, const Tensor& k,
                                     const Tensor& group_table, bool has_rpb) {
  const Problem p = checked_problem(q, "q");
  const GroupSpec spec = check_na2d_qk_backward(dattn, q, k, group_table);
  const HeadShape& s = spec.shape;
  Tensor dq = at::zeros_like(q), dk = at::zeros_like(k);
  Tensor drpb = at::empty({0}, q.options());
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "na2d_qk_backward", [&] {
    Tensor partial = at::zeros({has_rpb ? p.rows() * s.bias_area() : 0}, q.options());
    scalar_t* partial_ptr = has_rpb ? partial.data_ptr<scalar_t>() : nullptr;
    qk_backward<scalar_t>(dattn, q, k, dq, dk, partial_ptr, s, p);
    if (has_rpb)
      drpb = reduce_bias_grad(partial_ptr, s.bias_area(), p.height, p, Groups({spec}), {true}, q.options())[0];
  });
  return {dq, dk, drpb};
}

Tensor na2d_av_forward(const Tensor& attn, const Tensor& v, const Tensor& group_table) {
  const Problem p = checked_problem(v, "v");
  const HeadShape s = check_na2d_av(attn, v, group_table).shape;
  Tensor out = at::empty_like(v);
  AT_DISPATCH_FLOATING_TYPES(v.scalar_type(), "na2d_av_forward", [&] { av_forward<scalar_t>(attn, v, out, s, p); });
  return out;
}

std::vector<Tensor> na2d_av_backward(const Tensor& dout, const Tensor& attn, const Tensor& v,
                                     const Tensor& group_table) {
  const Problem p = checked_problem(v, "v");
  const HeadShape s = check_na2d_av_backward(dout, attn, v, group_table).shape;
  Tensor dattn = at::empty_like(attn), dv = at::zeros_like(v);
  AT_DISPATCH_FLOATING_TYPES(v.scalar_type(), "na2d_av_backward",
                             [&] { av_backward<scalar_t>(dout, attn, v, dattn, dv, s, p); });
  return {dattn, dv};
}

// Returns the number of threads at::parallel_for runs a range of `tasks` tasks on (the distinct
// at::get_thread_num() values seen in the region): 1 in a build without OpenMP, whatever
// torch.set_num_threads allows otherwise. Tests use it to prove the kernels are not serial.
int64_t parallel_threads(int64_t tasks) {
  std::vector<char> seen(at::get_num_threads(), 0);  // each thread writes only its own entry
  at::parallel_for(0, tasks, 1, [&](int64_t, int64_t) {
    const int thread = at::get_thread_num();
    if (thread < static_cast<int>(seen.size())) seen[thread] = 1;
    // Long enough that one thread cannot take every task before the others start.
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  });
  return std::count(seen.begin(), seen.end(), 1);
}

// Which fused float32 kernels this build runs: "avx512-tiled" or "portable".
std::string kernel_variant() {
#if defined(NATTEN_OPS_TILED_AVX512)
  return "avx512-tiled";
#else
  return "portable";
#endif
}

// The widest vector instruction set the compiler could use in this build: "avx512", "avx2", "neon" or
// "scalar" (tests check that the portable build on x86 is compiled without AVX-512).
std::string vector_isa() {
#if defined(__AVX512F__)
  return "avx512";
#elif defined(__AVX2__)
  return "avx2";
#elif defined(__ARM_NEON)
  return "neon";
#else
  return "scalar";
#endif
}

// The index math of na2d_index.h over a whole axis, for tests: [L, 3] = (window start, inverse
// first, inverse end) per position.
Tensor axis_tables(int64_t length, int64_t kernel, int64_t dilation) {
  TORCH_CHECK(kernel > 1 && kernel % 2 == 1 && dilation >= 1 && kernel * dilation <= length,
              "axis_tables: invalid (length, kernel, dilation)");
  Tensor t = at::empty({length, 3}, at::kLong);
  int64_t* p = t.data_ptr<int64_t>();
  for (int64_t x = 0; x < length; ++x) {
    p[3 * x] = window_start(x, length, kernel, dilation);
    inverse_window(x, length, kernel, dilation, &p[3 * x + 1], &p[3 * x + 2]);
  }
  return t;
}

}  // namespace cpu
}  // namespace natten_ops
