// The renderers (text grid, SVG, Chrome trace JSON) on small Timelines built by hand.
#include <doctest/doctest.h>

#include <cmath>
#include <sstream>
#include <string>
#include <vector>

#include "checkers.hpp"
#include "dualpipe/dualpipe.hpp"

using namespace dualpipe;
using dualpipe::testing::check_xml_well_formed;
using dualpipe::testing::Json;
using dualpipe::testing::JsonParser;

namespace {

Span compute(Op op, double start, double end, int index) { return {op, start, end, Span::Lane::compute, index}; }
Span transfer(Op op, double start, double end, int index) { return {op, start, end, Span::Lane::transfer, index}; }
Span wait(double start, double end, int index) { return {Op::commit_op(), start, end, Span::Lane::wait, index}; }

// Two ranks, makespan 6:
//   rank 0: F0.0 [0,1) F0.1 [1,2) wait [2,3) FB1.2/0.0 [3,5) W [5,6), sF0.0 in flight [1,1.5)
//   rank 1: F0.0 [1,2) B0.0w [2,3) W [4,6), rF0.0 in flight [0,1.5), a wait [0,1)
Timeline sample() {
  Timeline tl;
  tl.schedule = "sample";
  tl.ranks = 2;
  tl.chunks = 3;
  tl.spans = {
      {compute(Op::F(0, 0), 0, 1, 0), transfer(Op::sF(0, 0), 1, 1.5, 1), compute(Op::F(0, 1), 1, 2, 3), wait(2, 3, 4),
       compute(Op::FB(1, 2, 0, 0), 3, 5, 5), compute(Op::W(), 5, 6, 6)},
      {wait(0, 1, 1), transfer(Op::rF(0, 0), 0, 1.5, 0), compute(Op::F(0, 0), 1, 2, 2), compute(Op::Bw(0, 0), 2, 3, 3),
       compute(Op::W(), 4, 6, 5)},
  };
  return tl;
}

int count_compute(const Timeline& tl) {
  int n = 0;
  for (const auto& rank : tl.spans)
    for (const Span& s : rank) n += s.lane == Span::Lane::compute;
  return n;
}

int count_all(const Timeline& tl) {
  int n = 0;
  for (const auto& rank : tl.spans) n += static_cast<int>(rank.size());
  return n;
}

// The grid as cells: rows[i][r] is rank r's text in time row i (header lines removed, trimmed).
struct Grid {
  std::string title;
  std::vector<std::string> header;
  std::vector<std::string> times;
  std::vector<std::vector<std::string>> rows;
  std::vector<std::size_t> bar_columns;  // where each row's '|' separators sit, to check alignment
};

Grid parse_grid(const std::string& text) {
  Grid g;
  std::istringstream in(text);
  std::string line;
  std::getline(in, g.title);
  auto split = [](const std::string& l, std::vector<std::size_t>* bars) {
    std::vector<std::string> cells;
    std::size_t b = 0;
    for (;;) {
      const std::size_t bar = l.find(" | ", b);
      std::string cell = l.substr(b, bar == std::string::npos ? std::string::npos : bar - b);
      while (!cell.empty() && cell.front() == ' ') cell.erase(cell.begin());
      while (!cell.empty() && cell.back() == ' ') cell.pop_back();
      cells.push_back(cell);
      if (bar == std::string::npos) break;
      if (bars) bars->push_back(bar);
      b = bar + 3;
    }
    return cells;
  };
  std::getline(in, line);
  g.header = split(line, &g.bar_columns);
  while (std::getline(in, line)) {
    std::vector<std::size_t> bars;
    auto cells = split(line, &bars);
    CHECK(bars == g.bar_columns);  // fixed-width columns
    g.times.push_back(cells.front());
    cells.erase(cells.begin());
    g.rows.push_back(cells);
  }
  return g;
}

std::size_t count_of(const std::string& s, const std::string& part) {
  std::size_t n = 0;
  for (std::size_t p = s.find(part); p != std::string::npos; p = s.find(part, p + part.size())) ++n;
  return n;
}

}  // namespace

// ---- Text grid ---------------------------------------------------------------------------------------

TEST_CASE("Render.Grid.TokensInTheirCells") {
  const Grid g = parse_grid(render_grid(sample(), 1));
  CHECK(g.title.find("# sample ranks=2 chunks=3 mode=train makespan=6") == 0);
  REQUIRE(g.header.size() == 3);
  CHECK(g.header[0] == "time");
  CHECK(g.header[1] == "rank 0");
  CHECK(g.header[2] == "rank 1");
  const std::vector<std::vector<std::string>> want = {{"F0.0", "."},      {"F0.1", "F0.0"},   {".", "B0.0w"},
                                                      {"FB1.2/0.0", "."}, {"FB1.2/0.0", "W"}, {"W", "W"}};
  CHECK(g.rows == want);
  CHECK(g.times == std::vector<std::string>{"0", "1", "2", "3", "4", "5"});
}

TEST_CASE("Render.Grid.AutomaticCellIsTheShortestOp") { CHECK(render_grid(sample()) == render_grid(sample(), 1)); }

TEST_CASE("Render.Grid.CoarseAndFineCells") {
  // cell 2: each rank shows the op covering most of the cell, the earlier on a tie, '.' under half.
  const Grid coarse = parse_grid(render_grid(sample(), 2));
  const std::vector<std::vector<std::string>> want = {{"F0.0", "F0.0"}, {"FB1.2/0.0", "B0.0w"}, {"FB1.2/0.0", "W"}};
  CHECK(coarse.rows == want);
  // cell 0.5: twelve rows; row 5 is [2.5, 3).
  const Grid fine = parse_grid(render_grid(sample(), 0.5));
  REQUIRE(fine.rows.size() == 12);
  CHECK(fine.rows[5] == std::vector<std::string>{".", "B0.0w"});
  CHECK(fine.rows[7] == std::vector<std::string>{"FB1.2/0.0", "."});
  CHECK(fine.times[5] == "2.5");
  // A rank computing for less than half a cell shows idle there.
  Timeline sparse;
  sparse.ranks = 1;
  sparse.spans = {{compute(Op::F(0, 0), 0, 0.9, 0), compute(Op::F(0, 1), 2, 4, 1)}};
  const Grid s = parse_grid(render_grid(sparse, 2));
  CHECK(s.rows == std::vector<std::vector<std::string>>{{"."}, {"F0.1"}});
}

TEST_CASE("Render.Grid.RefusesAbsurdCells") {
  CHECK_THROWS_AS((void)render_grid(sample(), 1e-9), ConfigError);
  Timeline empty;
  CHECK(render_grid(empty).find("time") != std::string::npos);
}

// ---- SVG ---------------------------------------------------------------------------------------------

TEST_CASE("Render.Svg.XmlCheckerCatchesMistakes") {
  CHECK_NOTHROW(check_xml_well_formed("<?xml version=\"1.0\"?>\n<a x=\"1\"><b/>t &amp; u<c y='2'></c></a>\n"));
  CHECK_THROWS(check_xml_well_formed("<a><b></a></b>"));
  CHECK_THROWS(check_xml_well_formed("<a>x < y</a>"));
  CHECK_THROWS(check_xml_well_formed("<a>x & y</a>"));
  CHECK_THROWS(check_xml_well_formed("<a x=1></a>"));
  CHECK_THROWS(check_xml_well_formed("<a x=\"<\"></a>"));
  CHECK_THROWS(check_xml_well_formed("<a x=\"1\" x=\"2\"></a>"));
  CHECK_THROWS(check_xml_well_formed("<a></a><b></b>"));
  CHECK_THROWS(check_xml_well_formed("<a>"));
}

TEST_CASE("Render.Svg.WellFormedWithOneRectPerComputeSpan") {
  const Timeline tl = sample();
  const std::string svg = render_svg(tl);
  CHECK_NOTHROW(check_xml_well_formed(svg));
  CHECK(svg.find("<svg xmlns=\"http://www.w3.org/2000/svg\"") != std::string::npos);
  CHECK(count_of(svg, "class=\"compute\"") == static_cast<std::size_t>(count_compute(tl)));
  CHECK(count_of(svg, "data-token=\"FB1.2/0.0\"") == 1);
  CHECK(count_of(svg, "data-token=\"W\"") == 2);
  CHECK(count_of(svg, "class=\"transfer\"") == 2);
  CHECK(count_of(svg, "class=\"wait\"") == 2);
  CHECK(count_of(svg, "class=\"idle\"") == 2);  // one lane background per rank
  CHECK(count_of(svg, "<g class=\"legend\">") == 1);
  CHECK(svg.find("F module 1") != std::string::npos);
  // Title: schedule, ranks, chunks, makespan, bubble (rank 0 idles 1, rank 1 idles 2: 3/12 = 25%).
  CHECK(svg.find("sample ranks=2 chunks=3 mode=train makespan=6 units bubble=25%") != std::string::npos);
  // The FB box is one rect filled by the forward-over-backward gradient of modules 1 and 0.
  CHECK(svg.find("fill=\"url(#fb10)\"") != std::string::npos);
  CHECK(svg.find("<linearGradient id=\"fb10\"") != std::string::npos);
  // Module 0 and module 1 forwards differ in colour.
  CHECK(detail::svg_fill(OpKind::forward, 0) != detail::svg_fill(OpKind::forward, 1));
  CHECK(detail::svg_fill(OpKind::forward, 0) != detail::svg_fill(OpKind::backward, 0));
}

TEST_CASE("Render.Svg.LabelsAndOptions") {
  SvgOptions wide;
  wide.width = 600;  // 100 px per unit: every token fits
  const std::string svg = render_svg(sample(), wide);
  CHECK(count_of(svg, "class=\"label\"") == 7);
  CHECK(svg.find(">FB1.2/0.0</text>") != std::string::npos);
  SvgOptions narrow;
  narrow.width = 60;  // 10 px per unit: only the chunk numbers fit ("0", "1"), and "W" on the 20 px W
  const std::string small = render_svg(sample(), narrow);
  CHECK_NOTHROW(check_xml_well_formed(small));
  CHECK(small.find(">F0.0</text>") == std::string::npos);
  CHECK(small.find(">0</text>") != std::string::npos);
  SvgOptions bare;
  bare.transfers = false;
  bare.waits = false;
  bare.legend = false;
  const std::string plain = render_svg(sample(), bare);
  CHECK_NOTHROW(check_xml_well_formed(plain));
  CHECK(count_of(plain, "class=\"transfer\"") == 0);
  CHECK(count_of(plain, "class=\"wait\"") == 0);
  CHECK(count_of(plain, "class=\"legend\"") == 0);
  CHECK(count_of(plain, "class=\"compute\"") == 7);
}

TEST_CASE("Render.Svg.EscapesText") {
  Timeline tl = sample();
  tl.schedule = "a<b & \"c\"";
  const std::string svg = render_svg(tl);
  CHECK_NOTHROW(check_xml_well_formed(svg));
  CHECK(svg.find("a&lt;b &amp; &quot;c&quot;") != std::string::npos);
  CHECK(svg.find("a<b") == std::string::npos);
  SvgOptions titled;
  titled.title = "<&>";
  const std::string t2 = render_svg(sample(), titled);
  CHECK_NOTHROW(check_xml_well_formed(t2));
  CHECK(t2.find("&lt;&amp;&gt;") != std::string::npos);
}

TEST_CASE("Render.Svg.EmptyTimeline") {
  Timeline empty;
  CHECK_NOTHROW(check_xml_well_formed(render_svg(empty)));
}

// ---- Chrome trace ------------------------------------------------------------------------------------

TEST_CASE("Render.Chrome.JsonCheckerCatchesMistakes") {
  CHECK_NOTHROW((void)JsonParser(R"({"a":[1,-2.5e3,true,false,null,"x\"\\\u0041"],"b":{}})").parse());
  CHECK_THROWS((void)JsonParser(R"({"a":1,})").parse());
  CHECK_THROWS((void)JsonParser(R"({"a":01})").parse());
  CHECK_THROWS((void)JsonParser(R"({"a":1.})").parse());
  CHECK_THROWS((void)JsonParser(R"({'a':1})").parse());
  CHECK_THROWS((void)JsonParser(R"([1,2] 3)").parse());
  CHECK_THROWS((void)JsonParser("[\"a\nb\"]").parse());
  CHECK(JsonParser(R"({"k":"\u0041\n"})").parse().get("k")->string == "A\n");
}

namespace {
const Json* find_event(const Json& root, const std::string& name, int pid, const std::string& ph = "X") {
  for (const Json& e : root.get("traceEvents")->array)
    if (e.get("name")->string == name && e.get("pid")->number == pid && e.get("ph")->string == ph) return &e;
  return nullptr;
}
}  // namespace

TEST_CASE("Render.Chrome.OneEventPerSpanWithTimesInMicroseconds") {
  const Timeline tl = sample();
  const std::string text = render_chrome_trace(tl);
  Json root;
  REQUIRE_NOTHROW(root = JsonParser(text).parse());
  REQUIRE(root.type == Json::Type::object);
  const Json* events = root.get("traceEvents");
  REQUIRE(events);
  REQUIRE(events->type == Json::Type::array);
  int complete = 0;
  for (const Json& e : events->array) {
    REQUIRE(e.get("ph"));
    if (e.get("ph")->string != "X") continue;
    ++complete;
    CHECK(e.get("ts")->type == Json::Type::number);
    CHECK(e.get("dur")->number >= 0);
  }
  CHECK(complete == count_all(tl));

  // "units": one unit is 1000 us. FB1.2/0.0 on rank 0 runs [3, 5).
  const Json* fb = find_event(root, "FB1.2/0.0", 0);
  REQUIRE(fb);
  CHECK(fb->get("tid")->number == 0);
  CHECK(fb->get("cat")->string == "compute");
  CHECK(fb->get("ts")->number == 3000);
  CHECK(fb->get("dur")->number == 2000);
  const Json* args = fb->get("args");
  REQUIRE(args);
  CHECK(args->get("module")->number == 1);
  CHECK(args->get("chunk")->number == 2);
  CHECK(args->get("module1")->number == 0);
  CHECK(args->get("chunk1")->number == 0);
  CHECK(args->get("index")->number == 5);

  const Json* recv = find_event(root, "rF0.0", 1);
  REQUIRE(recv);
  CHECK(recv->get("tid")->number == 1);
  CHECK(recv->get("dur")->number == 1500);
  const Json* w = find_event(root, "|", 1);
  REQUIRE(w);
  CHECK(w->get("tid")->number == 2);
  CHECK(w->get("cat")->string == "wait");
  const Json* weight = find_event(root, "W", 1);
  REQUIRE(weight);
  CHECK(weight->get("args")->get("module") == nullptr);  // W carries no module or chunk

  // Process and thread names.
  const Json* name1 = find_event(root, "process_name", 1, "M");
  REQUIRE(name1);
  CHECK(name1->get("args")->get("name")->string == "rank 1");
  int thread_names = 0;
  for (const Json& e : events->array) thread_names += e.get("name")->string == "thread_name";
  CHECK(thread_names == 2 * 3);
  CHECK(root.get("otherData")->get("schedule")->string == "sample");
  CHECK(root.get("otherData")->get("makespan")->number == 6000 / 1000.0);
}

TEST_CASE("Render.Chrome.SecondsAndEscaping") {
  Timeline tl;
  tl.schedule = "we\"ird\\name\n";
  tl.ranks = 1;
  tl.time_unit = "s";
  tl.spans = {{compute(Op::F(0, 0), 0.5, 0.75, 0), compute(Op::B(0, 0), 0.75, 1.000125, 1)}};
  const Json root = JsonParser(render_chrome_trace(tl)).parse();
  const Json* f = find_event(root, "F0.0", 0);
  REQUIRE(f);
  CHECK(f->get("ts")->number == 500000);
  CHECK(f->get("dur")->number == 250000);
  const Json* b = find_event(root, "B0.0", 0);
  REQUIRE(b);
  CHECK(std::fabs(b->get("dur")->number - 250125) < 1e-6);
  CHECK(root.get("otherData")->get("schedule")->string == tl.schedule);
  CHECK(chrome_us_per_unit("units") == 1000);
  CHECK(chrome_us_per_unit("ms") == 1000);
  CHECK(chrome_us_per_unit("us") == 1);
}

// ---- A whole schedule --------------------------------------------------------------------------------

TEST_CASE("Render.AllThreeOnAScheduleTimeline") {
  // Lay the compute ops of DualPipeV 2x4 back to back on each rank (costs 1, FB 2): not a real
  // simulation, just many spans of every kind for the renderers to agree on.
  const Trace t = make_trace(ScheduleKind::dualpipev, 2, 4);
  Timeline tl;
  tl.schedule = t.schedule;
  tl.ranks = t.ranks;
  tl.chunks = t.chunks;
  int computes = 0;
  for (const auto& ops : t.ops) {
    tl.spans.emplace_back();
    double now = 0;
    for (std::size_t i = 0; i < ops.size(); ++i) {
      if (!is_compute(ops[i].kind)) continue;
      const double d = ops[i].kind == OpKind::forward_backward ? 2 : 1;
      tl.spans.back().push_back(compute(ops[i], now, now + d, static_cast<int>(i)));
      now += d;
      ++computes;
    }
  }
  const std::string svg = render_svg(tl);
  CHECK_NOTHROW(check_xml_well_formed(svg));
  CHECK(count_of(svg, "class=\"compute\"") == static_cast<std::size_t>(computes));
  Json root;
  REQUIRE_NOTHROW(root = JsonParser(render_chrome_trace(tl)).parse());
  int complete = 0;
  for (const Json& e : root.get("traceEvents")->array) complete += e.get("ph")->string == "X";
  CHECK(complete == computes);
  // Every compute op appears in the grid (auto cell = 1).
  const std::string grid = render_grid(tl);
  for (const auto& rank : tl.spans)
    for (const Span& s : rank) CHECK(grid.find(to_token(s.op)) != std::string::npos);
}
