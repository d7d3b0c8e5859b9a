// dualpipe/version.hpp: the library's version, the same as the CMake project's (project(dualpipe VERSION
// ...) in the top-level CMakeLists.txt; the test tests/version checks that they agree). For #if checks:
//   #if DUALPIPE_VERSION >= 200  // 0.2.0 or later
// The minor version changes with the API or the include paths (0.2.0: one folder per layer); the package's
// version file accepts a request of the same major and minor version only.
#pragma once

#define DUALPIPE_VERSION_MAJOR 0
#define DUALPIPE_VERSION_MINOR 2
#define DUALPIPE_VERSION_PATCH 0
/// MAJOR * 10000 + MINOR * 100 + PATCH.
#define DUALPIPE_VERSION (DUALPIPE_VERSION_MAJOR * 10000 + DUALPIPE_VERSION_MINOR * 100 + DUALPIPE_VERSION_PATCH)
/// "MAJOR.MINOR.PATCH".
#define DUALPIPE_VERSION_STRING "0.2.0"
