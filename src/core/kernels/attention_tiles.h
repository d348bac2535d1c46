// Register-blocked tile products for unmasked attention (the UNet, the VAE and CLIP). Internal to src/core.
// Layouts: rows of q, p, v and o are contiguous with the given leading dimensions; kt is K transposed ([D][keys]).
#pragma once
#include <cstdint>

namespace dl::attn_tiles {

constexpr int64_t kRows = 8;   // query rows per register block (callers pad row counts to a multiple)
constexpr int64_t kCols = 32;  // keys per register block (callers pad key counts to a multiple)

// s[i][j] = scale * sum_d q[i][d] * kt[d][j] for i < nq (a multiple of kRows), j < nk (a multiple of kCols).
void scores(const float* q, int64_t ldq, const float* kt, int64_t ldkt, int64_t nq, int64_t nk, int64_t d,
            float scale, float* s, int64_t lds);
// o[i][c] += sum_j p[i][j] * v[j][c] for i < nq (a multiple of 4), c < dv (a multiple of 16), j < nk (any).
void accumulate_pv(const float* p, int64_t ldp, const float* v, int64_t ldv, int64_t nq, int64_t nk, int64_t dv,
                   float* o, int64_t ldo);
// Online-softmax step for rows i < nq of a score tile s (nk valid columns): with running maxima m and sums l, turns
// the row into exp(s - m_new) in place, rescales o's row (dv wide) by exp(m_old - m_new) and updates m and l.
void online_softmax(float* s, int64_t lds, int64_t nq, int64_t nk, float* m, float* l, float* o, int64_t ldo,
                    int64_t dv);

}  // namespace dl::attn_tiles
