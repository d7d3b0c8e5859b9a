// common/example_cli.hpp: what the example programs (cpu_demo, moe_demo, torch_mlp) share: option values
// parsed into numbers with a ConfigError naming the option and the value, files written or a clear Error, a
// directory made for --trace-dir, and the normwise relative error their checks use.
#pragma once

#include <algorithm>
#include <cfloat>
#include <charconv>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "dualpipe/core/error.hpp"
#include "dualpipe/schedule/registry.hpp"

namespace dualpipe::examples {

[[noreturn]] inline void bad_argument(const std::string& what) { throw ConfigError(what); }

/// Walks the arguments: each option's name, and its value from "--name=value" or the next argument.
class OptionReader {
public:
  explicit OptionReader(std::span<const std::string_view> args) : _args(args) {}
  /// The next option's name ("--ranks"), or nothing after the last.
  [[nodiscard]] std::optional<std::string_view> next() {
    if (_i >= _args.size()) return std::nullopt;
    _raw = _args[_i++];
    _inline.reset();
    std::string_view opt = _raw;
    if (opt.starts_with("--"))
      if (const auto eq = opt.find('='); eq != std::string_view::npos) {
        _inline = opt.substr(eq + 1);
        opt = opt.substr(0, eq);
      }
    _opt = opt;
    return opt;
  }
  /// The current option's value; ConfigError "<option> needs a value" when there is none.
  [[nodiscard]] std::string_view value() {
    if (_inline) return *std::exchange(_inline, std::nullopt);
    if (_i >= _args.size()) bad_argument(std::string(_opt) + " needs a value");
    return _args[_i++];
  }
  /// The current argument as given (for "unknown option").
  [[nodiscard]] std::string_view raw() const noexcept { return _raw; }

private:
  std::span<const std::string_view> _args;
  std::size_t _i = 0;
  std::string_view _raw, _opt;
  std::optional<std::string_view> _inline;
};

/// Adds the schedules of a --schedule value ("dualpipe,zb1p") to `out`, each once, in the order given;
/// ConfigError naming the choices for an empty or unknown name.
inline void add_schedules(std::string_view list, std::vector<ScheduleKind>& out) {
  if (list.empty()) bad_argument("--schedule needs a name (choose from " + schedule_names() + ")");
  while (true) {
    const auto comma = list.find(',');
    const ScheduleKind k = parse_schedule_kind(list.substr(0, comma));  // ConfigError naming the choices
    if (std::find(out.begin(), out.end(), k) == out.end()) out.push_back(k);
    if (comma == std::string_view::npos) break;
    list = list.substr(comma + 1);
  }
}

/// `text` as an integer in [lo, hi]; ConfigError naming `opt` otherwise.
template <class T>
T parse_integer(std::string_view opt, std::string_view text, T lo, T hi) {
  T v{};
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (ec != std::errc() || end != text.data() + text.size() || text.empty())
    bad_argument(std::string(opt) + " needs an integer (got '" + std::string(text) + "')");
  if (v < lo || v > hi)
    bad_argument(std::string(opt) + " must be in [" + std::to_string(lo) + ", " + std::to_string(hi) + "] (got " +
                 std::string(text) + ")");
  return v;
}

/// `text` as a finite number; ConfigError naming `opt` otherwise.
inline double parse_real(std::string_view opt, std::string_view text) {
  std::string s(text);
  std::size_t used = 0;
  double v = 0;
  try {
    v = std::stod(s, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != s.size() || s.empty() || !std::isfinite(v))
    bad_argument(std::string(opt) + " needs a finite number (got '" + s + "')");
  return v;
}

/// Writes `text` to `path`; Error when it cannot.
inline void write_file(const std::filesystem::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
  out.close();
  if (!out) throw Error("cannot write " + path.string());
}

/// Creates `dir` (and its parents) for --trace-dir; ConfigError when it is not a directory afterwards.
inline void make_trace_dir(const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec || !std::filesystem::is_directory(dir))
    throw ConfigError("--trace-dir '" + dir + "' is not a directory that can be created (" + ec.message() + ")");
}

/// Normwise relative error of `got` against `want`: max_i |got_i - want_i| / max(max_i |want_i|, DBL_MIN).
/// +infinity when the sizes differ or a value is NaN or infinite (a NaN must never pass a check).
[[nodiscard]] inline double relative_error(std::span<const double> got, std::span<const double> want) noexcept {
  if (got.size() != want.size()) return std::numeric_limits<double>::infinity();
  double diff = 0, scale = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    if (!std::isfinite(got[i]) || !std::isfinite(want[i])) return std::numeric_limits<double>::infinity();
    diff = std::max(diff, std::abs(got[i] - want[i]));
    scale = std::max(scale, std::abs(want[i]));
  }
  return diff / std::max(scale, DBL_MIN);
}

}  // namespace dualpipe::examples
