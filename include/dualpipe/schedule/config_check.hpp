// dualpipe/schedule/config_check.hpp: the configuration rules shared by every schedule, with
// messages that name the rule and the values.
#pragma once

#include <string>
#include <string_view>

#include "dualpipe/core/error.hpp"

namespace dualpipe::detail {

[[noreturn]] inline void config_fail(std::string_view schedule, const std::string& rule) {
  throw ConfigError(std::string(schedule) + ": " + rule);
}

/// P >= 1 and C >= 1: every schedule needs them.
constexpr void check_ranks_chunks(std::string_view schedule, int ranks, int chunks) {
  if (ranks < 1) config_fail(schedule, "ranks must be at least 1 (got ranks=" + std::to_string(ranks) + ")");
  if (chunks < 1) config_fail(schedule, "chunks must be at least 1 (got chunks=" + std::to_string(chunks) + ")");
}

/// 0 <= rank < P.
constexpr void check_rank(std::string_view schedule, int ranks, int rank) {
  if (rank < 0 || rank >= ranks)
    config_fail(schedule, "rank must be in [0, ranks) (got rank=" + std::to_string(rank) +
                              ", ranks=" + std::to_string(ranks) + ")");
}

/// 0 <= module < modules_per_rank.
constexpr void check_module(std::string_view schedule, int modules_per_rank, int module) {
  if (module < 0 || module >= modules_per_rank)
    config_fail(schedule, "module must be in [0, " + std::to_string(modules_per_rank) +
                              ") (got module=" + std::to_string(module) + ")");
}

}  // namespace dualpipe::detail
