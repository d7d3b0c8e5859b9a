// dualpipe/core/message_tag.hpp: which message of which chunk a transfer carries.
#pragma once

#include <cstdint>
#include <string>

namespace dualpipe {

/// Which of a chunk's two messages: the forward activations, or the backward gradients.
enum class Payload : std::uint8_t { activation, gradient };

/// Keeps the messages of different modules, chunks and directions apart.
struct MessageTag {
  int module = 0;
  int chunk = 0;
  Payload payload = Payload::activation;
  friend constexpr bool operator==(const MessageTag&, const MessageTag&) = default;
};

/// "(module 0, chunk 3, activation)": a tag in words, for messages.
[[nodiscard]] inline std::string describe(const MessageTag& t) {
  return "(module " + std::to_string(t.module) + ", chunk " + std::to_string(t.chunk) + ", " +
         (t.payload == Payload::activation ? "activation" : "gradient") + ")";
}

}  // namespace dualpipe
