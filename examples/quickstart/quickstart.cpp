// The README's quick start: a two-rank DualPipe step on threads, with a stage that scales its input.
// Each stage computes y = w * x on doubles; the loss at the last stage is 0.5 * (y - label)^2.
#include <dualpipe/dualpipe.hpp>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>

struct ScaleStage {
  double w = 1.5, grad = 0;
  std::map<int, double> x, dy;  // saved per chunk between forward and backward

  std::size_t input_bytes() const { return sizeof(double); }
  std::size_t output_bytes() const { return sizeof(double); }

  void forward(const dualpipe::StageContext& ctx, dualpipe::ConstBytes in, dualpipe::MutableBytes out) {
    double v;
    std::memcpy(&v, in.data(), sizeof v);
    x[ctx.chunk] = v;
    const double y = w * v;
    std::memcpy(out.data(), &y, sizeof y);
  }
  double loss(const dualpipe::StageContext& ctx, dualpipe::ConstBytes out, dualpipe::ConstBytes label) {
    double y, t;
    std::memcpy(&y, out.data(), sizeof y);
    std::memcpy(&t, label.data(), sizeof t);
    dy[ctx.chunk] = (y - t) * ctx.loss_scale;  // where the backward of the last stage starts
    return 0.5 * (y - t) * (y - t);
  }
  void backward_input(const dualpipe::StageContext& ctx, dualpipe::ConstBytes out_grad,
                      dualpipe::MutableBytes in_grad) {
    if (!ctx.is_last_stage) std::memcpy(&dy[ctx.chunk], out_grad.data(), sizeof(double));
    const double g = w * dy[ctx.chunk];
    if (!in_grad.empty()) std::memcpy(in_grad.data(), &g, sizeof g);
  }
  void backward_weight(const dualpipe::StageContext& ctx) {  // may run much later: zero bubble
    grad += x[ctx.chunk] * dy[ctx.chunk];
  }
};
static_assert(dualpipe::check_stage<ScaleStage>());

int main() {
  constexpr int ranks = 2, chunks = 4;
  std::vector<double> inputs{1, 2, 3, 4}, labels{0, 0, 0, 0};  // the whole batch, one value per chunk
  auto bytes = [](const std::vector<double>& v) { return std::as_bytes(std::span(v)); };

  dualpipe::InProcessWorld world(ranks);  // ranks are threads of this process
  std::vector<ScaleStage> stages(2 * ranks);
  std::vector<double> losses(chunks, 0);
  dualpipe::run_ranks(ranks, [&](int rank) {
    // DualPipe: rank r holds stage r (module 0) and stage P-1-r (module 1).
    dualpipe::Pipeline<dualpipe::DualPipe, dualpipe::InProcessCommunicator, ScaleStage> pipe(
        world.communicator(rank), {&stages[2 * rank], &stages[2 * rank + 1]});
    const dualpipe::StepResult r = pipe.step(chunks, bytes(inputs), bytes(labels));
    for (int c = 0; c < chunks; ++c)
      if (!std::isnan(r.losses[c])) losses[c] = r.losses[c];
  });

  // Two stages of w = 1.5: y = 2.25 x, loss = 0.5 (2.25 x)^2. Stage s's gradient is the sum of its two copies.
  bool ok = true;
  for (int c = 0; c < chunks; ++c) ok &= std::abs(losses[c] - 0.5 * std::pow(2.25 * inputs[c], 2)) < 1e-12;
  double stage0_grad = stages[0].grad + stages[3].grad;  // rank 0 module 0 and rank 1 module 1
  double expect = 0;                                     // d/dw0 of sum 0.5 (w1 w0 x)^2 = sum w1^2 w0 x^2
  for (double v : inputs) expect += 1.5 * 1.5 * 1.5 * v * v;
  ok &= std::abs(stage0_grad - expect) < 1e-9;
  std::printf("quickstart: losses %g %g %g %g, stage 0 gradient %g (expected %g): %s\n", losses[0], losses[1],
              losses[2], losses[3], stage0_grad, expect, ok ? "ok" : "WRONG");
  return ok ? 0 : 1;
}
