// The version macros of dualpipe/version.hpp agree with the CMake project version, which the build passes
// in as DUALPIPE_EXPECTED_VERSION ("MAJOR.MINOR.PATCH"); the umbrella header brings them.
#include <doctest/doctest.h>

#include <string>

#include "dualpipe/dualpipe.hpp"

#ifndef DUALPIPE_EXPECTED_VERSION
#error "tests/version/CMakeLists.txt passes the CMake project version as DUALPIPE_EXPECTED_VERSION"
#endif

namespace {
/// The project version's numbers, from "MAJOR.MINOR.PATCH"; a missing part reads as -1.
struct Parts {
  int major = -1, minor = -1, patch = -1;
};
Parts parse(const std::string& text) {
  Parts parts;
  int* fields[] = {&parts.major, &parts.minor, &parts.patch};
  std::size_t begin = 0;
  for (int* field : fields) {
    const std::size_t end = text.find('.', begin);
    const std::string digits = text.substr(begin, end == std::string::npos ? std::string::npos : end - begin);
    if (digits.empty() || digits.find_first_not_of("0123456789") != std::string::npos) return parts;
    *field = std::stoi(digits);
    if (end == std::string::npos) break;
    begin = end + 1;
  }
  return parts;
}
}  // namespace

TEST_CASE("Version.MacrosAgreeWithTheCMakeProjectVersion") {
  const std::string expected = DUALPIPE_EXPECTED_VERSION;
  CHECK(std::string(DUALPIPE_VERSION_STRING) == expected);
  const Parts parts = parse(expected);
  CHECK(DUALPIPE_VERSION_MAJOR == parts.major);
  CHECK(DUALPIPE_VERSION_MINOR == parts.minor);
  CHECK(DUALPIPE_VERSION_PATCH == parts.patch);
  CHECK(DUALPIPE_VERSION == parts.major * 10000 + parts.minor * 100 + parts.patch);
  // Each part below 100, so that the one number orders versions as their parts do.
  CHECK(DUALPIPE_VERSION_MINOR < 100);
  CHECK(DUALPIPE_VERSION_PATCH < 100);
}
