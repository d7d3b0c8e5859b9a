// dualpipe/analysis/costs.hpp: what each operation costs in the simulator, and which communication
// model it assumes. Costs are in abstract units (the spec's F, B, W, F&B); a transfer costs
// latency + bytes / bandwidth.
#pragma once

#include <algorithm>
#include <charconv>
#include <cmath>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

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

/// Costs that differ from stage to stage, as in a real model: the first stage computes no input gradient, the
/// last one computes the loss. `stage(s)` holds the compute costs of model stage s (0-based, one per stage of
/// the schedule's placement); all of them share one transfer (latency, bytes, bandwidth), taken from stage 0.
/// An op costs what its stage's Costs::of says; W costs the weight part of the stage whose deferred backward
/// it runs (the rank's FIFO of Bw ops, oldest first); an F&B pairing stage f's forward with stage b's backward
/// costs F(f) + B(b) - min(saving(f), saving(b)), where saving = F + B - FB is what the overlap saves (so
/// equal stages give exactly FB).
class StageCosts {
public:
  /// Throws ConfigError if `stages` is empty, if one fails check_costs (naming the stage), or if their
  /// transfers differ.
  explicit StageCosts(std::vector<Costs> stages) : _stages(std::move(stages)) {
    if (_stages.empty()) throw ConfigError("StageCosts needs the costs of at least one stage (got none)");
    for (std::size_t s = 0; s < _stages.size(); ++s) {
      try {
        check_costs(_stages[s]);
      } catch (const ConfigError& e) {
        throw ConfigError("stage " + std::to_string(s) + ": " + e.what());
      }
      const Costs& a = _stages[0];
      const Costs& b = _stages[s];
      if (a.latency != b.latency || a.bytes != b.bytes || a.bandwidth != b.bandwidth)
        throw ConfigError("StageCosts: every stage must have the same transfer (latency, bytes, bandwidth); stage " +
                          std::to_string(s) + " differs from stage 0");
    }
  }

  /// The same costs for every stage, however many the placement has (what a plain Costs means).
  explicit StageCosts(const Costs& every_stage) : StageCosts(std::vector<Costs>{every_stage}) { _every_stage = true; }

  /// Whether one Costs stands for every stage (the constructor from one Costs).
  [[nodiscard]] bool same_for_every_stage() const noexcept { return _every_stage; }
  /// Stages given (1 when same_for_every_stage()).
  [[nodiscard]] int num_stages() const noexcept { return static_cast<int>(_stages.size()); }
  /// The costs of stage `s`; std::out_of_range past the stages given.
  [[nodiscard]] const Costs& stage(int s) const {
    return _every_stage ? _stages.front() : _stages.at(static_cast<std::size_t>(s));
  }
  /// Time one transfer takes once both ends are launched (the same for every stage).
  [[nodiscard]] double transfer() const noexcept { return _stages.front().transfer(); }

private:
  std::vector<Costs> _stages;
  bool _every_stage = false;
};

/// Parses "F=1,B=2,W=1,FB=3,latency=0,bytes=0,bandwidth=0": any subset, in any order, spaces
/// allowed around keys and values; the keys not given keep their values in `base` (the defaults). Long names (forward,
/// backward, weight, forward_backward) are accepted too. Throws ConfigError naming an unknown key,
/// a value that is not a number, or a value that check_costs rejects.
[[nodiscard]] inline Costs parse_costs(std::string_view text, const Costs& base = {}) {
  Costs c = base;
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

/// Parses per-stage costs "S:KEY=V,KEY=V;S:KEY=V" for a model of `num_stages` stages: each listed stage S
/// gets the keys of parse_costs over `base`; the stages not listed cost `base`. For example "0:B=1.5" makes
/// the first stage's backward cheaper. Throws ConfigError naming a stage out of range or listed twice, an
/// item without "S:", or what parse_costs or StageCosts reject (with the stage).
[[nodiscard]] inline StageCosts parse_stage_costs(std::string_view text, const Costs& base, int num_stages) {
  if (num_stages < 1)
    throw ConfigError("per-stage costs need at least one stage (got " + std::to_string(num_stages) + ")");
  std::vector<Costs> stages(static_cast<std::size_t>(num_stages), base);
  std::vector<bool> given(static_cast<std::size_t>(num_stages), false);
  while (!text.empty()) {
    const std::size_t semicolon = text.find(';');
    std::string_view item = text.substr(0, semicolon);
    text = semicolon == std::string_view::npos ? std::string_view{} : text.substr(semicolon + 1);
    while (!item.empty() && (item.front() == ' ' || item.front() == '\t')) item.remove_prefix(1);
    if (item.empty()) continue;
    const std::size_t colon = item.find(':');
    int stage = -1;
    const auto [end, ec] =
        std::from_chars(item.data(), item.data() + (colon == std::string_view::npos ? 0 : colon), stage);
    if (colon == std::string_view::npos || colon == 0 || ec != std::errc{} || end != item.data() + colon)
      throw ConfigError("per-stage cost item '" + std::string(item) + "' must look like STAGE:KEY=V,KEY=V");
    if (stage < 0 || stage >= num_stages)
      throw ConfigError("per-stage costs name stage " + std::to_string(stage) + " but the model has stages 0 to " +
                        std::to_string(num_stages - 1));
    if (given[static_cast<std::size_t>(stage)])
      throw ConfigError("per-stage costs give stage " + std::to_string(stage) + " twice");
    given[static_cast<std::size_t>(stage)] = true;
    try {
      stages[static_cast<std::size_t>(stage)] = parse_costs(item.substr(colon + 1), base);
    } catch (const ConfigError& e) {
      throw ConfigError("stage " + std::to_string(stage) + ": " + e.what());
    }
  }
  // Nothing named: one Costs for every stage, which the simulator runs on its per-kind table.
  if (std::find(given.begin(), given.end(), true) == given.end()) return StageCosts(base);
  return StageCosts(std::move(stages));
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
