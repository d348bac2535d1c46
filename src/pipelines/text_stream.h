// Streaming generated text. SentencePiece spacing depends on the neighbouring pieces, so the tokens so far are
// re-decoded as a whole after every token and only the new suffix is passed on.
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "text/tokenizer.h"

namespace dl::pipelines {

class TextStream {
 public:
  TextStream(const text::Tokenizer& tokenizer, std::function<void(const std::string&)> emit)
      : tokenizer_(tokenizer), emit_(std::move(emit)) {}
  void push(int32_t id);
  const std::vector<int32_t>& tokens() const { return tokens_; }
  bool empty() const { return tokens_.empty(); }
  // Ends the stream and returns the whole text; the stream starts afresh.
  std::string finish();

 private:
  const text::Tokenizer& tokenizer_;
  std::function<void(const std::string&)> emit_;
  std::vector<int32_t> tokens_;
  std::string text_;
};

}  // namespace dl::pipelines
