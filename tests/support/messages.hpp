// tests/support/messages.hpp: what a call throws, as text, and substring checks on it; shared by every
// test program (the dualpipe_test_support target), so that no test file keeps its own copy.
#pragma once

#include <exception>
#include <string>
#include <string_view>

#include "dualpipe/core/error.hpp"

namespace dualpipe::testing {

/// True when `part` occurs in `text`.
[[nodiscard]] inline bool contains(std::string_view text, std::string_view part) {
  return text.find(part) != std::string_view::npos;
}

/// The message of the `Expected` that `f()` throws. When `f` returns, "<no NAME>"; when it throws another
/// std::exception, "<not a NAME: its message>": either way the caller's check on the text fails and
/// shows what happened instead. `name` is the expected type's name for those two texts.
template <class Expected, class F>
[[nodiscard]] std::string thrown_message(F&& f, std::string_view name) {
  try {
    f();
  } catch (const Expected& e) {
    return e.what();
  } catch (const std::exception& e) {
    return "<not a " + std::string(name) + ": " + e.what() + ">";
  }
  return "<no " + std::string(name) + ">";
}

/// The message of the dualpipe::Error (any of the library's exceptions) that `f()` throws.
template <class F>
[[nodiscard]] std::string error_message(F&& f) {
  return thrown_message<Error>(static_cast<F&&>(f), "dualpipe::Error");
}

/// The message of the ConfigError that `f()` throws (a refused configuration).
template <class F>
[[nodiscard]] std::string config_message(F&& f) {
  return thrown_message<ConfigError>(static_cast<F&&>(f), "ConfigError");
}

}  // namespace dualpipe::testing
