// tests/baselines/rendezvous.hpp: a small, test-only model of the commit-rendezvous semantics of
// docs/schedules.md, written independently of analysis/simulator.hpp: it shows that schedules cannot
// deadlock and reads off their idle times, and test_with_analysis.cpp checks that both agree.
//
// Ops on a rank run in order. A compute op takes its cost (Bw costs B-W). Posts accumulate; a commit
// launches them all at the rank's current time and returns when every one has finished; a transfer
// finishes at max(sender launch, receiver launch) + latency. Sends and receives pair up by
// (what, module, chunk, sender, receiver), with the peer found from the schedule's placement.
#pragma once

#include <algorithm>
#include <map>
#include <string>
#include <tuple>
#include <vector>

#include "dualpipe/dualpipe.hpp"

namespace dualpipe::testing {

struct RendezvousCosts {
  double F = 1, B = 2, W = 1, FB = 3, latency = 0;
};

struct RendezvousResult {
  bool completed = false;  ///< Every rank reached the end of its list.
  std::string problem;     ///< Why not (deadlock, post without peer, double post, uncommitted post).
  double makespan = 0;
  std::vector<double> busy;  ///< Compute time per rank.
  std::vector<double> idle;  ///< makespan - busy.
  [[nodiscard]] double worst_idle() const { return idle.empty() ? 0 : *std::max_element(idle.begin(), idle.end()); }
};

[[nodiscard]] inline double rendezvous_cost(const Op& op, const RendezvousCosts& c) {
  switch (op.kind) {
    case OpKind::forward: return c.F;
    case OpKind::backward: return c.B;
    case OpKind::backward_input: return c.B - c.W;
    case OpKind::forward_backward: return c.FB;
    case OpKind::weight: return c.W;
    default: return 0;
  }
}

/// Runs the trace under the commit-rendezvous model. `kind` gives the placement (who each post talks to).
[[nodiscard]] inline RendezvousResult run_rendezvous(const Trace& t, ScheduleKind kind, const RendezvousCosts& costs) {
  using Key = std::tuple<bool, int, int, int, int>;  // activation?, module, chunk, sender, receiver
  struct Side {
    bool launched = false;
    double at = 0;
  };
  struct Transfer {
    Side send, recv;
  };
  struct Waiting {
    Key key;
    bool is_send;
  };
  struct RankState {
    std::size_t pc = 0;
    double time = 0;
    std::vector<Waiting> pending;  // posted since the last commit
    std::vector<Waiting> blocked;  // launched at the commit the rank is sitting on
    bool at_commit = false;
  };

  RendezvousResult res;
  const int P = t.ranks;
  std::map<Key, Transfer> transfers;
  std::vector<RankState> st(static_cast<std::size_t>(P));
  res.busy.assign(static_cast<std::size_t>(P), 0.0);

  auto fail = [&](std::string why) {
    res.completed = false;
    res.problem = std::move(why);
    return res;
  };

  bool progress = true;
  while (progress) {
    progress = false;
    for (int r = 0; r < P; ++r) {
      RankState& s = st[static_cast<std::size_t>(r)];
      const auto& ops = t.ops[static_cast<std::size_t>(r)];
      while (s.pc < ops.size()) {
        const Op& op = ops[s.pc];
        if (s.at_commit) {
          double done = s.time;
          bool ready = true;
          for (const Waiting& w : s.blocked) {
            const Transfer& tr = transfers[w.key];
            const Side& other = w.is_send ? tr.recv : tr.send;
            const Side& mine = w.is_send ? tr.send : tr.recv;
            if (!other.launched) {
              ready = false;
              break;
            }
            done = std::max(done, std::max(mine.at, other.at) + costs.latency);
          }
          if (!ready) break;
          s.time = done;
          s.blocked.clear();
          s.at_commit = false;
          ++s.pc;
          progress = true;
          continue;
        }
        if (is_post(op.kind)) {
          const ModulePlacement pl = schedule_placement(kind, t.ranks, t.chunks, r, op.module);
          const bool send = is_send(op.kind);
          const bool act = carries_activation(op.kind);
          // Activations go prev -> next, gradients next -> prev.
          const int peer = act == send ? pl.next_rank : pl.prev_rank;
          if (peer < 0) return fail("rank " + std::to_string(r) + ": post " + to_token(op) + " has no peer");
          const Key key{act, op.module, op.chunk, send ? r : peer, send ? peer : r};
          s.pending.push_back({key, send});
          ++s.pc;
          progress = true;
        } else if (op.kind == OpKind::commit) {
          for (const Waiting& w : s.pending) {
            Side& side = w.is_send ? transfers[w.key].send : transfers[w.key].recv;
            if (side.launched) return fail("rank " + std::to_string(r) + ": a transfer posted twice");
            side = {true, s.time};
          }
          s.blocked = std::move(s.pending);
          s.pending.clear();
          s.at_commit = true;
          progress = true;
        } else {
          const double c = rendezvous_cost(op, costs);
          s.time += c;
          res.busy[static_cast<std::size_t>(r)] += c;
          ++s.pc;
          progress = true;
        }
      }
    }
  }
  for (int r = 0; r < P; ++r) {
    const RankState& s = st[static_cast<std::size_t>(r)];
    if (s.pc < t.ops[static_cast<std::size_t>(r)].size())
      return fail("deadlock: rank " + std::to_string(r) + " blocked at op " + std::to_string(s.pc) + " (" +
                  to_token(t.ops[static_cast<std::size_t>(r)][s.pc]) + ")");
    if (!s.pending.empty()) return fail("rank " + std::to_string(r) + ": posts never committed");
  }
  for (const auto& [key, tr] : transfers)
    if (!tr.send.launched || !tr.recv.launched) return fail("a transfer without its other end");
  res.completed = true;
  for (const RankState& s : st) res.makespan = std::max(res.makespan, s.time);
  for (double b : res.busy) res.idle.push_back(res.makespan - b);
  return res;
}

}  // namespace dualpipe::testing
