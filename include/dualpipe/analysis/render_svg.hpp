// dualpipe/analysis/render_svg.hpp: a Timeline as an SVG picture: one lane per rank, time left to
// right, a box per compute op coloured by kind (hue) and module (module 0 dark, module 1 light), an
// overlapped FB as a box split into its forward (top) and backward (bottom) halves, idle time as the
// lane's grey background, blocked commits as a red tint, transfers in an optional thin lane below.
#pragma once

#include <algorithm>
#include <iterator>
#include <string>
#include <string_view>

#include "dualpipe/analysis/detail/format.hpp"
#include "dualpipe/core/timeline.hpp"
#include "dualpipe/core/trace.hpp"

namespace dualpipe {

/// Layout knobs of render_svg. Sizes are in SVG pixels.
struct SvgOptions {
  double width = 1200;         ///< Width of the time axis (the whole picture is wider by the margins).
  double lane_height = 26;     ///< Height of one rank's compute lane.
  double transfer_height = 7;  ///< Height of the transfer lane under each rank.
  bool transfers = true;       ///< Draw the transfer lane (transfer spans).
  bool waits = true;           ///< Tint the time a commit blocked (wait spans).
  bool legend = true;          ///< Draw the legend under the lanes.
  std::string title;           ///< Title; empty: "<schedule> ranks=P chunks=C mode=M makespan=T bubble=B%".
};

namespace detail {

/// Fill colour of a compute part: hue by kind, dark for module 0, light for module 1 (and above).
[[nodiscard]] inline std::string_view svg_fill(OpKind kind, int module) {
  const bool light = module >= 1;
  switch (kind) {
    case OpKind::forward: return light ? "#9ecae1" : "#2171b5";
    case OpKind::backward: return light ? "#a1d99b" : "#238b45";
    case OpKind::backward_input: return light ? "#fdae6b" : "#d94801";
    case OpKind::weight: return "#9e9ac8";
    default: return "#969696";
  }
}

/// Label colour that reads on svg_fill(kind, module): white on the dark module-0 fills, else black.
[[nodiscard]] inline std::string svg_text_colour(OpKind kind, int module) {
  return module < 1 && kind != OpKind::weight ? "#ffffff" : "#000000";
}

/// Id of the gradient that fills an FB box of forward module m0 and backward module m1 (0 or 1).
[[nodiscard]] inline std::string svg_fb_gradient_id(int m0, int m1) {
  return "fb" + std::to_string(m0 >= 1 ? 1 : 0) + std::to_string(m1 >= 1 ? 1 : 0);
}

/// Short label for a box too narrow for the whole token: the chunk number(s).
[[nodiscard]] inline std::string svg_short_label(const Op& op) {
  switch (op.kind) {
    case OpKind::weight: return "W";
    case OpKind::forward_backward: return std::to_string(op.chunk) + "/" + std::to_string(op.chunk1);
    default: return std::to_string(op.chunk);
  }
}

}  // namespace detail

/// Renders `tl` as a standalone SVG document (well-formed XML, text escaped). Every compute span is one
/// `<rect class="compute" data-token="...">` with a tooltip `<title>`, followed, when the box is wide
/// enough, by a `<text class="label">`: the whole token, else the chunk number(s). Transfer spans are
/// `<rect class="transfer">`, wait spans `<rect class="wait">`; the legend is `<g class="legend">`.
[[nodiscard]] inline std::string render_svg(const Timeline& tl, const SvgOptions& opt = {}) {
  using detail::format_number;
  using detail::xml_escape;
  const double makespan = tl.makespan();
  const double left = 64, right = 16, top = 44, gap = 10;
  const double transfer_h = opt.transfers ? opt.transfer_height : 0;
  const double row_h = opt.lane_height + (opt.transfers ? transfer_h + 2 : 0) + gap;
  const std::size_t nranks = tl.spans.size();
  const double lanes_bottom = top + row_h * static_cast<double>(nranks);
  const double legend_h = opt.legend ? 44 : 0;
  const double total_w = left + opt.width + right;
  const double total_h = lanes_bottom + legend_h + 8;
  const double scale = makespan > 0 ? opt.width / makespan : 0;
  auto x_of = [&](double t) { return left + t * scale; };
  auto num = [](double v) { return format_number(v, 2); };

  std::string out;
  out.reserve(4096 + 400 * nranks * (tl.spans.empty() ? 1 : tl.spans[0].size() + 1));
  out += "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n";
  out += "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" + num(total_w) + "\" height=\"" + num(total_h) +
         "\" viewBox=\"0 0 " + num(total_w) + " " + num(total_h) + "\" font-family=\"sans-serif\" font-size=\"10\">\n";

  const std::string title =
      !opt.title.empty() ? opt.title
                         : tl.schedule + " ranks=" + std::to_string(tl.ranks) + " chunks=" + std::to_string(tl.chunks) +
                               " mode=" + std::string(to_string(tl.mode)) + " makespan=" + format_number(makespan, 3) +
                               " " + tl.time_unit + " bubble=" + format_number(100 * tl.bubble_ratio(), 1) + "%";
  out += "<title>" + xml_escape(title) + "</title>\n";
  // Fills of FB boxes: forward colour over backward colour, one per (module, module1) pair.
  out += "<defs>";
  for (int m0 = 0; m0 < 2; ++m0)
    for (int m1 = 0; m1 < 2; ++m1)
      out += "<linearGradient id=\"" + detail::svg_fb_gradient_id(m0, m1) +
             "\" x1=\"0\" y1=\"0\" x2=\"0\" y2=\"1\"><stop offset=\"0.5\" stop-color=\"" +
             std::string(detail::svg_fill(OpKind::forward, m0)) + "\"/><stop offset=\"0.5\" stop-color=\"" +
             std::string(detail::svg_fill(OpKind::backward, m1)) + "\"/></linearGradient>";
  out += "</defs>\n";
  out += "<rect x=\"0\" y=\"0\" width=\"" + num(total_w) + "\" height=\"" + num(total_h) + "\" fill=\"#ffffff\"/>\n";
  out += "<text class=\"title\" x=\"" + num(left) + "\" y=\"20\" font-size=\"14\" font-weight=\"bold\">" +
         xml_escape(title) + "</text>\n";
  // Time axis: the start and the end of the step.
  out += "<text x=\"" + num(left) + "\" y=\"36\" fill=\"#555555\">0</text>\n";
  out += "<text x=\"" + num(left + opt.width) + "\" y=\"36\" fill=\"#555555\" text-anchor=\"end\">" +
         xml_escape(format_number(makespan, 3) + " " + tl.time_unit) + "</text>\n";

  for (std::size_t r = 0; r < nranks; ++r) {
    const double y = top + row_h * static_cast<double>(r);
    out += "<g class=\"rank\" data-rank=\"" + std::to_string(r) + "\">\n";
    out += "<text x=\"" + num(left - 6) + "\" y=\"" + num(y + opt.lane_height / 2 + 4) +
           "\" text-anchor=\"end\">rank " + std::to_string(r) + "</text>\n";
    // The lane's background is what shows through where the rank is idle.
    out += "<rect class=\"idle\" x=\"" + num(left) + "\" y=\"" + num(y) + "\" width=\"" + num(opt.width) +
           "\" height=\"" + num(opt.lane_height) + "\" fill=\"#eeeeee\"/>\n";
    if (opt.transfers)
      out += "<rect class=\"transfer-lane\" x=\"" + num(left) + "\" y=\"" + num(y + opt.lane_height + 2) +
             "\" width=\"" + num(opt.width) + "\" height=\"" + num(transfer_h) + "\" fill=\"#f7f7f7\"/>\n";
    for (const Span& s : tl.spans[r]) {
      const double x0 = x_of(s.start);
      const double w = std::max(0.0, (s.end - s.start) * scale);
      const std::string token = to_token(s.op);
      const std::string tip =
          xml_escape(token + " [" + format_number(s.start, 6) + ", " + format_number(s.end, 6) + ") " + tl.time_unit);
      if (s.lane == Span::Lane::wait) {
        if (!opt.waits) continue;
        out += "<rect class=\"wait\" x=\"" + num(x0) + "\" y=\"" + num(y) + "\" width=\"" + num(w) + "\" height=\"" +
               num(opt.lane_height) + "\" fill=\"#e34a33\" fill-opacity=\"0.18\"><title>wait " + tip +
               "</title></rect>\n";
        continue;
      }
      if (s.lane == Span::Lane::transfer) {
        if (!opt.transfers) continue;
        const bool act = carries_activation(s.op.kind);
        out += "<rect class=\"transfer\" x=\"" + num(x0) + "\" y=\"" + num(y + opt.lane_height + 2) + "\" width=\"" +
               num(std::max(w, 0.5)) + "\" height=\"" + num(transfer_h) + "\" fill=\"" + (act ? "#6baed6" : "#74c476") +
               "\"><title>" + tip + "</title></rect>\n";
        continue;
      }
      // One rect per compute op; an FB is filled with a hard-edged gradient: forward half on top.
      const std::string fill = s.op.kind == OpKind::forward_backward
                                   ? "url(#" + detail::svg_fb_gradient_id(s.op.module, s.op.module1) + ")"
                                   : std::string(detail::svg_fill(s.op.kind, s.op.module));
      out += "<rect class=\"compute\" data-token=\"" + xml_escape(token) + "\" x=\"" + num(x0) + "\" y=\"" + num(y) +
             "\" width=\"" + num(w) + "\" height=\"" + num(opt.lane_height) + "\" fill=\"" + fill +
             "\" stroke=\"#ffffff\" stroke-width=\"0.6\"><title>" + tip + "</title></rect>";
      // About 6 px per character at font-size 10.
      std::string label;
      if (w >= 6.0 * static_cast<double>(token.size()) + 4) label = token;
      else if (const std::string s2 = detail::svg_short_label(s.op); w >= 6.0 * static_cast<double>(s2.size()) + 3)
        label = s2;
      if (!label.empty()) {
        const double cx = x0 + w / 2, cy = y + opt.lane_height / 2;
        std::string colour = detail::svg_text_colour(s.op.kind, s.op.module);
        if (s.op.kind == OpKind::forward_backward) {
          // The label straddles a dark and a light half: give it a pale backing so it reads on both.
          const double lw = 6.0 * static_cast<double>(label.size()) + 2;
          out += "<rect class=\"label-back\" x=\"" + num(cx - lw / 2) + "\" y=\"" + num(cy - 6.5) + "\" width=\"" +
                 num(lw) + "\" height=\"13\" rx=\"2\" fill=\"#ffffff\" fill-opacity=\"0.8\"/>";
          colour = "#000000";
        }
        out += "<text class=\"label\" x=\"" + num(cx) + "\" y=\"" + num(cy + 3.5) +
               "\" text-anchor=\"middle\" fill=\"" + colour + "\">" + xml_escape(label) + "</text>";
      }
      out += "\n";
    }
    out += "</g>\n";
  }

  if (opt.legend) {
    struct Entry {
      std::string_view fill, fill2, label;
    };
    const Entry entries[] = {
        {detail::svg_fill(OpKind::forward, 0), "", "F module 0"},
        {detail::svg_fill(OpKind::forward, 1), "", "F module 1"},
        {detail::svg_fill(OpKind::backward, 0), "", "B module 0"},
        {detail::svg_fill(OpKind::backward, 1), "", "B module 1"},
        {detail::svg_fill(OpKind::backward_input, 0), "", "Bw (input part) module 0"},
        {detail::svg_fill(OpKind::backward_input, 1), "", "Bw (input part) module 1"},
        {detail::svg_fill(OpKind::weight, 0), "", "W (deferred weight part)"},
        {detail::svg_fill(OpKind::forward, 0), detail::svg_fill(OpKind::backward, 1), "FB: forward over backward"},
        {"#eeeeee", "", "idle"},
        {"#f6c9c0", "", "waiting in a commit"},
        {"#6baed6", "#74c476", "transfer: activation / gradient"},
    };
    out += "<g class=\"legend\">\n";
    double lx = left, ly = lanes_bottom + 4;
    for (std::size_t i = 0; i < std::size(entries); ++i) {
      const Entry& e = entries[i];
      if (i == 6) {  // second row
        lx = left;
        ly += 20;
      }
      if (e.fill2.empty()) {
        out += "<rect x=\"" + num(lx) + "\" y=\"" + num(ly) + "\" width=\"12\" height=\"12\" fill=\"" +
               std::string(e.fill) + "\"/>";
      } else {
        out += "<rect x=\"" + num(lx) + "\" y=\"" + num(ly) + "\" width=\"12\" height=\"6\" fill=\"" +
               std::string(e.fill) + "\"/>";
        out += "<rect x=\"" + num(lx) + "\" y=\"" + num(ly + 6) + "\" width=\"12\" height=\"6\" fill=\"" +
               std::string(e.fill2) + "\"/>";
      }
      out += "<text x=\"" + num(lx + 16) + "\" y=\"" + num(ly + 10) + "\">" + xml_escape(e.label) + "</text>\n";
      lx += 16 + 6.0 * static_cast<double>(e.label.size()) + 18;
    }
    out += "</g>\n";
  }
  out += "</svg>\n";
  return out;
}

}  // namespace dualpipe
