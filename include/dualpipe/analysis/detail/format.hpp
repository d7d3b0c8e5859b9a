// dualpipe/analysis/detail/format.hpp: number and text formatting shared by the renderers. Numbers
// are written with std::to_chars, so the output never depends on the C locale.
#pragma once

#include <charconv>
#include <cmath>
#include <string>
#include <string_view>

namespace dualpipe::detail {

/// `v` with at most `decimals` digits after the point, trailing zeros dropped ("1.5", "3", "-0.25").
[[nodiscard]] inline std::string format_number(double v, int decimals = 3) {
  if (!std::isfinite(v)) v = 0;
  char buf[64];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v, std::chars_format::fixed, decimals);
  if (ec != std::errc{}) return "0";
  std::string s(buf, end);
  if (s.find('.') != std::string::npos) {
    while (s.back() == '0') s.pop_back();
    if (s.back() == '.') s.pop_back();
  }
  if (s == "-0") s = "0";
  return s;
}

/// `v` with exactly `decimals` digits after the point ("0.500").
[[nodiscard]] inline std::string format_fixed(double v, int decimals) {
  if (!std::isfinite(v)) v = 0;
  char buf[64];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v, std::chars_format::fixed, decimals);
  return ec == std::errc{} ? std::string(buf, end) : std::string("0");
}

/// Text made safe for XML content and attribute values.
[[nodiscard]] inline std::string xml_escape(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&apos;"; break;
      default: out += c;
    }
  }
  return out;
}

/// Text made safe inside a JSON string literal (without the quotes).
[[nodiscard]] inline std::string json_escape(std::string_view s) {
  static constexpr char hex[] = "0123456789abcdef";
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    const auto u = static_cast<unsigned char>(c);
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (u < 0x20) {
          out += "\\u00";
          out += hex[u >> 4];
          out += hex[u & 15];
        } else {
          out += c;
        }
    }
  }
  return out;
}

}  // namespace dualpipe::detail
