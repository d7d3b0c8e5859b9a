// dualpipe/core/error.hpp: the exception types every part of the library throws.
#pragma once

#include <stdexcept>
#include <string>

namespace dualpipe {

/// Base of every exception the library throws, so a caller can catch them all at once.
class Error : public std::runtime_error {
public:
  using std::runtime_error::runtime_error;
};

/// A configuration that no schedule, pipeline or program may run: thrown before anything starts.
/// The message names the rule that was broken and the values that broke it.
class ConfigError : public Error {
public:
  using Error::Error;
};

/// A trace text that does not follow the grammar of docs/schedules.md. Names the token and its position.
class TraceParseError : public Error {
public:
  TraceParseError(const std::string& what, int line, int column)
      : Error(what + " (line " + std::to_string(line) + ", column " + std::to_string(column) + ")"), _line(line),
        _column(column) {}

  /// 1-based line of the offending token.
  [[nodiscard]] int line() const noexcept { return _line; }
  /// 1-based column of the offending token's first character.
  [[nodiscard]] int column() const noexcept { return _column; }

private:
  int _line;
  int _column;
};

}  // namespace dualpipe
