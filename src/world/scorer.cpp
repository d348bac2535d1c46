#include "world/scorer.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <optional>
#include <utility>

#include "core/error.h"

namespace dl::world {

namespace {

constexpr double kFitBlurs[] = {0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0};
constexpr double kFitStep = 0.125;  // first refinement step of the blur fit

// A colour line from the background to a palette colour.
struct Line {
  double d[3];
  double inv_len2, len;
};

struct Mix {
  double alpha, residual2;
};

inline Mix mix_of(const double v[3], const Line& l) {
  const double a = (v[0] * l.d[0] + v[1] * l.d[1] + v[2] * l.d[2]) * l.inv_len2;
  double r2 = 0;
  for (int c = 0; c < 3; ++c) {
    const double e = v[c] - a * l.d[c];
    r2 += e * e;
  }
  return {a, r2};
}

// 1-D Gaussian kernel of radius ceil(3 sigma), normalised.
std::vector<double> gaussian_kernel(double sigma) {
  const int radius = std::max(1, int(std::ceil(3.0 * sigma)));
  std::vector<double> k(size_t(2 * radius + 1));
  double sum = 0;
  for (int i = -radius; i <= radius; ++i) {
    k[size_t(i + radius)] = std::exp(-0.5 * double(i * i) / (sigma * sigma));
    sum += k[size_t(i + radius)];
  }
  for (double& v : k) v /= sum;
  return k;
}

// Separable blur of a w x h float map, zero outside.
std::vector<double> blur_map(const std::vector<double>& m, int64_t w, int64_t h, double sigma) {
  if (sigma <= 0) return m;
  const std::vector<double> k = gaussian_kernel(sigma);
  const int64_t radius = int64_t(k.size() / 2);
  std::vector<double> tmp(m.size(), 0.0), out(m.size(), 0.0);
  for (int64_t y = 0; y < h; ++y)
    for (int64_t x = 0; x < w; ++x) {
      double s = 0;
      for (int64_t t = -radius; t <= radius; ++t) {
        const int64_t xx = x + t;
        if (xx >= 0 && xx < w) s += k[size_t(t + radius)] * m[size_t(y * w + xx)];
      }
      tmp[size_t(y * w + x)] = s;
    }
  for (int64_t y = 0; y < h; ++y)
    for (int64_t x = 0; x < w; ++x) {
      double s = 0;
      for (int64_t t = -radius; t <= radius; ++t) {
        const int64_t yy = y + t;
        if (yy >= 0 && yy < h) s += k[size_t(t + radius)] * tmp[size_t(yy * w + x)];
      }
      out[size_t(y * w + x)] = s;
    }
  return out;
}

constexpr double kSharpFit = 5e-4;    // a fit this good needs no blur search
constexpr double kRefineRatio = 4.0;  // kinds within this factor of the best coarse fit are refined

// The fit of one kind's ideal shape (centre, half-extent) to a component's mixes, as a function of blur.
struct KindFit {
  Kind kind;
  double cx, cy, r, mass;
  Box win;
  int64_t w, h;
  std::vector<double> tmpl, obs;
  std::vector<uint8_t> visible;  // window pixels inside the image
  double best = std::numeric_limits<double>::infinity(), best_sigma = 0;
  std::vector<std::pair<double, double>> tried;  // (sigma, error)

  KindFit(Kind k, double x, double y, double radius, Box region, int64_t S, double area)
      : kind(k), cx(x), cy(y), r(radius), mass(area) {
    const int64_t pad = 5;
    win = Box{
        std::min(region.x0, int64_t(std::floor(cx - r))) - pad, std::min(region.y0, int64_t(std::floor(cy - r))) - pad,
        std::max(region.x1, int64_t(std::ceil(cx + r))) + pad, std::max(region.y1, int64_t(std::ceil(cy + r))) + pad};
    w = win.x1 - win.x0;
    h = win.y1 - win.y0;
    const std::vector<uint8_t> cov = coverage(kind, cx, cy, r, win, true);
    tmpl.resize(cov.size());
    for (size_t q = 0; q < cov.size(); ++q) tmpl[q] = cov[q] / double(kFullCoverage);
    obs.assign(cov.size(), 0.0);
    visible.assign(cov.size(), 0);
    for (int64_t y = 0; y < h; ++y)
      for (int64_t x = 0; x < w; ++x) {
        const int64_t ix = win.x0 + x, iy = win.y0 + y;
        visible[size_t(y * w + x)] = ix >= 0 && ix < S && iy >= 0 && iy < S;
      }
  }
  void observe(int64_t x, int64_t y, double a) { obs[size_t((y - win.y0) * w + (x - win.x0))] = a; }

  double eval(double sigma) {
    sigma = std::max(sigma, 0.0);
    for (const auto& t : tried)
      if (std::abs(t.first - sigma) < 1e-3) return t.second;
    const std::vector<double> t = blur_map(tmpl, w, h, sigma);
    double e = 0;
    for (size_t q = 0; q < t.size(); ++q) {
      if (!visible[q]) continue;  // template pixels outside the image cannot be observed
      const double d = obs[q] - t[q];
      e += d * d;
    }
    e /= mass;
    tried.emplace_back(sigma, e);
    if (e < best) {
      best = e;
      best_sigma = sigma;
    }
    return e;
  }

  // Around the best blur so far: its grid neighbours, then two parabola vertices.
  void refine() {
    eval(best_sigma - kFitStep);
    eval(best_sigma + kFitStep);
    for (int iter = 0; iter < 2; ++iter) {
      const double b = best_sigma, eb = best;
      std::optional<std::pair<double, double>> lo, hi;
      for (const auto& p : tried) {
        if (p.first < b && (!lo || p.first > lo->first)) lo = p;
        if (p.first > b && (!hi || p.first < hi->first)) hi = p;
      }
      if (!lo || !hi) return;
      const double d0 = b - lo->first, d2 = b - hi->first;
      const double num = d0 * d0 * (eb - hi->second) - d2 * d2 * (eb - lo->second);
      const double den = d0 * (eb - hi->second) - d2 * (eb - lo->second);
      if (std::abs(den) < 1e-15) return;
      const double v = b - 0.5 * num / den;
      if (!(v > lo->first && v < hi->first)) return;
      eval(v);
    }
  }
};

struct Component {
  int colour = -1;              // label of its pixels
  std::vector<int64_t> pixels;  // core (foreground) pixels
  bool kept = true;
};

}  // namespace

Scene ImageParse::scene() const {
  Scene s;
  s.image_size = image_size;
  s.background = background;
  for (const Detection& d : detections) s.shapes.push_back(d.shape);
  return s;
}

ImageParse parse_image(const io::Image& image, const ScorerOptions& options) {
  image.validate("image");
  DL_CHECK(image.width == image.height, "image is ", image.width, "x", image.height,
           "; the shapes world's pictures are square");
  const int64_t S = image.width;
  DL_CHECK(S >= 24 && S <= 1024, "image side ", S, " is outside the scorer's 24..1024 pixels");
  DL_CHECK(options.expected_size <= 0 || S == options.expected_size, "image is ", S, "x", S, " but ",
           options.expected_size, "x", options.expected_size, " was expected");
  DL_CHECK(options.residual_threshold > 0 && options.min_area >= 0, "invalid scorer options");
  const int64_t N = S * S;
  const double cell = cell_side(S);
  const double min_area = options.min_area * unit_area(Kind::Triangle) * std::pow(kSmallRadius * cell, 2);
  const int64_t grow = options.grow > 0 ? options.grow : std::max<int64_t>(2, S / 16);

  ImageParse out;
  out.image_size = S;
  // 1. Background: per-channel median.
  for (int c = 0; c < 3; ++c) {
    std::array<int64_t, 256> hist{};
    for (int64_t i = 0; i < N; ++i) ++hist[image.rgb[size_t(i * 3 + c)]];
    int64_t seen = 0;
    int v = 0;
    for (; v < 256; ++v) {
      seen += hist[size_t(v)];
      if (2 * seen > N) break;
    }
    out.background[size_t(c)] = uint8_t(v);
  }
  std::array<Line, kNumColours> lines{};
  for (int k = 0; k < kNumColours; ++k) {
    const Rgb p = palette(Colour(k));
    Line& l = lines[size_t(k)];
    double len2 = 0;
    for (int c = 0; c < 3; ++c) {
      l.d[c] = double(p[size_t(c)]) - double(out.background[size_t(c)]);
      len2 += l.d[c] * l.d[c];
    }
    l.len = std::sqrt(std::max(len2, 1.0));
    l.inv_len2 = 1.0 / std::max(len2, 1.0);
  }
  const auto offset = [&](int64_t i, double v[3]) {
    for (int c = 0; c < 3; ++c) v[c] = double(image.rgb[size_t(i * 3 + c)]) - double(out.background[size_t(c)]);
  };

  // 2. Foreground labels.
  std::vector<int8_t> label(size_t(N), -1);
  for (int64_t i = 0; i < N; ++i) {
    double v[3];
    offset(i, v);
    // The closest line decides the colour (among those the pixel leans towards at all); whether the pixel is
    // foreground is then decided on that line alone, so that a half-covered edge pixel cannot fall to a
    // neighbouring colour's line when its own mix rounds to just under one half.
    double best = std::numeric_limits<double>::infinity();
    int colour = -1;
    double alpha = 0;
    for (int k = 0; k < kNumColours; ++k) {
      const Mix m = mix_of(v, lines[size_t(k)]);
      if (m.alpha >= 0.25 && m.residual2 < best) {
        best = m.residual2;
        colour = k;
        alpha = m.alpha;
      }
    }
    if (colour < 0) continue;
    const double limit = options.residual_threshold * lines[size_t(colour)].len;
    if (alpha >= 0.5 && alpha <= 1.6 && best <= limit * limit) label[size_t(i)] = int8_t(colour);
  }

  // 3. 4-connected components of equal label.
  std::vector<int> comp_of(size_t(N), -1);
  std::vector<Component> comps;
  std::vector<int64_t> stack;
  for (int64_t i = 0; i < N; ++i) {
    if (label[size_t(i)] < 0 || comp_of[size_t(i)] >= 0) continue;
    Component comp;
    comp.colour = label[size_t(i)];
    const int id = int(comps.size());
    comp_of[size_t(i)] = id;
    stack.assign(1, i);
    while (!stack.empty()) {
      const int64_t p = stack.back();
      stack.pop_back();
      comp.pixels.push_back(p);
      const int64_t x = p % S, y = p / S;
      const int64_t nb[4][2] = {{x - 1, y}, {x + 1, y}, {x, y - 1}, {x, y + 1}};
      for (const auto& q : nb) {
        if (q[0] < 0 || q[0] >= S || q[1] < 0 || q[1] >= S) continue;
        const int64_t j = q[1] * S + q[0];
        if (label[size_t(j)] != comp.colour || comp_of[size_t(j)] >= 0) continue;
        comp_of[size_t(j)] = id;
        stack.push_back(j);
      }
    }
    std::sort(comp.pixels.begin(), comp.pixels.end());
    comps.push_back(std::move(comp));
  }
  // Fragments join the largest big component they touch (8-neighbourhood), or are dropped.
  for (size_t f = 0; f < comps.size(); ++f) {
    if (double(comps[f].pixels.size()) >= min_area) continue;
    int target = -1;
    for (int64_t p : comps[f].pixels) {
      const int64_t x = p % S, y = p / S;
      for (int64_t dy = -1; dy <= 1; ++dy)
        for (int64_t dx = -1; dx <= 1; ++dx) {
          const int64_t xx = x + dx, yy = y + dy;
          if (xx < 0 || xx >= S || yy < 0 || yy >= S) continue;
          const int o = comp_of[size_t(yy * S + xx)];
          if (o < 0 || size_t(o) == f || !comps[size_t(o)].kept || double(comps[size_t(o)].pixels.size()) < min_area)
            continue;
          if (target < 0 || comps[size_t(o)].pixels.size() > comps[size_t(target)].pixels.size() ||
              (comps[size_t(o)].pixels.size() == comps[size_t(target)].pixels.size() && o < target))
            target = o;
        }
    }
    comps[f].kept = false;
    if (target >= 0) {
      Component& t = comps[size_t(target)];
      for (int64_t p : comps[f].pixels) comp_of[size_t(p)] = target;
      t.pixels.insert(t.pixels.end(), comps[f].pixels.begin(), comps[f].pixels.end());
    } else {
      for (int64_t p : comps[f].pixels) comp_of[size_t(p)] = -1;
    }
    comps[f].pixels.clear();
  }

  // 4. Regions: each kept component grows into the unowned pixels around it, one ring at a time.
  std::vector<int> owner = comp_of;
  for (int64_t ring = 0; ring < grow; ++ring) {
    std::vector<int> next = owner;
    for (int64_t i = 0; i < N; ++i) {
      if (owner[size_t(i)] >= 0) continue;
      const int64_t x = i % S, y = i / S;
      int best = -1;
      for (int64_t dy = -1; dy <= 1; ++dy)
        for (int64_t dx = -1; dx <= 1; ++dx) {
          const int64_t xx = x + dx, yy = y + dy;
          if (xx < 0 || xx >= S || yy < 0 || yy >= S) continue;
          const int o = owner[size_t(yy * S + xx)];
          if (o >= 0 && (best < 0 || o < best)) best = o;
        }
      next[size_t(i)] = best;
    }
    owner = std::move(next);
  }
  std::vector<std::vector<int64_t>> region(comps.size());
  for (int64_t i = 0; i < N; ++i)
    if (owner[size_t(i)] >= 0) region[size_t(owner[size_t(i)])].push_back(i);

  for (size_t ci = 0; ci < comps.size(); ++ci) {
    const Component& comp = comps[ci];
    if (!comp.kept || comp.pixels.empty()) continue;
    // Colour: the line closest to the core pixels.
    int colour = 0;
    double best = std::numeric_limits<double>::infinity();
    for (int k = 0; k < kNumColours; ++k) {
      double sum = 0;
      for (int64_t p : comp.pixels) {
        double v[3];
        offset(p, v);
        const Mix m = mix_of(v, lines[size_t(k)]);
        const double a = std::clamp(m.alpha, 0.0, 1.0);
        double e2 = 0;  // distance to the segment background..colour
        for (int c = 0; c < 3; ++c) e2 += (v[c] - a * lines[size_t(k)].d[c]) * (v[c] - a * lines[size_t(k)].d[c]);
        sum += e2;
      }
      if (sum < best) {
        best = sum;
        colour = k;
      }
    }
    const Line& line = lines[size_t(colour)];
    // Mixes over the region; area and centroid.
    int64_t x0 = S, y0 = S, x1 = 0, y1 = 0;
    double mass = 0, wsum = 0, sx = 0, sy = 0;
    std::vector<double> alpha(region[ci].size());
    for (size_t k = 0; k < region[ci].size(); ++k) {
      const int64_t p = region[ci][k];
      double v[3];
      offset(p, v);
      const double a = std::clamp(mix_of(v, line).alpha, -0.5, 1.5);
      alpha[k] = a;
      mass += a;
      const double w = std::clamp(a, 0.0, 1.0);
      const int64_t x = p % S, y = p / S;
      wsum += w;
      sx += w * (double(x) + 0.5);
      sy += w * (double(y) + 0.5);
      x0 = std::min(x0, x);
      y0 = std::min(y0, y);
      x1 = std::max(x1, x + 1);
      y1 = std::max(y1, y + 1);
    }
    if (mass < min_area || wsum <= 0) continue;
    const double gx = sx / wsum, gy = sy / wsum;

    // 5. Kind by template fit.
    Detection det;
    det.area = mass;
    det.pixels = int64_t(comp.pixels.size());
    std::vector<KindFit> fits;
    for (int k = 0; k < kNumKinds; ++k) {
      const Kind kind = Kind(k);
      const double r = std::sqrt(mass / unit_area(kind));
      fits.emplace_back(kind, gx, gy - centroid_offset(kind) * r, r, Box{x0, y0, x1, y1}, S, mass);
      KindFit& f = fits.back();
      for (size_t q = 0; q < region[ci].size(); ++q) f.observe(region[ci][q] % S, region[ci][q] / S, alpha[q]);
      f.eval(0.0);
    }
    const auto lowest = [&] {
      double m = std::numeric_limits<double>::infinity();
      for (const KindFit& f : fits) m = std::min(m, f.best);
      return m;
    };
    // A sharp picture fits one kind (nearly) exactly; otherwise fit the blur too: a coarse grid for every kind,
    // then parabolic refinement for the kinds still in the running.
    if (lowest() > kSharpFit) {
      for (KindFit& f : fits)
        for (double sigma : kFitBlurs) f.eval(sigma);
      const double coarse = lowest();
      for (KindFit& f : fits)
        if (f.best <= kRefineRatio * coarse + 1e-4) f.refine();
    }
    double best_err = std::numeric_limits<double>::infinity(), second_err = best_err;
    for (const KindFit& f : fits) {
      if (f.best < best_err) {
        second_err = best_err;
        best_err = f.best;
        det.shape.kind = f.kind;
        det.radius = f.r;
        det.cx = f.cx;
        det.cy = f.cy;
      } else if (f.best < second_err) {
        second_err = f.best;
      }
    }
    det.fit_error = best_err;
    det.second_error = second_err;
    // 6. Size and cell.
    det.shape.colour = Colour(colour);
    det.shape.size = det.radius >= std::sqrt(kLargeRadius * kSmallRadius) * cell ? Size::Large : Size::Small;
    det.shape.cell = {int(std::clamp(std::floor(det.cy / cell), 0.0, double(kGrid - 1))),
                      int(std::clamp(std::floor(det.cx / cell), 0.0, double(kGrid - 1)))};
    out.detections.push_back(det);
  }
  std::stable_sort(out.detections.begin(), out.detections.end(), [](const Detection& a, const Detection& b) {
    if (a.shape.cell.index() != b.shape.cell.index()) return a.shape.cell.index() < b.shape.cell.index();
    return a.area > b.area;
  });
  return out;
}

bool same_shapes(const Scene& a, const Scene& b) {
  return a.shapes.size() == b.shapes.size() && canonical_key(a) == canonical_key(b);
}

// ---------------------------------------------------------------------------------------------------------------
// Scoring
// ---------------------------------------------------------------------------------------------------------------
namespace {

constexpr size_t kMaxMatched = 9;  // detections considered for matching (the largest)

struct Matcher {
  const Description& d;
  const std::vector<Detection>& dets;
  std::vector<int> cur, best;
  std::vector<bool> used;
  int best_score = -1;

  int object_score(size_t i, int j) const {
    if (j < 0) return 0;
    const ObjectSpec& o = d.objects[i];
    const Shape& s = dets[size_t(j)].shape;
    int v = 1;
    if (o.kind && *o.kind == s.kind) v += 2;
    if (o.colour && *o.colour == s.colour) v += 2;
    if (o.size && *o.size == s.size) v += 1;
    if (o.cell && *o.cell == s.cell) v += 1;
    return v;
  }
  int relation_score() const {
    int v = 0;
    for (const RelationSpec& r : d.relations) {
      const int a = cur[r.subject], b = cur[r.object];
      if (a >= 0 && b >= 0 && relation_holds(r.relation, dets[size_t(a)].shape.cell, dets[size_t(b)].shape.cell)) ++v;
    }
    return v;
  }
  void search(size_t i, int acc, size_t free_dets) {
    if (i == d.objects.size()) {
      const int total = acc + relation_score();
      if (total > best_score) {
        best_score = total;
        best = cur;
      }
      return;
    }
    for (size_t j = 0; j < used.size(); ++j) {
      if (used[j]) continue;
      used[j] = true;
      cur[i] = int(j);
      search(i + 1, acc + object_score(i, int(j)), free_dets - 1);
      used[j] = false;
    }
    // Leave this object unmatched only when the detections cannot cover the objects still to match.
    if (free_dets < d.objects.size() - i) {
      cur[i] = -1;
      search(i + 1, acc, free_dets);
    }
  }
};

}  // namespace

bool ScoreResult::attribute_pass(std::string_view attribute) const {
  for (const Check& c : checks)
    if (c.attribute == attribute && !c.pass) return false;
  return true;
}

bool ScoreResult::has_attribute(std::string_view attribute) const {
  for (const Check& c : checks)
    if (c.attribute == attribute) return true;
  return false;
}

std::string ScoreResult::report() const {
  std::string out;
  char line[512];
  for (const Check& c : checks) {
    const std::string who = c.object >= 0 ? "object " + std::to_string(c.object + 1) : std::string("image");
    std::snprintf(line, sizeof line, "%-9s %-9s %-4s expected %s, found %s\n", c.attribute.c_str(), who.c_str(),
                  c.pass ? "pass" : "FAIL", c.expected.c_str(), c.found.c_str());
    out += line;
  }
  out += pass ? "overall: pass\n" : "overall: FAIL\n";
  return out;
}

ScoreResult score(const io::Image& image, const Description& description, const ScorerOptions& options) {
  DL_CHECK(description.objects.size() <= size_t(kGrid * kGrid), "a description of ", description.objects.size(),
           " shapes cannot fit the 3x3 grid");
  for (const RelationSpec& r : description.relations)
    DL_CHECK(r.subject < description.objects.size() && r.object < description.objects.size(),
             "relation between objects ", r.subject, " and ", r.object, " of a description of ",
             description.objects.size());
  ScoreResult res;
  res.parse = parse_image(image, options);
  const std::vector<Detection>& all = res.parse.detections;
  // Only the largest detections take part in matching (an image full of blobs cannot blow up the search).
  std::vector<size_t> order(all.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return all[a].area > all[b].area; });
  if (order.size() > kMaxMatched) order.resize(kMaxMatched);
  std::sort(order.begin(), order.end());
  std::vector<Detection> dets;
  for (size_t i : order) dets.push_back(all[i]);

  const size_t D = description.objects.size();
  Matcher m{description, dets, std::vector<int>(D, -1), std::vector<int>(D, -1), std::vector<bool>(dets.size()), -1};
  m.search(0, 0, dets.size());
  res.assignment.assign(D, -1);
  for (size_t i = 0; i < D; ++i) res.assignment[i] = m.best[i] >= 0 ? int(order[size_t(m.best[i])]) : -1;

  const int expected = description.expected_count();
  res.checks.push_back({"count", -1, expected == int(all.size()), number_word(std::min(expected, 9)),
                        all.size() <= 9 ? number_word(int(all.size())) : std::to_string(all.size())});
  for (size_t i = 0; i < D; ++i) {
    const ObjectSpec& o = description.objects[i];
    const int j = res.assignment[i];
    const Shape* s = j >= 0 ? &all[size_t(j)].shape : nullptr;
    const std::string missing = "nothing";
    res.checks.push_back({"present", int(i), s != nullptr, object_phrase(o), s ? object_phrase(*s) : missing});
    if (o.kind)
      res.checks.push_back({"kind", int(i), s && s->kind == *o.kind, std::string(kind_name(*o.kind)),
                            s ? std::string(kind_name(s->kind)) : missing});
    if (o.colour)
      res.checks.push_back({"colour", int(i), s && s->colour == *o.colour, std::string(colour_name(*o.colour)),
                            s ? std::string(colour_name(s->colour)) : missing});
    if (o.size)
      res.checks.push_back({"size", int(i), s && s->size == *o.size, std::string(size_name(*o.size)),
                            s ? std::string(size_name(s->size)) : missing});
    if (o.cell)
      res.checks.push_back(
          {"position", int(i), s && s->cell == *o.cell, cell_name(*o.cell), s ? cell_name(s->cell) : missing});
  }
  for (const RelationSpec& r : description.relations) {
    const int a = res.assignment[r.subject], b = res.assignment[r.object];
    const std::string expected_rel = "object " + std::to_string(r.subject + 1) + " " +
                                     std::string(relation_name(r.relation)) + " object " + std::to_string(r.object + 1);
    std::string found = "a shape missing";
    bool ok = false;
    if (a >= 0 && b >= 0) {
      ok = relation_holds(r.relation, all[size_t(a)].shape.cell, all[size_t(b)].shape.cell);
      found = cell_name(all[size_t(a)].shape.cell) + " vs " + cell_name(all[size_t(b)].shape.cell);
    }
    res.checks.push_back({"relation", int(r.subject), ok, expected_rel, found});
  }
  res.pass = true;
  for (const Check& c : res.checks) res.pass = res.pass && c.pass;
  return res;
}

ScoreResult score(const io::Image& image, std::string_view text, const ScorerOptions& options) {
  return score(image, parse_description(text), options);
}

io::Image gaussian_blur(const io::Image& image, double sigma) {
  image.validate("image");
  if (sigma <= 0) return image;
  const std::vector<double> k = gaussian_kernel(sigma);
  const int64_t radius = int64_t(k.size() / 2), W = image.width, H = image.height;
  std::vector<double> tmp(size_t(W * H * 3));
  for (int64_t y = 0; y < H; ++y)
    for (int64_t x = 0; x < W; ++x)
      for (int64_t c = 0; c < 3; ++c) {
        double s = 0;
        for (int64_t t = -radius; t <= radius; ++t) {
          const int64_t xx = std::clamp<int64_t>(x + t, 0, W - 1);
          s += k[size_t(t + radius)] * image.at(xx, y, c);
        }
        tmp[size_t((y * W + x) * 3 + c)] = s;
      }
  io::Image out(W, H);
  for (int64_t y = 0; y < H; ++y)
    for (int64_t x = 0; x < W; ++x)
      for (int64_t c = 0; c < 3; ++c) {
        double s = 0;
        for (int64_t t = -radius; t <= radius; ++t) {
          const int64_t yy = std::clamp<int64_t>(y + t, 0, H - 1);
          s += k[size_t(t + radius)] * tmp[size_t((yy * W + x) * 3 + c)];
        }
        out.rgb[size_t((y * W + x) * 3 + c)] = uint8_t(std::clamp(std::lround(s), 0L, 255L));
      }
  return out;
}

io::Image add_noise(const io::Image& image, double sigma, Rng& rng) {
  image.validate("image");
  io::Image out = image;
  for (uint8_t& v : out.rgb) {
    const double x = double(v) + sigma * double(rng.normal());
    v = uint8_t(std::clamp(std::lround(x), 0L, 255L));
  }
  return out;
}

}  // namespace dl::world
