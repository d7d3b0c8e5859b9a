// The NCCL half of the emulator (see cuda_emulator.hpp): communicators of rank threads in one process,
// point-to-point groups with NCCL's per-peer ordering, a sum/max/min all-reduce, non-blocking mode, async
// errors and abort, ncclCommSplit, and a count of the communicators created (nccl_communicators_created).
#include <nccl.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "cuda_emulator.hpp"

namespace {

using Clock = std::chrono::steady_clock;

// One send waiting for its receive (lives in the sender's group operation until received).
struct Message {
  const std::byte* data;
  std::size_t bytes;
  bool received = false;
};

struct Reduction {
  std::vector<std::vector<std::byte>> inputs;  // per rank
  int arrived = 0;
  int left = 0;
};

// The ranks that share a unique id.
struct Clique {
  explicit Clique(int n)
      : size(n), members(static_cast<std::size_t>(n), nullptr), channels(static_cast<std::size_t>(n * n)) {}
  int size;
  std::mutex m;
  std::condition_variable cv;
  std::vector<ncclComm*> members;
  int joined = 0;
  std::vector<std::deque<Message*>> channels;     // [src * size + dst]: sends not yet received, in order
  std::map<std::uint64_t, Reduction> reductions;  // by sequence number
  // ncclCommSplit rounds, by sequence number: each member's (colour, key), then the new cliques.
  struct Split {
    std::vector<std::pair<int, int>> asks;  // per rank: (colour, key)
    int arrived = 0;
    int left = 0;
    std::map<int, std::shared_ptr<Clique>> made;  // by colour
  };
  std::map<std::uint64_t, Split> splits;
};

std::atomic<long> g_created{0};  // communicators created (inits and splits)

std::mutex g_cliques_mutex;
std::map<std::string, std::shared_ptr<Clique>>& cliques() {
  static auto* m = new std::map<std::string, std::shared_ptr<Clique>>;  // never destroyed
  return *m;
}

thread_local int t_group_depth = 0;
struct Pending {
  ncclComm* comm;
  bool send;
  bool reduce;
  const void* sendbuf;
  void* recvbuf;
  std::size_t bytes;
  int peer;
  ncclDataType_t type;
  ncclRedOp_t op;
  std::size_t count;
  cudaStream_t stream;
};
thread_local std::vector<Pending> t_pending;

std::size_t type_size(ncclDataType_t t) {
  switch (t) {
    case ncclInt8:
    case ncclUint8: return 1;
    case ncclFloat16:
    case ncclBfloat16: return 2;
    case ncclInt32:
    case ncclUint32:
    case ncclFloat32: return 4;
    case ncclInt64:
    case ncclUint64:
    case ncclFloat64: return 8;
    default: return 0;
  }
}

}  // namespace

struct ncclComm {
  std::shared_ptr<Clique> clique;
  int rank = 0;
  int device = 0;
  bool blocking = true;
  std::atomic<bool> aborted{false};
  std::atomic<bool> destroyed{false};
  std::atomic<int> async_error{ncclSuccess};
  std::atomic<std::int64_t> busy_until{0};  // non-blocking mode: in progress until then (ns since epoch)
  std::atomic<long> kernel_us{0};           // cuda_emulator::nccl_kernel_time
  std::uint64_t reductions = 0;             // sequence of this rank's all-reduces (owner thread)
  std::uint64_t splits = 0;                 // sequence of this rank's ncclCommSplit calls
  std::mutex error_mutex;
  std::string last_error;
};

namespace {

std::int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count();
}

void set_error(ncclComm* c, ncclResult_t r, const std::string& what) {
  int expected = ncclSuccess;
  c->async_error.compare_exchange_strong(expected, r);
  std::lock_guard lk(c->error_mutex);
  if (c->last_error.empty()) c->last_error = what;
}

ncclResult_t usage(ncclComm* c, const std::string& what) {
  if (c) {
    std::lock_guard lk(c->error_mutex);
    c->last_error = what;
  }
  return ncclInvalidUsage;
}

bool usable(const ncclComm* c) { return c && !c->aborted.load() && !c->destroyed.load(); }

// A non-blocking call is reported in progress for a short random while, so that callers must poll.
ncclResult_t started(ncclComm* c) {
  if (c->blocking) return ncclSuccess;
  thread_local std::minstd_rand rng(12345u);
  c->busy_until.store(now_ns() + static_cast<std::int64_t>(rng() % 200'000), std::memory_order_release);
  return ncclInProgress;
}

// Waits on the clique's condition until `done` or this rank's communicator is aborted (a peer's abort
// does not wake it: on a GPU its kernel would wait for the peer until its own watchdog aborts it).
template <class Pred>
bool wait_or_abort(Clique& q, std::unique_lock<std::mutex>& lk, ncclComm* self, Pred done, const char* what) {
  const auto deadline = Clock::now() + std::chrono::milliseconds(cuda_emulator::hang_limit_ms());
  while (!done()) {
    if (self->aborted.load()) return false;
    if (Clock::now() > deadline)
      cuda_emulator::hang(std::string("NCCL rank ") + std::to_string(self->rank) + " in " + what);
    q.cv.wait_for(lk, std::chrono::milliseconds(20));
  }
  return true;
}

// NcclKernelLimit: the NCCL kernels running on each device (0: no limit).
std::atomic<int> g_kernel_limit{0};
struct DeviceKernels {
  std::mutex m;
  std::condition_variable cv;
  int running = 0;
};
DeviceKernels& device_kernels(int device) {
  static DeviceKernels* d = new DeviceKernels[64];  // never destroyed (stream threads may outlive main)
  return d[static_cast<unsigned>(device) % 64];
}

// Holds one of the device's NCCL kernel places while a kernel runs; waits for one (until this rank's
// communicator is aborted) when the limit is reached.
class KernelPlace {
public:
  explicit KernelPlace(ncclComm* self) : _dev(&device_kernels(self->device)) {
    const int limit = g_kernel_limit.load();
    if (limit <= 0) return;
    const auto deadline = Clock::now() + std::chrono::milliseconds(cuda_emulator::hang_limit_ms());
    std::unique_lock lk(_dev->m);
    while (_dev->running >= limit) {
      if (self->aborted.load()) {
        _ok = false;
        return;
      }
      if (Clock::now() > deadline)
        cuda_emulator::hang("NCCL rank " + std::to_string(self->rank) + " waiting for a kernel place on device " +
                            std::to_string(self->device));
      _dev->cv.wait_for(lk, std::chrono::milliseconds(5));
    }
    ++_dev->running;
    _held = true;
  }
  ~KernelPlace() {
    if (!_held) return;
    {
      std::lock_guard lk(_dev->m);
      --_dev->running;
    }
    _dev->cv.notify_all();
  }
  KernelPlace(const KernelPlace&) = delete;
  KernelPlace& operator=(const KernelPlace&) = delete;
  [[nodiscard]] bool ok() const noexcept { return _ok; }

private:
  DeviceKernels* _dev;
  bool _held = false;
  bool _ok = true;
};

// One stream operation of a group: every send is offered to its receiver, every receive takes the oldest
// send from its peer, and the operation ends when all of them are done (as a GPU's group kernel does).
void run_p2p(ncclComm* self, const std::vector<Pending>& ops) {
  const KernelPlace place(self);
  if (!place.ok()) return;  // aborted before it could run
  Clique& q = *self->clique;
  std::vector<std::unique_ptr<Message>> mine;
  std::unique_lock lk(q.m);
  // An aborted communicator's kernels still queued on the stream send nothing (as on a GPU, where the abort
  // ends them): a send published, then taken back, would let a peer receive a later message in its place.
  if (self->aborted.load()) return;
  for (const Pending& p : ops)
    if (p.send) {
      mine.push_back(std::make_unique<Message>(Message{static_cast<const std::byte*>(p.sendbuf), p.bytes}));
      q.channels[static_cast<std::size_t>(self->rank * q.size + p.peer)].push_back(mine.back().get());
    }
  q.cv.notify_all();
  for (const Pending& p : ops) {
    if (p.send) continue;
    auto& ch = q.channels[static_cast<std::size_t>(p.peer * q.size + self->rank)];
    if (!wait_or_abort(
            q, lk, self, [&] { return !ch.empty(); }, "a receive"))
      break;
    Message* msg = ch.front();
    ch.pop_front();
    if (msg->bytes != p.bytes) {
      // NCCL does not check sizes (it would corrupt memory or hang); the emulator reports it.
      set_error(self, ncclInvalidUsage,
                "emulated NCCL: rank " + std::to_string(self->rank) + " received " + std::to_string(msg->bytes) +
                    " bytes from rank " + std::to_string(p.peer) + " into a buffer of " + std::to_string(p.bytes));
      cuda_emulator::device_fault("NCCL message size mismatch");
    } else {
      cuda_emulator::require_device_memory(p.recvbuf, p.bytes, "ncclRecv buffer");
      std::memcpy(p.recvbuf, msg->data, p.bytes);
    }
    msg->received = true;
    q.cv.notify_all();
  }
  // A send's buffer is read by its receiver: the operation ends once every send was taken.
  const bool ok = wait_or_abort(
      q, lk, self, [&] { return std::all_of(mine.begin(), mine.end(), [](const auto& m) { return m->received; }); },
      "a send");
  if (ok && self->kernel_us.load() > 0) {  // the link's time, with the place still held
    lk.unlock();
    std::this_thread::sleep_for(std::chrono::microseconds(self->kernel_us.load()));
    lk.lock();
  }
  if (!ok)  // aborted: take back what no one received
    for (auto& ch : q.channels)
      ch.erase(std::remove_if(ch.begin(), ch.end(),
                              [&](Message* m) {
                                return std::any_of(mine.begin(), mine.end(),
                                                   [&](const auto& x) { return x.get() == m; });
                              }),
               ch.end());
}

template <class T>
void reduce_into(void* out, const std::vector<std::vector<std::byte>>& in, std::size_t count, ncclRedOp_t op) {
  auto* o = static_cast<T*>(out);
  for (std::size_t i = 0; i < count; ++i) {
    T acc;
    std::memcpy(&acc, in[0].data() + i * sizeof(T), sizeof(T));
    for (std::size_t r = 1; r < in.size(); ++r) {
      T v;
      std::memcpy(&v, in[r].data() + i * sizeof(T), sizeof(T));
      acc = op == ncclMax ? std::max(acc, v) : op == ncclMin ? std::min(acc, v) : static_cast<T>(acc + v);
    }
    o[i] = acc;
  }
}

void run_allreduce(ncclComm* self, const Pending& p, std::uint64_t seq) {
  const KernelPlace place(self);
  if (!place.ok()) return;
  Clique& q = *self->clique;
  std::unique_lock lk(q.m);
  Reduction& red = q.reductions[seq];
  if (red.inputs.empty()) {
    red.inputs.resize(static_cast<std::size_t>(q.size));
    red.left = q.size;
  }
  const auto* in = static_cast<const std::byte*>(p.sendbuf);
  red.inputs[static_cast<std::size_t>(self->rank)].assign(in, in + p.bytes);
  ++red.arrived;
  q.cv.notify_all();
  if (!wait_or_abort(
          q, lk, self, [&] { return red.arrived == q.size; }, "an all-reduce"))
    return;
  switch (p.type) {
    case ncclInt32: reduce_into<std::int32_t>(p.recvbuf, red.inputs, p.count, p.op); break;
    case ncclInt64: reduce_into<std::int64_t>(p.recvbuf, red.inputs, p.count, p.op); break;
    case ncclFloat32: reduce_into<float>(p.recvbuf, red.inputs, p.count, p.op); break;
    case ncclFloat64: reduce_into<double>(p.recvbuf, red.inputs, p.count, p.op); break;
    case ncclBfloat16: {  // each addition in fp32, rounded back to bf16 (one rank's order for every rank)
      auto* o = static_cast<std::uint16_t*>(p.recvbuf);
      for (std::size_t i = 0; i < p.count; ++i) {
        std::uint16_t acc;
        std::memcpy(&acc, red.inputs[0].data() + 2 * i, 2);
        for (std::size_t r = 1; r < red.inputs.size(); ++r) {
          std::uint16_t v;
          std::memcpy(&v, red.inputs[r].data() + 2 * i, 2);
          const float a = cuda_emulator::bf16_to_float(acc), b = cuda_emulator::bf16_to_float(v);
          acc = cuda_emulator::float_to_bf16(p.op == ncclMax   ? std::max(a, b)
                                             : p.op == ncclMin ? std::min(a, b)
                                                               : a + b);
        }
        o[i] = acc;
      }
      break;
    }
    default: set_error(self, ncclInvalidArgument, "emulated NCCL: all-reduce of an unsupported type");
  }
  if (--red.left == 0) q.reductions.erase(seq);
}

// Issues the calls collected since ncclGroupStart: one stream operation per (communicator, stream).
ncclResult_t flush_group() {
  std::vector<Pending> ops;
  ops.swap(t_pending);
  ncclResult_t result = ncclSuccess;
  while (!ops.empty()) {
    ncclComm* c = ops.front().comm;
    const cudaStream_t s = ops.front().stream;
    std::vector<Pending> mine, rest;
    for (Pending& p : ops) (p.comm == c && p.stream == s ? mine : rest).push_back(p);
    ops.swap(rest);
    if (!usable(c)) return ncclInvalidArgument;
    std::vector<Pending> p2p;
    for (const Pending& p : mine) {
      if (!p.reduce) {
        p2p.push_back(p);
        continue;
      }
      const std::uint64_t seq = c->reductions++;
      if (cuda_emulator::launch(s, [c, p, seq] { run_allreduce(c, p, seq); }, "ncclAllReduce",
                                {{p.sendbuf, p.bytes, false}, {p.recvbuf, p.bytes, true}}) != cudaSuccess)
        return ncclUnhandledCudaError;
    }
    int self_sends = 0, self_recvs = 0;
    for (const Pending& p : p2p)
      if (p.peer == c->rank) ++(p.send ? self_sends : self_recvs);
    if (self_recvs > self_sends) {  // as NCCL: "Trying to recv to self without a matching send"
      set_error(c, ncclInvalidUsage,
                "emulated NCCL: rank " + std::to_string(c->rank) +
                    " receives from itself without a matching send in the same group");
      return c->blocking ? ncclInvalidUsage : ncclInProgress;
    }
    std::vector<cuda_emulator::Access> accesses;
    for (const Pending& p : p2p)
      accesses.push_back(p.send ? cuda_emulator::Access{p.sendbuf, p.bytes, false}
                                : cuda_emulator::Access{p.recvbuf, p.bytes, true});
    if (!p2p.empty() &&
        cuda_emulator::launch(
            s, [c, p2p] { run_p2p(c, p2p); }, "NCCL group (send/recv)", std::move(accesses)) != cudaSuccess)
      return ncclUnhandledCudaError;
    if (started(c) == ncclInProgress) result = ncclInProgress;
  }
  return result;
}

ncclResult_t add(const Pending& p) {
  if (!p.comm) return ncclInvalidArgument;
  if (!usable(p.comm)) return usage(p.comm, "emulated NCCL: the communicator was aborted or destroyed");
  if (!p.reduce && (p.peer < 0 || p.peer >= p.comm->clique->size))
    return usage(p.comm, "emulated NCCL: peer " + std::to_string(p.peer) + " outside [0, " +
                             std::to_string(p.comm->clique->size) + ")");
  if (type_size(p.type) == 0) return ncclInvalidArgument;
  if (cuda_emulator::stream_device(p.stream) != p.comm->device)
    return usage(p.comm, "emulated NCCL: the stream is not on the communicator's device");
  const void* buf = p.send || p.reduce ? p.sendbuf : p.recvbuf;
  if (p.bytes > 0 && !cuda_emulator::is_device_memory(buf, p.bytes, p.comm->device))
    return usage(p.comm, "emulated NCCL: the buffer is not device memory of the communicator's device");
  if (p.reduce && p.bytes > 0 && !cuda_emulator::is_device_memory(p.recvbuf, p.bytes, p.comm->device))
    return usage(p.comm, "emulated NCCL: the receive buffer is not device memory of the communicator's device");
  t_pending.push_back(p);
  return t_group_depth == 0 ? flush_group() : ncclSuccess;
}

}  // namespace

extern "C" {

ncclResult_t ncclGetVersion(int* version) {
  if (!version) return ncclInvalidArgument;
  *version = NCCL_VERSION_CODE;
  return ncclSuccess;
}

ncclResult_t ncclGetUniqueId(ncclUniqueId* id) {
  if (!id) return ncclInvalidArgument;
  static std::atomic<std::uint64_t> counter{0};
  std::memset(id->internal, 0, sizeof(id->internal));
  const std::uint64_t n = ++counter;
  const auto t = static_cast<std::uint64_t>(now_ns());
  std::memcpy(id->internal, "emulated", 8);
  std::memcpy(id->internal + 8, &n, sizeof n);
  std::memcpy(id->internal + 16, &t, sizeof t);
  return ncclSuccess;
}

ncclResult_t ncclCommInitRankConfig(ncclComm_t* out, int nranks, ncclUniqueId id, int rank, ncclConfig_t* config) {
  if (!out) return ncclInvalidArgument;
  *out = nullptr;
  if (nranks < 1 || rank < 0 || rank >= nranks) return ncclInvalidArgument;
  if (config && config->magic != 0xcafebeef) return ncclInvalidArgument;
  std::shared_ptr<Clique> q;
  {
    std::lock_guard lk(g_cliques_mutex);
    auto& slot = cliques()[std::string(id.internal, sizeof(id.internal))];
    if (!slot) slot = std::make_shared<Clique>(nranks);
    q = slot;
  }
  auto* c = new ncclComm;  // freed by ncclCommDestroy / ncclCommAbort... never: a dead handle stays checkable
  c->clique = q;
  c->rank = rank;
  cudaGetDevice(&c->device);
  c->blocking = !config || config->blocking != 0;
  {
    std::unique_lock lk(q->m);
    bool clash = q->size != nranks || q->members[static_cast<std::size_t>(rank)];
    for (const ncclComm* m : q->members) clash = clash || (m && m->device == c->device);  // NCCL: one rank per GPU
    if (clash) {
      delete c;
      return ncclInvalidUsage;
    }
    q->members[static_cast<std::size_t>(rank)] = c;
    ++q->joined;
    q->cv.notify_all();
    if (c->blocking && !wait_or_abort(
                           *q, lk, c, [&] { return q->joined == q->size; }, "ncclCommInitRankConfig"))
      return ncclInternalError;
  }
  *out = c;
  ++g_created;
  return c->blocking ? ncclSuccess : ncclInProgress;
}

ncclResult_t ncclCommInitRank(ncclComm_t* out, int nranks, ncclUniqueId id, int rank) {
  return ncclCommInitRankConfig(out, nranks, id, rank, nullptr);
}

// Every rank of `comm` calls it (in the same order as its other splits); the ranks with the same colour
// form a new communicator, ranked by key, then by rank in `comm`. NCCL_SPLIT_NOCOLOR: no new one. The
// emulator waits for every rank here, even in non-blocking mode (then it reports ncclInProgress briefly).
ncclResult_t ncclCommSplit(ncclComm_t comm, int color, int key, ncclComm_t* out, ncclConfig_t* config) {
  if (!out) return ncclInvalidArgument;
  *out = nullptr;
  if (!usable(comm)) return ncclInvalidArgument;
  if (config && config->magic != 0xcafebeef) return ncclInvalidArgument;
  if (color < NCCL_SPLIT_NOCOLOR) return ncclInvalidArgument;
  Clique& q = *comm->clique;
  const std::uint64_t seq = comm->splits++;
  std::shared_ptr<Clique> mine;
  int new_rank = 0;
  {
    std::unique_lock lk(q.m);
    auto& round = q.splits[seq];
    if (round.asks.empty()) {
      round.asks.assign(static_cast<std::size_t>(q.size), {NCCL_SPLIT_NOCOLOR, 0});
      round.left = q.size;
    }
    round.asks[static_cast<std::size_t>(comm->rank)] = {color, key};
    if (++round.arrived == q.size) {  // the last one builds the new cliques
      std::map<int, int> sizes;
      for (const auto& a : round.asks)
        if (a.first != NCCL_SPLIT_NOCOLOR) ++sizes[a.first];
      for (const auto& [c, n] : sizes) {
        round.made[c] = std::make_shared<Clique>(n);
        round.made[c]->joined = 0;
      }
      q.cv.notify_all();
    }
    if (!wait_or_abort(
            q, lk, comm, [&] { return round.arrived == q.size; }, "ncclCommSplit"))
      return ncclInternalError;
    if (color != NCCL_SPLIT_NOCOLOR) {
      mine = round.made[color];
      for (int r = 0; r < q.size; ++r) {
        const auto& a = round.asks[static_cast<std::size_t>(r)];
        if (r != comm->rank && a.first == color && (a.second < key || (a.second == key && r < comm->rank))) ++new_rank;
      }
    }
    if (--round.left == 0) q.splits.erase(seq);
  }
  if (!mine) return ncclSuccess;
  auto* c = new ncclComm;
  c->clique = mine;
  c->rank = new_rank;
  c->device = comm->device;
  c->blocking = config ? config->blocking != 0 : comm->blocking;
  {
    std::lock_guard lk(mine->m);
    mine->members[static_cast<std::size_t>(new_rank)] = c;
    ++mine->joined;
    mine->cv.notify_all();
  }
  *out = c;
  ++g_created;
  return c->blocking ? ncclSuccess : started(c);
}

ncclResult_t ncclCommCount(const ncclComm_t comm, int* count) {
  if (!comm || !count || comm->destroyed.load()) return ncclInvalidArgument;
  *count = comm->clique->size;
  return ncclSuccess;
}

ncclResult_t ncclCommUserRank(const ncclComm_t comm, int* rank) {
  if (!comm || !rank || comm->destroyed.load()) return ncclInvalidArgument;
  *rank = comm->rank;
  return ncclSuccess;
}

ncclResult_t ncclCommCuDevice(const ncclComm_t comm, int* device) {
  if (!comm || !device || comm->destroyed.load()) return ncclInvalidArgument;
  *device = comm->device;
  return ncclSuccess;
}

ncclResult_t ncclCommGetAsyncError(ncclComm_t c, ncclResult_t* error) {
  if (!c || !error) return ncclInvalidArgument;
  if (c->destroyed.load()) return ncclInvalidArgument;
  if (const int e = c->async_error.load()) {
    *error = static_cast<ncclResult_t>(e);
    return ncclSuccess;
  }
  {
    std::lock_guard lk(c->clique->m);
    if (c->clique->joined < c->clique->size) {
      *error = ncclInProgress;
      return ncclSuccess;
    }
  }
  *error = now_ns() < c->busy_until.load(std::memory_order_acquire) ? ncclInProgress : ncclSuccess;
  return ncclSuccess;
}

ncclResult_t ncclCommAbort(ncclComm_t c) {
  if (!c) return ncclSuccess;
  c->aborted.store(true);
  c->destroyed.store(true);
  std::lock_guard lk(c->clique->m);
  c->clique->cv.notify_all();
  return ncclSuccess;
}

ncclResult_t ncclCommFinalize(ncclComm_t c) {
  if (!usable(c)) return ncclInvalidArgument;
  return started(c);
}

ncclResult_t ncclCommDestroy(ncclComm_t c) {
  if (!c || c->destroyed.exchange(true)) return ncclInvalidArgument;
  return ncclSuccess;
}

ncclResult_t ncclGroupStart() {
  ++t_group_depth;
  return ncclSuccess;
}

ncclResult_t ncclGroupEnd() {
  if (t_group_depth == 0) return ncclInvalidUsage;
  if (--t_group_depth > 0) return ncclSuccess;
  return flush_group();
}

ncclResult_t ncclSend(const void* buf, size_t count, ncclDataType_t type, int peer, ncclComm_t comm, cudaStream_t s) {
  return add(Pending{comm, true, false, buf, nullptr, count * type_size(type), peer, type, ncclSum, count, s});
}

ncclResult_t ncclRecv(void* buf, size_t count, ncclDataType_t type, int peer, ncclComm_t comm, cudaStream_t s) {
  return add(Pending{comm, false, false, nullptr, buf, count * type_size(type), peer, type, ncclSum, count, s});
}

ncclResult_t ncclAllReduce(const void* sendbuf, void* recvbuf, size_t count, ncclDataType_t type, ncclRedOp_t op,
                           ncclComm_t comm, cudaStream_t s) {
  return add(Pending{comm, false, true, sendbuf, recvbuf, count * type_size(type), -1, type, op, count, s});
}

const char* ncclGetErrorString(ncclResult_t r) {
  switch (r) {
    case ncclSuccess: return "no error";
    case ncclUnhandledCudaError: return "unhandled cuda error (run with NCCL_DEBUG=INFO for details)";
    case ncclSystemError: return "unhandled system error (run with NCCL_DEBUG=INFO for details)";
    case ncclInternalError: return "internal error - please report this issue to the NCCL developers";
    case ncclInvalidArgument: return "invalid argument (run with NCCL_DEBUG=WARN for details)";
    case ncclInvalidUsage: return "invalid usage (run with NCCL_DEBUG=WARN for details)";
    case ncclRemoteError: return "remote process exited or there was a network error";
    case ncclInProgress: return "NCCL operation in progress";
    default: return "unknown result code";
  }
}

const char* ncclGetLastError(ncclComm_t c) {
  thread_local std::string copy;
  if (!c) return "";
  std::lock_guard lk(c->error_mutex);
  copy = c->last_error;
  return copy.c_str();
}

}  // extern "C"

long cuda_emulator::nccl_communicators_created() { return g_created.load(); }

void cuda_emulator::nccl_kernel_time(ncclComm* comm, long us) {
  if (comm) comm->kernel_us.store(us);
}

cuda_emulator::NcclKernelLimit::NcclKernelLimit(int n) { g_kernel_limit.store(n); }
cuda_emulator::NcclKernelLimit::~NcclKernelLimit() {
  g_kernel_limit.store(0);
  for (int d = 0; d < 64; ++d) device_kernels(d).cv.notify_all();
}
