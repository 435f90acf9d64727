// natten_ops CUDA kernels: fused and unfused 2-D neighborhood attention, forward and backward.
//
// The math of every thread is a function of na2d_elements.h (also run on the host by the CPU
// harness, cuda/harness.cpp); this file only maps threads to elements and reduces.
//
// Fused kernels: a team of `lanes` threads (8, 16 or 32: head_dim <= 4 * lanes) owns one query (or one
// key in the dK/dV pass) and keeps its vectors in registers; dot products are team shuffles; the
// forward saves the log-sum-exp, the backward recomputes the weights (no [B, heads, H, W, kh*kw]
// tensor). dK / dV gather over the inverse neighborhood and dRPB is reduced from per-block partial
// sums in a fixed order: every result is deterministic (bitwise equal between runs).
// Unfused kernels: one thread per output element.
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>

#include "na2d_problem.h"
#include "ops.h"

namespace natten_ops {
namespace cuda {
namespace {

using at::Tensor;

constexpr int kThreads = 128;          // threads per block, all kernels
constexpr int kSlots = 4;              // head_dim elements per lane: head_dim <= 4 * 32
constexpr int64_t kMaxHeadDim = 128;
constexpr int kQueriesPerTeam = 8;     // queries one team visits in the dQ pass (amortises the dRPB partials)

// Team-wide sum over `lanes` neighbouring lanes of a warp, among the lanes in `mask`.
template <typename Acc>
struct TeamSum {
  unsigned mask;
  int lanes;
  __device__ __forceinline__ Acc operator()(Acc x) const {
    for (int offset = lanes / 2; offset > 0; offset /= 2) x += __shfl_xor_sync(mask, x, offset, lanes);
    return x;
  }
};

// Team size for head_dim D: the smallest of 8, 16, 32 with D <= kSlots * lanes.
int team_lanes(int64_t dim) { return dim <= 32 ? 8 : dim <= 64 ? 16 : 32; }

int64_t blocks_for(int64_t count, int64_t per_block) { return (count + per_block - 1) / per_block; }

// Grid of the fused kernels: x over tiles of queries (or keys) of one plane, y over the group's planes.
dim3 plane_grid(int64_t per_plane, int64_t per_block, int64_t planes) {
  TORCH_CHECK(planes <= 65535, "natten_ops cuda: batch * heads of one head group must be <= 65535, got ", planes);
  return dim3(static_cast<unsigned>(blocks_for(per_plane, per_block)), static_cast<unsigned>(planes));
}

// The plane (b * heads + head) and in-group head of block row blockIdx.y of a group's grid.
struct GroupPlanes {
  int64_t heads, head_begin, group_heads;
  __device__ int64_t plane(int64_t y) const { return (y / group_heads) * heads + head_begin + y % group_heads; }
  __device__ int64_t group_head(int64_t y) const { return y % group_heads; }
};

// This thread's place in the fused kernels: the query (or key) its team owns in tile `tile` of the plane
// of block row blockIdx.y, teams of `lanes` consecutive threads.
struct TeamPosition {
  int64_t plane, i, j;
  int lane;
  bool valid;  // false past the end of the plane
  __device__ TeamPosition(const GroupPlanes& g, const Plane& p, int lanes, int64_t tile) {
    const int64_t index = tile * (kThreads / lanes) + threadIdx.x / lanes;
    plane = g.plane(blockIdx.y), i = index / p.width, j = index % p.width;
    lane = threadIdx.x % lanes, valid = index < p.height * p.width;
  }
};

template <typename T>
__device__ FusedArgs<T> for_head(FusedArgs<T> a, const HeadShape& s, int64_t group_head) {
  if (a.bias) a.bias += group_head * s.bias_area();
  return a;
}

// ---------------------------------------------------------------------------------------------
// Fused kernels

// The body of a fused kernel that gives each team one position of block (blockIdx.x, blockIdx.y): calls
// fn(the head's args, the team's position, its team sum); the teams past the plane's end return after the vote.
template <typename T, typename Fn>
__device__ __forceinline__ void for_team_position(const FusedArgs<T>& args, const HeadShape& s, const Plane& p,
                                                  const GroupPlanes& g, int lanes, const Fn& fn) {
  const TeamPosition t(g, p, lanes, blockIdx.x);
  const unsigned mask = __ballot_sync(0xffffffffu, t.valid);
  if (!t.valid) return;
  fn(for_head(args, s, g.group_head(blockIdx.y)), t, TeamSum<acc_t<T>>{mask, lanes});
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
fused_forward_kernel(FusedArgs<T> args, T* out, acc_t<T>* lse, HeadShape s, Plane p, GroupPlanes g, int lanes) {
  for_team_position(args, s, p, g, lanes, [&](const FusedArgs<T>& a, const TeamPosition& t, TeamSum<acc_t<T>> sum) {
    fused_forward_query<kSlots>(a, out, lse, s, p, t.plane, t.i, t.j, t.lane, lanes, sum);
  });
}

// delta[row] = grad_out[row] . out[row]
template <typename T>
__global__ void delta_kernel(const T* grad_out, const T* out, acc_t<T>* delta, int64_t rows, int64_t dim) {
  for (int64_t row = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; row < rows;
       row += static_cast<int64_t>(gridDim.x) * blockDim.x)
    delta[row] = dot(grad_out + row * dim, out + row * dim, dim);
}

// dQ for kQueriesPerTeam * teams queries per block; with a bias, each team sums its dlogits per bias
// entry in shared memory, and the block writes the teams' total to bias_partial[blockIdx.y][blockIdx.x].
template <typename T>
__global__ void __launch_bounds__(kThreads)
fused_grad_query_kernel(FusedArgs<T> args, T* grad_q, acc_t<T>* bias_partial, HeadShape s, Plane p, GroupPlanes g,
                        int lanes) {
  using Acc = acc_t<T>;
  extern __shared__ __align__(16) unsigned char shared_bytes[];
  Acc* team_bias = reinterpret_cast<Acc*>(shared_bytes);  // [teams][bias_area] when bias_partial
  const int teams = kThreads / lanes, team = threadIdx.x / lanes, lane = threadIdx.x % lanes;
  const int64_t area = s.bias_area();
  const FusedArgs<T> a = for_head(args, s, g.group_head(blockIdx.y));
  if (bias_partial)
    for (int64_t e = threadIdx.x; e < teams * area; e += kThreads) team_bias[e] = 0;
  __syncthreads();
  Acc* my_bias = team_bias + team * area;
  for (int visit = 0; visit < kQueriesPerTeam; ++visit) {
    const TeamPosition t(g, p, lanes, static_cast<int64_t>(blockIdx.x) * kQueriesPerTeam + visit);
    const unsigned mask = __ballot_sync(0xffffffffu, t.valid);
    if (!t.valid) continue;
    fused_grad_query<kSlots>(a, grad_q, s, p, t.plane, t.i, t.j, lane, lanes,
                             TeamSum<Acc>{mask, lanes}, [&](int64_t entry, Acc dlogit) {
                               if (bias_partial && lane == 0) my_bias[entry] += dlogit;
                             });
  }
  if (!bias_partial) return;
  __syncthreads();
  Acc* block_total = bias_partial + (static_cast<int64_t>(blockIdx.y) * gridDim.x + blockIdx.x) * area;
  for (int64_t e = threadIdx.x; e < area; e += kThreads) {
    Acc total = 0;
    for (int m = 0; m < teams; ++m) total += team_bias[m * area + e];
    block_total[e] = total;
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
fused_grad_key_kernel(FusedArgs<T> args, T* grad_k, T* grad_v, HeadShape s, Plane p, GroupPlanes g, int lanes) {
  for_team_position(args, s, p, g, lanes, [&](const FusedArgs<T>& a, const TeamPosition& t, TeamSum<acc_t<T>> sum) {
    fused_grad_key<kSlots>(a, grad_k, grad_v, s, p, t.plane, t.i, t.j, t.lane, lanes, sum);
  });
}

// grad_bias[h][e] = sum over batch and blocks of partial[b * group_heads + h][block][e], in a fixed order.
template <typename T>
__global__ void bias_partial_reduce_kernel(const acc_t<T>* partial, T* grad_bias, int64_t batch, int64_t group_heads,
                                           int64_t blocks, int64_t area) {
  const int64_t index = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (index >= group_heads * area) return;
  const int64_t h = index / area, e = index % area;
  acc_t<T> total = 0;
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t x = 0; x < blocks; ++x) total += partial[((b * group_heads + h) * blocks + x) * area + e];
  grad_bias[index] = static_cast<T>(total);
}

// ---------------------------------------------------------------------------------------------
// Unfused kernels: one thread per output element, grid-stride loops over int64 indices.

// fn(index, plane, i, j, e) for every element `index` of a [rows, per_row] output, grid-stride over int64
// indices: its row is position (i, j) of `plane`, e its place in the row.
template <typename Fn>
__device__ __forceinline__ void for_each_row_element(const Plane& p, int64_t rows, int64_t per_row, const Fn& fn) {
  for (int64_t index = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; index < rows * per_row;
       index += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = index / per_row, plane = row / (p.height * p.width), pos = row % (p.height * p.width);
    fn(index, plane, pos / p.width, pos % p.width, index % per_row);
  }
}

// attn[row, u] = q[row] . k[key(u)] + bias
template <typename T>
__global__ void qk_kernel(const T* q, const T* k, const T* bias, T* attn, HeadShape s, Plane p, int64_t rows) {
  for_each_row_element(p, rows, s.kernel_area(), [&](int64_t index, int64_t plane, int64_t i, int64_t j, int64_t u) {
    const T* head_bias = bias ? bias + (plane % p.heads) * s.bias_area() : nullptr;
    attn[index] = static_cast<T>(qk_element(q, k, head_bias, s, p, plane, i, j, u));
  });
}

// out[row, d] = sum_u weights[row, u] * x[key(u), d]    (na2d_av forward; na2d_qk backward dQ)
template <typename T>
__global__ void window_sum_kernel(const T* weights, const T* x, T* out, HeadShape s, Plane p, int64_t rows) {
  for_each_row_element(p, rows, p.dim, [&](int64_t index, int64_t plane, int64_t i, int64_t j, int64_t d) {
    out[index] = static_cast<T>(window_sum(weights, x, s, p, plane, i, j, d));
  });
}

// out[key, d] = sum over queries attending key of weights[query, slot] * x[query, d]
//   (na2d_av backward dV; na2d_qk backward dK)
template <typename T>
__global__ void inverse_window_sum_kernel(const T* weights, const T* x, T* out, HeadShape s, Plane p, int64_t rows) {
  for_each_row_element(p, rows, p.dim, [&](int64_t index, int64_t plane, int64_t i, int64_t j, int64_t d) {
    out[index] = static_cast<T>(inverse_window_sum(weights, x, s, p, plane, i, j, d));
  });
}

// grad_attn[row, u] = grad_out[row] . v[key(u)]
template <typename T>
__global__ void av_grad_attn_kernel(const T* grad_out, const T* v, T* grad_attn, HeadShape s, Plane p, int64_t rows) {
  for_each_row_element(p, rows, s.kernel_area(), [&](int64_t index, int64_t plane, int64_t i, int64_t j, int64_t u) {
    grad_attn[index] = static_cast<T>(av_grad_attn_element(grad_out, v, s, p, plane, i, j, u));
  });
}

// grad_bias[h, e]: one block per (head, entry), a strided sum over (b, i, j) and a fixed-order tree.
template <typename T>
__global__ void __launch_bounds__(kThreads)
bias_grad_kernel(const T* grad_attn, T* grad_bias, HeadShape s, Plane p, int64_t batch) {
  using Acc = acc_t<T>;
  __shared__ Acc partial[kThreads];
  const int64_t area = s.bias_area(), h = blockIdx.x / area, e = blockIdx.x % area;
  const int64_t br = e / s.bias_cols(), bc = e % s.bias_cols(), per_plane = p.height * p.width;
  Acc total = 0;
  for (int64_t index = threadIdx.x; index < batch * per_plane; index += kThreads) {
    const int64_t plane = (index / per_plane) * p.heads + h, pos = index % per_plane;
    total += bias_grad_term(grad_attn, s, p, plane, pos / p.width, pos % p.width, br, bc);
  }
  partial[threadIdx.x] = total;
  __syncthreads();
  for (int stride = kThreads / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) partial[threadIdx.x] += partial[threadIdx.x + stride];
    __syncthreads();
  }
  if (threadIdx.x == 0) grad_bias[blockIdx.x] = static_cast<T>(partial[0]);
}

unsigned stride_blocks(int64_t count) {
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(blocks_for(count, kThreads), 1 << 20)));
}

// ---------------------------------------------------------------------------------------------
// Host side

Plane checked_plane(const Tensor& x, const char* name, int64_t* batch) {
  const Plane p = plane_of(x, name, c10::DeviceType::CUDA, batch);
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble || x.scalar_type() == at::kHalf ||
                  x.scalar_type() == at::kBFloat16,
              name, " must be float32, float64, float16 or bfloat16, got ", x.scalar_type());
  return p;
}

// Makes x's device current while it lives; `stream`: that device's current stream.
struct CurrentDevice {
  explicit CurrentDevice(const Tensor& x) : guard(x.device()), stream(c10::cuda::getCurrentCUDAStream()) {}
  const c10::cuda::CUDAGuard guard;
  const cudaStream_t stream;
};

at::TensorOptions acc_options(const Tensor& x) { return x.options().dtype(acc_scalar_type(x)); }

template <typename T>
FusedArgs<T> fused_args(const Tensor& q, const Tensor& k, const Tensor& v, const GroupSpec& g, double scale) {
  FusedArgs<T> a{};
  a.q = q.data_ptr<T>(), a.k = k.data_ptr<T>(), a.v = v.data_ptr<T>();
  a.bias = g.bias.defined() ? g.bias.data_ptr<T>() : nullptr;
  a.scale = static_cast<acc_t<T>>(scale);
  return a;
}

GroupPlanes planes_of(const GroupSpec& g, const Plane& p) { return {p.heads, g.begin, g.heads()}; }

}  // namespace

std::vector<Tensor> na2d_forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& group_table,
                                 const std::vector<Tensor>& rpbs, double scale) {
  int64_t batch;
  const Plane p = checked_plane(q, "q", &batch);
  TORCH_CHECK(p.dim <= kMaxHeadDim, "natten_ops cuda: head_dim must be <= ", kMaxHeadDim, ", got ", p.dim);
  const auto groups = check_na2d(q, k, v, group_table, rpbs);
  const CurrentDevice device(q);
  Tensor out = at::empty_like(q);
  Tensor lse = at::empty({batch, p.heads, p.height, p.width}, acc_options(q));
  const int lanes = team_lanes(p.dim);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "na2d_forward_cuda", [&] {
    for (const GroupSpec& g : groups) {
      const dim3 grid = plane_grid(p.height * p.width, kThreads / lanes, batch * g.heads());
      fused_forward_kernel<scalar_t><<<grid, kThreads, 0, device.stream>>>(
          fused_args<scalar_t>(q, k, v, g, scale), out.data_ptr<scalar_t>(), lse.data_ptr<acc_t<scalar_t>>(),
          g.shape, p, planes_of(g, p), lanes);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {out, lse};
}

std::vector<Tensor> na2d_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                                  const Tensor& out, const Tensor& lse, const Tensor& group_table,
                                  const std::vector<Tensor>& rpbs, double scale) {
  int64_t batch;
  const Plane p = checked_plane(q, "q", &batch);
  TORCH_CHECK(p.dim <= kMaxHeadDim, "natten_ops cuda: head_dim must be <= ", kMaxHeadDim, ", got ", p.dim);
  const auto groups = check_na2d_backward(dout, q, k, v, out, lse, group_table, rpbs);
  const CurrentDevice device(q);
  const int64_t rows = p.rows(batch);
  Tensor dq = at::empty_like(q), dk = at::empty_like(k), dv = at::empty_like(v);
  Tensor delta = at::empty({rows}, acc_options(q));
  std::vector<Tensor> result{dq, dk, dv};
  const int lanes = team_lanes(p.dim), teams = kThreads / lanes;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "na2d_backward_cuda", [&] {
    using Acc = acc_t<scalar_t>;
    delta_kernel<scalar_t><<<stride_blocks(rows), kThreads, 0, device.stream>>>(
        dout.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), delta.data_ptr<Acc>(), rows, p.dim);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    for (const GroupSpec& g : groups) {
      FusedArgs<scalar_t> a = fused_args<scalar_t>(q, k, v, g, scale);
      a.grad_out = dout.data_ptr<scalar_t>(), a.lse = lse.data_ptr<Acc>(), a.delta = delta.data_ptr<Acc>();
      const dim3 query_grid = plane_grid(p.height * p.width, int64_t{teams} * kQueriesPerTeam, batch * g.heads());
      const int64_t area = g.shape.bias_area();
      Tensor partial, grad_bias;
      size_t shared = 0;
      if (g.bias.defined()) {
        partial = at::empty({batch * g.heads(), query_grid.x, area}, acc_options(q));
        grad_bias = at::empty_like(g.bias);
        shared = sizeof(Acc) * teams * area;
        TORCH_CHECK(shared <= 48 * 1024, "natten_ops cuda: the bias gradient of a ", g.shape.kernel_h, "x",
                    g.shape.kernel_w, " kernel needs more shared memory than one block has; use backend='flex'");
      }
      fused_grad_query_kernel<scalar_t><<<query_grid, kThreads, shared, device.stream>>>(
          a, dq.data_ptr<scalar_t>(), g.bias.defined() ? partial.data_ptr<Acc>() : nullptr, g.shape, p,
          planes_of(g, p), lanes);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      const dim3 key_grid = plane_grid(p.height * p.width, teams, batch * g.heads());
      fused_grad_key_kernel<scalar_t><<<key_grid, kThreads, 0, device.stream>>>(
          a, dk.data_ptr<scalar_t>(), dv.data_ptr<scalar_t>(), g.shape, p, planes_of(g, p), lanes);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      if (g.bias.defined()) {
        bias_partial_reduce_kernel<scalar_t><<<stride_blocks(g.heads() * area), kThreads, 0, device.stream>>>(
            partial.data_ptr<Acc>(), grad_bias.data_ptr<scalar_t>(), batch, g.heads(), query_grid.x, area);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
      result.push_back(g.bias.defined() ? grad_bias : at::empty({0}, q.options()));
    }
  });
  return result;
}

Tensor na2d_qk_forward(const Tensor& q, const Tensor& k, const Tensor& group_table, const Tensor& rpb) {
  int64_t batch;
  const Plane p = checked_plane(q, "q", &batch);
  const GroupSpec g = check_na2d_qk(q, k, group_table, rpb);
  const CurrentDevice device(q);
  Tensor attn = at::empty({batch, p.heads, p.height, p.width, g.shape.kernel_area()}, q.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "na2d_qk_forward_cuda", [&] {
    qk_kernel<scalar_t><<<stride_blocks(attn.numel()), kThreads, 0, device.stream>>>(
        q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), g.bias.defined() ? g.bias.data_ptr<scalar_t>() : nullptr,
        attn.data_ptr<scalar_t>(), g.shape, p, p.rows(batch));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return attn;
}

std::vector<Tensor> na2d_qk_backward(const Tensor& dattn, const Tensor& q, const Tensor& k, const Tensor& group_table,
                                     bool has_rpb) {
  int64_t batch;
  const Plane p = checked_plane(q, "q", &batch);
  const GroupSpec g = check_na2d_qk_backward(dattn, q, k, group_table);
  const CurrentDevice device(q);
  Tensor dq = at::empty_like(q), dk = at::empty_like(k);
  Tensor drpb = has_rpb ? at::empty({p.heads, 2 * g.shape.kernel_h - 1, 2 * g.shape.kernel_w - 1}, q.options())
                        : at::empty({0}, q.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "na2d_qk_backward_cuda", [&] {
    const scalar_t* weights = dattn.data_ptr<scalar_t>();
    window_sum_kernel<scalar_t><<<stride_blocks(dq.numel()), kThreads, 0, device.stream>>>(
        weights, k.data_ptr<scalar_t>(), dq.data_ptr<scalar_t>(), g.shape, p, p.rows(batch));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    inverse_window_sum_kernel<scalar_t><<<stride_blocks(dk.numel()), kThreads, 0, device.stream>>>(
        weights, q.data_ptr<scalar_t>(), dk.data_ptr<scalar_t>(), g.shape, p, p.rows(batch));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (has_rpb) {
      bias_grad_kernel<scalar_t><<<static_cast<unsigned>(drpb.numel()), kThreads, 0, device.stream>>>(
          weights, drpb.data_ptr<scalar_t>(), g.shape, p, batch);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {dq, dk, drpb};
}

Tensor na2d_av_forward(const Tensor& attn, const Tensor& v, const Tensor& group_table) {
  int64_t batch;
  const Plane p = checked_plane(v, "v", &batch);
  const GroupSpec g = check_na2d_av(attn, v, group_table);
  const CurrentDevice device(v);
  Tensor out = at::empty_like(v);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, v.scalar_type(), "na2d_av_forward_cuda", [&] {
    window_sum_kernel<scalar_t><<<stride_blocks(out.numel()), kThreads, 0, device.stream>>>(
        attn.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), g.shape, p, p.rows(batch));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::vector<Tensor> na2d_av_backward(const Tensor& dout, const Tensor& attn, const Tensor& v,
                                     const Tensor& group_table) {
  int64_t batch;
  const Plane p = checked_plane(v, "v", &batch);
  const GroupSpec g = check_na2d_av_backward(dout, attn, v, group_table);
  const CurrentDevice device(v);
  Tensor dattn = at::empty_like(attn), dv = at::empty_like(v);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, v.scalar_type(), "na2d_av_backward_cuda", [&] {
    av_grad_attn_kernel<scalar_t><<<stride_blocks(dattn.numel()), kThreads, 0, device.stream>>>(
        dout.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(), dattn.data_ptr<scalar_t>(), g.shape, p, p.rows(batch));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    inverse_window_sum_kernel<scalar_t><<<stride_blocks(dv.numel()), kThreads, 0, device.stream>>>(
        attn.data_ptr<scalar_t>(), dout.data_ptr<scalar_t>(), dv.data_ptr<scalar_t>(), g.shape, p, p.rows(batch));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {dattn, dv};
}

}  // namespace cuda
}  // namespace natten_ops
