// Softmax, scaled dot-product attention and rotary embeddings.
// Attention streams over key blocks with an online (running max) softmax, so memory is O(T * D), never O(T^2);
// the backward pass recomputes probabilities from the saved log-sum-exp in two passes (query blocks, then key blocks)
// so that each pass owns its outputs and runs in parallel without atomics.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "core/error.h"
#include "core/kernels/attention_tiles.h"
#include "core/kernels/vec.h"
#include "core/ops.h"
#include "core/thread_pool.h"

namespace dl::ops {

namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Combined view of all masks for one [B, H, Tq, Tk] problem.
class MaskView {
 public:
  MaskView(const AttentionMask& m, int64_t B, int64_t H, int64_t Tq, int64_t Tk, const char* op)
      : causal_(m.causal), offset_(Tk - Tq) {
    if (m.additive) {
      const Tensor& a = *m.additive;
      DL_CHECK(a.dim() >= 2 && a.dim() <= 4, op, ": additive mask ", a.describe(), " must have rank 2 to 4");
      Shape full(size_t(4 - a.dim()), 1);
      full.insert(full.end(), a.shape().begin(), a.shape().end());
      const Shape want{B, H, Tq, Tk};
      for (size_t i = 0; i < 4; ++i)
        DL_CHECK(full[i] == want[i] || full[i] == 1, op, ": additive mask ", a.describe(),
                 " does not broadcast to ", shape_str(want));
      add_ = a.to(DType::F32).reshape(full);
      add_data_ = add_.f32();
      Shape st = contiguous_strides(full);
      for (size_t i = 0; i < 4; ++i) add_stride_[i] = full[i] == 1 ? 0 : st[i];
      has_add_ = true;
    }
    if (m.key_keep) {
      const Tensor& k = *m.key_keep;
      DL_CHECK(k.shape() == Shape({B, Tk}), op, ": key mask ", k.describe(), " must be [", B, ", ", Tk, "]");
      keep_ = k.to(DType::F32);
      keep_data_ = keep_.f32();
      keep_cols_ = Tk;
      has_keep_ = true;
    }
  }
  bool any() const { return causal_ || has_add_ || has_keep_; }
  // Last key index query i may see (exclusive bound), for skipping causal work.
  int64_t key_end(int64_t i, int64_t Tk) const { return causal_ ? std::clamp<int64_t>(i + offset_ + 1, 0, Tk) : Tk; }
  int64_t query_begin(int64_t j) const { return causal_ ? std::max<int64_t>(j - offset_, 0) : 0; }
  float bias(int64_t b, int64_t h, int64_t i, int64_t j) const {
    if (causal_ && j > i + offset_) return kNegInf;
    float v = 0.f;
    if (has_keep_ && keep_data_[b * keep_cols_ + j] == 0.f) return kNegInf;
    if (has_add_) v += add_data_[b * add_stride_[0] + h * add_stride_[1] + i * add_stride_[2] + j * add_stride_[3]];
    return v;
  }
  bool needs_bias() const { return has_add_ || has_keep_; }

 private:
  bool causal_;
  int64_t offset_;
  bool has_add_ = false, has_keep_ = false;
  Tensor add_, keep_;
  const float* add_data_ = nullptr;  // the tensors' data, read once per score
  const float* keep_data_ = nullptr;
  int64_t keep_cols_ = 0;
  int64_t add_stride_[4] = {0, 0, 0, 0};
};

struct AttnGeom {
  int64_t B, Hq, Hkv, Tq, Tk, D, Dv;
};

AttnGeom attention_geometry(const Tensor& q, const Tensor& k, const Tensor& v) {
  DL_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, "attention: q, k, v must be [B,H,T,D], got ",
           q.describe(), ", ", k.describe(), ", ", v.describe());
  AttnGeom g{q.size(0), q.size(1), k.size(1), q.size(2), k.size(2), q.size(3), v.size(3)};
  DL_CHECK(k.size(0) == g.B && v.size(0) == g.B, "attention: batch sizes differ: ", q.describe(), ", ",
           k.describe(), ", ", v.describe());
  DL_CHECK(k.size(3) == g.D, "attention: q ", q.describe(), " and k ", k.describe(), " head dims differ");
  DL_CHECK(v.size(1) == g.Hkv && v.size(2) == g.Tk, "attention: k ", k.describe(), " and v ", v.describe(),
           " disagree");
  DL_CHECK(g.Hkv > 0 && g.Hq % g.Hkv == 0, "attention: ", g.Hq, " query heads are not a multiple of ", g.Hkv,
           " key/value heads");
  return g;
}

}  // namespace

Tensor softmax(const Tensor& x_in, const AttentionMask& mask) {
  DL_CHECK(x_in.dim() >= 1, "softmax: scalar input");
  const bool masked = mask.causal || mask.additive || mask.key_keep;
  DL_CHECK(!masked || x_in.dim() == 4, "softmax: masks need a [B,H,Tq,Tk] input, got ", x_in.describe());
  Tensor x = x_in.to(DType::F32);
  const int64_t Tk = x.size(-1), R = x.numel() / std::max<int64_t>(Tk, 1);
  std::optional<MaskView> mv;
  int64_t H = 1, Tq = 1;
  if (masked) {
    H = x.size(1);
    Tq = x.size(2);
    mv.emplace(mask, x.size(0), H, Tq, Tk, "softmax");
  }
  Tensor y = Tensor::uninitialized(x.shape());
  const float* xp = x.f32();
  float* yp = y.f32();
  parallel_for(R, 4, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* xr = xp + r * Tk;
      float* yr = yp + r * Tk;
      int64_t i = r % Tq, h = (r / Tq) % H, b = r / (Tq * H);
      float m = kNegInf;
      for (int64_t j = 0; j < Tk; ++j) {
        yr[j] = mv ? xr[j] + mv->bias(b, h, i, j) : xr[j];
        m = std::max(m, yr[j]);
      }
      if (m == kNegInf) {  // fully masked row
        std::fill_n(yr, Tk, 0.f);
        continue;
      }
      vec::exp_shifted(yr, m, yr, Tk);
      double s = 0;
      for (int64_t j = 0; j < Tk; ++j) s += yr[j];
      float inv = float(1.0 / s);
      for (int64_t j = 0; j < Tk; ++j) yr[j] *= inv;
    }
  });
  return y;
}

Tensor softmax_backward(const Tensor& y_in, const Tensor& gy_in) {
  DL_CHECK(y_in.shape() == gy_in.shape(), "softmax backward: ", y_in.describe(), " vs ", gy_in.describe());
  Tensor y = y_in.contiguous(), gy = gy_in.contiguous();
  const int64_t Tk = y.size(-1), R = y.numel() / std::max<int64_t>(Tk, 1);
  Tensor gx = Tensor::uninitialized(y.shape());
  parallel_for(R, 4, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float *yr = y.f32() + r * Tk, *gr = gy.f32() + r * Tk;
      float d = vec::dot(yr, gr, Tk);
      float* o = gx.f32() + r * Tk;
      for (int64_t j = 0; j < Tk; ++j) o[j] = yr[j] * (gr[j] - d);
    }
  });
  return gx;
}

namespace {

constexpr int64_t kQBlock = 64, kKBlock = 128;

// Scores of one tile: S[ii][jj] = scale * q_(i0+ii) . k_tile[jj] + mask bias (key j0 + jj), by one GEMM plus the
// bias pass.
void score_tile(const AttnGeom& g, const MaskView& mv, int64_t b, int64_t h, const float* qp, const float* k_tile,
                int64_t i0, int64_t nq, int64_t j0, int64_t nk, float scale, float* s) {
  gemm(false, true, nq, nk, g.D, scale, qp + i0 * g.D, g.D, k_tile, g.D, 0.f, s, nk);
  if (!mv.any()) return;
  for (int64_t ii = 0; ii < nq; ++ii)
    for (int64_t jj = 0; jj < nk; ++jj) s[ii * nk + jj] += mv.bias(b, h, i0 + ii, j0 + jj);
}

// P = exp(S - lse) in place for a tile, given each row's saved log-sum-exp (rows with lse = -inf give 0).
void probs_from_lse(float* s, int64_t nq, int64_t nk, const float* lse_rows) {
  for (int64_t ii = 0; ii < nq; ++ii) {
    const float l = lse_rows[ii];
    float* row = s + ii * nk;
    if (l == kNegInf)
      std::fill_n(row, nk, 0.f);
    else
      vec::exp_shifted(row, l, row, nk);
  }
}

}  // namespace

namespace {

// Keys or values of one attention call as the forward kernel reads them: rows of one (batch, kv head) are contiguous
// and `head_rows` apart (a cache holds more rows than are valid), in F32 or in a storage type that is widened one
// key block at a time into per-thread scratch, so a reduced-precision cache is never converted whole.
struct KeyValueRows {
  const char* base;
  DType dtype;
  int64_t head_rows, width;
  // Rows [j0, j0 + n) of head `head` (= b * Hkv + hk) as F32: in place when the storage is F32, else in scratch.
  const float* rows(int64_t head, int64_t j0, int64_t n, float* scratch) const {
    const int64_t first = (head * head_rows + j0) * width;
    const char* p = base + dtype_bytes(dtype, first);
    if (dtype == DType::F32) return reinterpret_cast<const float*>(p);
    convert_to_f32(dtype, p, scratch, n * width);
    return scratch;
  }
};

Tensor attention_forward(const AttnGeom& g, const Tensor& q_in, const KeyValueRows& keys, const KeyValueRows& values,
                         const AttentionMask& mask, float scale, Tensor* lse_out) {
  if (scale <= 0.f) scale = 1.f / std::sqrt(float(g.D));
  Tensor q = q_in.to(DType::F32);
  MaskView mv(mask, g.B, g.Hq, g.Tq, g.Tk, "attention");
  Tensor out = Tensor::zeros({g.B, g.Hq, g.Tq, g.Dv}), lse = Tensor::empty({g.B, g.Hq, g.Tq});
  const int64_t qblocks = (g.Tq + kQBlock - 1) / kQBlock;
  const int64_t group = g.Hq / g.Hkv;
  const bool widen_k = keys.dtype != DType::F32, widen_v = values.dtype != DType::F32;
  parallel_for(g.B * g.Hq * qblocks, 1, [&](int64_t t0, int64_t t1) {
    std::vector<float> s(size_t(kQBlock * kKBlock)), m(kQBlock), l(kQBlock);
    std::vector<float> kbuf(widen_k ? size_t(kKBlock * g.D) : 0), vbuf(widen_v ? size_t(kKBlock * g.Dv) : 0);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t qb = t % qblocks, h = (t / qblocks) % g.Hq, b = t / (qblocks * g.Hq);
      const int64_t kv_head = b * g.Hkv + h / group;
      const int64_t i0 = qb * kQBlock, i1 = std::min(g.Tq, i0 + kQBlock), nq = i1 - i0;
      const float* qp = q.f32() + ((b * g.Hq + h) * g.Tq) * g.D;
      float* op = out.f32() + ((b * g.Hq + h) * g.Tq + i0) * g.Dv;
      std::fill_n(m.begin(), nq, kNegInf);
      std::fill_n(l.begin(), nq, 0.f);
      const int64_t kend = mv.key_end(i1 - 1, g.Tk);
      for (int64_t j0 = 0; j0 < kend; j0 += kKBlock) {
        const int64_t nk = std::min(kend, j0 + kKBlock) - j0;
        const float* k_tile = keys.rows(kv_head, j0, nk, kbuf.data());
        score_tile(g, mv, b, h, qp, k_tile, i0, nq, j0, nk, scale, s.data());
        // Online softmax: rescale what was accumulated under the old row maximum.
        for (int64_t ii = 0; ii < nq; ++ii) {
          float* row = s.data() + ii * nk;
          const float mnew = std::max(m[ii], *std::max_element(row, row + nk));
          if (mnew == kNegInf) {  // nothing visible to this row yet
            std::fill_n(row, nk, 0.f);
            continue;
          }
          const float corr = vec::exp_approx(m[ii] - mnew);
          vec::exp_shifted(row, mnew, row, nk);
          float ls = 0.f;
          for (int64_t jj = 0; jj < nk; ++jj) ls += row[jj];
          if (corr != 1.f) vec::scale(corr, op + ii * g.Dv, g.Dv);
          l[ii] = l[ii] * corr + ls;
          m[ii] = mnew;
        }
        const float* vp = values.rows(kv_head, j0, nk, vbuf.data());
        gemm(false, false, nq, g.Dv, nk, 1.f, s.data(), nk, vp, g.Dv, 1.f, op, g.Dv);
      }
      float* lp = lse.f32() + (b * g.Hq + h) * g.Tq + i0;
      for (int64_t ii = 0; ii < nq; ++ii) {
        if (l[ii] > 0.f) {
          vec::scale(1.f / l[ii], op + ii * g.Dv, g.Dv);
          lp[ii] = m[ii] + std::log(l[ii]);
        } else {
          lp[ii] = kNegInf;  // fully masked row: output stays zero
        }
      }
    }
  });
  if (lse_out) *lse_out = lse;
  return out;
}

// Attention without masks (every query sees every key: the UNet, the VAE, CLIP) through register-blocked tiles
// (attention_tiles.h) instead of small sgemm calls: at head dim 64 the sgemm calls' packing and the scalar softmax
// loops cost more than the products. K is transposed once per head, padded with zero keys to a whole tile; padded
// query rows compute harmless zeros that are never written out.
Tensor attention_unmasked(const AttnGeom& g, const Tensor& q_in, const Tensor& k, const Tensor& v, float scale,
                          Tensor* lse_out) {
  using attn_tiles::kCols;
  using attn_tiles::kRows;
  if (scale <= 0.f) scale = 1.f / std::sqrt(float(g.D));
  const Tensor q = q_in.to(DType::F32);
  constexpr int64_t kQ = 128, kK = 128;  // query rows and keys per tile
  const int64_t tk_pad = (g.Tk + kCols - 1) / kCols * kCols, heads_kv = g.B * g.Hkv;
  Tensor kt = Tensor::uninitialized({heads_kv, g.D, tk_pad});
  parallel_for(heads_kv, 1, [&](int64_t h0, int64_t h1) {
    for (int64_t h = h0; h < h1; ++h) {
      const float* src = k.f32() + h * g.Tk * g.D;
      float* dst = kt.f32() + h * g.D * tk_pad;
      for (int64_t j0 = 0; j0 < tk_pad; j0 += 64)
        for (int64_t d = 0; d < g.D; ++d)
          for (int64_t j = j0; j < std::min(j0 + 64, tk_pad); ++j)
            dst[d * tk_pad + j] = j < g.Tk ? src[j * g.D + d] : 0.f;
    }
  });
  Tensor out = Tensor::uninitialized({g.B, g.Hq, g.Tq, g.Dv}), lse = Tensor::uninitialized({g.B, g.Hq, g.Tq});
  const int64_t qblocks = (g.Tq + kQ - 1) / kQ, group = g.Hq / g.Hkv;
  parallel_for(g.B * g.Hq * qblocks, 1, [&](int64_t t0, int64_t t1) {
    std::vector<float> s(size_t(kQ * kK)), o(size_t(kQ * g.Dv)), m(kQ), l(kQ), qpad;
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t qb = t % qblocks, h = (t / qblocks) % g.Hq, b = t / (qblocks * g.Hq);
      const int64_t kv_head = b * g.Hkv + h / group;
      const int64_t i0 = qb * kQ, nq = std::min(g.Tq, i0 + kQ) - i0, nq_pad = (nq + kRows - 1) / kRows * kRows;
      const float* qp = q.f32() + ((b * g.Hq + h) * g.Tq + i0) * g.D;
      if (nq_pad != nq) {  // a partial last block: its rows padded with zero queries
        qpad.assign(size_t(nq_pad * g.D), 0.f);
        std::copy(qp, qp + nq * g.D, qpad.begin());
        qp = qpad.data();
      }
      std::fill_n(o.begin(), nq_pad * g.Dv, 0.f);
      std::fill_n(m.begin(), nq_pad, kNegInf);
      std::fill_n(l.begin(), nq_pad, 0.f);
      const float* ktp = kt.f32() + kv_head * g.D * tk_pad;
      const float* vp = v.f32() + kv_head * g.Tk * g.Dv;
      for (int64_t j0 = 0; j0 < g.Tk; j0 += kK) {
        const int64_t nk = std::min(g.Tk - j0, kK), nk_pad = (nk + kCols - 1) / kCols * kCols;
        attn_tiles::scores(qp, g.D, ktp + j0, tk_pad, nq_pad, nk_pad, g.D, scale, s.data(), kK);
        attn_tiles::online_softmax(s.data(), kK, nq_pad, nk, m.data(), l.data(), o.data(), g.Dv, g.Dv);
        attn_tiles::accumulate_pv(s.data(), kK, vp + j0 * g.Dv, g.Dv, nq_pad, nk, g.Dv, o.data(), g.Dv);
      }
      float* op = out.f32() + ((b * g.Hq + h) * g.Tq + i0) * g.Dv;
      float* lp = lse.f32() + (b * g.Hq + h) * g.Tq + i0;
      for (int64_t ii = 0; ii < nq; ++ii) {
        const float inv = l[ii] > 0.f ? 1.f / l[ii] : 0.f;
        for (int64_t c = 0; c < g.Dv; ++c) op[ii * g.Dv + c] = o[ii * g.Dv + c] * inv;
        lp[ii] = l[ii] > 0.f ? m[ii] + std::log(l[ii]) : kNegInf;
      }
    }
  });
  if (lse_out) *lse_out = lse;
  return out;
}

}  // namespace

Tensor attention(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in, const AttentionMask& mask, float scale,
                 Tensor* lse_out) {
  const AttnGeom g = attention_geometry(q_in, k_in, v_in);
  Tensor k = k_in.to(DType::F32), v = v_in.to(DType::F32);
  if (!mask.causal && !mask.additive && !mask.key_keep && g.Dv % 16 == 0 && g.Tk > 0)
    return attention_unmasked(g, q_in, k, v, scale, lse_out);
  const KeyValueRows keys{static_cast<const char*>(k.raw()), DType::F32, g.Tk, g.D};
  const KeyValueRows values{static_cast<const char*>(v.raw()), DType::F32, g.Tk, g.Dv};
  return attention_forward(g, q_in, keys, values, mask, scale, lse_out);
}

Tensor attention_cached(const Tensor& q, const Tensor& k, const Tensor& v, int64_t valid, const AttentionMask& mask,
                        float scale) {
  DL_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, "attention: q, k, v must be [B,H,T,D], got ",
           q.describe(), ", ", k.describe(), ", ", v.describe());
  DL_CHECK(k.is_contiguous() && v.is_contiguous(), "attention: cached keys ", k.describe(), " and values ",
           v.describe(), " must be contiguous");
  for (const Tensor* t : {&k, &v}) {
    const DType dt = t->dtype();
    DL_CHECK(dt == DType::F32 || dt == DType::F16 || dt == DType::BF16 || dt == DType::Q8_0,
             "attention: cached keys/values of type ", dtype_name(dt), " are not supported (F32, F16, BF16, Q8_0)");
  }
  DL_CHECK(valid >= 0 && valid <= k.size(2), "attention: ", valid, " valid cache rows of ", k.describe());
  const AttnGeom full = attention_geometry(q, k, v);
  AttnGeom g = full;
  g.Tk = valid;
  const KeyValueRows keys{static_cast<const char*>(k.raw()), k.dtype(), full.Tk, g.D};
  const KeyValueRows values{static_cast<const char*>(v.raw()), v.dtype(), full.Tk, g.Dv};
  return attention_forward(g, q, keys, values, mask, scale, nullptr);
}

void attention_backward(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in, const Tensor& out_in,
                        const Tensor& lse, const Tensor& gout_in, const AttentionMask& mask, float scale, Tensor* gq,
                        Tensor* gk, Tensor* gv) {
  const AttnGeom g = attention_geometry(q_in, k_in, v_in);
  DL_CHECK(gout_in.shape() == Shape({g.B, g.Hq, g.Tq, g.Dv}), "attention backward: gradient ", gout_in.describe(),
           " does not match the output");
  DL_CHECK(lse.shape() == Shape({g.B, g.Hq, g.Tq}), "attention backward: saved log-sum-exp ", lse.describe(),
           " does not match the output");
  if (scale <= 0.f) scale = 1.f / std::sqrt(float(g.D));
  Tensor q = q_in.to(DType::F32), k = k_in.to(DType::F32), v = v_in.to(DType::F32);
  Tensor o = out_in.contiguous(), go = gout_in.contiguous();
  MaskView mv(mask, g.B, g.Hq, g.Tq, g.Tk, "attention backward");
  const int64_t group = g.Hq / g.Hkv;
  // delta_i = dO_i . O_i, the row term of the softmax backward.
  Tensor delta = Tensor::empty({g.B, g.Hq, g.Tq});
  parallel_for(g.B * g.Hq * g.Tq, 64, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) delta.f32()[r] = vec::dot(go.f32() + r * g.Dv, o.f32() + r * g.Dv, g.Dv);
  });
  // dS = P * (dO V^T - delta) for one tile, computed into s (which holds P on entry); dp is scratch.
  auto dscores = [&](float* s, float* dp, const float* go_rows, const float* v_rows, const float* delta_rows,
                     int64_t nq, int64_t nk) {
    gemm(false, true, nq, nk, g.Dv, 1.f, go_rows, g.Dv, v_rows, g.Dv, 0.f, dp, nk);
    for (int64_t ii = 0; ii < nq; ++ii)
      for (int64_t jj = 0; jj < nk; ++jj) s[ii * nk + jj] *= dp[ii * nk + jj] - delta_rows[ii];
  };
  // Pass 1: dQ = scale * dS K, one query block per work item.
  if (gq) {
    *gq = Tensor::zeros(q.shape());
    const int64_t qblocks = (g.Tq + kQBlock - 1) / kQBlock;
    parallel_for(g.B * g.Hq * qblocks, 1, [&](int64_t t0, int64_t t1) {
      std::vector<float> s(size_t(kQBlock * kKBlock)), dp(size_t(kQBlock * kKBlock));
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t qb = t % qblocks, h = (t / qblocks) % g.Hq, b = t / (qblocks * g.Hq), hk = h / group;
        const int64_t i0 = qb * kQBlock, nq = std::min(g.Tq, i0 + kQBlock) - i0;
        const int64_t row0 = (b * g.Hq + h) * g.Tq;
        const float* qp = q.f32() + row0 * g.D;
        const float* kp = k.f32() + (b * g.Hkv + hk) * g.Tk * g.D;
        const float* vp = v.f32() + (b * g.Hkv + hk) * g.Tk * g.Dv;
        const int64_t kend = mv.key_end(i0 + nq - 1, g.Tk);
        for (int64_t j0 = 0; j0 < kend; j0 += kKBlock) {
          const int64_t nk = std::min(kend, j0 + kKBlock) - j0;
          score_tile(g, mv, b, h, qp, kp + j0 * g.D, i0, nq, j0, nk, scale, s.data());
          probs_from_lse(s.data(), nq, nk, lse.f32() + row0 + i0);
          dscores(s.data(), dp.data(), go.f32() + (row0 + i0) * g.Dv, vp + j0 * g.Dv, delta.f32() + row0 + i0, nq, nk);
          gemm(false, false, nq, g.D, nk, scale, s.data(), nk, kp + j0 * g.D, g.D, 1.f, gq->f32() + (row0 + i0) * g.D,
               g.D);
        }
      }
    });
  }
  // Pass 2: dV = P^T dO and dK = scale * dS^T Q, summed over the query heads sharing the KV head; one key block
  // per work item, so each item owns its rows of dK and dV.
  if (gk || gv) {
    if (gk) *gk = Tensor::zeros(k.shape());
    if (gv) *gv = Tensor::zeros(v.shape());
    const int64_t kblocks = (g.Tk + kKBlock - 1) / kKBlock;
    parallel_for(g.B * g.Hkv * kblocks, 1, [&](int64_t t0, int64_t t1) {
      std::vector<float> s(size_t(kQBlock * kKBlock)), dp(size_t(kQBlock * kKBlock));
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t kb = t % kblocks, hk = (t / kblocks) % g.Hkv, b = t / (kblocks * g.Hkv);
        const int64_t j0 = kb * kKBlock, nk = std::min(g.Tk, j0 + kKBlock) - j0;
        const int64_t krow0 = (b * g.Hkv + hk) * g.Tk;
        const float* kp = k.f32() + krow0 * g.D;
        const float* vp = v.f32() + krow0 * g.Dv;
        const int64_t first_query = mv.query_begin(j0);
        for (int64_t h = hk * group; h < (hk + 1) * group; ++h) {
          const int64_t row0 = (b * g.Hq + h) * g.Tq;
          const float* qp = q.f32() + row0 * g.D;
          for (int64_t i0 = first_query / kQBlock * kQBlock; i0 < g.Tq; i0 += kQBlock) {
            const int64_t nq = std::min(g.Tq, i0 + kQBlock) - i0;
            score_tile(g, mv, b, h, qp, kp + j0 * g.D, i0, nq, j0, nk, scale, s.data());
            probs_from_lse(s.data(), nq, nk, lse.f32() + row0 + i0);
            const float* go_rows = go.f32() + (row0 + i0) * g.Dv;
            if (gv)
              gemm(true, false, nk, g.Dv, nq, 1.f, s.data(), nk, go_rows, g.Dv, 1.f, gv->f32() + (krow0 + j0) * g.Dv,
                   g.Dv);
            if (gk) {
              dscores(s.data(), dp.data(), go_rows, vp + j0 * g.Dv, delta.f32() + row0 + i0, nq, nk);
              gemm(true, false, nk, g.D, nq, scale, s.data(), nk, qp + i0 * g.D, g.D, 1.f,
                   gk->f32() + (krow0 + j0) * g.D, g.D);
            }
          }
        }
      }
    });
  }
}

Tensor rope(const Tensor& x_in, const Tensor& positions, float theta, bool inverse) {
  DL_CHECK(x_in.dim() == 4, "rope: input must be [B,H,T,D], got ", x_in.describe());
  const int64_t B = x_in.size(0), H = x_in.size(1), T = x_in.size(2), D = x_in.size(3);
  DL_CHECK(D % 2 == 0, "rope: head dim ", D, " is odd");
  DL_CHECK(positions.dtype() == DType::I32 || positions.dtype() == DType::I64, "rope: positions must be integer, got ",
           positions.describe());
  const bool per_batch = positions.dim() == 2;
  DL_CHECK((positions.dim() == 1 && positions.size(0) == T) ||
               (per_batch && positions.size(0) == B && positions.size(1) == T),
           "rope: positions ", positions.describe(), " must be [", T, "] or [", B, ", ", T, "] for input ",
           x_in.describe());
  Tensor pos = positions.to(DType::I64);
  Tensor x = x_in.to(DType::F32);
  Tensor y = Tensor::uninitialized(x.shape());
  const int64_t half = D / 2;
  // inv_freq exactly as HF computes it in float32: 1 / theta^(2i/D).
  std::vector<float> inv_freq(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i) inv_freq[size_t(i)] = 1.f / std::pow(theta, float(2 * i) / float(D));
  const float sign = inverse ? -1.f : 1.f;
  parallel_for(B * H * T, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t t = r % T, b = r / (H * T);
      const float p = float(pos.data<int64_t>()[per_batch ? b * T + t : t]);
      const float* xr = x.f32() + r * D;
      float* yr = y.f32() + r * D;
      for (int64_t i = 0; i < half; ++i) {
        const float ang = p * inv_freq[size_t(i)];
        const float c = std::cos(ang), s = sign * std::sin(ang);
        yr[i] = xr[i] * c - xr[i + half] * s;
        yr[i + half] = xr[i + half] * c + xr[i] * s;
      }
    }
  });
  return y;
}

}  // namespace dl::ops
