// dualpipe/cuda/nvtx.hpp: NVTX ranges (Nsight Systems) in the "dualpipe" domain, named by op token
// (`F0.3`, `FB1.2/0.0`, `|`), so that a profile shows the schedule. Compiled out (every call does nothing)
// when NVTX3 is missing or DUALPIPE_NO_NVTX is defined; nvtx_enabled says which.
//
//   NvtxNames names(plan.ops);          // once per op list: registered strings, cheap to push
//   { NvtxRange r(names, i); ... }      // op i's range
#pragma once

#include <string>
#include <vector>

#include "dualpipe/core/op.hpp"
#include "dualpipe/core/trace.hpp"

#if !defined(DUALPIPE_NO_NVTX) && (defined(DUALPIPE_HAS_NVTX) || __has_include(<nvtx3/nvToolsExt.h>))
#include <nvtx3/nvToolsExt.h>
#define DUALPIPE_NVTX_ENABLED 1
#else
#define DUALPIPE_NVTX_ENABLED 0
#endif

namespace dualpipe {

/// Whether NVTX ranges are compiled in.
inline constexpr bool nvtx_enabled = DUALPIPE_NVTX_ENABLED != 0;

namespace detail {
#if DUALPIPE_NVTX_ENABLED
/// The library's NVTX domain, created on first use.
[[nodiscard]] inline nvtxDomainHandle_t nvtx_domain() noexcept {
  static const nvtxDomainHandle_t d = nvtxDomainCreateA("dualpipe");
  return d;
}
#endif
}  // namespace detail

/// The NVTX range name of an op: its trace token, `|` for a commit.
[[nodiscard]] inline std::string nvtx_name(const Op& op) { return to_token(op); }

/// The names of every op of one op list, registered with NVTX once so that pushing a range costs no string
/// handling. Empty (and free) when NVTX is compiled out.
class NvtxNames {
public:
  NvtxNames() = default;
  /// Registers the token of every op of `ops` (allocates here, once).
  explicit NvtxNames(const std::vector<Op>& ops) {
#if DUALPIPE_NVTX_ENABLED
    _names.reserve(ops.size());
    for (const Op& op : ops) _names.push_back(nvtxDomainRegisterStringA(detail::nvtx_domain(), nvtx_name(op).c_str()));
#else
    (void)ops;
#endif
  }
  /// Opens op `index`'s range on the calling thread; false (nothing opened) for an index outside the list
  /// or when NVTX is compiled out.
  bool push(int index) const noexcept {
#if DUALPIPE_NVTX_ENABLED
    if (index < 0 || static_cast<std::size_t>(index) >= _names.size()) return false;
    nvtxEventAttributes_t a{};
    a.version = NVTX_VERSION;
    a.size = NVTX_EVENT_ATTRIB_STRUCT_SIZE;
    a.messageType = NVTX_MESSAGE_TYPE_REGISTERED;
    a.message.registered = _names[static_cast<std::size_t>(index)];
    nvtxDomainRangePushEx(detail::nvtx_domain(), &a);
    return true;
#else
    (void)index;
    return false;
#endif
  }
  /// Closes the innermost range opened by push() on the calling thread.
  static void pop() noexcept {
#if DUALPIPE_NVTX_ENABLED
    nvtxDomainRangePop(detail::nvtx_domain());
#endif
  }
  /// Ops registered (0 when NVTX is compiled out).
  [[nodiscard]] std::size_t size() const noexcept {
#if DUALPIPE_NVTX_ENABLED
    return _names.size();
#else
    return 0;
#endif
  }

private:
#if DUALPIPE_NVTX_ENABLED
  std::vector<nvtxStringHandle_t> _names;
#endif
};

/// A range for a scope, named by a string (for code outside the op list: a benchmark's phases, a step).
class NvtxRange {
public:
  /// Opens a range named `name` in the dualpipe domain.
  explicit NvtxRange(const char* name) noexcept {
#if DUALPIPE_NVTX_ENABLED
    nvtxEventAttributes_t a{};
    a.version = NVTX_VERSION;
    a.size = NVTX_EVENT_ATTRIB_STRUCT_SIZE;
    a.messageType = NVTX_MESSAGE_TYPE_ASCII;
    a.message.ascii = name;
    nvtxDomainRangePushEx(detail::nvtx_domain(), &a);
#else
    (void)name;
#endif
  }
  /// Opens op `index`'s range of `names`.
  NvtxRange(const NvtxNames& names, int index) noexcept : _open(names.push(index)) {}
  NvtxRange(const NvtxRange&) = delete;
  NvtxRange& operator=(const NvtxRange&) = delete;
  ~NvtxRange() {
    if (_open) NvtxNames::pop();
  }

private:
  bool _open = nvtx_enabled;
};

}  // namespace dualpipe
