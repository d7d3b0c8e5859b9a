// dualpipe/analysis/costs.hpp: what each operation costs in the simulator, and which communication
// model it assumes. Costs are in abstract units (the spec's F, B, W, F&B); a transfer costs
// latency + bytes / bandwidth.
#pragma once

#include <charconv>
#include <cmath>
#include <string>
#include <string_view>

#include "dualpipe/core/error.hpp"
#include "dualpipe/core/op.hpp"

namespace dualpipe {

/// Cost of every operation kind, and of one transfer. All values are finite and >= 0, and
/// `weight <= backward` (the input part of a deferred backward, `B<m>.<c>w`, costs backward - weight).
struct Costs {
  double forward = 1;           ///< F: forward of one chunk.
  double backward = 2;          ///< B: full backward of one chunk (input and weight parts).
  double weight = 1;            ///< W: the weight part of one backward, run from the FIFO.
  double forward_backward = 3;  ///< FB: an overlapped forward and backward pair (the spec's F&B).
  double latency = 0;           ///< Fixed time of every transfer.
  double bytes = 0;             ///< Bytes one transfer carries (activations and gradients alike).
  double bandwidth = 0;         ///< Bytes per unit of time; 0 means infinite (bytes cost nothing).

  /// Time one transfer takes once both ends are launched: latency + bytes / bandwidth.
  [[nodiscard]] constexpr double transfer() const noexcept {
    return latency + (bandwidth > 0 ? bytes / bandwidth : 0.0);
  }

  /// Compute cost of one op: F, B, B-W for `Bw`, W, F&B for `FB`; 0 for posts and commits.
  [[nodiscard]] constexpr double of(OpKind k) const noexcept {
    switch (k) {
      case OpKind::forward: return forward;
      case OpKind::backward: return backward;
      case OpKind::backward_input: return backward - weight;
      case OpKind::forward_backward: return forward_backward;
      case OpKind::weight: return weight;
      default: return 0;
    }
  }

  friend constexpr bool operator==(const Costs&, const Costs&) = default;
};

/// Throws ConfigError unless every value is finite and >= 0 and weight <= backward.
inline void check_costs(const Costs& c) {
  auto check = [](std::string_view key, double v) {
    if (!std::isfinite(v) || v < 0)
      throw ConfigError("cost '" + std::string(key) + "' must be a finite number >= 0 (got " + std::to_string(v) + ")");
  };
  check("F", c.forward);
  check("B", c.backward);
  check("W", c.weight);
  check("FB", c.forward_backward);
  check("latency", c.latency);
  check("bytes", c.bytes);
  check("bandwidth", c.bandwidth);
  if (c.weight > c.backward)
    throw ConfigError("cost W must not exceed B, since a deferred backward costs B-W (got W=" +
                      std::to_string(c.weight) + ", B=" + std::to_string(c.backward) + ")");
}

/// Parses "F=1,B=2,W=1,FB=3,latency=0,bytes=0,bandwidth=0": any subset, in any order, spaces
/// allowed around keys and values; the keys not given keep their defaults. Long names (forward,
/// backward, weight, forward_backward) are accepted too. Throws ConfigError naming an unknown key,
/// a value that is not a number, or a value that check_costs rejects.
[[nodiscard]] inline Costs parse_costs(std::string_view text) {
  Costs c;
  auto trim = [](std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
    return s;
  };
  while (!text.empty()) {
    const std::size_t comma = text.find(',');
    const std::string_view item = trim(text.substr(0, comma));
    text = comma == std::string_view::npos ? std::string_view{} : text.substr(comma + 1);
    if (item.empty()) continue;
    const std::size_t eq = item.find('=');
    if (eq == std::string_view::npos)
      throw ConfigError("cost item '" + std::string(item) + "' must look like key=value");
    const std::string_view key = trim(item.substr(0, eq));
    const std::string_view value = trim(item.substr(eq + 1));
    double v = 0;
    auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), v);
    if (value.empty() || ec != std::errc{} || end != value.data() + value.size())
      throw ConfigError("cost '" + std::string(key) + "' has a bad number '" + std::string(value) + "'");
    double* slot = nullptr;
    if (key == "F" || key == "forward") slot = &c.forward;
    else if (key == "B" || key == "backward") slot = &c.backward;
    else if (key == "W" || key == "weight") slot = &c.weight;
    else if (key == "FB" || key == "forward_backward") slot = &c.forward_backward;
    else if (key == "latency") slot = &c.latency;
    else if (key == "bytes") slot = &c.bytes;
    else if (key == "bandwidth") slot = &c.bandwidth;
    else
      throw ConfigError("unknown cost key '" + std::string(key) +
                        "' (choose from F, B, W, FB, latency, bytes, bandwidth)");
    *slot = v;
  }
  check_costs(c);
  return c;
}

/// How posted transfers interact with the compute lane (see simulator.hpp for the exact rules).
enum class CommModel {
  rendezvous,  ///< The spec's model: posts launch at the next commit, and the commit blocks until they finish.
  async,       ///< The runtime's model: posts launch when issued; compute waits only for the data it reads.
};

/// "rendezvous" or "async".
[[nodiscard]] constexpr std::string_view to_string(CommModel m) noexcept {
  return m == CommModel::rendezvous ? "rendezvous" : "async";
}

/// Parses "rendezvous" or "async"; throws ConfigError naming the choices otherwise.
[[nodiscard]] inline CommModel parse_comm_model(std::string_view text) {
  if (text == "rendezvous") return CommModel::rendezvous;
  if (text == "async") return CommModel::async;
  throw ConfigError("unknown communication model '" + std::string(text) + "' (choose from rendezvous, async)");
}

}  // namespace dualpipe
