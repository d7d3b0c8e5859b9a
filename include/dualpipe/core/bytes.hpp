// dualpipe/core/bytes.hpp: the byte spans that stages, communicators and devices pass around.
#pragma once

#include <cstddef>
#include <span>

namespace dualpipe {

/// Bytes a stage reads (or a communicator sends).
using ConstBytes = std::span<const std::byte>;
/// Bytes a stage writes (or a communicator receives into).
using MutableBytes = std::span<std::byte>;

}  // namespace dualpipe
