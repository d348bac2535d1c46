#include "world/scene.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "core/error.h"

namespace dl::world {

namespace {

constexpr std::array<std::string_view, kNumKinds> kKindNames{"circle", "square", "triangle", "diamond", "cross"};
constexpr std::array<std::string_view, kNumKinds> kKindPlurals{"circles", "squares", "triangles", "diamonds",
                                                               "crosses"};
constexpr std::array<std::string_view, kNumColours> kColourNames{"red", "green", "blue", "yellow", "purple", "orange"};
constexpr std::array<Rgb, kNumColours> kPalette{{
    {215, 30, 35},   // red
    {35, 165, 55},   // green
    {35, 75, 215},   // blue
    {240, 215, 30},  // yellow
    {135, 45, 175},  // purple
    {245, 125, 15},  // orange
}};
constexpr std::array<std::string_view, 3> kRowWords{"top", "middle", "bottom"};
constexpr std::array<std::string_view, 3> kColWords{"left", "center", "right"};

int64_t clampi(int64_t v, int64_t lo, int64_t hi) { return std::min(std::max(v, lo), hi); }

uint64_t fnv1a(std::string_view s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char ch : s) {
    h ^= ch;
    h *= 0x100000001b3ull;
  }
  return h;
}

}  // namespace

std::string_view kind_name(Kind kind) { return kKindNames.at(size_t(kind)); }
std::string_view kind_plural(Kind kind) { return kKindPlurals.at(size_t(kind)); }
std::string_view colour_name(Colour colour) { return kColourNames.at(size_t(colour)); }
std::string_view size_name(Size size) { return size == Size::Small ? "small" : "large"; }

std::string cell_name(Cell cell) {
  DL_CHECK(cell.row >= 0 && cell.row < kGrid && cell.col >= 0 && cell.col < kGrid, "cell (", cell.row, ", ", cell.col,
           ") is outside the 3x3 grid");
  if (cell.row == 1 && cell.col == 1) return "center";
  return std::string(kRowWords[size_t(cell.row)]) + " " + std::string(kColWords[size_t(cell.col)]);
}

Kind kind_from_name(std::string_view name) {
  for (int k = 0; k < kNumKinds; ++k)
    if (kKindNames[size_t(k)] == name) return Kind(k);
  fail("unknown shape kind '", name, "' (known: circle, square, triangle, diamond, cross)");
}

Colour colour_from_name(std::string_view name) {
  for (int k = 0; k < kNumColours; ++k)
    if (kColourNames[size_t(k)] == name) return Colour(k);
  fail("unknown colour '", name, "' (known: red, green, blue, yellow, purple, orange)");
}

Size size_from_name(std::string_view name) {
  if (name == "small") return Size::Small;
  if (name == "large") return Size::Large;
  fail("unknown size '", name, "' (known: small, large)");
}

Cell cell_from_name(std::string_view name) {
  for (int r = 0; r < kGrid; ++r)
    for (int c = 0; c < kGrid; ++c)
      if (cell_name({r, c}) == name) return {r, c};
  fail("unknown cell '", name, "' (known: top left, top center, top right, middle left, center, middle right, ",
       "bottom left, bottom center, bottom right)");
}

Rgb palette(Colour colour) { return kPalette.at(size_t(colour)); }

double cell_side(int64_t image_size) { return double(image_size) / kGrid; }

double shape_radius(Size size, int64_t image_size) {
  return (size == Size::Large ? kLargeRadius : kSmallRadius) * cell_side(image_size);
}

std::array<double, 2> cell_center(Cell cell, int64_t image_size) {
  const double c = cell_side(image_size);
  return {(cell.col + 0.5) * c, (cell.row + 0.5) * c};
}

bool inside(Kind kind, double dx, double dy, double r) {
  const double ax = std::abs(dx), ay = std::abs(dy);
  switch (kind) {
    case Kind::Circle:
      return dx * dx + dy * dy <= r * r;
    case Kind::Square:
      return ax <= r && ay <= r;
    case Kind::Triangle:
      return dy >= -r && dy <= r && ax <= (dy + r) * 0.5;
    case Kind::Diamond:
      return ax + ay <= r;
    case Kind::Cross:
      return ax <= r && ay <= r && (ax <= kCrossArm * r || ay <= kCrossArm * r);
  }
  return false;
}

double unit_area(Kind kind) {
  switch (kind) {
    case Kind::Circle:
      return std::numbers::pi;
    case Kind::Square:
      return 4.0;
    case Kind::Triangle:
      return 2.0;
    case Kind::Diamond:
      return 2.0;
    case Kind::Cross:
      return 4.0 * (2.0 * kCrossArm - kCrossArm * kCrossArm);
  }
  return 1.0;
}

double centroid_offset(Kind kind) { return kind == Kind::Triangle ? 1.0 / 3.0 : 0.0; }

Box shape_box(const Shape& shape, int64_t image_size, bool antialias) {
  const auto [cx, cy] = cell_center(shape.cell, image_size);
  const double r = shape_radius(shape.size, image_size);
  const Box candidates{
      clampi(int64_t(std::floor(cx - r)) - 1, 0, image_size), clampi(int64_t(std::floor(cy - r)) - 1, 0, image_size),
      clampi(int64_t(std::ceil(cx + r)) + 1, 0, image_size), clampi(int64_t(std::ceil(cy + r)) + 1, 0, image_size)};
  const std::vector<uint8_t> cov = coverage(shape.kind, cx, cy, r, candidates, antialias);
  Box box{candidates.x1, candidates.y1, candidates.x0, candidates.y0};
  const int64_t w = candidates.x1 - candidates.x0;
  for (int64_t y = candidates.y0; y < candidates.y1; ++y) {
    for (int64_t x = candidates.x0; x < candidates.x1; ++x) {
      if (!cov[size_t((y - candidates.y0) * w + (x - candidates.x0))]) continue;
      box.x0 = std::min(box.x0, x);
      box.y0 = std::min(box.y0, y);
      box.x1 = std::max(box.x1, x + 1);
      box.y1 = std::max(box.y1, y + 1);
    }
  }
  if (box.x0 >= box.x1) box = Box{};  // nothing covered (cannot happen for valid sizes)
  return box;
}

std::vector<uint8_t> coverage(Kind kind, double cx, double cy, double r, const Box& box, bool antialias) {
  const int64_t w = std::max<int64_t>(box.x1 - box.x0, 0), h = std::max<int64_t>(box.y1 - box.y0, 0);
  std::vector<uint8_t> out(size_t(w * h), 0);
  for (int64_t y = 0; y < h; ++y) {
    for (int64_t x = 0; x < w; ++x) {
      const double px = double(box.x0 + x), py = double(box.y0 + y);
      int n = 0;
      // Every shape lies inside its bounding square, and every shape is convex or (the cross) a union of two
      // convex bars: a pixel outside the square is empty, and one whose corners all lie in a convex piece is
      // full. Only the pixels along the outline are sampled.
      const double lx = px - cx, ly = py - cy, hx = lx + 1.0, hy = ly + 1.0;
      if (hx <= -r || lx >= r || hy <= -r || ly >= r) continue;
      if (antialias) {
        bool covered;
        if (kind == Kind::Cross) {
          const double a = kCrossArm * r;
          covered = (lx >= -a && hx <= a && ly >= -r && hy <= r) || (ly >= -a && hy <= a && lx >= -r && hx <= r);
        } else {
          covered =
              inside(kind, lx, ly, r) && inside(kind, hx, ly, r) && inside(kind, lx, hy, r) && inside(kind, hx, hy, r);
        }
        if (covered) {
          out[size_t(y * w + x)] = uint8_t(kFullCoverage);
          continue;
        }
      }
      if (antialias) {
        constexpr double step = 1.0 / kSupersample;
        for (int sy = 0; sy < kSupersample; ++sy)
          for (int sx = 0; sx < kSupersample; ++sx)
            n += inside(kind, px + (sx + 0.5) * step - cx, py + (sy + 0.5) * step - cy, r) ? 1 : 0;
      } else {
        n = inside(kind, px + 0.5 - cx, py + 0.5 - cy, r) ? kFullCoverage : 0;
      }
      out[size_t(y * w + x)] = uint8_t(n);
    }
  }
  return out;
}

void WorldOptions::validate() const {
  DL_CHECK(image_size >= 24 && image_size <= 1024, "world: image size ", image_size, " is outside 24..1024 pixels");
  DL_CHECK(min_shapes >= 1 && max_shapes <= 3 && min_shapes <= max_shapes, "world: shape counts ", min_shapes, "..",
           max_shapes, " are not a range inside 1..3");
  DL_CHECK(!kinds.empty(), "world: no shape kinds");
  DL_CHECK(!colours.empty(), "world: no colours");
  for (size_t i = 0; i < kinds.size(); ++i) {
    DL_CHECK(int(kinds[i]) < kNumKinds, "world: invalid shape kind ", int(kinds[i]));
    for (size_t j = 0; j < i; ++j)
      DL_CHECK(kinds[i] != kinds[j], "world: shape kind '", kind_name(kinds[i]), "' given twice");
  }
  for (size_t i = 0; i < colours.size(); ++i) {
    DL_CHECK(int(colours[i]) < kNumColours, "world: invalid colour ", int(colours[i]));
    for (size_t j = 0; j < i; ++j)
      DL_CHECK(colours[i] != colours[j], "world: colour '", colour_name(colours[i]), "' given twice");
  }
  for (int k = 0; k < kNumColours; ++k) {
    const Rgb p = palette(Colour(k));
    double d2 = 0;
    for (int c = 0; c < 3; ++c)
      d2 += (double(p[size_t(c)]) - background[size_t(c)]) * (double(p[size_t(c)]) - background[size_t(c)]);
    DL_CHECK(std::sqrt(d2) >= 100.0, "world: background (", int(background[0]), ", ", int(background[1]), ", ",
             int(background[2]), ") is too close to ", colour_name(Colour(k)), " to tell shapes from it");
  }
}

void validate_scene(const Scene& scene) {
  DL_CHECK(scene.image_size >= 24 && scene.image_size <= 1024, "scene: image size ", scene.image_size,
           " is outside 24..1024 pixels");
  DL_CHECK(!scene.shapes.empty(), "scene: no shapes");
  DL_CHECK(scene.shapes.size() <= size_t(kGrid * kGrid), "scene: ", scene.shapes.size(),
           " shapes do not fit in 9 cells");
  for (size_t i = 0; i < scene.shapes.size(); ++i) {
    const Shape& s = scene.shapes[i];
    DL_CHECK(int(s.kind) < kNumKinds && int(s.colour) < kNumColours && int(s.size) < 2, "scene: shape ", i,
             " has an invalid attribute");
    DL_CHECK(s.cell.row >= 0 && s.cell.row < kGrid && s.cell.col >= 0 && s.cell.col < kGrid, "scene: shape ", i,
             " is outside the 3x3 grid");
    for (size_t j = 0; j < i; ++j)
      DL_CHECK(!(scene.shapes[j].cell == s.cell), "scene: shapes ", j, " and ", i, " are both at the ",
               cell_name(s.cell));
  }
}

Scene random_scene(Rng& rng, const WorldOptions& options) {
  Scene scene;
  scene.image_size = options.image_size;
  scene.background = options.background;
  const int n = options.min_shapes + int(rng.below(uint64_t(options.max_shapes - options.min_shapes + 1)));
  // Distinct cells: a partial Fisher-Yates shuffle of the nine cells.
  std::array<int, kGrid * kGrid> cells{};
  for (int i = 0; i < kGrid * kGrid; ++i) cells[size_t(i)] = i;
  for (int i = 0; i < n; ++i) {
    const int j = i + int(rng.below(uint64_t(kGrid * kGrid - i)));
    std::swap(cells[size_t(i)], cells[size_t(j)]);
    Shape s;
    s.kind = options.kinds[rng.below(options.kinds.size())];
    s.colour = options.colours[rng.below(options.colours.size())];
    s.size = rng.below(2) ? Size::Large : Size::Small;
    s.cell = {cells[size_t(i)] / kGrid, cells[size_t(i)] % kGrid};
    scene.shapes.push_back(s);
  }
  return scene;
}

io::Image render(const Scene& scene, bool antialias) {
  validate_scene(scene);
  const int64_t S = scene.image_size;
  io::Image img(S, S);
  for (size_t i = 0; i < img.rgb.size(); i += 3)
    for (size_t c = 0; c < 3; ++c) img.rgb[i + c] = scene.background[c];
  for (const Shape& s : scene.shapes) {
    const auto [cx, cy] = cell_center(s.cell, S);
    const double r = shape_radius(s.size, S);
    const Box box{clampi(int64_t(std::floor(cx - r)) - 1, 0, S), clampi(int64_t(std::floor(cy - r)) - 1, 0, S),
                  clampi(int64_t(std::ceil(cx + r)) + 1, 0, S), clampi(int64_t(std::ceil(cy + r)) + 1, 0, S)};
    const std::vector<uint8_t> cov = coverage(s.kind, cx, cy, r, box, antialias);
    const Rgb col = palette(s.colour);
    const int64_t w = box.x1 - box.x0;
    for (int64_t y = box.y0; y < box.y1; ++y) {
      for (int64_t x = box.x0; x < box.x1; ++x) {
        const int n = cov[size_t((y - box.y0) * w + (x - box.x0))];
        if (!n) continue;
        for (size_t c = 0; c < 3; ++c) {
          const int v =
              (int(scene.background[c]) * (kFullCoverage - n) + int(col[c]) * n + kFullCoverage / 2) / kFullCoverage;
          img.rgb[size_t((y * S + x) * 3) + c] = uint8_t(v);
        }
      }
    }
  }
  return img;
}

std::string canonical_key(const Scene& scene) {
  std::vector<Shape> shapes = scene.shapes;
  std::sort(shapes.begin(), shapes.end(),
            [](const Shape& a, const Shape& b) { return a.cell.index() < b.cell.index(); });
  std::string key;
  for (const Shape& s : shapes) {
    key += std::to_string(s.cell.row) + "," + std::to_string(s.cell.col) + "," + std::string(kind_name(s.kind)) + "," +
           std::string(colour_name(s.colour)) + "," + std::string(size_name(s.size)) + ";";
  }
  return key;
}

bool is_test_scene(const Scene& scene) {
  // A fixed salt keeps the partition independent of anything but the content.
  return fnv1a("shapes-world-holdout/" + canonical_key(scene)) % 8 == 0;
}

}  // namespace dl::world
