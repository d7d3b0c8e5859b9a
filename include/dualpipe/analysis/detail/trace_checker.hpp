// dualpipe/analysis/detail/trace_checker.hpp: the validator's machinery (analysis/validator.hpp has the
// rules, in order, and the API): TraceChecker runs the passes over one trace and fills the TraceIndex that
// the simulators reuse.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "dualpipe/analysis/detail/rendezvous.hpp"
#include "dualpipe/analysis/detail/trace_index.hpp"
#include "dualpipe/analysis/op_grid.hpp"
#include "dualpipe/analysis/validation_result.hpp"
#include "dualpipe/core/error.hpp"
#include "dualpipe/core/op.hpp"
#include "dualpipe/core/trace.hpp"
#include "dualpipe/schedule/placement.hpp"

namespace dualpipe {

namespace detail {

/// The validator's passes over one trace; fills a TraceIndex the simulators reuse.
class TraceChecker {
public:
  TraceChecker(const Trace& t, const PlacementFn& place, int modules_per_rank, TraceIndex& ix) : _t(t), _ix(ix) {
    load_placements(place, modules_per_rank);
  }

  /// Runs passes 1-3 and, when `check_progress`, pass 4. Returns the first failure, or ok.
  ValidationResult run(bool check_progress) {
    if (!structure() || !pairing() || !semantics()) return std::move(_result);
    if (check_progress) {
      std::vector<double> start, end;
      const auto stuck = run_rendezvous(_t, _ix, OpCostTable{}, 0.0, start, end);
      if (!stuck.empty()) report_deadlock(stuck, start);
    }
    return std::move(_result);
  }

private:
  static constexpr std::uint16_t kForward = 1, kBackwardInput = 2, kWeight = 4, kRecvFPosted = 8, kRecvFCommitted = 16,
                                 kRecvBPosted = 32, kRecvBCommitted = 64, kSendF = 128, kSendB = 256;
  enum PostList { list_sF, list_rF, list_sB, list_rB };

  [[nodiscard]] const std::vector<Op>& ops(int r) const { return _t.ops[static_cast<std::size_t>(r)]; }
  [[nodiscard]] const Op& op(int r, int i) const { return ops(r)[static_cast<std::size_t>(i)]; }
  [[nodiscard]] std::vector<std::int32_t>& posts(int r, int m, PostList l) {
    return _posts[static_cast<std::size_t>((r * _ix.modules + m) * 4 + l)];
  }

  void load_placements(const PlacementFn& place, int modules) {
    if (modules < 1) throw ConfigError("modules_per_rank must be at least 1 (got " + std::to_string(modules) + ")");
    const int ranks = static_cast<int>(_t.ops.size());
    _ix.ranks = ranks;
    _ix.modules = modules;
    _ix.placement.clear();
    _ix.slot_base.assign(1, 0);
    for (int r = 0; r < ranks; ++r)
      for (int m = 0; m < modules; ++m) {
        ModulePlacement p = place(r, m);
        const std::string where = "placement of rank " + std::to_string(r) + " module " + std::to_string(m);
        if (p.num_chunks < 0) throw ConfigError(where + ": num_chunks must be >= 0");
        if (p.prev_rank < -1 || p.prev_rank >= ranks || p.next_rank < -1 || p.next_rank >= ranks)
          throw ConfigError(where + ": prev_rank and next_rank must be -1 or a rank in [0, " + std::to_string(ranks) +
                            ") (got " + std::to_string(p.prev_rank) + ", " + std::to_string(p.next_rank) + ")");
        if (p.local_prev_module < -1 || p.local_prev_module >= modules || p.local_next_module < -1 ||
            p.local_next_module >= modules)
          throw ConfigError(where + ": local modules must be -1 or in [0, " + std::to_string(modules) + ")");
        _ix.placement.push_back(p);
        _ix.slot_base.push_back(_ix.slot_base.back() + p.num_chunks);
      }
    // Both ends of every link must agree, or pairing would be ambiguous.
    for (int r = 0; r < ranks; ++r)
      for (int m = 0; m < modules; ++m) {
        const ModulePlacement& p = _ix.at(r, m);
        const std::string where = "placement of rank " + std::to_string(r) + " module " + std::to_string(m);
        if (p.next_rank >= 0 &&
            (_ix.at(p.next_rank, m).prev_rank != r || _ix.at(p.next_rank, m).num_chunks != p.num_chunks))
          throw ConfigError(where + ": next_rank " + std::to_string(p.next_rank) +
                            " must name this rank as its prev_rank, with the same num_chunks");
        if (p.prev_rank >= 0 && _ix.at(p.prev_rank, m).next_rank != r)
          throw ConfigError(where + ": prev_rank " + std::to_string(p.prev_rank) +
                            " must name this rank as its next_rank");
        if (p.local_next_module >= 0 && _ix.at(r, p.local_next_module).local_prev_module != m)
          throw ConfigError(where + ": local_next_module must name this module as its local_prev_module");
        if (p.local_prev_module >= 0 && _ix.at(r, p.local_prev_module).local_next_module != m)
          throw ConfigError(where + ": local_prev_module must name this module as its local_next_module");
      }
    _ix.op_base.assign(1, 0);
    for (int r = 0; r < ranks; ++r)
      _ix.op_base.push_back(_ix.op_base.back() + static_cast<std::int32_t>(ops(r).size()));
    const std::size_t total = _ix.total_ops();
    _ix.op_rank.resize(total);
    for (int r = 0; r < ranks; ++r)
      std::fill(_ix.op_rank.begin() + _ix.op_base[static_cast<std::size_t>(r)],
                _ix.op_rank.begin() + _ix.op_base[static_cast<std::size_t>(r) + 1], r);
    _ix.partner.assign(total, -1);
    const auto slots = static_cast<std::size_t>(_ix.slot_base.back());
    _ix.recv_activation.assign(slots, -1);
    _ix.recv_gradient.assign(slots, -1);
    _state.assign(slots, 0);
    _posts.assign(static_cast<std::size_t>(ranks * modules * 4), {});
  }

  // ---- reporting ----------------------------------------------------------------------------------
  bool fail(ValidationRule rule, int rank, int index, const std::string& why, std::vector<OpRef> marks = {}) {
    _result.ok = false;
    _result.rule = rule;
    _result.rank = rank;
    _result.index = index;
    marks.insert(marks.begin(), OpRef{rank, index});
    std::string head = "invalid " + _t.schedule + " trace (ranks=" + std::to_string(_t.ranks) +
                       " chunks=" + std::to_string(_t.chunks) + " mode=" + std::string(to_string(_t.mode)) +
                       "): rank " + std::to_string(rank) + ", op " + std::to_string(index) + " (" + token(rank, index) +
                       "): " + why + " [rule " + std::string(to_string(rule)) + "]\n";
    _result.message = head + format_op_grid(_t, marks);
    return false;
  }
  [[nodiscard]] std::string token(int r, int i) const {
    if (r < 0 || r >= static_cast<int>(_t.ops.size())) return "-";
    return i < static_cast<int>(ops(r).size()) ? to_token(op(r, i)) : std::string("end of list");
  }
  static std::string mc(int m, int c) { return std::to_string(m) + "." + std::to_string(c); }

  // ---- pass 1: structure ----------------------------------------------------------------------------
  bool structure() {
    if (_t.ranks != static_cast<int>(_t.ops.size())) {
      _result.ok = false;
      _result.rule = ValidationRule::malformed_trace;
      _result.message = "trace header says ranks=" + std::to_string(_t.ranks) + " but it has " +
                        std::to_string(_t.ops.size()) + " op lists [rule malformed_trace]";
      return false;
    }
    const bool forward_only = _t.mode == Mode::forward;
    for (int r = 0; r < _ix.ranks; ++r) {
      int first_uncommitted = -1;
      const int n = static_cast<int>(ops(r).size());
      for (int i = 0; i < n; ++i) {
        const Op& o = op(r, i);
        if (forward_only && (o.has_backward() || o.kind == OpKind::weight || o.kind == OpKind::send_gradient ||
                             o.kind == OpKind::recv_gradient))
          return fail(ValidationRule::not_in_forward_mode, r, i,
                      "a forward-only trace has no backward, W or gradient post");
        if (o.kind == OpKind::commit) {
          first_uncommitted = -1;
          continue;
        }
        if (o.kind == OpKind::weight) continue;
        if (!in_range(r, o.module, o.chunk))
          return fail(ValidationRule::op_out_of_range, r, i, range_message(r, o.module, o.chunk));
        if (o.kind == OpKind::forward_backward && !in_range(r, o.module1, o.chunk1))
          return fail(ValidationRule::op_out_of_range, r, i, range_message(r, o.module1, o.chunk1));
        // A chunk's backward needs its own forward finished: the two halves of an FB cannot be one chunk.
        if (o.kind == OpKind::forward_backward && o.module == o.module1 && o.chunk == o.chunk1)
          return fail(ValidationRule::overlap_of_one_chunk, r, i,
                      "FB overlaps the forward and the backward of the same chunk " + std::to_string(o.chunk) +
                          " of module " + std::to_string(o.module));
        if (!is_post(o.kind)) continue;
        const ModulePlacement& p = _ix.at(r, o.module);
        const bool towards_next = o.kind == OpKind::send_activation || o.kind == OpKind::recv_gradient;
        const int peer = towards_next ? p.next_rank : p.prev_rank;
        if (peer < 0)
          return fail(ValidationRule::post_without_peer, r, i,
                      std::string(is_send(o.kind) ? "send to" : "receive from") + " no peer: module " +
                          std::to_string(o.module) + " of rank " + std::to_string(r) + " has no " +
                          (towards_next ? "next" : "previous") + " rank");
        const PostList l = o.kind == OpKind::send_activation   ? list_sF
                           : o.kind == OpKind::recv_activation ? list_rF
                           : o.kind == OpKind::send_gradient   ? list_sB
                                                               : list_rB;
        posts(r, o.module, l).push_back(i);
        if (first_uncommitted < 0) first_uncommitted = i;
      }
      if (first_uncommitted >= 0)
        return fail(ValidationRule::uncommitted_post, r, first_uncommitted,
                    "posted but never committed (no '|' after it)");
    }
    return true;
  }
  [[nodiscard]] bool in_range(int r, int m, int c) const {
    return m >= 0 && m < _ix.modules && c >= 0 && c < _ix.at(r, m).num_chunks;
  }
  [[nodiscard]] std::string range_message(int r, int m, int c) const {
    if (m < 0 || m >= _ix.modules)
      return "module " + std::to_string(m) + " is not in [0, " + std::to_string(_ix.modules) + ")";
    return "chunk " + std::to_string(c) + " of module " + std::to_string(m) + " is not in [0, " +
           std::to_string(_ix.at(r, m).num_chunks) + ")";
  }

  // ---- pass 2: pairing --------------------------------------------------------------------------------
  bool pairing() {
    for (int r = 0; r < _ix.ranks; ++r)
      for (int m = 0; m < _ix.modules; ++m) {
        const ModulePlacement& p = _ix.at(r, m);
        if (p.next_rank >= 0 && !pair(r, m, p.next_rank, list_sF, list_rF)) return false;
        if (p.prev_rank >= 0 && !pair(r, m, p.prev_rank, list_sB, list_rB)) return false;
      }
    return true;
  }
  bool pair(int r, int m, int q, PostList send_list, PostList recv_list) {
    const auto& sends = posts(r, m, send_list);
    const auto& recvs = posts(q, m, recv_list);
    const std::size_t n = std::min(sends.size(), recvs.size());
    const std::int32_t rb = _ix.op_base[static_cast<std::size_t>(r)], qb = _ix.op_base[static_cast<std::size_t>(q)];
    for (std::size_t k = 0; k < n; ++k) {
      const Op& s = op(r, sends[k]);
      const Op& v = op(q, recvs[k]);
      if (s.chunk != v.chunk)
        return fail(ValidationRule::pair_mismatch, r, sends[k],
                    "send #" + std::to_string(k) + " of module " + std::to_string(m) + " pairs with receive #" +
                        std::to_string(k) + " on rank " + std::to_string(q) + " (op " + std::to_string(recvs[k]) +
                        ", " + to_token(v) + "), which names another chunk",
                    {OpRef{q, recvs[k]}});
      _ix.partner[static_cast<std::size_t>(rb + sends[k])] = qb + recvs[k];
      _ix.partner[static_cast<std::size_t>(qb + recvs[k])] = rb + sends[k];
    }
    const std::string counts = "rank " + std::to_string(r) + " posts " + std::to_string(sends.size()) + " " +
                               (send_list == list_sF ? "sF" : "sB") + std::to_string(m) + " and rank " +
                               std::to_string(q) + " posts " + std::to_string(recvs.size()) + " " +
                               (recv_list == list_rF ? "rF" : "rB") + std::to_string(m);
    if (sends.size() > n)
      return fail(ValidationRule::send_without_receive, r, sends[n],
                  "no matching receive on rank " + std::to_string(q) + " (" + counts + ")");
    if (recvs.size() > n)
      return fail(ValidationRule::receive_without_send, q, recvs[n],
                  "no matching send from rank " + std::to_string(r) + " (" + counts + ")");
    return true;
  }

  // ---- pass 3: semantics ------------------------------------------------------------------------------
  bool semantics() {
    const bool train = _t.mode == Mode::train;
    std::vector<std::int32_t> fifo;          // deferred weight groups (slots), oldest at `head`
    std::vector<std::int32_t> pending_recv;  // slot * 2 + (1 for gradient) of receives since the last commit
    for (int r = 0; r < _ix.ranks; ++r) {
      fifo.clear();
      pending_recv.clear();
      std::size_t head = 0;
      const std::int32_t base = _ix.op_base[static_cast<std::size_t>(r)];
      const int n = static_cast<int>(ops(r).size());
      for (int i = 0; i < n; ++i) {
        const Op& o = op(r, i);
        switch (o.kind) {
          case OpKind::forward:
            if (!forward(r, i, o.module, o.chunk)) return false;
            break;
          case OpKind::forward_backward:
            if (!forward(r, i, o.module, o.chunk) || !backward(r, i, o.module1, o.chunk1)) return false;
            set(r, o.module1, o.chunk1, kWeight);
            break;
          case OpKind::backward:
            if (!backward(r, i, o.module, o.chunk)) return false;
            set(r, o.module, o.chunk, kWeight);
            break;
          case OpKind::backward_input:
            if (!backward(r, i, o.module, o.chunk)) return false;
            fifo.push_back(_ix.slot(r, o.module, o.chunk));
            break;
          case OpKind::weight:
            if (head == fifo.size())
              return fail(ValidationRule::weight_without_deferred_group, r, i,
                          "W but no deferred weight group is stored");
            _state[static_cast<std::size_t>(fifo[head++])] |= kWeight;
            break;
          case OpKind::send_activation:
            if (!has(r, o.module, o.chunk, kForward))
              return fail(ValidationRule::send_before_compute, r, i,
                          "sends the activation of F" + mc(o.module, o.chunk) + " before that forward ran");
            if (!post_once(r, i, o, kSendF)) return false;
            break;
          case OpKind::send_gradient:
            if (!has(r, o.module, o.chunk, kBackwardInput))
              return fail(ValidationRule::send_before_compute, r, i,
                          "sends the gradient of B" + mc(o.module, o.chunk) + " before that backward ran");
            if (!post_once(r, i, o, kSendB)) return false;
            break;
          case OpKind::recv_activation:
            if (!post_once(r, i, o, kRecvFPosted)) return false;
            _ix.recv_activation[static_cast<std::size_t>(_ix.slot(r, o.module, o.chunk))] = base + i;
            pending_recv.push_back(_ix.slot(r, o.module, o.chunk) * 2);
            break;
          case OpKind::recv_gradient:
            if (!post_once(r, i, o, kRecvBPosted)) return false;
            _ix.recv_gradient[static_cast<std::size_t>(_ix.slot(r, o.module, o.chunk))] = base + i;
            pending_recv.push_back(_ix.slot(r, o.module, o.chunk) * 2 + 1);
            break;
          case OpKind::commit:
            for (std::int32_t v : pending_recv)
              _state[static_cast<std::size_t>(v / 2)] |= (v % 2) ? kRecvBCommitted : kRecvFCommitted;
            pending_recv.clear();
            break;
        }
      }
      // End of the list: everything done, nothing left over.
      for (int m = 0; m < _ix.modules; ++m) {
        const ModulePlacement& p = _ix.at(r, m);
        for (int c = 0; c < p.num_chunks; ++c) {
          const std::uint16_t s = _state[static_cast<std::size_t>(_ix.slot(r, m, c))];
          if (!(s & kForward)) return fail(ValidationRule::missing_forward, r, n, "F" + mc(m, c) + " never runs");
          if (train && !(s & kBackwardInput))
            return fail(ValidationRule::missing_backward, r, n, "the backward of " + mc(m, c) + " never runs");
        }
      }
      if (head != fifo.size())
        return fail(ValidationRule::leftover_deferred_group, r, n,
                    std::to_string(fifo.size() - head) + " deferred weight group(s) never run by a W");
      for (int m = 0; m < _ix.modules; ++m) {
        const ModulePlacement& p = _ix.at(r, m);
        for (int c = 0; c < p.num_chunks; ++c) {
          const std::uint16_t s = _state[static_cast<std::size_t>(_ix.slot(r, m, c))];
          if (p.next_rank >= 0 && !(s & kSendF))
            return fail(ValidationRule::missing_send, r, n,
                        "the activation of F" + mc(m, c) + " is never sent to rank " + std::to_string(p.next_rank));
          if (train && p.prev_rank >= 0 && !(s & kSendB))
            return fail(ValidationRule::missing_send, r, n,
                        "the gradient of B" + mc(m, c) + " is never sent to rank " + std::to_string(p.prev_rank));
        }
      }
    }
    return true;
  }
  [[nodiscard]] bool has(int r, int m, int c, std::uint16_t bit) const {
    return (_state[static_cast<std::size_t>(_ix.slot(r, m, c))] & bit) != 0;
  }
  void set(int r, int m, int c, std::uint16_t bit) { _state[static_cast<std::size_t>(_ix.slot(r, m, c))] |= bit; }

  bool post_once(int r, int i, const Op& o, std::uint16_t bit) {
    if (has(r, o.module, o.chunk, bit))
      return fail(ValidationRule::duplicate_post, r, i, to_token(o) + " was already posted on this rank");
    set(r, o.module, o.chunk, bit);
    return true;
  }

  bool forward(int r, int i, int m, int c) {
    if (has(r, m, c, kForward))
      return fail(ValidationRule::duplicate_forward, r, i, "F" + mc(m, c) + " runs a second time");
    const ModulePlacement& p = _ix.at(r, m);
    if (p.prev_rank >= 0 && !has(r, m, c, kRecvFCommitted))
      return fail(ValidationRule::forward_before_receive, r, i,
                  "F" + mc(m, c) + " runs before its input from rank " + std::to_string(p.prev_rank) + " arrived (rF" +
                      mc(m, c) +
                      (has(r, m, c, kRecvFPosted) ? " is posted but not yet committed)" : " is not posted yet)"));
    if (p.local_prev_module >= 0) {
      const int lm = p.local_prev_module;
      const int lc = c + p.chunk_offset - _ix.at(r, lm).chunk_offset;
      if (!in_range(r, lm, lc) || !has(r, lm, lc, kForward))
        return fail(ValidationRule::local_handoff_order, r, i,
                    "F" + mc(m, c) + " runs before F" + mc(lm, lc) + ", whose output is its input on this rank");
    }
    set(r, m, c, kForward);
    return true;
  }

  bool backward(int r, int i, int m, int c) {
    if (!has(r, m, c, kForward))
      return fail(ValidationRule::backward_before_forward, r, i,
                  "the backward of " + mc(m, c) + " runs before its forward");
    if (has(r, m, c, kBackwardInput))
      return fail(ValidationRule::duplicate_backward, r, i, "the backward of " + mc(m, c) + " runs a second time");
    const ModulePlacement& p = _ix.at(r, m);
    if (p.next_rank >= 0 && !has(r, m, c, kRecvBCommitted))
      return fail(ValidationRule::backward_before_receive, r, i,
                  "the backward of " + mc(m, c) + " runs before its output gradient from rank " +
                      std::to_string(p.next_rank) + " arrived (rB" + mc(m, c) +
                      (has(r, m, c, kRecvBPosted) ? " is posted but not yet committed)" : " is not posted yet)"));
    if (p.local_next_module >= 0) {
      const int lm = p.local_next_module;
      const int lc = c + p.chunk_offset - _ix.at(r, lm).chunk_offset;
      if (!in_range(r, lm, lc) || !has(r, lm, lc, kBackwardInput))
        return fail(ValidationRule::local_handoff_order, r, i,
                    "the backward of " + mc(m, c) + " runs before the backward of " + mc(lm, lc) +
                        ", whose input gradient is its output gradient on this rank");
    }
    set(r, m, c, kBackwardInput);
    return true;
  }

public:
  /// The deadlock failure for ranks `stuck` (rank, op index), after a run of the rendezvous or async model
  /// in which `launched[g] >= 0` marks the posts that were launched.
  ValidationResult deadlock_result(const std::vector<OpRef>& stuck, const std::vector<double>& launched) {
    report_deadlock(stuck, launched);
    return std::move(_result);
  }

private:
  // ---- pass 4: progress -------------------------------------------------------------------------------
  void report_deadlock(const std::vector<OpRef>& stuck, const std::vector<double>& launched) {
    std::string why = "deadlock under the commit-rendezvous model: no rank can progress.";
    std::vector<OpRef> marks;
    for (const OpRef& s : stuck) {
      why += "\n  rank " + std::to_string(s.rank) + " is stuck at op " + std::to_string(s.index) + " (" +
             token(s.rank, s.index) + ")";
      marks.push_back(s);
      // Name one transfer of the stuck group whose peer never launched.
      const std::int32_t base = _ix.op_base[static_cast<std::size_t>(s.rank)];
      for (int j = s.index - 1; j >= 0 && op(s.rank, j).kind != OpKind::commit; --j) {
        if (!is_post(op(s.rank, j).kind)) continue;
        const std::int32_t q = _ix.partner[static_cast<std::size_t>(base + j)];
        if (q < 0 || launched[static_cast<std::size_t>(q)] >= 0) continue;
        const OpRef peer = _ix.ref(q);
        why += ", waiting for " + token(s.rank, j) + "'s peer " + token(peer.rank, peer.index) + " (rank " +
               std::to_string(peer.rank) + ", op " + std::to_string(peer.index) + ")";
        break;
      }
    }
    marks.erase(marks.begin());
    fail(ValidationRule::deadlock, stuck.front().rank, stuck.front().index, why, std::move(marks));
    _result.stuck = stuck;
  }

  const Trace& _t;
  TraceIndex& _ix;
  ValidationResult _result;
  std::vector<std::uint16_t> _state;              // [slot]: k* bits
  std::vector<std::vector<std::int32_t>> _posts;  // [(r * modules + m) * 4 + list]: op indices
};

}  // namespace detail

}  // namespace dualpipe
