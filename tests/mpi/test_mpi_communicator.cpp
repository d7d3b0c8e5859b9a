// MpiCommunicator on its own (no pipeline): posts, commits and waits between real MPI processes.
// Run by CTest under mpirun with 2 and 4 ranks; every test case runs on every rank. The communicators of the
// cases take their MpiOptions::progress from DUALPIPE_TEST_MPI_PROGRESS (on_wait or thread; CTest runs both).
#include <doctest/doctest.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <set>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "dualpipe/mpi.hpp"

using namespace dualpipe;
using namespace std::chrono_literals;

namespace {

constexpr auto wait_limit = 20s;  // a correct exchange finishes far sooner; this only bounds a broken one

/// The options of the cases' communicators: MpiOptions::progress from DUALPIPE_TEST_MPI_PROGRESS.
MpiOptions test_options() {
  MpiOptions options;
  const char* mode = std::getenv("DUALPIPE_TEST_MPI_PROGRESS");
  const std::string name = mode ? mode : "thread";
  REQUIRE_MESSAGE((name == "thread" || name == "on_wait"), "DUALPIPE_TEST_MPI_PROGRESS must be thread or on_wait");
  options.progress = name == "thread" ? MpiProgress::thread : MpiProgress::on_wait;
  return options;
}

/// Polls `done` without calling MPI on this thread, for at most wait_limit: whatever moves the messages
/// meanwhile is the progress thread.
template <class Done>
bool done_without_mpi_calls(Done done) {
  const auto deadline = std::chrono::steady_clock::now() + wait_limit;
  while (!done()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(1ms);
  }
  return true;
}

static_assert(check_communicator<MpiCommunicator>());
static_assert(CommitGroup<MpiCommitGroup>);
static_assert(CommunicatorWithPolling<MpiCommunicator>);      // PipelineOptions::weight_fill_depth
static_assert(CommunicatorWithEagerLaunch<MpiCommunicator>);  // PipelineOptions::eager_transfers

/// The byte at `index` of the message `from` sends `to` with `tag`: differs for every field.
std::byte pattern(int from, int to, MessageTag tag, std::size_t index) {
  const auto v = static_cast<std::uint32_t>(from * 131 + to * 71 + tag.module * 37 + tag.chunk * 13 +
                                            (tag.payload == Payload::gradient ? 101 : 0)) +
                 static_cast<std::uint32_t>(index) * 7u;
  return static_cast<std::byte>(v & 0xffu);
}

std::vector<std::byte> message(int from, int to, MessageTag tag, std::size_t size) {
  std::vector<std::byte> bytes(size);
  for (std::size_t i = 0; i < size; ++i) bytes[i] = pattern(from, to, tag, i);
  return bytes;
}

/// Sizes differ by tag, and one message per pair is large enough for MPI's rendezvous protocol.
std::size_t size_of(MessageTag tag) {
  if (tag.module == 1 && tag.chunk == 2 && tag.payload == Payload::gradient) return 300 * 1024;
  return 8 + static_cast<std::size_t>(tag.chunk) * 24 + static_cast<std::size_t>(tag.module) * 5 +
         (tag.payload == Payload::gradient ? 3 : 0);
}

std::vector<MessageTag> all_tags() {
  std::vector<MessageTag> tags;
  for (int module = 0; module < 2; ++module)
    for (int chunk = 0; chunk < 3; ++chunk)
      for (Payload payload : {Payload::activation, Payload::gradient}) tags.push_back({module, chunk, payload});
  return tags;
}

/// Commits what `comm` has posted; the wait must fail with a size mismatch (not a timeout) whose message
/// names each of `parts`.
void expect_size_mismatch(MpiCommunicator& comm, const char* must, std::initializer_list<const char*> parts) {
  try {
    comm.commit().wait(wait_limit);
    FAIL(must);
  } catch (const TimeoutError&) {
    FAIL("a size mismatch is not a timeout");
  } catch (const Error& e) {
    const std::string what = e.what();
    CAPTURE(what);
    for (const char* part : parts) {
      CAPTURE(part);
      CHECK(what.find(part) != std::string::npos);
    }
  }
}

}  // namespace

TEST_CASE("Mpi.Communicator.RankAndSize") {
  MpiCommunicator comm(MPI_COMM_WORLD, test_options());
  int world_rank = -1, world_size = -1;
  MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &world_size);
  CHECK(comm.rank() == world_rank);
  CHECK(comm.size() == world_size);
  REQUIRE(comm.size() >= 2);
  // The communicator is a duplicate: its messages cannot meet those of MPI_COMM_WORLD.
  int result = MPI_UNEQUAL;
  MPI_Comm_compare(comm.native(), MPI_COMM_WORLD, &result);
  CHECK(result == MPI_CONGRUENT);
}

TEST_CASE("Mpi.Communicator.AllPairs.TagsKeepMessagesApart") {
  MpiCommunicator comm(MPI_COMM_WORLD, test_options());
  const int me = comm.rank();
  const auto tags = all_tags();
  std::vector<std::vector<std::byte>> sends, recvs;
  std::vector<std::pair<int, MessageTag>> expected;
  for (int peer = 0; peer < comm.size(); ++peer) {
    if (peer == me) continue;
    for (MessageTag tag : tags) sends.push_back(message(me, peer, tag, size_of(tag)));
  }
  // Receives posted in the reverse order of the sends, before them: only the tags can pair them up.
  for (int peer = comm.size() - 1; peer >= 0; --peer) {
    if (peer == me) continue;
    for (auto it = tags.rbegin(); it != tags.rend(); ++it) {
      recvs.emplace_back(size_of(*it));
      expected.emplace_back(peer, *it);
      comm.post_recv(peer, *it, recvs.back());
    }
  }
  std::size_t s = 0;
  for (int peer = 0; peer < comm.size(); ++peer) {
    if (peer == me) continue;
    for (MessageTag tag : tags) comm.post_send(peer, tag, sends[s++]);
  }
  auto group = comm.commit();
  CHECK(group.size() == sends.size() + recvs.size());
  group.wait(wait_limit);
  CHECK(group.done());
  for (std::size_t i = 0; i < recvs.size(); ++i) {
    const auto [peer, tag] = expected[i];
    INFO("from rank " << peer << ", module " << tag.module << ", chunk " << tag.chunk);
    CHECK(recvs[i] == message(peer, me, tag, size_of(tag)));
  }
}

TEST_CASE("Mpi.Communicator.PingPong") {
  // Pairs (0,1), (2,3), ...: a counter goes back and forth, one message per commit.
  MpiCommunicator comm(MPI_COMM_WORLD, test_options());
  const int me = comm.rank();
  const int partner = me ^ 1;
  if (partner < comm.size()) {
    std::int64_t value = 0;
    std::vector<std::byte> buffer(sizeof value);
    for (int round = 0; round < 50; ++round) {
      const MessageTag tag{round % 2, round, round % 3 == 0 ? Payload::gradient : Payload::activation};
      const bool my_turn = (round % 2) == (me % 2);
      if (my_turn) {
        ++value;
        std::memcpy(buffer.data(), &value, sizeof value);
        comm.post_send(partner, tag, buffer);
      } else {
        comm.post_recv(partner, tag, buffer);
      }
      comm.commit().wait(wait_limit);
      if (!my_turn) std::memcpy(&value, buffer.data(), sizeof value);
      CHECK(value == round + 1);
    }
  }
  comm.barrier();
}

TEST_CASE("Mpi.Communicator.SameTagKeepsPostOrder") {
  // Ring: three messages with one tag in one group, then three more in the next: they arrive in order.
  MpiCommunicator comm(MPI_COMM_WORLD, test_options());
  const int next = (comm.rank() + 1) % comm.size();
  const int prev = (comm.rank() + comm.size() - 1) % comm.size();
  const MessageTag tag{0, 4, Payload::activation};
  for (int group = 0; group < 2; ++group) {
    std::vector<std::int32_t> out{group * 10 + 1, group * 10 + 2, group * 10 + 3}, in(3, -1);
    for (int i = 0; i < 3; ++i)
      comm.post_recv(prev, tag, std::as_writable_bytes(std::span<std::int32_t>(&in[static_cast<std::size_t>(i)], 1)));
    for (int i = 0; i < 3; ++i)
      comm.post_send(next, tag, std::as_bytes(std::span<const std::int32_t>(&out[static_cast<std::size_t>(i)], 1)));
    comm.commit().wait(wait_limit);
    CHECK(in == out);
  }
}

TEST_CASE("Mpi.Communicator.EmptyCommitAndSelfMessage") {
  MpiCommunicator comm(MPI_COMM_WORLD, test_options());
  auto empty = comm.commit();
  CHECK(empty.size() == 0);
  CHECK(empty.done());
  empty.wait(1ms);
  const auto out = message(comm.rank(), comm.rank(), {1, 3, Payload::gradient}, 40);
  std::vector<std::byte> in(40);
  comm.post_recv(comm.rank(), {1, 3, Payload::gradient}, in);
  comm.post_send(comm.rank(), {1, 3, Payload::gradient}, out);
  comm.commit().wait(wait_limit);
  CHECK(in == out);
}

TEST_CASE("Mpi.Communicator.SizeMismatchNamesBothSizes") {
  MpiCommunicator comm(MPI_COMM_WORLD, test_options());
  const int me = comm.rank();
  const MessageTag tag{0, 5, Payload::activation};
  if (me == 0) {
    const std::vector<std::byte> big(16, std::byte{1});
    comm.post_send(1, tag, big);
    comm.commit().wait(wait_limit);
    std::vector<std::byte> small_in(12);
    comm.post_recv(1, tag, small_in);
    expect_size_mismatch(comm, "a 4-byte message into a 12-byte buffer must throw", {"4 bytes", "12 bytes", "rank 1"});
  } else if (me == 1) {
    std::vector<std::byte> in(8);
    comm.post_recv(0, tag, in);
    expect_size_mismatch(comm, "a 16-byte message into an 8-byte buffer must throw",
                         {"16 bytes", "8 bytes", "rank 0", "chunk 5"});
    // The buffer was not written: the message was taken off the queue, not received into it.
    CHECK(std::all_of(in.begin(), in.end(), [](std::byte b) { return b == std::byte{0}; }));
    const std::vector<std::byte> little(4, std::byte{2});
    comm.post_send(0, tag, little);
    comm.commit().wait(wait_limit);
  }
  // The communicator still works after the errors: a message with the same tag arrives whole.
  comm.barrier();
  if (me <= 1) {
    const auto out = message(me, 1 - me, tag, 64);
    std::vector<std::byte> in(64);
    comm.post_recv(1 - me, tag, in);
    comm.post_send(1 - me, tag, out);
    comm.commit().wait(wait_limit);
    CHECK(in == message(1 - me, me, tag, 64));
  }
  comm.barrier();
}

TEST_CASE("Mpi.Communicator.TimeoutNamesWhatIsPending") {
  // Rank 1 waits for two messages from rank 0, which sends only one: the wait gives up and names the other.
  MpiCommunicator comm(MPI_COMM_WORLD, test_options());
  const MessageTag sent{1, 6, Payload::gradient};
  const MessageTag never{1, 7, Payload::gradient};
  if (comm.rank() == 0) {
    const std::vector<std::byte> out(24, std::byte{3});
    comm.post_send(1, sent, out);
    comm.commit().wait(wait_limit);
  } else if (comm.rank() == 1) {
    std::vector<std::byte> a(24), b(24);
    comm.post_recv(0, sent, a);
    comm.post_recv(0, never, b);
    auto group = comm.commit();
    const auto start = std::chrono::steady_clock::now();
    bool timed_out = false;
    try {
      group.wait(300ms);
    } catch (const TimeoutError& e) {
      timed_out = true;
      const std::string what = e.what();
      INFO(what);
      CHECK(what.find("rank 1") != std::string::npos);
      CHECK(what.find("receive from rank 0 (module 1, chunk 7, gradient") != std::string::npos);
      CHECK(what.find("chunk 6") == std::string::npos);  // that one arrived
      // The transfer that never came, for the StepError's module and chunk.
      CHECK(e.has_transfer());
      CHECK(e.peer() == 0);
      CHECK(e.tag() == never);
    }
    CHECK(timed_out);
    CHECK(std::chrono::steady_clock::now() - start >= 300ms);
    CHECK(a == std::vector<std::byte>(24, std::byte{3}));
  }
  comm.barrier();
}

TEST_CASE("Mpi.Communicator.WaitForOneReceive") {
  // Rank 1 waits for the first of two messages alone (rank 0 sends the second only after a barrier that
  // rank 1 enters once it has the first), then for the rest; a tag the group lacks is an Error; a receive
  // that never comes times out naming it.
  MpiCommunicator comm(MPI_COMM_WORLD, test_options());
  const MessageTag first{0, 1, Payload::activation}, second{0, 1, Payload::gradient}, never{1, 4, Payload::activation};
  if (comm.rank() == 0) {
    const std::vector<std::byte> a(300 * 1024, std::byte{5}), b(16, std::byte{6});  // a: rendezvous
    comm.post_send(1, first, a);
    comm.launch();  // nothing to do under MPI: the send started when posted
    comm.barrier();
    comm.post_send(1, second, b);
    comm.commit().wait(wait_limit);
    comm.barrier();
  } else if (comm.rank() == 1) {
    std::vector<std::byte> a(300 * 1024), b(16), c(8);
    comm.post_recv(0, first, a);
    comm.post_recv(0, second, b);
    auto group = comm.commit();
    CHECK_THROWS_WITH_AS(group.wait_receive(never, wait_limit),
                         doctest::Contains("waits for a receive of module 1, chunk 4, activation that its group does "
                                           "not have"),
                         Error);
    group.wait_receive(first, wait_limit);
    CHECK(a == std::vector<std::byte>(300 * 1024, std::byte{5}));
    comm.barrier();
    group.wait(wait_limit);
    CHECK(b == std::vector<std::byte>(16, std::byte{6}));
    comm.post_recv(0, never, c);
    auto lonely = comm.commit();
    bool timed_out = false;
    try {
      lonely.wait_receive(never, 200ms);
    } catch (const TimeoutError& e) {
      timed_out = true;
      CHECK(e.tag() == never);
      CHECK(e.peer() == 0);
      CHECK(std::string(e.what()).find("timed out after 200 ms") != std::string::npos);
    }
    CHECK(timed_out);
    comm.barrier();
  } else {
    comm.barrier();
    comm.barrier();
  }
}

TEST_CASE("Mpi.Communicator.TagsWithinTheBound") {
  MpiCommunicator comm(MPI_COMM_WORLD, test_options());
  int* ub = nullptr;
  int flag = 0;
  MPI_Comm_get_attr(MPI_COMM_WORLD, MPI_TAG_UB, &ub, &flag);
  REQUIRE(flag);
  const std::int64_t tag_ub = *ub;
  CHECK(comm.max_chunks() == (tag_ub + 1) / (2 * comm.options().max_modules));
  std::set<int> seen;
  for (int module = 0; module < comm.options().max_modules; ++module)
    for (int chunk = 0; chunk < 300; ++chunk)
      for (Payload payload : {Payload::activation, Payload::gradient}) {
        const int tag = comm.mpi_tag({module, chunk, payload});
        CHECK(tag >= 0);
        CHECK(tag <= tag_ub);
        seen.insert(tag);
      }
  CHECK(seen.size() == static_cast<std::size_t>(comm.options().max_modules) * 300 * 2);
  const auto last = static_cast<int>(comm.max_chunks() - 1);
  CHECK(comm.mpi_tag({comm.options().max_modules - 1, last, Payload::gradient}) <= tag_ub);
  CHECK_NOTHROW(comm.check_chunks(comm.max_chunks()));
  CHECK_THROWS_AS(comm.check_chunks(comm.max_chunks() + 1), ConfigError);
  std::vector<std::byte> buffer(4);
  const int peer = (comm.rank() + 1) % comm.size();
  CHECK_THROWS_AS(comm.post_send(peer, {0, last + 1, Payload::activation}, buffer), ConfigError);
  CHECK_THROWS_AS(comm.post_recv(peer, {comm.options().max_modules, 0, Payload::activation}, buffer), ConfigError);
  CHECK_THROWS_AS(comm.post_send(comm.size(), {0, 0, Payload::activation}, buffer), ConfigError);
  CHECK_THROWS_AS(comm.post_recv(-1, {0, 0, Payload::activation}, buffer), ConfigError);
  CHECK(comm.commit().size() == 0);  // nothing was queued by the refused posts
  // Fewer modules leave room for more chunks.
  MpiCommunicator two(MPI_COMM_WORLD, MpiOptions{.max_modules = 2});
  CHECK(two.max_chunks() == (tag_ub + 1) / 4);
  CHECK_THROWS_AS(MpiCommunicator(MPI_COMM_WORLD, MpiOptions{.max_modules = 0}), ConfigError);
}

TEST_CASE("Mpi.Communicator.GatherInRankOrder") {
  MpiCommunicator comm(MPI_COMM_WORLD, test_options());
  for (int root : {0, comm.size() - 1}) {
    const std::vector<std::byte> mine(static_cast<std::size_t>(comm.rank()) + 1,
                                      static_cast<std::byte>(comm.rank() + 10));
    const auto all = comm.gather(mine, root);
    if (comm.rank() == root) {
      REQUIRE(all.size() == static_cast<std::size_t>(comm.size()));
      for (int r = 0; r < comm.size(); ++r)
        CHECK(all[static_cast<std::size_t>(r)] ==
              std::vector<std::byte>(static_cast<std::size_t>(r) + 1, static_cast<std::byte>(r + 10)));
    } else {
      CHECK(all.empty());
    }
  }
}

TEST_CASE("Mpi.Communicator.ProgressThreadMovesMessagesWhileTheRankComputes") {
  // Ranks 0 and 1 each post their side of a large exchange (MPI's rendezvous: the payload moves only when
  // both processes call MPI after the receiver answered), then "compute": they never call MPI again until
  // the groups are done. Only the progress threads can finish them; without them this would never end.
  MpiOptions options;
  options.progress = MpiProgress::thread;
  MpiCommunicator comm(MPI_COMM_WORLD, options);
  REQUIRE(comm.has_progress_thread());
  const int me = comm.rank();
  if (me <= 1) {
    const MessageTag there{0, 8, Payload::activation}, back{0, 8, Payload::gradient};
    const std::size_t size = 1 << 20;
    const auto out = message(me, 1 - me, me == 0 ? there : back, size);
    std::vector<std::byte> in(size);
    comm.post_send(1 - me, me == 0 ? there : back, out);
    comm.post_recv(1 - me, me == 0 ? back : there, in);
    auto group = comm.commit();
    CHECK(done_without_mpi_calls([&] { return group.done(); }));
    CHECK(in == message(1 - me, me, me == 0 ? back : there, size));
    CHECK(comm.progress_polls() > 0);
    group.wait(wait_limit);  // already done: returns at once
  }
  comm.barrier();
}

TEST_CASE("Mpi.Communicator.ProgressOptions") {
  int level = 0;
  MPI_Query_thread(&level);
  REQUIRE(level == MPI_THREAD_MULTIPLE);                         // MpiSession asks for it; Open MPI provides it
  CHECK(MpiCommunicator(MPI_COMM_WORLD).has_progress_thread());  // automatic, with MPI_THREAD_MULTIPLE
  MpiOptions on_wait;
  on_wait.progress = MpiProgress::on_wait;
  MpiCommunicator quiet(MPI_COMM_WORLD, on_wait);
  CHECK_FALSE(quiet.has_progress_thread());
  CHECK(quiet.progress_polls() == 0);
  CHECK(quiet.progress_cpu_seconds() == 0.0);
  MpiOptions zero;
  zero.progress_interval = 0us;
  try {
    MpiCommunicator bad(MPI_COMM_WORLD, zero);
    FAIL("a progress interval of 0 us must be refused");
  } catch (const ConfigError& e) {
    CHECK(std::string(e.what()).find("progress_interval must be at least 1 us, got 0") != std::string::npos);
  }
}
