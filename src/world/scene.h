// The shapes world: scenes of one to three flat shapes on a plain background, and their renderer.
//
// Geometry (S = image side, c = S / 3 = cell side). The image is a 3x3 grid of cells; a shape sits at the centre
// of its cell, ((col + 0.5) c, (row + 0.5) c) in continuous pixel coordinates (pixel (x, y) covers [x, x+1) x
// [y, y+1)), with half-extent r = 0.42 c (large) or 0.30 c (small). Every shape fits inside its own cell, so shapes
// in distinct cells never overlap (two large neighbours keep a gap of 0.16 c, 1.7 px at S = 32).
// With d = (dx, dy) = point - centre, y pointing down, a point is inside
//   circle   |d| <= r                              area pi r^2
//   square   |dx| <= r and |dy| <= r               area 4 r^2
//   triangle -r <= dy <= r and |dx| <= (dy + r) / 2 (apex up, base at the bottom of the square)   area 2 r^2
//   diamond  |dx| + |dy| <= r                      area 2 r^2
//   cross    inside the square and (|dx| <= w r or |dy| <= w r), w = 0.38 (a plus sign)      area 4 r^2 (2w - w^2)
// Rendering is anti-aliased by 8x8 supersampling (or one sample per pixel centre without anti-aliasing):
// pixel = background + coverage * (colour - background), in integers, so a scene renders to the same bytes
// everywhere.
#pragma once
#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/random.h"
#include "io/image.h"

namespace dl::world {

enum class Kind : uint8_t { Circle, Square, Triangle, Diamond, Cross };
enum class Colour : uint8_t { Red, Green, Blue, Yellow, Purple, Orange };
enum class Size : uint8_t { Small, Large };

inline constexpr int kNumKinds = 5;
inline constexpr int kNumColours = 6;
inline constexpr int kGrid = 3;  // cells per side

using Rgb = std::array<uint8_t, 3>;

// Cell of the 3x3 grid: row 0 top .. 2 bottom, col 0 left .. 2 right.
struct Cell {
  int row = 0, col = 0;
  bool operator==(const Cell&) const = default;
  int index() const { return row * kGrid + col; }
};

// Canonical words. Cell names: "top left", "top center", "top right", "middle left", "center", "middle right",
// "bottom left", "bottom center", "bottom right".
std::string_view kind_name(Kind kind);
std::string_view kind_plural(Kind kind);
std::string_view colour_name(Colour colour);
std::string_view size_name(Size size);
std::string cell_name(Cell cell);
// Inverse of the names above (canonical words only); throws dl::Error naming the word.
Kind kind_from_name(std::string_view name);
Colour colour_from_name(std::string_view name);
Size size_from_name(std::string_view name);
Cell cell_from_name(std::string_view name);

// The palette: saturated colours, pairwise at least 90 apart in RGB.
Rgb palette(Colour colour);
inline constexpr Rgb kWhite{255, 255, 255};

struct Shape {
  Kind kind = Kind::Circle;
  Colour colour = Colour::Red;
  Size size = Size::Small;
  Cell cell;
  bool operator==(const Shape&) const = default;
};

struct Scene {
  int64_t image_size = 32;  // S: side of the square image in pixels
  Rgb background = kWhite;
  std::vector<Shape> shapes;  // in the order they are described; cells pairwise distinct
  bool operator==(const Scene&) const = default;
};

// Continuous geometry of a shape in an S-pixel image.
inline constexpr double kLargeRadius = 0.42;  // half-extent / cell side
inline constexpr double kSmallRadius = 0.30;
inline constexpr double kCrossArm = 0.38;  // arm half-width / half-extent
double cell_side(int64_t image_size);
double shape_radius(Size size, int64_t image_size);
// Centre (x, y) of a cell in pixel coordinates.
std::array<double, 2> cell_center(Cell cell, int64_t image_size);
// Whether the offset (dx, dy) from the centre lies inside a shape of this kind and half-extent r.
bool inside(Kind kind, double dx, double dy, double r);
// Area of a shape of this kind in units of r^2 (pi for a circle, 4 for a square, ...).
double unit_area(Kind kind);
// Vertical offset of the area centroid below the centre, in units of r (1/3 for the triangle, 0 otherwise).
double centroid_offset(Kind kind);

// Pixels [x0, x1) x [y0, y1) touched by a shape (coverage > 0), clipped to the image.
struct Box {
  int64_t x0 = 0, y0 = 0, x1 = 0, y1 = 0;
};
Box shape_box(const Shape& shape, int64_t image_size, bool antialias = true);

// Coverage of each pixel of `box` by a shape of `kind` centred at (cx, cy) with half-extent r, in samples out of
// kFullCoverage: with anti-aliasing kSupersample x kSupersample samples per pixel, without one sample at the pixel
// centre (0 or kFullCoverage). Row-major over the box. The renderer and the scorer's templates both use it.
inline constexpr int kSupersample = 8;
inline constexpr int kFullCoverage = kSupersample * kSupersample;
std::vector<uint8_t> coverage(Kind kind, double cx, double cy, double r, const Box& box, bool antialias = true);

// Options shared by the scene sampler, renderer and generator.
struct WorldOptions {
  int64_t image_size = 32;
  int min_shapes = 1, max_shapes = 3;
  std::vector<Kind> kinds{Kind::Circle, Kind::Square, Kind::Triangle, Kind::Diamond, Kind::Cross};
  std::vector<Colour> colours{Colour::Red, Colour::Green, Colour::Blue, Colour::Yellow, Colour::Purple, Colour::Orange};
  Rgb background = kWhite;
  bool antialias = true;
  // Throws dl::Error naming the bad option (image_size outside 24..1024, shape counts outside 1..3 or reversed,
  // empty or repeated kinds/colours, a background closer than 100 to a palette colour).
  void validate() const;
};

// Checks a scene: side in 24..1024, 1..9 shapes in distinct cells inside the grid. Throws dl::Error.
void validate_scene(const Scene& scene);

// A random scene: shape count uniform in [min_shapes, max_shapes], distinct cells, each attribute uniform.
Scene random_scene(Rng& rng, const WorldOptions& options);

io::Image render(const Scene& scene, bool antialias = true);

// "row,col,kind,colour,size;..." over the shapes sorted by cell: equal for scenes with the same content whatever
// the order of their shapes, image size or background.
std::string canonical_key(const Scene& scene);
// The held-out split: a fixed hash of the canonical key puts one scene in eight (whatever the seed) in the test
// part of the scene space. Train and test sets never share a scene.
bool is_test_scene(const Scene& scene);

}  // namespace dl::world
