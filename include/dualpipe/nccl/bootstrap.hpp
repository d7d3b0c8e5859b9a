// dualpipe/nccl/bootstrap.hpp: getting every process the same ncclUniqueId (and its rank) without
// MPI: as hex text in an environment variable, or in a file on a shared file system.
//
//   // launcher: DUALPIPE_NCCL_ID=$(some tool that prints to_hex(id)), DUALPIPE_RANK, DUALPIPE_WORLD_SIZE
//   const LaunchInfo who = launch_info_from_env();             // also RANK/WORLD_SIZE, OMPI_*, PMI_*, SLURM_*
//   const ncclUniqueId id = unique_id_from_env();              // DUALPIPE_NCCL_ID, 256 hex digits
//   // or: every rank calls unique_id_via_file("/shared/run42.id", who.rank, 60s): rank 0 writes, others wait
//   NcclCommunicator comm(who.rank, who.size, id, who.local_rank);
//
// MPI: dualpipe/nccl/mpi_bootstrap.hpp (broadcast from rank 0).
#pragma once

#include <nccl.h>
#include <unistd.h>

#include <cctype>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>

#include "dualpipe/core/error.hpp"
#include "dualpipe/core/failure.hpp"
#include "dualpipe/nccl/error.hpp"

namespace dualpipe {

/// Hex digits of an ncclUniqueId's text form (two per byte, lower case).
inline constexpr std::size_t nccl_id_hex_digits = 2 * sizeof(ncclUniqueId);

/// The id as 256 lower-case hex digits (byte 0 first).
[[nodiscard]] inline std::string to_hex(const ncclUniqueId& id) {
  static constexpr char digits[] = "0123456789abcdef";
  std::string s(nccl_id_hex_digits, '0');
  const auto* b = reinterpret_cast<const unsigned char*>(id.internal);
  for (std::size_t i = 0; i < sizeof(ncclUniqueId); ++i) {
    s[2 * i] = digits[b[i] >> 4];
    s[2 * i + 1] = digits[b[i] & 0xF];
  }
  return s;
}

/// The id from to_hex()'s text (either case; surrounding white space ignored). Throws ConfigError naming
/// the rule when the text is not exactly 256 hex digits.
[[nodiscard]] inline ncclUniqueId unique_id_from_hex(std::string_view text) {
  while (!text.empty() && std::isspace(static_cast<unsigned char>(text.front()))) text.remove_prefix(1);
  while (!text.empty() && std::isspace(static_cast<unsigned char>(text.back()))) text.remove_suffix(1);
  if (text.size() != nccl_id_hex_digits)
    throw ConfigError("NCCL unique id: expected " + std::to_string(nccl_id_hex_digits) + " hex digits (" +
                      std::to_string(sizeof(ncclUniqueId)) + " bytes), got " + std::to_string(text.size()) +
                      " characters");
  auto value = [&](std::size_t i) {
    const char c = text[i];
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    throw ConfigError("NCCL unique id: character " + std::to_string(i) + " ('" + std::string(1, c) +
                      "') is not a hex digit");
  };
  ncclUniqueId id;
  auto* b = reinterpret_cast<unsigned char*>(id.internal);
  for (std::size_t i = 0; i < sizeof(ncclUniqueId); ++i)
    b[i] = static_cast<unsigned char>(value(2 * i) * 16 + value(2 * i + 1));
  return id;
}

/// A new id (ncclGetUniqueId; rank 0 makes it). Throws NcclError.
[[nodiscard]] inline ncclUniqueId make_unique_id() {
  ncclUniqueId id;
  DUALPIPE_NCCL_CHECK(ncclGetUniqueId(&id));
  return id;
}

/// The id in environment variable `var` (256 hex digits). Throws ConfigError when it is unset or malformed.
[[nodiscard]] inline ncclUniqueId unique_id_from_env(const char* var = "DUALPIPE_NCCL_ID") {
  const char* v = std::getenv(var);
  if (!v) throw ConfigError(std::string("NCCL unique id: environment variable ") + var + " is not set");
  try {
    return unique_id_from_hex(v);
  } catch (const ConfigError& e) {
    throw ConfigError(std::string(e.what()) + " (in environment variable " + var + ")");
  }
}

/// Writes `id` to `path` as hex, atomically (a temporary file renamed into place), so that a reader never
/// sees half an id. Throws Error when the file cannot be written.
inline void write_unique_id_file(const std::filesystem::path& path, const ncclUniqueId& id) {
  const std::filesystem::path tmp = path.string() + ".tmp" + std::to_string(::getpid());
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << to_hex(id) << '\n';
    out.close();
    if (!out) throw Error("NCCL unique id: cannot write " + tmp.string());
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) throw Error("NCCL unique id: cannot rename " + tmp.string() + " to " + path.string() + ": " + ec.message());
}

/// Reads the id from `path`, waiting up to `timeout` for the file to appear. Throws TimeoutError when it
/// does not, ConfigError when it is malformed.
[[nodiscard]] inline ncclUniqueId read_unique_id_file(const std::filesystem::path& path,
                                                      std::chrono::milliseconds timeout) {
  const auto deadline = deadline_after(timeout);
  for (;;) {
    std::ifstream in(path);
    if (in) {
      std::stringstream ss;
      ss << in.rdbuf();
      try {
        return unique_id_from_hex(ss.str());
      } catch (const ConfigError& e) {
        throw ConfigError(std::string(e.what()) + " (in file " + path.string() + ")");
      }
    }
    if (std::chrono::steady_clock::now() >= deadline)
      throw TimeoutError("NCCL unique id: file " + path.string() + " did not appear within " +
                         std::to_string(timeout.count()) +
                         " ms (does rank 0 write it, on a file system every rank sees?)");
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

/// Every rank calls it: rank 0 makes a new id and writes it to `path`; the others wait for it up to
/// `timeout`. Returns the id on every rank. `path` must not exist before the run (a rank could read an
/// earlier run's id): use a fresh name per run, e.g. with the job id in it.
[[nodiscard]] inline ncclUniqueId unique_id_via_file(const std::filesystem::path& path, int rank,
                                                     std::chrono::milliseconds timeout) {
  if (rank == 0) {
    const ncclUniqueId id = make_unique_id();
    write_unique_id_file(path, id);
    return id;
  }
  return read_unique_id_file(path, timeout);
}

/// Who this process is in a job.
struct LaunchInfo {
  int rank = 0;        ///< Global rank.
  int size = 1;        ///< Number of ranks.
  int local_rank = 0;  ///< Rank on this node (the GPU to use, usually).
};

namespace detail {
[[nodiscard]] inline std::optional<int> env_int(const char* name) {
  const char* v = std::getenv(name);
  if (!v || !*v) return std::nullopt;
  char* end = nullptr;
  const long x = std::strtol(v, &end, 10);
  if (*end != '\0' || x < 0 || x > 1'000'000)
    throw ConfigError(std::string("environment variable ") + name + "='" + v + "' is not a rank or size");
  return static_cast<int>(x);
}
[[nodiscard]] inline std::optional<int> first_env_int(std::initializer_list<const char*> names) {
  for (const char* n : names)
    if (auto v = env_int(n)) return v;
  return std::nullopt;
}
}  // namespace detail

/// Rank, size and local rank from the launcher's environment: DUALPIPE_RANK / DUALPIPE_WORLD_SIZE /
/// DUALPIPE_LOCAL_RANK first, then RANK / WORLD_SIZE / LOCAL_RANK (torchrun), OMPI_COMM_WORLD_* (Open MPI),
/// PMI_RANK / PMI_SIZE (MPICH), SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID. Missing: rank 0 of 1 (local
/// rank = rank). Throws ConfigError for a malformed value or rank >= size.
[[nodiscard]] inline LaunchInfo launch_info_from_env() {
  LaunchInfo li;
  li.rank =
      detail::first_env_int({"DUALPIPE_RANK", "RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "SLURM_PROCID"}).value_or(0);
  li.size =
      detail::first_env_int({"DUALPIPE_WORLD_SIZE", "WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_NTASKS"})
          .value_or(1);
  li.local_rank = detail::first_env_int({"DUALPIPE_LOCAL_RANK", "LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK",
                                         "MPI_LOCALRANKID", "SLURM_LOCALID"})
                      .value_or(li.rank);
  if (li.size < 1 || li.rank >= li.size)
    throw ConfigError("launch environment: rank " + std::to_string(li.rank) + " is outside a world of size " +
                      std::to_string(li.size));
  return li;
}

}  // namespace dualpipe
