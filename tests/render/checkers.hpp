// tests/render/checkers.hpp: tiny, strict syntax checkers for the renderers' output: an XML
// well-formedness checker (enough for SVG) and a JSON parser that builds a small tree.
#pragma once

#include <cctype>
#include <cstdlib>
#include <set>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace dualpipe::testing {

// ---- XML ---------------------------------------------------------------------------------------------

/// Throws std::runtime_error naming the first problem: unbalanced or crossed tags, unquoted or
/// repeated attributes, a raw '<' or a bad '&' entity in text or attribute values, more than one root.
inline void check_xml_well_formed(std::string_view s) {
  std::size_t p = 0;
  std::vector<std::string> open;
  int roots = 0;
  auto fail = [&](const std::string& why) { throw std::runtime_error("XML at " + std::to_string(p) + ": " + why); };
  auto name_char = [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == ':' || c == '.';
  };
  auto check_entity = [&](std::size_t at) {  // s[at] == '&'
    const std::size_t semi = s.find(';', at);
    if (semi == std::string_view::npos) fail("'&' without ';'");
    const std::string_view ent = s.substr(at + 1, semi - at - 1);
    if (ent == "amp" || ent == "lt" || ent == "gt" || ent == "quot" || ent == "apos") return;
    if (ent.size() > 1 && ent[0] == '#') return;
    fail("unknown entity '&" + std::string(ent) + ";'");
  };
  auto read_name = [&] {
    const std::size_t b = p;
    while (p < s.size() && name_char(s[p])) ++p;
    if (p == b) fail("expected a name");
    return std::string(s.substr(b, p - b));
  };
  auto skip_ws = [&] {
    while (p < s.size() && std::isspace(static_cast<unsigned char>(s[p]))) ++p;
  };
  while (p < s.size()) {
    if (s[p] != '<') {
      if (s[p] == '&') check_entity(p);
      if (open.empty() && !std::isspace(static_cast<unsigned char>(s[p]))) fail("text outside the root element");
      ++p;
      continue;
    }
    if (s.substr(p, 2) == "<?") {
      const std::size_t e = s.find("?>", p);
      if (e == std::string_view::npos) fail("unterminated <?");
      p = e + 2;
      continue;
    }
    if (s.substr(p, 4) == "<!--") {
      const std::size_t e = s.find("-->", p);
      if (e == std::string_view::npos) fail("unterminated comment");
      p = e + 3;
      continue;
    }
    if (s.substr(p, 2) == "</") {
      p += 2;
      const std::string name = read_name();
      skip_ws();
      if (p >= s.size() || s[p] != '>') fail("expected '>' after </" + name);
      ++p;
      if (open.empty() || open.back() != name) fail("closing </" + name + "> does not match");
      open.pop_back();
      continue;
    }
    ++p;
    const std::string name = read_name();
    if (open.empty() && ++roots > 1) fail("second root element <" + name + ">");
    std::set<std::string> attrs;
    for (;;) {
      skip_ws();
      if (p >= s.size()) fail("unterminated <" + name);
      if (s.substr(p, 2) == "/>") {
        p += 2;
        break;
      }
      if (s[p] == '>') {
        ++p;
        open.push_back(name);
        break;
      }
      const std::string attr = read_name();
      if (!attrs.insert(attr).second) fail("attribute " + attr + " repeated");
      skip_ws();
      if (p >= s.size() || s[p] != '=') fail("attribute " + attr + " without '='");
      ++p;
      skip_ws();
      if (p >= s.size() || (s[p] != '"' && s[p] != '\'')) fail("attribute " + attr + " not quoted");
      const char q = s[p++];
      const std::size_t e = s.find(q, p);
      if (e == std::string_view::npos) fail("unterminated attribute value");
      for (std::size_t i = p; i < e; ++i) {
        if (s[i] == '<') fail("raw '<' in attribute " + attr);
        if (s[i] == '&') check_entity(i);
      }
      p = e + 1;
    }
  }
  if (!open.empty()) throw std::runtime_error("XML: <" + open.back() + "> never closed");
  if (roots != 1) throw std::runtime_error("XML: no root element");
}

// ---- JSON --------------------------------------------------------------------------------------------

struct Json {
  enum class Type { null, boolean, number, string, array, object };
  Type type = Type::null;
  bool boolean = false;
  double number = 0;
  std::string string;
  std::vector<Json> array;
  std::vector<std::string> keys;  // an object's member names ...
  std::vector<Json> values;       // ... and values (vector<pair<string, Json>> would need Json complete)

  /// Member `key` of an object, or nullptr.
  [[nodiscard]] const Json* get(std::string_view key) const {
    for (std::size_t i = 0; i < keys.size(); ++i)
      if (keys[i] == key) return &values[i];
    return nullptr;
  }
};

/// A strict JSON (RFC 8259) parser; throws std::runtime_error on the first syntax error.
class JsonParser {
public:
  explicit JsonParser(std::string_view text) : _s(text) {}

  [[nodiscard]] Json parse() {
    Json v = value();
    ws();
    if (_p != _s.size()) fail("trailing characters");
    return v;
  }

private:
  [[noreturn]] void fail(const std::string& why) const {
    throw std::runtime_error("JSON at " + std::to_string(_p) + ": " + why);
  }
  void ws() {
    while (_p < _s.size() && (_s[_p] == ' ' || _s[_p] == '\n' || _s[_p] == '\r' || _s[_p] == '\t')) ++_p;
  }
  bool eat(char c) {
    ws();
    if (_p < _s.size() && _s[_p] == c) {
      ++_p;
      return true;
    }
    return false;
  }
  void expect(char c) {
    if (!eat(c)) fail(std::string("expected '") + c + "'");
  }
  bool literal(std::string_view word) {
    if (_s.substr(_p, word.size()) != word) return false;
    _p += word.size();
    return true;
  }

  Json value() {
    ws();
    if (_p >= _s.size()) fail("unexpected end");
    Json v;
    const char c = _s[_p];
    if (c == '{') {
      v.type = Json::Type::object;
      ++_p;
      if (eat('}')) return v;
      do {
        ws();
        v.keys.push_back(string_literal());
        expect(':');
        v.values.push_back(value());
      } while (eat(','));
      expect('}');
    } else if (c == '[') {
      v.type = Json::Type::array;
      ++_p;
      if (eat(']')) return v;
      do v.array.push_back(value());
      while (eat(','));
      expect(']');
    } else if (c == '"') {
      v.type = Json::Type::string;
      v.string = string_literal();
    } else if (literal("true")) {
      v.type = Json::Type::boolean;
      v.boolean = true;
    } else if (literal("false")) {
      v.type = Json::Type::boolean;
    } else if (literal("null")) {
    } else {
      v.type = Json::Type::number;
      v.number = number_literal();
    }
    return v;
  }

  std::string string_literal() {
    if (_p >= _s.size() || _s[_p] != '"') fail("expected a string");
    ++_p;
    std::string out;
    while (_p < _s.size() && _s[_p] != '"') {
      const char c = _s[_p++];
      if (static_cast<unsigned char>(c) < 0x20) fail("raw control character in a string");
      if (c != '\\') {
        out += c;
        continue;
      }
      if (_p >= _s.size()) fail("unterminated escape");
      const char e = _s[_p++];
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          if (_p + 4 > _s.size()) fail("short \\u escape");
          for (int i = 0; i < 4; ++i)
            if (!std::isxdigit(static_cast<unsigned char>(_s[_p + static_cast<std::size_t>(i)])))
              fail("bad \\u escape");
          const long cp = std::strtol(std::string(_s.substr(_p, 4)).c_str(), nullptr, 16);
          _p += 4;
          if (cp < 0x80) out += static_cast<char>(cp);
          else out += '?';  // the renderers only escape control characters
          break;
        }
        default: fail("bad escape");
      }
    }
    if (_p >= _s.size()) fail("unterminated string");
    ++_p;
    return out;
  }

  double number_literal() {
    const std::size_t b = _p;
    auto digits = [&] {
      const std::size_t d = _p;
      while (_p < _s.size() && std::isdigit(static_cast<unsigned char>(_s[_p]))) ++_p;
      return _p - d;
    };
    if (_p < _s.size() && _s[_p] == '-') ++_p;
    if (_p < _s.size() && _s[_p] == '0') ++_p;
    else if (digits() == 0) fail("bad value");
    if (_p < _s.size() && _s[_p] == '.') {
      ++_p;
      if (digits() == 0) fail("digits expected after '.'");
    }
    if (_p < _s.size() && (_s[_p] == 'e' || _s[_p] == 'E')) {
      ++_p;
      if (_p < _s.size() && (_s[_p] == '+' || _s[_p] == '-')) ++_p;
      if (digits() == 0) fail("digits expected in exponent");
    }
    return std::strtod(std::string(_s.substr(b, _p - b)).c_str(), nullptr);
  }

  std::string_view _s;
  std::size_t _p = 0;
};

}  // namespace dualpipe::testing
