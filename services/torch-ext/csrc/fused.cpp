// Fused optimizer updates over flat fp32 CPU buffers: one pass over memory
// instead of the ~10 whole-buffer operations (and temporaries) the same
// arithmetic takes as separate libtorch ops. The gradients are read where
// they lie, one tensor per variable at its offset in the flat buffers, so
// they need not be gathered into a flat buffer of their own first (a copy
// of ~100 MB a step). Run in libtorch's own intra-op threads
// (at::parallel_for: the same OpenMP team as the model). Built at -O3
// whatever the cargo profile (build.rs): a debug build's -O0 loop would be
// slower than the ops it replaces.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "message.hpp"

namespace {

void check_flat(const at::Tensor& t, int64_t n, const char* what) {
  TORCH_CHECK(t.defined() && t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous() &&
                  t.numel() == n,
              what, " must be a contiguous fp32 CPU tensor of ", n, " elements");
}

// A run of the flat buffers and its gradient (null: none, a zero gradient).
struct Segment {
  int64_t begin;
  int64_t end;
  const float* grad;
};

bool overlaps(const float* a, int64_t a_len, const at::Tensor& b) {
  const float* b_begin = b.data_ptr<float>();
  return a < b_begin + b.numel() && b_begin < a + a_len;
}

// The pieces, checked, with the gaps between them, covering [0, n) in order.
std::vector<Segment> segments_of(const at::Tensor* const* grads, const int64_t* offsets, int64_t count, int64_t n,
                                 std::initializer_list<const at::Tensor*> buffers) {
  std::vector<Segment> segments;
  segments.reserve(2 * count + 1);
  int64_t at = 0;
  for (int64_t i = 0; i < count; ++i) {
    const at::Tensor& g = *grads[i];
    if (!g.defined() || g.numel() == 0) {
      continue;
    }
    TORCH_CHECK(g.device().is_cpu() && g.scalar_type() == at::kFloat && g.is_contiguous(), "gradient ", i,
                " must be a contiguous fp32 CPU tensor");
    const int64_t begin = offsets[i], len = g.numel();
    TORCH_CHECK(begin >= at && begin <= n - len, "gradient ", i, " (", len, " elements at offset ", begin,
                ") overlaps the one before it or runs past the ", n, " elements of the variables");
    const float* p = g.data_ptr<float>();
    for (const at::Tensor* b : buffers) {
      TORCH_CHECK(!overlaps(p, len, *b), "gradient ", i, " shares memory with a buffer it updates");
    }
    if (begin > at) {
      segments.push_back({at, begin, nullptr});
    }
    segments.push_back({begin, begin + len, p});
    at = begin + len;
  }
  if (at < n) {
    segments.push_back({at, n, nullptr});
  }
  return segments;
}

struct RmsProp {
  float keep, mu, rate, epsilon;

  // One run; `g` null for a zero gradient. Distinct buffers (checked by the
  // caller): restrict lets the loop vectorise.
  void run(float* __restrict v, const float* __restrict g, const float* __restrict d, float* __restrict s,
           float* __restrict m, int64_t len) const {
    if (g == nullptr) {
      for (int64_t i = 0; i < len; ++i) {
        step(v[i], 0.0f, d[i], s[i], m[i]);
      }
      return;
    }
    for (int64_t i = 0; i < len; ++i) {
      step(v[i], g[i], d[i], s[i], m[i]);
    }
  }

  void step(float& v, float grad, float d, float& s, float& m) const {
    const float gi = grad + d * v;
    const float si = s + keep * (gi * gi - s);
    s = si;
    const float mi = mu * m + rate * gi / std::sqrt(si + epsilon);
    m = mi;
    v -= mi;
  }
};

}  // namespace

extern "C" {

// TensorFlow's RMSProp, in place, with L2 weight decay coupled to the
// gradient, on buffers laid end to end (var, decay, ms, mom: at::Tensor*
// of the same length; grads[i] the gradient of the variable at offsets[i],
// ascending, any not defined a zero gradient, as are the gaps):
//   g    = grad + decay * var            (decay: each element's L2 factor)
//   ms  += (1 - rho) * (g^2 - ms)
//   mom  = momentum * mom + lr * g / sqrt(ms + eps)
//   var -= mom
char* ext_fused_rmsprop(at::Tensor* var, const at::Tensor* const* grads, const int64_t* offsets, int64_t count,
                        const at::Tensor* decay, at::Tensor* ms, at::Tensor* mom, double lr, double rho,
                        double momentum, double eps) {
  return ext::guarded([&] {
    const int64_t n = var->numel();
    check_flat(*var, n, "the variables");
    check_flat(*decay, n, "the decay factors");
    check_flat(*ms, n, "the mean square slot");
    check_flat(*mom, n, "the momentum slot");
    const std::vector<Segment> segments = segments_of(grads, offsets, count, n, {var, decay, ms, mom});
    float* v = var->data_ptr<float>();
    const float* d = decay->data_ptr<float>();
    float* s = ms->data_ptr<float>();
    float* m = mom->data_ptr<float>();
    const RmsProp rule{static_cast<float>(1.0 - rho), static_cast<float>(momentum), static_cast<float>(lr),
                       static_cast<float>(eps)};
    at::parallel_for(0, n, 1 << 16, [&](int64_t begin, int64_t end) {
      // The segment holding `begin`, then on to `end`.
      auto it = std::upper_bound(segments.begin(), segments.end(), begin,
                                 [](int64_t at, const Segment& seg) { return at < seg.begin; });
      for (--it; it != segments.end() && it->begin < end; ++it) {
        const int64_t lo = std::max(begin, it->begin), hi = std::min(end, it->end);
        const float* g = it->grad == nullptr ? nullptr : it->grad + (lo - it->begin);
        rule.run(v + lo, g, d + lo, s + lo, m + lo, hi - lo);
      }
    });
  });
}

}  // extern "C"
