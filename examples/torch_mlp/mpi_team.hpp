// torch_mlp/mpi_team.hpp: dualpipe-torch-mlp with one pipeline rank per MPI process (--comm mpi). Built into
// the program when dualpipe::mpi is (DUALPIPE_HAS_MPI); the torch layer itself knows nothing of MPI.
//
//   mpirun -np 4 dualpipe-torch-mlp --comm mpi --ranks 4 [--variable-lengths]   same result line as in-process
//
// Every process builds the whole model and draws the same batches (same seed, same draws in the same order),
// but holds only its own rank's stage copies and pipeline. After each step every rank's StepResult (losses,
// returned outputs) and module gradients are gathered on rank 0, which runs the sequential reference and
// checks them exactly as the in-process run does: the same ops on the same numbers in the same order, so the
// result line is the same bit for bit (only comm=mpi differs).
#pragma once

#include <mpi.h>

#include <cstring>
#include <span>
#include <vector>

#include "dualpipe/mpi.hpp"
#include "team.hpp"

namespace torch_mlp {

/// This process's pipeline rank: MPI_COMM_WORLD's processes, one rank each.
template <class Schedule, class RankT, class Stage>
class MpiTeam {
public:
  /// Collective over MPI_COMM_WORLD. Throws ConfigError (on every process, before anything is sent) when the
  /// job's size is not `ranks` or the chunks do not fit the MPI tags.
  MpiTeam(const std::vector<MlpStage>& model, const Shape& shape, int ranks, int chunks)
      : _pipeline(MPI_COMM_WORLD), _gathers(MPI_COMM_WORLD) {
    if (_pipeline.size() != ranks)
      throw dualpipe::ConfigError("--comm mpi: --ranks " + std::to_string(ranks) + " needs a job of " +
                                  std::to_string(ranks) + " processes, this one has " +
                                  std::to_string(_pipeline.size()) + " (mpirun -np " + std::to_string(ranks) + ")");
    _pipeline.check_chunks(chunks);
    _rank = std::make_unique<RankT>(model, shape, ranks, chunks, _pipeline.rank());
    _pipe = std::make_unique<Pipe>(_pipeline, _rank->pointers());
    _model = &model;
  }
  /// Whether this process checks and prints (rank 0).
  [[nodiscard]] bool checks() const { return _pipeline.rank() == 0; }
  void zero_grad() {
    for (MlpStage& m : _rank->module_copies) m->zero_grad();
  }
  /// A step on this rank; every rank's result on rank 0 (losses, returned outputs), nothing elsewhere.
  std::vector<dualpipe::StepResult> run(bool train, int chunks, dualpipe::ConstBytes inputs,
                                        dualpipe::ConstBytes labels, const dualpipe::StepOptions& o) {
    const dualpipe::StepResult mine =
        train ? _pipe->step(chunks, inputs, labels, o) : _pipe->eval(chunks, inputs, labels, o);
    const auto losses = _gathers.gather(std::as_bytes(std::span(mine.losses)));
    const auto output_chunks = _gathers.gather(std::as_bytes(std::span(mine.output_chunks)));
    const auto outputs = _gathers.gather(mine.outputs);
    std::vector<dualpipe::StepResult> all;
    if (!checks()) return all;
    for (std::size_t r = 0; r < losses.size(); ++r) {
      dualpipe::StepResult s;
      s.rank = static_cast<int>(r);
      s.chunks = chunks;
      s.losses = values<double>(losses[r]);
      s.output_chunks = values<int>(output_chunks[r]);
      s.outputs = outputs[r];
      all.push_back(std::move(s));
    }
    return all;
  }
  /// Every rank's module gradients on rank 0 (rank order), nothing elsewhere. Each rank sends, as doubles:
  /// whether its stages let go of their graphs, each module's stage, then each module's gradients in
  /// parameter order; rank 0 shapes them as the model's parameters.
  [[nodiscard]] std::vector<RankGrads> grads() const {
    const RankGrads local = grads_of(*_rank);
    std::vector<double> flat{local.released ? 1.0 : 0.0};
    for (int s : local.stage_of) flat.push_back(s);
    for (const auto& module : local.grads)
      for (const torch::Tensor& g : module) {
        const torch::Tensor c = g.contiguous();
        flat.insert(flat.end(), c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
      }
    const auto gathered = _gathers.gather(std::as_bytes(std::span(flat)));
    std::vector<RankGrads> all;
    if (!checks()) return all;
    const std::size_t modules = local.stage_of.size();
    for (const auto& bytes : gathered) {
      const std::vector<double> v = values<double>(bytes);
      RankGrads g;
      std::size_t at = 0;
      auto take = [&](std::size_t n) {
        if (at + n > v.size()) throw dualpipe::Error("a rank's gathered gradients are too short");
        at += n;
        return v.data() + at - n;
      };
      g.released = *take(1) != 0;
      for (std::size_t m = 0; m < modules; ++m) g.stage_of.push_back(static_cast<int>(*take(1)));
      for (std::size_t m = 0; m < modules; ++m) {
        g.grads.emplace_back();
        for (const torch::Tensor& p : (*_model)[g.stage_of[m]]->parameters()) {
          const double* data = take(static_cast<std::size_t>(p.numel()));
          g.grads.back().push_back(torch::from_blob(const_cast<double*>(data), p.sizes(), torch::kFloat64).clone());
        }
      }
      all.push_back(std::move(g));
    }
    return all;
  }
  /// Bytes of one chunk's output (fixed-length stages; the same on every rank).
  [[nodiscard]] std::size_t output_bytes() const { return _rank->stages[0]->output_bytes(); }

private:
  using Pipe = dualpipe::Pipeline<Schedule, dualpipe::MpiCommunicator, Stage>;
  template <class T>
  static std::vector<T> values(const std::vector<std::byte>& bytes) {
    std::vector<T> v(bytes.size() / sizeof(T));
    if (!v.empty()) std::memcpy(v.data(), bytes.data(), v.size() * sizeof(T));
    return v;
  }
  dualpipe::MpiCommunicator _pipeline;  // the pipeline's messages
  dualpipe::MpiCommunicator _gathers;   // the checks' gathers, apart from the pipeline's tags
  const std::vector<MlpStage>* _model = nullptr;
  std::unique_ptr<RankT> _rank;
  std::unique_ptr<Pipe> _pipe;
};

}  // namespace torch_mlp
