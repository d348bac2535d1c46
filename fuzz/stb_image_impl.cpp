// Debian's libstb is built without coverage instrumentation, so libFuzzer could not see which decoder paths an
// input reached and ASan could not check the decoders' memory accesses. The fuzz targets that decode images compile
// the same header's implementation into themselves instead (the executable's definitions take precedence over the
// shared library's).
#define STB_IMAGE_IMPLEMENTATION
#include <stb/stb_image.h>
