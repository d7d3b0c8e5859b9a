// The CUDA runtime half of the emulator (see cuda_emulator.hpp): streams, events, memory, stream capture and
// graphs, on host threads.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "cuda_emulator.hpp"

struct Capture;

namespace {

using Clock = std::chrono::steady_clock;

struct Dependency {
  CUstream_st* stream;
  std::uint64_t ticket;
};

// Happens-before, computed when operations are issued (so the verdict does not depend on timing): every
// stream has a vector clock; an operation's clock joins its stream's, the host's (everything the host
// has seen finish), the events it waits for, and the legacy stream's implicit ordering.
using VectorClock = std::vector<std::uint32_t>;

void join(VectorClock& a, const VectorClock& b) {
  if (a.size() < b.size()) a.resize(b.size(), 0);
  for (std::size_t i = 0; i < b.size(); ++i) a[i] = std::max(a[i], b[i]);
}

// An operation, as a point of its stream's clock.
struct Epoch {
  int stream;
  std::uint32_t tick;
  const char* name;
};

struct Operation {
  std::function<void()> work;
  std::vector<Dependency> after;  // other streams' operations this one waits for
  std::uint64_t ticket = 0;
  const char* name = "";
};

struct Node {
  std::vector<int> after;  // nodes this one waits for
  std::function<void()> work;
  const CUstream_st* captured_on = nullptr;
  const char* name = "";
  std::vector<cuda_emulator::Access> accesses;
};

long env_long(const char* name, long fallback) {
  const char* v = std::getenv(name);
  if (!v || !*v) return fallback;
  char* end = nullptr;
  const long x = std::strtol(v, &end, 10);
  return (end && *end == '\0' && x >= 0) ? x : fallback;
}

}  // namespace

// A stream: a worker thread running its operations in order. Never freed (operations of other streams
// and events may refer to it after cudaStreamDestroy), kept reachable from the registry.
struct CUstream_st {
  int id = 0;         // index in the vector clocks
  VectorClock clock;  // after the last operation issued (under g_order_mutex)
  int device = 0;
  unsigned flags = cudaStreamNonBlocking;
  int priority = 0;
  bool legacy = false;
  std::mutex m;
  std::condition_variable cv;
  std::deque<Operation> queue;
  std::uint64_t submitted = 0;  // tickets handed out
  std::uint64_t completed = 0;  // tickets done, in order
  bool stop = false;
  bool destroyed = false;
  const char* running = nullptr;
  // Capture state: under g_capture_mutex.
  std::shared_ptr<Capture> capture;
  std::vector<int> tail;  // the nodes the next captured operation depends on
};

struct Capture {
  CUstream_st* origin = nullptr;
  std::vector<CUstream_st*> streams;  // origin first, then the joined ones
  std::vector<Node> nodes;
  cudaError_t invalidated = cudaSuccess;
  bool ended = false;
};

struct CUevent_st {
  int device = 0;
  unsigned flags = 0;
  std::mutex m;
  CUstream_st* stream = nullptr;  // the stream of the most recent record outside a capture
  std::uint64_t ticket = 0;
  std::shared_ptr<std::atomic<std::int64_t>> stamp;  // ns when that record ran (-1 before)
  std::shared_ptr<Capture> capture;                  // set when the most recent record was in a capture
  std::vector<int> tail;
  VectorClock clock;  // the record's (under g_order_mutex)
};

struct CUgraph_st {
  std::vector<Node> nodes;
};
struct CUgraphExec_st {
  std::vector<Node> nodes;
};

namespace {

struct Allocation {
  std::size_t size;
  int device;  // -1: pinned host memory
};

struct DeviceState {
  CUstream_st* legacy = nullptr;
  std::vector<CUstream_st*> streams;  // every live stream of the device, the legacy one included
};

struct Emulator {
  int devices = static_cast<int>(env_long("DUALPIPE_EMULATED_DEVICES", 8));
  long jitter_us = env_long("DUALPIPE_EMULATOR_JITTER_US", 50);
  long hang_ms = env_long("DUALPIPE_EMULATOR_HANG_S", 120) * 1000;
  std::mutex devices_mutex;
  std::vector<DeviceState> state = std::vector<DeviceState>(static_cast<std::size_t>(devices));
  std::mutex memory_mutex;
  std::map<std::uintptr_t, Allocation> memory;
  std::atomic<int> sticky{cudaSuccess};
  std::atomic<long> operations{0}, event_waits{0}, graph_launches{0};
  const Clock::time_point epoch = Clock::now();
};

// Never destroyed: worker threads may outlive main's return.
Emulator& emu() {
  static Emulator* e = new Emulator;
  return *e;
}

std::mutex g_capture_mutex;
std::mutex g_order_mutex;  // vector clocks, the host's clock, shadow memory, issuing order (before any stream's)
VectorClock g_host_clock;  // what the host has seen finish (all host threads together)
int g_streams_made = 0;
std::mutex g_race_mutex;
std::vector<std::string> g_races;
std::atomic<bool> g_probing{false};
std::vector<std::string> g_probed;
thread_local int t_device = 0;
thread_local int t_running_device = -1;  // the device of the stream whose operation runs on this thread
thread_local cudaError_t t_last_error = cudaSuccess;

cudaError_t fail(cudaError_t e) {
  if (e != cudaSuccess) t_last_error = e;
  return e;
}

// Every call starts here: a device fault is sticky, as on a GPU.
cudaError_t sticky() { return static_cast<cudaError_t>(emu().sticky.load(std::memory_order_acquire)); }

#define EMU_STICKY()                                      \
  do {                                                    \
    if (const cudaError_t s_ = sticky()) return fail(s_); \
  } while (0)

std::int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - emu().epoch).count();
}

// Waits on `cv` until `done`, reporting a hang after the limit.
template <class Pred>
void wait_bounded(std::condition_variable& cv, std::unique_lock<std::mutex>& lk, Pred done, const std::string& what) {
  const auto deadline = Clock::now() + std::chrono::milliseconds(cuda_emulator::hang_limit_ms());
  while (!done()) {
    if (Clock::now() > deadline) cuda_emulator::hang(what);
    cv.wait_for(lk, std::chrono::milliseconds(100));
  }
}

void wait_ticket(CUstream_st* s, std::uint64_t ticket, const char* who) {
  std::unique_lock lk(s->m);
  if (s->completed >= ticket) return;
  wait_bounded(
      s->cv, lk, [&] { return s->completed >= ticket; },
      std::string(who) + " waits for stream " + std::to_string(reinterpret_cast<std::uintptr_t>(s)) + " (device " +
          std::to_string(s->device) + "), stuck in '" + (s->running ? s->running : "?") + "'");
}

void worker(CUstream_st* s) {
  for (;;) {
    Operation op;
    {
      std::unique_lock lk(s->m);
      s->cv.wait(lk, [&] { return !s->queue.empty() || s->stop; });
      if (s->queue.empty()) return;  // stopped and drained
      op = std::move(s->queue.front());
      s->queue.pop_front();
      s->running = op.name;
    }
    t_device = s->device;
    t_running_device = s->device;
    for (const Dependency& d : op.after) wait_ticket(d.stream, d.ticket, op.name);
    cuda_emulator::jitter();
    if (op.work) op.work();
    emu().operations.fetch_add(1, std::memory_order_relaxed);
    {
      std::lock_guard lk(s->m);
      s->completed = op.ticket;
      s->running = nullptr;
    }
    s->cv.notify_all();
  }
}

CUstream_st* make_stream(int device, unsigned flags, int priority, bool legacy) {
  auto* s = new CUstream_st;  // never freed (see CUstream_st)
  {
    std::lock_guard lk(g_order_mutex);
    s->id = g_streams_made++;
  }
  s->device = device;
  s->flags = flags;
  s->priority = priority;
  s->legacy = legacy;
  std::thread(worker, s).detach();
  std::lock_guard lk(emu().devices_mutex);
  emu().state[static_cast<std::size_t>(device)].streams.push_back(s);
  return s;
}

CUstream_st* legacy_stream(int device) {
  {
    std::lock_guard lk(emu().devices_mutex);
    if (CUstream_st* s = emu().state[static_cast<std::size_t>(device)].legacy) return s;
  }
  CUstream_st* s = make_stream(device, cudaStreamDefault, 0, true);
  std::lock_guard lk(emu().devices_mutex);
  DeviceState& d = emu().state[static_cast<std::size_t>(device)];
  if (!d.legacy) d.legacy = s;
  return d.legacy;
}

// The stream a handle names: 0, cudaStreamLegacy and cudaStreamPerThread are the current device's legacy
// stream (the emulator has no per-thread default stream).
CUstream_st* resolve(cudaStream_t s) {
  if (s == nullptr || s == cudaStreamLegacy || s == cudaStreamPerThread) return legacy_stream(t_device);
  return s;
}

std::uint64_t last_ticket(CUstream_st* s) {
  std::lock_guard lk(s->m);
  return s->submitted;
}

const Allocation* find_allocation(const void* p, std::size_t bytes, std::uintptr_t* base_out = nullptr);

struct Record {
  std::uintptr_t lo, hi;
  Epoch epoch;
  bool write;
};
std::map<std::uintptr_t, std::vector<Record>>& shadow() {  // by allocation base, under g_order_mutex
  static auto* m = new std::map<std::uintptr_t, std::vector<Record>>;
  return *m;
}

bool ordered(const Epoch& e, const VectorClock& v) {
  return static_cast<std::size_t>(e.stream) < v.size() && v[static_cast<std::size_t>(e.stream)] >= e.tick;
}

void report_race(const std::string& what) {
  {
    std::lock_guard lk(g_race_mutex);
    if (g_probing.load()) {
      g_probed.push_back(what);
      return;
    }
    g_races.push_back(what);
  }
  std::fprintf(stderr, "cuda emulator: RACE: %s\n", what.c_str());
  int expected = cudaSuccess;
  emu().sticky.compare_exchange_strong(expected, cudaErrorLaunchFailure);
}

// Under g_order_mutex: checks an access of an operation with clock `v` against the earlier accesses to the
// same bytes, then records it. A write must come after every earlier access, a read after every earlier
// write; "after" means ordered by streams, events or host synchronisation, never by timing.
void check_access(std::uintptr_t base, std::uintptr_t lo, std::uintptr_t hi, bool write, const Epoch& e,
                  const VectorClock& v) {
  std::vector<Record>& recs = shadow()[base];
  for (const Record& r : recs) {
    if (r.hi <= lo || hi <= r.lo || (!write && !r.write) || ordered(r.epoch, v)) continue;
    report_race(std::string(write ? "write" : "read") + " by '" + e.name + "' on stream " + std::to_string(e.stream) +
                " is not ordered after the " + (r.write ? "write" : "read") + " by '" + r.epoch.name + "' on stream " +
                std::to_string(r.epoch.stream) + " (bytes [" + std::to_string(std::max(lo, r.lo) - base) + ", " +
                std::to_string(std::min(hi, r.hi) - base) + ") of a " + "device allocation): a wait is missing");
    break;
  }
  // What this access makes redundant: a write, everything inside its bytes (ordered before it, or just
  // reported); a read, the earlier reads of its stream inside its bytes.
  std::erase_if(recs, [&](const Record& r) {
    return r.lo >= lo && r.hi <= hi && (write || (!r.write && r.epoch.stream == e.stream));
  });
  recs.push_back(Record{lo, hi, e, write});
}

void check_accesses(const std::vector<cuda_emulator::Access>& accesses, const Epoch& e, const VectorClock& v) {
  for (const cuda_emulator::Access& a : accesses) {
    if (a.bytes == 0 || !a.data) continue;
    std::uintptr_t base = 0;
    {
      std::lock_guard lk(emu().memory_mutex);
      const Allocation* alloc = find_allocation(a.data, a.bytes, &base);
      if (!alloc || alloc->device < 0) continue;  // host memory is not tracked
    }
    const auto lo = reinterpret_cast<std::uintptr_t>(a.data);
    check_access(base, lo, lo + a.bytes, a.write, e, v);
  }
}

void host_saw(const VectorClock& v) {
  std::lock_guard lk(g_order_mutex);
  join(g_host_clock, v);
}

struct Issued {
  std::uint64_t ticket;
  VectorClock clock;
};

// Appends an operation to `s` (not capturing): the legacy stream waits for the device's blocking streams
// and they wait for it; `waits_for` is the clock of an event it waits for.
Issued push(CUstream_st* s, std::function<void()> work, const char* name, std::vector<Dependency> after = {},
            const VectorClock* waits_for = nullptr, const std::vector<cuda_emulator::Access>& accesses = {}) {
  std::vector<CUstream_st*> others;
  if (s->legacy || s->flags == cudaStreamDefault) {
    std::lock_guard lk(emu().devices_mutex);
    for (CUstream_st* o : emu().state[static_cast<std::size_t>(s->device)].streams)
      if (o != s && (s->legacy ? (!o->legacy && o->flags == cudaStreamDefault && !o->destroyed) : o->legacy))
        others.push_back(o);
  }
  std::lock_guard order(g_order_mutex);
  VectorClock v = s->clock;
  join(v, g_host_clock);
  if (waits_for) join(v, *waits_for);
  for (CUstream_st* o : others) {
    after.push_back(Dependency{o, last_ticket(o)});
    join(v, o->clock);
  }
  const auto me = static_cast<std::size_t>(s->id);
  if (v.size() <= me) v.resize(me + 1, 0);
  ++v[me];
  s->clock = v;
  check_accesses(accesses, Epoch{s->id, v[me], name}, v);
  std::uint64_t ticket;
  {
    std::lock_guard lk(s->m);
    ticket = ++s->submitted;
    s->queue.push_back(Operation{std::move(work), std::move(after), ticket, name});
  }
  s->cv.notify_all();
  return Issued{ticket, std::move(v)};
}

// The stream's clock and last ticket, read together.
Issued snapshot(CUstream_st* s) {
  std::lock_guard order(g_order_mutex);
  return Issued{last_ticket(s), s->clock};
}

// Issues an operation in stream order: a node of the capture when `s` is capturing.
cudaError_t issue(cudaStream_t handle, std::function<void()> work, const char* name,
                  const std::vector<cuda_emulator::Access>& accesses = {}) {
  CUstream_st* s = resolve(handle);
  {
    std::lock_guard lk(g_capture_mutex);
    if (s->capture) {
      Capture& c = *s->capture;
      if (c.invalidated) return fail(cudaErrorStreamCaptureInvalidated);
      c.nodes.push_back(Node{s->tail, std::move(work), s, name, accesses});
      s->tail = {static_cast<int>(c.nodes.size()) - 1};
      return cudaSuccess;
    }
  }
  push(s, std::move(work), name, {}, nullptr, accesses);
  return cudaSuccess;
}

// Under g_order_mutex: a launch's nodes, checked as the streams they were captured on would run them,
// after all that `s` and the host have seen; `s`'s clock then covers every node. Each captured stream
// gets a fresh clock index per launch.
void check_graph(CUstream_st* s, const std::vector<Node>& nodes) {
  VectorClock base = s->clock;
  join(base, g_host_clock);
  VectorClock all = base;
  std::vector<VectorClock> clocks(nodes.size());
  std::vector<std::pair<const CUstream_st*, int>> ids;
  for (std::size_t i = 0; i < nodes.size(); ++i) {
    const Node& n = nodes[i];
    auto it = std::find_if(ids.begin(), ids.end(), [&](const auto& x) { return x.first == n.captured_on; });
    if (it == ids.end()) it = ids.insert(ids.end(), {n.captured_on, g_streams_made++});
    const auto id = static_cast<std::size_t>(it->second);
    VectorClock v = base;
    for (int d : n.after) join(v, clocks[static_cast<std::size_t>(d)]);  // its branch's previous node too
    if (v.size() <= id) v.resize(id + 1, 0);
    ++v[id];
    check_accesses(n.accesses, Epoch{it->second, v[id], n.name}, v);
    join(all, v);
    clocks[i] = std::move(v);
  }
  s->clock = std::move(all);
}

// Under g_capture_mutex: a forbidden call on a capturing stream invalidates its capture.
cudaError_t invalidate(CUstream_st* s, cudaError_t e) {
  if (s->capture && !s->capture->invalidated) s->capture->invalidated = cudaErrorStreamCaptureInvalidated;
  return fail(e);
}

// The stream of a call that a capturing stream may not take, or null after invalidating its capture.
CUstream_st* not_capturing(cudaStream_t handle) {
  CUstream_st* s = resolve(handle);
  std::lock_guard lk(g_capture_mutex);
  if (!s->capture) return s;
  invalidate(s, cudaErrorStreamCaptureUnsupported);
  return nullptr;
}

void synchronize_device(int device, const char* who) {
  std::vector<CUstream_st*> all;
  {
    std::lock_guard lk(emu().devices_mutex);
    all = emu().state[static_cast<std::size_t>(device)].streams;
  }
  std::vector<Issued> seen;
  for (CUstream_st* s : all) seen.push_back(snapshot(s));
  for (std::size_t i = 0; i < all.size(); ++i) wait_ticket(all[i], seen[i].ticket, who);
  for (const Issued& x : seen) host_saw(x.clock);
}

const Allocation* find_allocation(const void* p, std::size_t bytes, std::uintptr_t* base_out) {
  const auto x = reinterpret_cast<std::uintptr_t>(p);
  auto& mem = emu().memory;
  auto it = mem.upper_bound(x);
  if (it == mem.begin()) return nullptr;
  --it;
  if (x + bytes > it->first + it->second.size || x < it->first) return nullptr;
  if (base_out) *base_out = it->first;
  return &it->second;
}

// -2: not registered (pageable host memory); -1: pinned host memory; >= 0: device memory of that device.
int memory_kind(const void* p, std::size_t bytes) {
  std::lock_guard lk(emu().memory_mutex);
  const Allocation* a = find_allocation(p, bytes == 0 ? 1 : bytes);
  return a ? a->device : -2;
}

void* allocate(std::size_t bytes, int device) {
  const std::size_t rounded = (bytes + 255) / 256 * 256;
  void* p = std::aligned_alloc(256, rounded);
  if (!p) return nullptr;
  if (device >= 0) std::memset(p, 0xff, rounded);  // device memory starts as NaNs, not zeros
  {
    std::lock_guard order(g_order_mutex);
    shadow().erase(reinterpret_cast<std::uintptr_t>(p));  // a new allocation at a freed one's address
  }
  std::lock_guard lk(emu().memory_mutex);
  emu().memory[reinterpret_cast<std::uintptr_t>(p)] = Allocation{bytes, device};
  return p;
}

// Freed memory is poisoned and kept a while before it goes back to the heap, so that a use after free
// (an operation still running on freed memory) reads garbage instead of corrupting the heap.
void release(void* p, std::size_t bytes) {
  static std::mutex m;
  static auto* quarantine = new std::deque<std::pair<void*, std::size_t>>;
  static std::size_t held = 0;
  constexpr std::size_t limit = std::size_t{512} << 20;
  std::memset(p, 0xfe, bytes);
  std::lock_guard lk(m);
  quarantine->emplace_back(p, bytes);
  held += bytes;
  while (held > limit) {
    std::free(quarantine->front().first);
    held -= quarantine->front().second;
    quarantine->pop_front();
  }
}

// Removes `p` from the registry and releases it; false when it is not the start of an allocation of that
// kind.
bool unregister(void* p, bool device) {
  std::size_t bytes = 0;
  {
    std::lock_guard lk(emu().memory_mutex);
    auto it = emu().memory.find(reinterpret_cast<std::uintptr_t>(p));
    if (it == emu().memory.end() || (it->second.device >= 0) != device) return false;
    bytes = it->second.size;
    emu().memory.erase(it);
  }
  release(p, bytes);
  return true;
}

bool copy_kind_ok(void* dst, const void* src, std::size_t n, cudaMemcpyKind kind) {
  if (n == 0) return true;
  if (!dst || !src) return false;
  const int d = memory_kind(dst, n), s = memory_kind(src, n);
  switch (kind) {
    case cudaMemcpyHostToDevice: return s < 0 && d >= 0;
    case cudaMemcpyDeviceToHost: return s >= 0 && d < 0;
    case cudaMemcpyDeviceToDevice: return s >= 0 && d >= 0;
    case cudaMemcpyHostToHost: return s < 0 && d < 0;
    case cudaMemcpyDefault: return true;
  }
  return false;
}

bool valid_device(int d) { return d >= 0 && d < emu().devices; }

// Runs a graph's nodes: one thread per stream they were captured on, each in capture order, each node
// after the nodes it depends on, as a GPU runs a graph's branches at once.
void replay(const std::vector<Node>& nodes) {
  std::vector<const CUstream_st*> branches;
  for (const Node& n : nodes)
    if (std::find(branches.begin(), branches.end(), n.captured_on) == branches.end()) branches.push_back(n.captured_on);
  std::mutex m;
  std::condition_variable cv;
  std::vector<char> done(nodes.size(), 0);
  const int device = t_running_device;
  auto run_branch = [&](const CUstream_st* b) {
    t_device = device;
    t_running_device = device;
    for (std::size_t i = 0; i < nodes.size(); ++i) {
      if (nodes[i].captured_on != b) continue;
      {
        std::unique_lock lk(m);
        wait_bounded(
            cv, lk,
            [&] {
              return std::all_of(nodes[i].after.begin(), nodes[i].after.end(),
                                 [&](int k) { return done[static_cast<std::size_t>(k)] != 0; });
            },
            std::string("graph node '") + nodes[i].name + "'");
      }
      cuda_emulator::jitter();
      if (nodes[i].work) nodes[i].work();
      {
        std::lock_guard lk(m);
        done[i] = 1;
      }
      cv.notify_all();
    }
  };
  std::vector<std::thread> threads;
  for (std::size_t b = 1; b < branches.size(); ++b) threads.emplace_back(run_branch, branches[b]);
  if (!branches.empty()) run_branch(branches[0]);
  for (auto& t : threads) t.join();
}

const char* error_name(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
    case cudaErrorNotReady: return "cudaErrorNotReady";
    case cudaErrorIllegalAddress: return "cudaErrorIllegalAddress";
    case cudaErrorIllegalState: return "cudaErrorIllegalState";
    case cudaErrorStreamCaptureUnsupported: return "cudaErrorStreamCaptureUnsupported";
    case cudaErrorStreamCaptureInvalidated: return "cudaErrorStreamCaptureInvalidated";
    case cudaErrorStreamCaptureUnjoined: return "cudaErrorStreamCaptureUnjoined";
    case cudaErrorStreamCaptureIsolation: return "cudaErrorStreamCaptureIsolation";
    case cudaErrorCapturedEvent: return "cudaErrorCapturedEvent";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    default: return nullptr;
  }
}

const char* error_text(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorNotReady: return "device not ready";
    case cudaErrorIllegalAddress: return "an illegal memory access was encountered";
    case cudaErrorIllegalState: return "operation not permitted when stream is not capturing";
    case cudaErrorStreamCaptureUnsupported: return "operation not permitted when stream is capturing";
    case cudaErrorStreamCaptureInvalidated: return "operation failed due to a previous error during capture";
    case cudaErrorStreamCaptureUnjoined:
      return "capture sequence contains a fork that was not joined to the primary stream";
    case cudaErrorStreamCaptureIsolation: return "dependency created on uncaptured work in another stream";
    case cudaErrorCapturedEvent: return "operation not permitted on an event last recorded in a capturing stream";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorLaunchFailure: return "unspecified launch failure (the CUDA emulator found a race: see stderr)";
    default: return "unrecognized error code";
  }
}

}  // namespace

// ---- The emulator's own interface -----------------------------------------------------------------------
namespace cuda_emulator {

cudaError_t launch(cudaStream_t stream, std::function<void()> work, const char* name, std::vector<Access> accesses) {
  EMU_STICKY();
  return issue(stream, std::move(work), name, accesses);
}

RaceProbe::RaceProbe() {
  std::lock_guard lk(g_race_mutex);
  g_probed.clear();
  g_probing = true;
}
RaceProbe::~RaceProbe() {
  std::lock_guard lk(g_race_mutex);
  g_probing = false;
  g_probed.clear();
}
std::vector<std::string> RaceProbe::take() {
  std::lock_guard lk(g_race_mutex);
  std::vector<std::string> out;
  out.swap(g_probed);
  return out;
}

std::vector<std::string> take_races() {
  std::vector<std::string> out;
  {
    std::lock_guard lk(g_race_mutex);
    out.swap(g_races);
  }
  int expected = cudaErrorLaunchFailure;
  emu().sticky.compare_exchange_strong(expected, cudaSuccess);
  return out;
}

bool is_device_memory(const void* p, std::size_t bytes, int device) {
  const int k = memory_kind(p, bytes == 0 ? 1 : bytes);
  return k >= 0 && (device < 0 || k == device);
}

bool require_device_memory(const void* p, std::size_t bytes, const char* what) {
  const int device = t_running_device;
  if (is_device_memory(p, bytes, device)) return true;
  device_fault(std::string(what) + ": " + std::to_string(bytes) + " bytes at " +
               std::to_string(reinterpret_cast<std::uintptr_t>(p)) + " are not device memory of device " +
               std::to_string(device));
  return false;
}

int stream_device(cudaStream_t stream) { return resolve(stream)->device; }

void device_fault(const std::string& what) {
  int expected = cudaSuccess;
  if (emu().sticky.compare_exchange_strong(expected, cudaErrorIllegalAddress))
    std::fprintf(stderr, "cuda emulator: device fault: %s\n", what.c_str());
}

void hang(const std::string& what) {
  std::fprintf(stderr, "cuda emulator: a wait lasted over %ld s, the program would hang: %s\n", hang_limit_ms() / 1000,
               what.c_str());
  std::fflush(stderr);
  std::_Exit(3);
}

long hang_limit_ms() { return emu().hang_ms; }

void jitter() {
  const long limit = emu().jitter_us;
  if (limit <= 0) return;
  thread_local std::minstd_rand rng(static_cast<unsigned>(std::hash<std::thread::id>()(std::this_thread::get_id())));
  const long us = static_cast<long>(rng() % static_cast<unsigned long>(2 * limit + 1)) - limit;  // half the time none
  if (us > 0) std::this_thread::sleep_for(std::chrono::microseconds(us));
}

Counters counters() { return Counters{emu().operations.load(), emu().event_waits.load(), emu().graph_launches.load()}; }

}  // namespace cuda_emulator

// ---- The CUDA runtime functions --------------------------------------------------------------------------
extern "C" {

cudaError_t CUDARTAPI cudaGetLastError(void) {
  if (const cudaError_t s = sticky()) return s;
  return std::exchange(t_last_error, cudaSuccess);
}
cudaError_t CUDARTAPI cudaPeekAtLastError(void) {
  if (const cudaError_t s = sticky()) return s;
  return t_last_error;
}
const char* CUDARTAPI cudaGetErrorName(cudaError_t e) { return error_name(e); }
const char* CUDARTAPI cudaGetErrorString(cudaError_t e) { return error_text(e); }

cudaError_t CUDARTAPI cudaGetDeviceCount(int* count) {
  if (!count) return fail(cudaErrorInvalidValue);
  *count = emu().devices;
  return emu().devices > 0 ? cudaSuccess : fail(cudaErrorNoDevice);
}
cudaError_t CUDARTAPI cudaGetDevice(int* device) {
  if (!device) return fail(cudaErrorInvalidValue);
  *device = t_device;
  return cudaSuccess;
}
cudaError_t CUDARTAPI cudaSetDevice(int device) {
  EMU_STICKY();
  if (!valid_device(device)) return fail(cudaErrorInvalidDevice);
  t_device = device;
  return cudaSuccess;
}
cudaError_t CUDARTAPI cudaDeviceGetAttribute(int* value, enum cudaDeviceAttr attr, int device) {
  if (!value) return fail(cudaErrorInvalidValue);
  if (!valid_device(device)) return fail(cudaErrorInvalidDevice);
  switch (attr) {
    case cudaDevAttrMultiProcessorCount: *value = 132; break;
    case cudaDevAttrComputeCapabilityMajor: *value = 9; break;
    case cudaDevAttrComputeCapabilityMinor: *value = 0; break;
    case cudaDevAttrMemoryPoolsSupported: *value = 1; break;
    default: *value = 0; break;
  }
  return cudaSuccess;
}
cudaError_t CUDARTAPI cudaDeviceCanAccessPeer(int* can, int device, int peer) {
  if (!can) return fail(cudaErrorInvalidValue);
  if (!valid_device(device) || !valid_device(peer)) return fail(cudaErrorInvalidDevice);
  *can = device != peer;
  return cudaSuccess;
}
cudaError_t CUDARTAPI cudaDeviceEnablePeerAccess(int peer, unsigned int flags) {
  if (!valid_device(peer) || peer == t_device) return fail(cudaErrorInvalidDevice);
  if (flags != 0) return fail(cudaErrorInvalidValue);
  return cudaSuccess;
}
cudaError_t CUDARTAPI cudaDeviceGetStreamPriorityRange(int* least, int* greatest) {
  if (least) *least = 0;
  if (greatest) *greatest = -5;
  return cudaSuccess;
}
cudaError_t CUDARTAPI cudaDeviceSynchronize(void) {
  EMU_STICKY();
  synchronize_device(t_device, "cudaDeviceSynchronize");
  return sticky() ? fail(sticky()) : cudaSuccess;
}

// ---- Streams ---------------------------------------------------------------------------------------------
cudaError_t CUDARTAPI cudaStreamCreateWithPriority(cudaStream_t* s, unsigned int flags, int priority) {
  EMU_STICKY();
  if (!s || (flags != cudaStreamDefault && flags != cudaStreamNonBlocking)) return fail(cudaErrorInvalidValue);
  *s = make_stream(t_device, flags, std::clamp(priority, -5, 0), false);
  return cudaSuccess;
}
cudaError_t CUDARTAPI cudaStreamCreateWithFlags(cudaStream_t* s, unsigned int flags) {
  return cudaStreamCreateWithPriority(s, flags, 0);
}
cudaError_t CUDARTAPI cudaStreamCreate(cudaStream_t* s) {
  return cudaStreamCreateWithPriority(s, cudaStreamDefault, 0);
}
cudaError_t CUDARTAPI cudaStreamDestroy(cudaStream_t handle) {
  if (!handle || handle == cudaStreamLegacy || handle == cudaStreamPerThread)
    return fail(cudaErrorInvalidResourceHandle);
  CUstream_st* s = handle;
  {
    std::lock_guard lk(g_capture_mutex);
    if (s->capture) return invalidate(s, cudaErrorStreamCaptureUnsupported);
  }
  {
    std::lock_guard lk(emu().devices_mutex);
    auto& v = emu().state[static_cast<std::size_t>(s->device)].streams;
    v.erase(std::remove(v.begin(), v.end(), s), v.end());
  }
  {
    std::lock_guard lk(s->m);
    if (s->destroyed) return fail(cudaErrorInvalidResourceHandle);
    s->destroyed = true;
    s->stop = true;  // the worker drains what was issued, then ends (the work is not cancelled)
  }
  s->cv.notify_all();
  return cudaSuccess;
}
cudaError_t CUDARTAPI cudaStreamQuery(cudaStream_t handle) {
  EMU_STICKY();
  CUstream_st* s = not_capturing(handle);
  if (!s) return cudaErrorStreamCaptureUnsupported;
  const Issued seen = snapshot(s);
  {
    std::lock_guard lk(s->m);
    if (s->completed < seen.ticket) return cudaErrorNotReady;  // not ready is not an error
  }
  host_saw(seen.clock);
  return cudaSuccess;
}
cudaError_t CUDARTAPI cudaStreamSynchronize(cudaStream_t handle) {
  EMU_STICKY();
  CUstream_st* s = not_capturing(handle);
  if (!s) return cudaErrorStreamCaptureUnsupported;
  const Issued seen = snapshot(s);
  wait_ticket(s, seen.ticket, "cudaStreamSynchronize");
  host_saw(seen.clock);
  return sticky() ? fail(sticky()) : cudaSuccess;
}
cudaError_t CUDARTAPI cudaStreamWaitEvent(cudaStream_t handle, cudaEvent_t e, unsigned int flags) {
  EMU_STICKY();
  if (!e || flags != 0) return fail(cudaErrorInvalidValue);
  CUstream_st* s = resolve(handle);
  {
    std::lock_guard lk(g_capture_mutex);
    if (e->capture) {
      if (e->capture->ended) return invalidate(s, cudaErrorCapturedEvent);
      if (s->capture && s->capture != e->capture) return invalidate(s, cudaErrorStreamCaptureIsolation);
      if (!s->capture) {  // the stream joins the capture
        s->capture = e->capture;
        s->tail = e->tail;
        e->capture->streams.push_back(s);
      } else {
        for (int n : e->tail)
          if (std::find(s->tail.begin(), s->tail.end(), n) == s->tail.end()) s->tail.push_back(n);
      }
      return cudaSuccess;
    }
    if (s->capture) {
      std::lock_guard el(e->m);
      if (e->stream) return invalidate(s, cudaErrorStreamCaptureIsolation);  // work outside the capture
      return cudaSuccess;                                                    // never recorded: nothing to wait for
    }
  }
  Dependency d{nullptr, 0};
  VectorClock clock;
  {
    std::lock_guard el(e->m);
    if (!e->stream) return cudaSuccess;
    d = Dependency{e->stream, e->ticket};
    clock = e->clock;
  }
  emu().event_waits.fetch_add(1, std::memory_order_relaxed);
  push(s, nullptr, "cudaStreamWaitEvent", {d}, &clock);
  return cudaSuccess;
}
cudaError_t CUDARTAPI cudaLaunchHostFunc(cudaStream_t s, cudaHostFn_t fn, void* user) {
  EMU_STICKY();
  if (!fn) return fail(cudaErrorInvalidValue);
  return issue(
      s, [fn, user] { fn(user); }, "cudaLaunchHostFunc");
}

// ---- Capture and graphs --------------------------------------------------------------------------------
cudaError_t CUDARTAPI cudaStreamBeginCapture(cudaStream_t handle, enum cudaStreamCaptureMode mode) {
  EMU_STICKY();
  (void)mode;
  CUstream_st* s = resolve(handle);
  if (s->legacy) return fail(cudaErrorStreamCaptureUnsupported);
  std::lock_guard lk(g_capture_mutex);
  if (s->capture) return invalidate(s, cudaErrorIllegalState);
  auto c = std::make_shared<Capture>();
  c->origin = s;
  c->streams.push_back(s);
  s->capture = c;
  s->tail.clear();
  return cudaSuccess;
}
cudaError_t CUDARTAPI cudaStreamIsCapturing(cudaStream_t handle, enum cudaStreamCaptureStatus* status) {
  EMU_STICKY();
  if (!status) return fail(cudaErrorInvalidValue);
  CUstream_st* s = resolve(handle);
  std::lock_guard lk(g_capture_mutex);
  *status = !s->capture               ? cudaStreamCaptureStatusNone
            : s->capture->invalidated ? cudaStreamCaptureStatusInvalidated
                                      : cudaStreamCaptureStatusActive;
  return cudaSuccess;
}
cudaError_t CUDARTAPI cudaStreamEndCapture(cudaStream_t handle, cudaGraph_t* graph) {
  if (!graph) return fail(cudaErrorInvalidValue);
  *graph = nullptr;
  CUstream_st* s = resolve(handle);
  std::lock_guard lk(g_capture_mutex);
  if (!s->capture || s->capture->origin != s) return fail(cudaErrorIllegalState);
  std::shared_ptr<Capture> c = s->capture;
  // Every stream that joined must have joined back: its last node must come before the origin's.
  std::vector<char> before(c->nodes.size(), 0);
  std::vector<int> todo = s->tail;
  while (!todo.empty()) {
    const int n = todo.back();
    todo.pop_back();
    if (before[static_cast<std::size_t>(n)]) continue;
    before[static_cast<std::size_t>(n)] = 1;
    for (int k : c->nodes[static_cast<std::size_t>(n)].after) todo.push_back(k);
  }
  bool unjoined = false;
  for (CUstream_st* j : c->streams) {
    if (j != s)
      for (int n : j->tail) unjoined = unjoined || !before[static_cast<std::size_t>(n)];
    j->capture.reset();
    j->tail.clear();
  }
  c->ended = true;
  if (c->invalidated) return fail(cudaErrorStreamCaptureInvalidated);
  if (unjoined) return fail(cudaErrorStreamCaptureUnjoined);
  *graph = new CUgraph_st{c->nodes};
  return cudaSuccess;
}
cudaError_t CUDARTAPI cudaGraphInstantiate(cudaGraphExec_t* exec, cudaGraph_t graph, unsigned long long flags) {
  EMU_STICKY();
  if (!exec || !graph || flags != 0) return fail(cudaErrorInvalidValue);
  *exec = new CUgraphExec_st{graph->nodes};
  return cudaSuccess;
}
cudaError_t CUDARTAPI cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t handle) {
  EMU_STICKY();
  if (!exec) return fail(cudaErrorInvalidValue);
  CUstream_st* s = resolve(handle);
  {
    std::lock_guard lk(g_capture_mutex);
    if (s->capture) return invalidate(s, cudaErrorStreamCaptureUnsupported);  // not emulated
  }
  emu().graph_launches.fetch_add(1, std::memory_order_relaxed);
  {
    std::lock_guard order(g_order_mutex);
    check_graph(s, exec->nodes);
  }
  // The nodes are copied: the executable graph may be destroyed while the launch is pending.
  push(
      s, [nodes = exec->nodes] { replay(nodes); }, "cudaGraphLaunch");
  return cudaSuccess;
}
cudaError_t CUDARTAPI cudaGraphDestroy(cudaGraph_t graph) {
  if (!graph) return fail(cudaErrorInvalidValue);
  delete graph;
  return cudaSuccess;
}
cudaError_t CUDARTAPI cudaGraphExecDestroy(cudaGraphExec_t exec) {
  if (!exec) return fail(cudaErrorInvalidValue);
  delete exec;
  return cudaSuccess;
}

// ---- Events ----------------------------------------------------------------------------------------------
cudaError_t CUDARTAPI cudaEventCreateWithFlags(cudaEvent_t* e, unsigned int flags) {
  EMU_STICKY();
  if (!e || (flags & ~(cudaEventBlockingSync | cudaEventDisableTiming | cudaEventInterprocess)) != 0)
    return fail(cudaErrorInvalidValue);
  *e = new CUevent_st;
  (*e)->device = t_device;
  (*e)->flags = flags;
  return cudaSuccess;
}
cudaError_t CUDARTAPI cudaEventCreate(cudaEvent_t* e) { return cudaEventCreateWithFlags(e, cudaEventDefault); }
cudaError_t CUDARTAPI cudaEventDestroy(cudaEvent_t e) {
  if (!e) return fail(cudaErrorInvalidResourceHandle);
  // Operations that wait for it hold (stream, ticket), not the event: freeing it now is safe, as on a GPU.
  delete e;
  return cudaSuccess;
}
cudaError_t CUDARTAPI cudaEventRecord(cudaEvent_t e, cudaStream_t handle) {
  EMU_STICKY();
  if (!e) return fail(cudaErrorInvalidResourceHandle);
  CUstream_st* s = resolve(handle);
  if (s->device != e->device) return fail(cudaErrorInvalidResourceHandle);  // must be on one device
  {
    std::lock_guard lk(g_capture_mutex);
    if (s->capture) {
      if (s->capture->invalidated) return fail(cudaErrorStreamCaptureInvalidated);
      std::lock_guard el(e->m);
      e->capture = s->capture;
      e->tail = s->tail;
      e->stream = nullptr;
      return cudaSuccess;
    }
  }
  auto stamp = std::make_shared<std::atomic<std::int64_t>>(-1);
  Issued rec = push(
      s, [stamp] { stamp->store(now_ns(), std::memory_order_release); }, "cudaEventRecord");
  std::lock_guard el(e->m);
  e->capture.reset();
  e->tail.clear();
  e->stream = s;
  e->ticket = rec.ticket;
  e->clock = std::move(rec.clock);
  e->stamp = std::move(stamp);
  return cudaSuccess;
}
cudaError_t CUDARTAPI cudaEventQuery(cudaEvent_t e) {
  EMU_STICKY();
  if (!e) return fail(cudaErrorInvalidResourceHandle);
  std::lock_guard el(e->m);
  if (e->capture) return fail(cudaErrorCapturedEvent);
  if (!e->stream) return cudaSuccess;
  {
    std::lock_guard sl(e->stream->m);
    if (e->stream->completed < e->ticket) return cudaErrorNotReady;
  }
  host_saw(e->clock);
  return cudaSuccess;
}
cudaError_t CUDARTAPI cudaEventSynchronize(cudaEvent_t e) {
  EMU_STICKY();
  if (!e) return fail(cudaErrorInvalidResourceHandle);
  Dependency d{nullptr, 0};
  VectorClock clock;
  {
    std::lock_guard el(e->m);
    if (e->capture) return fail(cudaErrorCapturedEvent);
    d = Dependency{e->stream, e->ticket};
    clock = e->clock;
  }
  if (d.stream) wait_ticket(d.stream, d.ticket, "cudaEventSynchronize");
  host_saw(clock);
  return sticky() ? fail(sticky()) : cudaSuccess;
}
cudaError_t CUDARTAPI cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
  EMU_STICKY();
  if (!ms || !start || !end) return fail(cudaErrorInvalidValue);
  if ((start->flags & cudaEventDisableTiming) || (end->flags & cudaEventDisableTiming))
    return fail(cudaErrorInvalidResourceHandle);
  std::int64_t t[2];
  cudaEvent_t ev[2] = {start, end};
  for (int i = 0; i < 2; ++i) {
    std::lock_guard el(ev[i]->m);
    if (ev[i]->capture) return fail(cudaErrorCapturedEvent);
    if (!ev[i]->stamp) return fail(cudaErrorInvalidResourceHandle);  // never recorded
    t[i] = ev[i]->stamp->load(std::memory_order_acquire);
    if (t[i] < 0) return fail(cudaErrorNotReady);
  }
  *ms = static_cast<float>(static_cast<double>(t[1] - t[0]) * 1e-6);
  return cudaSuccess;
}

// ---- Memory ----------------------------------------------------------------------------------------------
cudaError_t CUDARTAPI cudaMalloc(void** p, size_t bytes) {
  EMU_STICKY();
  if (!p) return fail(cudaErrorInvalidValue);
  *p = nullptr;
  if (bytes == 0) return cudaSuccess;
  *p = allocate(bytes, t_device);
  return *p ? cudaSuccess : fail(cudaErrorMemoryAllocation);
}
cudaError_t CUDARTAPI cudaFree(void* p) {
  EMU_STICKY();
  if (!p) return cudaSuccess;
  const int kind = memory_kind(p, 1);
  if (kind < 0) return fail(cudaErrorInvalidValue);
  synchronize_device(kind, "cudaFree");  // cudaFree waits for the device, so no pending work can touch it
  if (!unregister(p, true)) return fail(cudaErrorInvalidValue);
  return cudaSuccess;
}
cudaError_t CUDARTAPI cudaMallocAsync(void** p, size_t bytes, cudaStream_t handle) {
  EMU_STICKY();
  if (!p) return fail(cudaErrorInvalidValue);
  *p = nullptr;
  if (bytes == 0) return cudaSuccess;
  CUstream_st* s = resolve(handle);
  *p = allocate(bytes, s->device);
  if (!*p) return fail(cudaErrorMemoryAllocation);
  // The allocation happens in stream order: another stream may use it only once ordered after this point.
  {
    std::lock_guard lk(g_capture_mutex);
    if (s->capture) return cudaSuccess;  // an allocation node: not checked
  }
  push(s, nullptr, "cudaMallocAsync", {}, nullptr, {{*p, bytes, true}});
  return cudaSuccess;
}
cudaError_t CUDARTAPI cudaFreeAsync(void* p, cudaStream_t handle) {
  EMU_STICKY();
  if (!p) return cudaSuccess;
  if (memory_kind(p, 1) < 0) return fail(cudaErrorInvalidValue);
  CUstream_st* s = resolve(handle);
  {
    std::lock_guard lk(g_capture_mutex);
    if (s->capture) return invalidate(s, cudaErrorStreamCaptureUnsupported);  // free nodes are not emulated
  }
  std::size_t bytes = 0;
  {
    std::lock_guard lk(emu().memory_mutex);
    const auto it = emu().memory.find(reinterpret_cast<std::uintptr_t>(p));
    if (it == emu().memory.end()) return fail(cudaErrorInvalidValue);
    bytes = it->second.size;
  }
  push(s,
       [p] {
         if (!unregister(p, true)) cuda_emulator::device_fault("cudaFreeAsync of memory that was already freed");
       },
       "cudaFreeAsync", {}, nullptr, {{p, bytes, true}});
  return cudaSuccess;
}
cudaError_t CUDARTAPI cudaMallocHost(void** p, size_t bytes) {
  EMU_STICKY();
  if (!p) return fail(cudaErrorInvalidValue);
  *p = bytes ? allocate(bytes, -1) : nullptr;
  return (*p || !bytes) ? cudaSuccess : fail(cudaErrorMemoryAllocation);
}
cudaError_t CUDARTAPI cudaFreeHost(void* p) {
  if (!p) return cudaSuccess;
  if (!unregister(p, false)) return fail(cudaErrorInvalidValue);
  return cudaSuccess;
}
cudaError_t CUDARTAPI cudaMemcpyAsync(void* dst, const void* src, size_t n, enum cudaMemcpyKind kind, cudaStream_t s) {
  EMU_STICKY();
  if (!copy_kind_ok(dst, src, n, kind)) return fail(cudaErrorInvalidValue);
  if (n == 0) return cudaSuccess;
  return issue(s, [dst, src, n] { std::memcpy(dst, src, n); }, "cudaMemcpyAsync", {{src, n, false}, {dst, n, true}});
}
cudaError_t CUDARTAPI cudaMemcpy(void* dst, const void* src, size_t n, enum cudaMemcpyKind kind) {
  EMU_STICKY();
  if (!copy_kind_ok(dst, src, n, kind)) return fail(cudaErrorInvalidValue);
  if (n == 0) return cudaSuccess;
  CUstream_st* s = legacy_stream(t_device);
  const Issued op = push(s, [dst, src, n] { std::memcpy(dst, src, n); }, "cudaMemcpy", {}, nullptr,
                         {{src, n, false}, {dst, n, true}});
  wait_ticket(s, op.ticket, "cudaMemcpy");
  // From pageable memory to the device, cudaMemcpy may return once the data is staged, before it landed:
  // the host has not seen it finish.
  if (!(memory_kind(src, n) == -2 && memory_kind(dst, n) >= 0)) host_saw(op.clock);
  return sticky() ? fail(sticky()) : cudaSuccess;
}
cudaError_t CUDARTAPI cudaMemcpyPeerAsync(void* dst, int dst_device, const void* src, int src_device, size_t n,
                                          cudaStream_t s) {
  EMU_STICKY();
  if (!valid_device(dst_device) || !valid_device(src_device)) return fail(cudaErrorInvalidDevice);
  if (n == 0) return cudaSuccess;
  if (!cuda_emulator::is_device_memory(dst, n, dst_device) || !cuda_emulator::is_device_memory(src, n, src_device))
    return fail(cudaErrorInvalidValue);
  return issue(s, [dst, src, n] { std::memcpy(dst, src, n); }, "cudaMemcpyPeerAsync",
               {{src, n, false}, {dst, n, true}});
}
cudaError_t CUDARTAPI cudaMemsetAsync(void* p, int value, size_t n, cudaStream_t s) {
  EMU_STICKY();
  if (n == 0) return cudaSuccess;
  if (!cuda_emulator::is_device_memory(p, n)) return fail(cudaErrorInvalidValue);
  return issue(s, [p, value, n] { std::memset(p, value, n); }, "cudaMemsetAsync", {{p, n, true}});
}
cudaError_t CUDARTAPI cudaMemset(void* p, int value, size_t n) {
  EMU_STICKY();
  if (n == 0) return cudaSuccess;
  if (!cuda_emulator::is_device_memory(p, n)) return fail(cudaErrorInvalidValue);
  CUstream_st* s = legacy_stream(t_device);
  // cudaMemset is asynchronous for device memory (it returns before the set is done), like the GPU's.
  push(s, [p, value, n] { std::memset(p, value, n); }, "cudaMemset", {}, nullptr, {{p, n, true}});
  return cudaSuccess;
}

}  // extern "C"
