// The in-process communicator on its own: matching by tag, sizes, timeouts, aborts, barrier.
#include <doctest/doctest.h>

#include <array>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "dualpipe/dualpipe.hpp"
#include "support/messages.hpp"

using namespace dualpipe;
using namespace dualpipe::testing;
using namespace std::chrono_literals;

namespace {
constexpr MessageTag tag(int m, int c, Payload p = Payload::activation) { return MessageTag{m, c, p}; }
}  // namespace

TEST_CASE("Runtime.InProcess.MatchesByTag" * doctest::timeout(30)) {
  // Rank 0 sends chunk 0 then chunk 1 of two payloads; rank 1 posts its receives in another order.
  InProcessWorld world(2);
  std::array<int, 4> sent{10, 11, 20, 21};
  std::array<int, 4> got{};
  run_ranks(2, [&](int r) {
    InProcessCommunicator& c = world.communicator(r);
    CHECK(c.rank() == r);
    CHECK(c.size() == 2);
    if (r == 0) {
      c.post_send(1, tag(0, 0), std::as_bytes(std::span(&sent[0], 1)));
      c.post_send(1, tag(0, 1), std::as_bytes(std::span(&sent[1], 1)));
      c.post_send(1, tag(0, 0, Payload::gradient), std::as_bytes(std::span(&sent[2], 1)));
      c.post_send(1, tag(1, 0), std::as_bytes(std::span(&sent[3], 1)));
    } else {
      c.post_recv(0, tag(1, 0), std::as_writable_bytes(std::span(&got[3], 1)));
      c.post_recv(0, tag(0, 1), std::as_writable_bytes(std::span(&got[1], 1)));
      c.post_recv(0, tag(0, 0, Payload::gradient), std::as_writable_bytes(std::span(&got[2], 1)));
      c.post_recv(0, tag(0, 0), std::as_writable_bytes(std::span(&got[0], 1)));
    }
    auto g = c.commit();
    g.wait(10s);
  });
  CHECK(got == sent);
}

TEST_CASE("Runtime.InProcess.ManyGroupsAndSelfSend" * doctest::timeout(30)) {
  // A ring: every rank sends to the next and receives from the previous, 200 rounds, plus a message to
  // itself each round; the values prove that each round's message went to that round's buffer.
  const int P = 4, rounds = 200;
  InProcessWorld world(P);
  std::vector<int> errors(P, 0);
  run_ranks(P, [&](int r) {
    InProcessCommunicator& c = world.communicator(r);
    for (int i = 0; i < rounds; ++i) {
      int out = r * 1000 + i, in = -1, self_in = -1;
      c.post_send((r + 1) % P, tag(0, i), std::as_bytes(std::span(&out, 1)));
      c.post_recv((r + P - 1) % P, tag(0, i), std::as_writable_bytes(std::span(&in, 1)));
      c.post_send(r, tag(1, i), std::as_bytes(std::span(&out, 1)));
      c.post_recv(r, tag(1, i), std::as_writable_bytes(std::span(&self_in, 1)));
      c.commit().wait(10s);
      if (in != ((r + P - 1) % P) * 1000 + i || self_in != out) ++errors[static_cast<std::size_t>(r)];
    }
    c.barrier(10s);
  });
  CHECK(errors == std::vector<int>(P, 0));
}

TEST_CASE("Runtime.InProcess.SizeMismatchIsAnError" * doctest::timeout(30)) {
  InProcessWorld world(2);
  std::vector<std::string> messages(2);
  std::array<std::byte, 16> small{};
  std::array<std::byte, 24> big{};
  run_ranks(2, [&](int r) {
    InProcessCommunicator& c = world.communicator(r);
    if (r == 0) c.post_send(1, tag(1, 3, Payload::gradient), big);
    else c.post_recv(0, tag(1, 3, Payload::gradient), small);
    try {
      c.commit().wait(10s);
    } catch (const Error& e) {
      messages[static_cast<std::size_t>(r)] = e.what();
    }
  });
  for (const std::string& m : messages) {
    CAPTURE(m);
    CHECK(contains(m, "from rank 0 to rank 1"));
    CHECK(contains(m, "(module 1, chunk 3, gradient)"));
    CHECK(contains(m, "has 24 bytes but the receive buffer has 16 bytes"));
    CHECK(m ==
          "in-process communicator: message from rank 0 to rank 1 with tag (module 1, chunk 3, gradient) has 24 "
          "bytes but the receive buffer has 16 bytes");
  }
  CHECK(small == std::array<std::byte, 16>{});  // nothing was copied
}

TEST_CASE("Runtime.InProcess.SameTagMatchesOldestFirst" * doctest::timeout(30)) {
  // Two messages with one tag on one pair of ranks: the first send fills the first receive, whichever rank
  // launches first (round 0: the receives wait for the sends; round 1: the sends wait for the receives).
  InProcessWorld world(2);
  for (int round = 0; round < 2; ++round) {
    CAPTURE(round);
    std::array<int, 2> sent{1 + 10 * round, 2 + 10 * round};
    std::array<int, 2> got{};
    const int first = round == 0 ? 1 : 0;  // the rank that commits first
    auto post = [&](int r) {
      InProcessCommunicator& c = world.communicator(r);
      for (std::size_t i = 0; i < 2; ++i) {
        if (r == 0) c.post_send(1, tag(0, 4), std::as_bytes(std::span(&sent[i], 1)));
        else c.post_recv(0, tag(0, 4), std::as_writable_bytes(std::span(&got[i], 1)));
      }
      return c.commit();
    };
    auto early = post(first);  // its ops wait in the mailbox before the peer's are launched
    post(1 - first).wait(10s);
    early.wait(10s);
    CHECK(got == sent);
  }
}

TEST_CASE("Runtime.InProcess.MisuseIsAnError" * doctest::timeout(30)) {
  InProcessWorld world(2);
  InProcessCommunicator& c = world.communicator(0);
  std::array<std::byte, 4> buf{};
  CHECK_THROWS_WITH_AS(c.post_send(2, tag(0, 0), buf),
                       "in-process communicator: rank 0 post_send to peer 2 outside [0, 2)", Error);
  CHECK_THROWS_WITH_AS(c.post_recv(-1, tag(0, 0), buf),
                       "in-process communicator: rank 0 post_recv to peer -1 outside [0, 2)", Error);
  c.post_recv(1, tag(0, 0), buf);
  auto g = c.commit();
  CHECK_THROWS_WITH_AS((void)c.commit(),
                       "in-process communicator: rank 0 commits a new group before waiting on the previous one", Error);
  CHECK_THROWS_AS(g.wait(10ms), TimeoutError);
  c.post_recv(1, tag(0, 1), buf);
  auto again = c.commit();  // the failed wait closed the group
  CHECK_THROWS_AS(again.wait(10ms), TimeoutError);
}

TEST_CASE("Runtime.InProcess.TimeoutNamesWhatIsMissing" * doctest::timeout(30)) {
  InProcessWorld world(3);
  InProcessCommunicator& c = world.communicator(1);
  std::array<std::byte, 8> buf{};
  c.post_recv(2, tag(0, 5), buf);
  c.post_send(0, tag(1, 2, Payload::gradient), buf);
  std::string what;
  try {
    c.commit().wait(100ms);
  } catch (const TimeoutError& e) {
    what = e.what();
  }
  CHECK(contains(what, "rank 1 timed out after 100 ms"));
  CHECK(contains(what, "2 of 2 operations"));
  CHECK(contains(what, "receive from rank 2 (module 0, chunk 5, activation) 8 bytes"));
  CHECK(contains(what, "send to rank 0 (module 1, chunk 2, gradient)"));
  // The ops were taken back: a late peer matches nothing, and the next group works.
  std::array<std::byte, 8> other{};
  run_ranks(3, [&](int r) {
    if (r == 1) {
      world.communicator(1).post_recv(2, tag(0, 6), other);
      world.communicator(1).commit().wait(10s);
    } else if (r == 2) {
      std::array<std::byte, 8> v{std::byte{7}};
      world.communicator(2).post_send(1, tag(0, 6), v);
      world.communicator(2).commit().wait(10s);
    }
  });
  CHECK(other[0] == std::byte{7});
}

TEST_CASE("Runtime.InProcess.LaunchAndWaitForOneReceive" * doctest::timeout(30)) {
  // Rank 0 launches a send before its commit; rank 1 takes it and waits for that receive alone while its
  // other receive is still missing (rank 0 sends it only after seeing the first one arrive); then both
  // groups end.
  InProcessWorld world(2);
  int first = 5, second = 6, got_first = 0, got_second = 0;
  std::mutex m;
  std::condition_variable cv;
  bool first_seen = false;
  run_ranks(2, [&](int r) {
    InProcessCommunicator& c = world.communicator(r);
    if (r == 0) {
      c.post_send(1, tag(0, 0), std::as_bytes(std::span(&first, 1)));
      c.launch();  // rank 1 can take it now: nothing waits for rank 0's commit
      {
        std::unique_lock lk(m);
        CHECK(cv.wait_for(lk, 10s, [&] { return first_seen; }));
      }
      c.post_send(1, tag(0, 1), std::as_bytes(std::span(&second, 1)));
      c.commit().wait(10s);
    } else {
      c.post_recv(0, tag(0, 0), std::as_writable_bytes(std::span(&got_first, 1)));
      c.post_recv(0, tag(0, 1), std::as_writable_bytes(std::span(&got_second, 1)));
      auto g = c.commit();
      g.wait_receive(tag(0, 0), 10s);
      CHECK(got_first == 5);
      CHECK_FALSE(g.ready());  // the second is sent only after this
      {
        std::lock_guard lk(m);
        first_seen = true;
      }
      cv.notify_all();
      g.wait(10s);
      CHECK(got_second == 6);
    }
  });
}

TEST_CASE("Runtime.InProcess.EarlyLaunchMisuseAndTimeout" * doctest::timeout(30)) {
  InProcessWorld world(2);
  InProcessCommunicator& c = world.communicator(0);
  std::array<std::byte, 4> buf{};
  // A receive the group does not have.
  c.post_recv(1, tag(0, 0), buf);
  c.launch();
  auto g = c.commit();
  CHECK_THROWS_WITH_AS(g.wait_receive(tag(0, 9), 10ms),
                       "in-process communicator: rank 0 waits for a receive of (module 0, chunk 9, activation) that "
                       "its group does not have",
                       Error);
  // Launching while that group is open is refused; its receive times out, named.
  c.post_send(1, tag(1, 0), buf);
  CHECK_THROWS_WITH_AS(c.launch(), "in-process communicator: rank 0 launches ops before waiting on the previous group",
                       Error);
  std::string what;
  try {
    g.wait_receive(tag(0, 0), 50ms);
  } catch (const TimeoutError& e) {
    what = e.what();
    CHECK(e.tag() == tag(0, 0));
    CHECK(e.peer() == 1);
  }
  CHECK(contains(what, "rank 0 timed out after 50 ms"));
  CHECK(contains(what, "receive from rank 1 (module 0, chunk 0, activation) 4 bytes"));
  // The failed wait closed the group: the queued send launches into a new one, which works with a peer.
  std::array<std::byte, 4> in{};
  run_ranks(2, [&](int r) {
    if (r == 0) {
      world.communicator(0).launch();
      world.communicator(0).commit().wait(10s);
    } else {
      world.communicator(1).post_recv(0, tag(1, 0), in);
      world.communicator(1).commit().wait(10s);
    }
  });
}

TEST_CASE("Runtime.InProcess.AbortWakesEveryWaiter" * doctest::timeout(30)) {
  // Ranks 1..3 wait (60 s timeout) on messages that never come; rank 0 aborts: all wake with its origin.
  const int P = 4;
  InProcessWorld world(P);
  std::vector<std::string> origins(P);
  const auto start = std::chrono::steady_clock::now();
  run_ranks(P, [&](int r) {
    InProcessCommunicator& c = world.communicator(r);
    if (r == 0) {
      std::this_thread::sleep_for(50ms);
      c.abort(FailureOrigin{0, 1, 2, "FB1.2/0.0", "boom"});
      return;
    }
    std::array<std::byte, 4> buf{};
    c.post_recv(0, tag(0, r), buf);
    try {
      if (r == 3) c.barrier(60s);  // the barrier is woken too
      else c.commit().wait(60s);
    } catch (const CommAborted& e) {
      origins[static_cast<std::size_t>(r)] = e.origin().describe();
    }
  });
  CHECK(std::chrono::steady_clock::now() - start < 30s);
  for (int r = 1; r < P; ++r)
    CHECK(origins[static_cast<std::size_t>(r)] == "rank 0, module 1, chunk 2, op FB1.2/0.0: boom");
  // Later waits fail too, until the world is reset.
  InProcessCommunicator& c = world.communicator(1);
  CHECK_THROWS_AS(c.commit().wait(1s), CommAborted);
  world.reset();
  CHECK_NOTHROW(c.commit().wait(1s));
}

TEST_CASE("Runtime.InProcess.Misuse" * doctest::timeout(30)) {
  InProcessWorld world(2);
  InProcessCommunicator& c = world.communicator(0);
  std::array<std::byte, 4> buf{};
  CHECK_THROWS_AS(c.post_send(2, tag(0, 0), buf), Error);
  CHECK_THROWS_AS(c.post_recv(-1, tag(0, 0), buf), Error);
  c.post_recv(1, tag(0, 0), buf);
  {
    auto g = c.commit();
    CHECK_THROWS_WITH_AS(c.commit(), doctest::Contains("before waiting on the previous one"), Error);
  }  // dropped unwaited: its receive is taken back
  CHECK_NOTHROW(c.commit().wait(10ms));
  CHECK_THROWS_AS(InProcessWorld(0), ConfigError);
  CHECK_THROWS_AS((void)world.communicator(2), ConfigError);
}

namespace {
/// Both runners' rule: every rank finishes (rank 0 last here), then the lowest rank's exception comes out.
void check_rethrows_lowest_rank_after_all(const std::function<void(const std::function<void(int)>&)>& run_on_4) {
  std::vector<int> ran(4, 0);
  try {
    run_on_4([&](int r) {
      if (r == 0) std::this_thread::sleep_for(20ms);
      ran[static_cast<std::size_t>(r)] = 1;
      if (r == 3) throw std::runtime_error("three");
      if (r == 1) throw std::runtime_error("one");
    });
    FAIL("no exception");
  } catch (const std::runtime_error& e) {
    CHECK(std::string(e.what()) == "one");
  }
  CHECK(ran == std::vector<int>(4, 1));
}
}  // namespace

TEST_CASE("Runtime.RunRanks.RethrowsLowestRankAfterJoiningAll" * doctest::timeout(30)) {
  check_rethrows_lowest_rank_after_all([](const std::function<void(int)>& fn) { run_ranks(4, fn); });
  CHECK_THROWS_AS(run_ranks(0, [](int) {}), ConfigError);
}

TEST_CASE("Runtime.RankThreads.SameThreadsEveryRun" * doctest::timeout(30)) {
  RankThreads team(3);
  CHECK(team.ranks() == 3);
  std::vector<std::thread::id> first(3), second(3);
  team.run([&](int r) { first[static_cast<std::size_t>(r)] = std::this_thread::get_id(); });
  team.run([&](int r) { second[static_cast<std::size_t>(r)] = std::this_thread::get_id(); });
  CHECK(first == second);  // kept, not started again
  CHECK(first[0] != first[1]);
  CHECK(first[1] != first[2]);
  CHECK(first[0] != first[2]);
  for (const std::thread::id& id : first) CHECK(id != std::this_thread::get_id());
  // Every rank runs every call, many times over (a lost wake-up would hang here).
  std::vector<int> calls(3, 0);
  for (int step = 0; step < 200; ++step) team.run([&](int r) { ++calls[static_cast<std::size_t>(r)]; });
  CHECK(calls == std::vector<int>(3, 200));
}

TEST_CASE("Runtime.RankThreads.RethrowsLowestRankAfterAllFinish" * doctest::timeout(30)) {
  RankThreads team(4);
  check_rethrows_lowest_rank_after_all([&](const std::function<void(int)>& fn) { team.run(fn); });
  // The failure is not carried into the next run.
  CHECK_NOTHROW(team.run([](int) {}));
  CHECK_THROWS_WITH_AS(RankThreads(0), doctest::Contains("ranks must be at least 1 (got ranks=0)"), ConfigError);
}
