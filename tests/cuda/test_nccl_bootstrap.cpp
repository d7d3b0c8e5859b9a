// NCCL without a GPU: error text, the unique id's hex form, the file and environment bootstrap.
#include <doctest/doctest.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>

#include "dualpipe/nccl/bootstrap.hpp"
#include "dualpipe/nccl/error.hpp"
#include "support/messages.hpp"

using namespace dualpipe;
using namespace dualpipe::testing;

namespace {
ncclResult_t returns(ncclResult_t r) { return r; }

ncclUniqueId random_id(unsigned seed) {
  std::mt19937 g(seed);
  ncclUniqueId id;
  for (char& c : id.internal) c = static_cast<char>(g() & 0xFF);
  return id;
}
bool same(const ncclUniqueId& a, const ncclUniqueId& b) {
  return std::equal(std::begin(a.internal), std::end(a.internal), std::begin(b.internal));
}

struct EnvVar {
  const char* name;
  EnvVar(const char* n, const char* value) : name(n) { ::setenv(n, value, 1); }
  ~EnvVar() { ::unsetenv(name); }
};
}  // namespace

TEST_CASE("Nccl.Error.Text") {
  try {
    DUALPIPE_NCCL_CHECK(returns(ncclInvalidArgument));
    FAIL("no exception");
  } catch (const NcclError& e) {
    const std::string m = e.what();
    CAPTURE(m);
    CHECK(e.code() == static_cast<int>(ncclInvalidArgument));
    CHECK(contains(m, "NCCL error 4 (ncclInvalidArgument): "));
    CHECK(contains(m, ncclGetErrorString(ncclInvalidArgument)));
    CHECK(contains(m, "`returns(ncclInvalidArgument)`"));
    CHECK(contains(m, "test_nccl_bootstrap.cpp:"));
  }
  CHECK(DUALPIPE_NCCL_CHECK(returns(ncclInProgress)) == ncclInProgress);  // not an error
  CHECK(DUALPIPE_NCCL_CHECK(returns(ncclSuccess)) == ncclSuccess);
  CHECK(nccl_result_name(ncclRemoteError) == "ncclRemoteError");
  CHECK(nccl_result_name(static_cast<ncclResult_t>(42)) == "ncclResult 42");
}

TEST_CASE("Nccl.UniqueId.HexRoundTrip") {
  for (unsigned seed : {1u, 2u, 3u}) {
    const ncclUniqueId id = random_id(seed);
    const std::string hex = to_hex(id);
    CHECK(hex.size() == 256);
    CHECK(hex.find_first_not_of("0123456789abcdef") == std::string::npos);
    CHECK(same(unique_id_from_hex(hex), id));
    std::string upper = hex;
    for (char& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    CHECK(same(unique_id_from_hex("  " + upper + "\n"), id));
  }
  ncclUniqueId zero{};
  CHECK(to_hex(zero) == std::string(256, '0'));
  ncclUniqueId one{};
  one.internal[0] = static_cast<char>(0xAB);
  one.internal[127] = 0x01;
  CHECK(to_hex(one).substr(0, 2) == "ab");
  CHECK(to_hex(one).substr(254) == "01");
}

TEST_CASE("Nccl.UniqueId.BadHex") {
  CHECK_THROWS_WITH_AS((void)unique_id_from_hex("abc"), doctest::Contains("expected 256 hex digits"), ConfigError);
  std::string bad(256, '0');
  bad[17] = 'g';
  CHECK_THROWS_WITH_AS((void)unique_id_from_hex(bad), doctest::Contains("character 17 ('g')"), ConfigError);
}

TEST_CASE("Nccl.UniqueId.Env") {
  const ncclUniqueId id = random_id(7);
  {
    EnvVar v("DUALPIPE_TEST_NCCL_ID", to_hex(id).c_str());
    CHECK(same(unique_id_from_env("DUALPIPE_TEST_NCCL_ID"), id));
  }
  CHECK_THROWS_WITH_AS((void)unique_id_from_env("DUALPIPE_TEST_NCCL_ID"), doctest::Contains("is not set"), ConfigError);
  EnvVar v("DUALPIPE_TEST_NCCL_ID", "zz");
  CHECK_THROWS_WITH_AS((void)unique_id_from_env("DUALPIPE_TEST_NCCL_ID"), doctest::Contains("DUALPIPE_TEST_NCCL_ID"),
                       ConfigError);
}

TEST_CASE("Nccl.UniqueId.File" * doctest::timeout(30)) {
  const auto dir = std::filesystem::temp_directory_path() / ("dualpipe-id-test-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const auto path = dir / "run.id";
  const ncclUniqueId id = random_id(11);
  write_unique_id_file(path, id);
  CHECK(same(read_unique_id_file(path, std::chrono::milliseconds(100)), id));
  CHECK_THROWS_AS((void)read_unique_id_file(dir / "missing.id", std::chrono::milliseconds(50)), TimeoutError);
  { std::ofstream(dir / "bad.id") << "not an id\n"; }
  CHECK_THROWS_WITH_AS((void)read_unique_id_file(dir / "bad.id", std::chrono::milliseconds(50)),
                       doctest::Contains("bad.id"), ConfigError);
  std::filesystem::remove_all(dir);
}

TEST_CASE("Nccl.LaunchInfo.Env") {
  {
    EnvVar r("DUALPIPE_RANK", "3"), s("DUALPIPE_WORLD_SIZE", "8"), l("DUALPIPE_LOCAL_RANK", "1");
    const LaunchInfo li = launch_info_from_env();
    CHECK(li.rank == 3);
    CHECK(li.size == 8);
    CHECK(li.local_rank == 1);
  }
  {
    EnvVar r("DUALPIPE_RANK", "9"), s("DUALPIPE_WORLD_SIZE", "8");
    CHECK_THROWS_WITH_AS((void)launch_info_from_env(), doctest::Contains("rank 9 is outside a world of size 8"),
                         ConfigError);
  }
  {
    EnvVar r("DUALPIPE_RANK", "x1");
    CHECK_THROWS_WITH_AS((void)launch_info_from_env(), doctest::Contains("DUALPIPE_RANK='x1'"), ConfigError);
  }
}
