#include "pipelines/text_stream.h"

namespace dl::pipelines {

void TextStream::push(int32_t id) {
  tokens_.push_back(id);
  std::string now = tokenizer_.decode(tokens_);
  // When an earlier piece changed (rare byte-fallback merges) nothing is emitted; the text still follows the truth.
  if (emit_ && now.size() > text_.size() && now.compare(0, text_.size(), text_) == 0)
    emit_(now.substr(text_.size()));
  text_ = std::move(now);
}

std::string TextStream::finish() {
  std::string t = tokenizer_.decode(tokens_);
  tokens_.clear();
  text_.clear();
  return t;
}

}  // namespace dl::pipelines
