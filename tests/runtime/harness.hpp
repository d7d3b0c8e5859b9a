// Runs the test model on P threads with the in-process communicator, and compares with a sequential run.
#pragma once

#include <doctest/doctest.h>

#include <cmath>
#include <exception>
#include <memory>
#include <numeric>
#include <vector>

#include "dualpipe/dualpipe.hpp"
#include "test_model.hpp"

namespace testmodel {

/// Every rank of one pipeline of the test model: stages, pipelines, the in-process world.
template <class Schedule, class StageT>
struct Harness {
  using Pipe = dualpipe::Pipeline<Schedule, dualpipe::InProcessCommunicator, StageT>;
  static constexpr int M = Schedule::modules_per_rank;

  int P, C, S;
  dualpipe::PipelineOptions options;
  dualpipe::InProcessWorld world;
  std::vector<std::vector<std::unique_ptr<StageT>>> stages;  // [pipeline rank][module]
  std::vector<std::unique_ptr<Pipe>> pipes;                  // [communicator rank]
  Batch batch;

  Harness(int ranks, int chunks, dualpipe::PipelineOptions opts = {})
      : P(ranks), C(chunks), S(Schedule::placement(ranks, chunks, 0, 0).num_stages), options(std::move(opts)),
        world(ranks), batch(chunks, S) {
    stages.resize(static_cast<std::size_t>(P));
    for (int p = 0; p < P; ++p)
      for (int m = 0; m < M; ++m) {
        const auto pl = Schedule::placement(P, C, p, m);
        stages[static_cast<std::size_t>(p)].push_back(std::make_unique<StageT>(pl.stage, pl.num_chunks));
      }
    for (int c = 0; c < P; ++c) {
      const int p = pipeline_rank(c);
      std::array<StageT*, M> ptrs{};
      for (int m = 0; m < M; ++m)
        ptrs[static_cast<std::size_t>(m)] = stages[static_cast<std::size_t>(p)][static_cast<std::size_t>(m)].get();
      pipes.push_back(std::make_unique<Pipe>(world.communicator(c), ptrs, options));
    }
  }

  [[nodiscard]] int pipeline_rank(int comm_rank) const {
    return options.rank_mapping.empty() ? comm_rank : options.rank_mapping[static_cast<std::size_t>(comm_rank)];
  }
  [[nodiscard]] bool has_first(int p) const {
    for (int m = 0; m < M; ++m)
      if (Schedule::placement(P, C, p, m).is_first_stage()) return true;
    return false;
  }
  [[nodiscard]] bool has_last(int p) const {
    for (int m = 0; m < M; ++m)
      if (Schedule::placement(P, C, p, m).is_last_stage()) return true;
    return false;
  }

  /// Communicator rank c's training step, with the batch's inputs and labels where its stages need them.
  dualpipe::StepResult step_on(int c) {
    const int p = pipeline_rank(c);
    return pipes[static_cast<std::size_t>(c)]->step(C, has_first(p) ? batch.input_bytes() : dualpipe::ConstBytes{},
                                                    has_last(p) ? batch.label_bytes() : dualpipe::ConstBytes{});
  }

  /// One step on every rank; results indexed by pipeline rank. Inputs and labels are passed only where
  /// needed (empty elsewhere), as the API allows.
  std::vector<dualpipe::StepResult> step(dualpipe::Mode mode = dualpipe::Mode::train, bool return_outputs = false,
                                         bool with_labels = true) {
    std::vector<dualpipe::StepResult> results(static_cast<std::size_t>(P));
    dualpipe::run_ranks(P, [&](int c) {
      const int p = pipeline_rank(c);
      const dualpipe::ConstBytes in = has_first(p) ? batch.input_bytes() : dualpipe::ConstBytes{};
      const dualpipe::ConstBytes lab = has_last(p) && with_labels ? batch.label_bytes() : dualpipe::ConstBytes{};
      auto& pipe = *pipes[static_cast<std::size_t>(c)];
      results[static_cast<std::size_t>(p)] = mode == dualpipe::Mode::train ? pipe.step(C, in, lab, {return_outputs})
                                                                           : pipe.eval(C, in, lab, {return_outputs});
    });
    return results;
  }

  /// One training step that is expected to fail: each rank's exception, by communicator rank (null where
  /// that rank's step returned).
  std::vector<std::exception_ptr> failing_step() {
    std::vector<std::exception_ptr> errors(static_cast<std::size_t>(P));
    dualpipe::run_ranks(P, [&](int c) {
      try {
        (void)step_on(c);
      } catch (...) {
        errors[static_cast<std::size_t>(c)] = std::current_exception();
      }
    });
    return errors;
  }

  /// Every rank's collective reset after a failed step.
  void reset() {
    dualpipe::run_ranks(P, [&](int c) { pipes[static_cast<std::size_t>(c)]->reset(); });
  }

  /// After a failed step: every rank resets, and the next step's losses equal the sequential model's.
  void check_recovers() {
    reset();
    zero_grad();
    const Sequential seq(S, C, batch);
    const auto res = step();
    CHECK(rel_err(losses(res), seq.losses) <= 1e-12);
  }

  void zero_grad() {
    for (auto& r : stages)
      for (auto& s : r) s->zero_grad();
  }

  /// Weight and bias gradient of model stage s: the sum over every (rank, module) computing it.
  [[nodiscard]] std::vector<double> grad(int s) const {
    std::vector<double> g;
    for (int p = 0; p < P; ++p)
      for (int m = 0; m < M; ++m) {
        if (Schedule::placement(P, C, p, m).stage != s) continue;
        const auto& st = *stages[static_cast<std::size_t>(p)][static_cast<std::size_t>(m)];
        std::vector<double> mine = st.grad_w();
        mine.insert(mine.end(), st.grad_b().begin(), st.grad_b().end());
        if (g.empty()) g.assign(mine.size(), 0.0);
        for (std::size_t k = 0; k < g.size(); ++k) g[k] += mine[k];
      }
    return g;
  }

  /// Per batch chunk, the one loss computed for it (NaN checks: exactly one rank has it).
  [[nodiscard]] std::vector<double> losses(const std::vector<dualpipe::StepResult>& results) const {
    std::vector<double> out(static_cast<std::size_t>(C), std::nan(""));
    for (int b = 0; b < C; ++b) {
      int owners = 0;
      for (const auto& r : results) {
        REQUIRE(r.losses.size() == static_cast<std::size_t>(C));
        if (!std::isnan(r.losses[static_cast<std::size_t>(b)])) {
          ++owners;
          out[static_cast<std::size_t>(b)] = r.losses[static_cast<std::size_t>(b)];
        }
      }
      CHECK_MESSAGE(owners == 1, "batch chunk " << b << " has a loss on " << owners << " ranks");
    }
    return out;
  }

  /// Last-stage outputs put back in batch order (from every rank's returned outputs).
  [[nodiscard]] std::vector<double> outputs(const std::vector<dualpipe::StepResult>& results) const {
    const std::size_t per_chunk = static_cast<std::size_t>(rows * dims(S));
    std::vector<double> out(per_chunk * static_cast<std::size_t>(C), std::nan(""));
    for (const auto& r : results) {
      const auto d = as_doubles(dualpipe::ConstBytes(r.outputs));
      REQUIRE(d.size() == per_chunk * r.output_chunks.size());
      for (std::size_t i = 0; i < r.output_chunks.size(); ++i)
        std::copy(d.begin() + static_cast<std::ptrdiff_t>(i * per_chunk),
                  d.begin() + static_cast<std::ptrdiff_t>((i + 1) * per_chunk),
                  out.begin() + static_cast<std::ptrdiff_t>(static_cast<std::size_t>(r.output_chunks[i]) * per_chunk));
    }
    return out;
  }
};

/// Checks that every rank's step failed with a StepError, and runs `check` on each.
template <class Check>
void check_step_errors(const std::vector<std::exception_ptr>& errors, Check&& check) {
  for (std::size_t c = 0; c < errors.size(); ++c) {
    CAPTURE(c);
    REQUIRE(errors[c]);
    try {
      std::rethrow_exception(errors[c]);
    } catch (const dualpipe::StepError& e) {
      check(e);
    } catch (const std::exception& e) {
      FAIL("not a StepError: " << e.what());
    }
  }
}

}  // namespace testmodel
