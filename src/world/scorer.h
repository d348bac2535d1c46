// The shapes world's scorer: reads a picture back into a scene and checks it against a description, so that
// comprehension and creation can be measured without a human.
//
// Parsing (parse_image), for a square RGB image of side S (grid cell c = S / 3):
//  1. background = per-channel median of all pixels (shapes cover at most a third of the picture);
//  2. each pixel is explained as a mix of the background b and a palette colour p, x = b + a (p - b): for every
//     colour the mix a (projection on the line b..p) and the distance to that line. The closest line (among
//     those with a >= 0.25) gives the pixel's colour; the pixel is foreground when, on that line, 0.5 <= a <= 1.6
//     and the distance is within residual_threshold * |p - b|. Blurred edges, which are such mixes, keep their
//     colour; smudges of other colours (greys, browns, black) stay background;
//  3. 4-connected components of equal colour; fragments smaller than min_area join the largest component they
//     touch, or are dropped;
//  4. each component grows by up to `grow` pixels into the unowned pixels around it (its blurred fringe); over
//     that region: its colour (least squared distance to the colour segments over the core pixels), its area
//     (sum of the mixes a, which blur and noise leave unchanged on average) and its centroid;
//  5. kind: for every kind, the ideal shape of that area centred on the centroid (moved up by the triangle's
//     centroid offset) is rendered with the generator's own coverage function and compared with the mixes (sum
//     of squared differences / area). When no kind fits a sharp picture (error > 5e-4), the blur is fitted too:
//     the template blurred by a Gaussian of sigma 0.25 .. 2 px, then refined by parabolic steps for the kinds
//     still in the running. The best fit wins;
//  6. size: half-extent of the fitted shape against the geometric mean of the two radii; cell: from the fitted
//     centre. Components whose area is below min_area x the smallest shape's area are smudges and ignored.
// Scoring (score) parses the image, counts, and matches the described objects to the detected shapes (the
// assignment that satisfies most checks, kind and colour counting double), then reports each attribute.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/random.h"
#include "io/image.h"
#include "world/scene.h"
#include "world/text.h"

namespace dl::world {

struct ScorerOptions {
  int64_t expected_size = 0;         // when > 0, images of another side are refused
  double residual_threshold = 0.25;  // distance to the closest colour line, relative to |colour - background|
  double min_area = 0.3;             // smallest component area, relative to the smallest shape's area
  int64_t grow = 0;                  // fringe pixels around a component; 0: max(2, S / 16)
};

struct Detection {
  Shape shape;
  double area = 0;          // pixels (sum of the colour mixes)
  double cx = 0, cy = 0;    // fitted centre
  double radius = 0;        // fitted half-extent
  double fit_error = 0;     // of the chosen kind (squared error / area)
  double second_error = 0;  // of the runner-up kind
  int64_t pixels = 0;       // foreground pixels
};

struct ImageParse {
  int64_t image_size = 0;
  Rgb background{};
  std::vector<Detection> detections;  // sorted by cell, then by area (largest first)
  // The detected shapes as a scene (same order).
  Scene scene() const;
};

// Throws dl::Error unless the image is square with a side in 24..1024 (and expected_size when given).
ImageParse parse_image(const io::Image& image, const ScorerOptions& options = {});

// Same shapes (kind, colour, size, cell) whatever the order.
bool same_shapes(const Scene& a, const Scene& b);

struct Check {
  std::string attribute;  // "count", "present", "kind", "colour", "size", "position", "relation"
  int object = -1;        // index of the described object (-1 for count)
  bool pass = false;
  std::string expected, found;
};

struct ScoreResult {
  bool pass = false;
  std::vector<Check> checks;
  ImageParse parse;
  std::vector<int> assignment;  // detection index of each described object, -1 when unmatched
  // Whether every check of this attribute passed (true when there is none).
  bool attribute_pass(std::string_view attribute) const;
  // Whether there is a check of this attribute.
  bool has_attribute(std::string_view attribute) const;
  // One line per check: "colour   object 1  pass  expected red, found red".
  std::string report() const;
};

ScoreResult score(const io::Image& image, const Description& description, const ScorerOptions& options = {});
ScoreResult score(const io::Image& image, std::string_view text, const ScorerOptions& options = {});

// Degradations used to test the scorer's tolerance: separable Gaussian blur (edges clamped), and additive
// Gaussian noise of standard deviation `sigma` per channel (values clamped to 0..255).
io::Image gaussian_blur(const io::Image& image, double sigma);
io::Image add_noise(const io::Image& image, double sigma, Rng& rng);

}  // namespace dl::world
