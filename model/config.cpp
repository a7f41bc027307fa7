// The experiment config (docs/design.md §7): YAML -> Config with strict checking, `section.key=value`
// overrides, the invariants of the model and the trainer, and the resolved config back as YAML.
//
// Flow: parse the text into a yaml-cpp tree, apply the overrides to that tree (so an override is
// type-checked exactly like a file value), walk the tree against the key table below (unknown
// keys, duplicate keys and wrong types are errors with file:line), fill the defaults that depend
// on other keys (ffn_dim = 4 * dim), then validate. Every error is one line that names the key.
#include "model/config.h"

#include <fmt/core.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <set>
#include <sstream>

#include "core/error.h"
#include "core/log.h"

namespace bt {
namespace {

// ---- the key table ------------------------------------------------------------------------

enum class Type { Int, Int64, UInt64, Double, Bool, String, Betas };

struct Leaf {
  const char* path;  // "model.block_decoder.layers"
  Type type;
  void* (*field)(Config&);  // the member it fills (for Betas: the OptimConfig)
};

#define BT_LEAF(path, type, member)                                \
  Leaf {                                                           \
    path, Type::type, [](Config& c) -> void* { return &c.member; } \
  }

const std::vector<Leaf>& leaves() {
  static const std::vector<Leaf> table = {
      BT_LEAF("name", String, name),
      BT_LEAF("model.kind", String, model.kind),
      BT_LEAF("model.vocab_size", Int, model.vocab_size),
      BT_LEAF("model.context_length", Int, model.context_length),
      BT_LEAF("model.block_length", Int, model.block_length),
      BT_LEAF("model.embedder.kind", String, model.embedder_kind),
      BT_LEAF("model.embedder.dim", Int, model.embedder_dim),
      BT_LEAF("model.embedder.projection_method", String, model.projection_method),
      BT_LEAF("model.block_decoder.layers", Int, model.block_decoder.layers),
      BT_LEAF("model.block_decoder.dim", Int, model.block_decoder.dim),
      BT_LEAF("model.block_decoder.heads", Int, model.block_decoder.heads),
      BT_LEAF("model.block_decoder.ffn_dim", Int, model.block_decoder.ffn_dim),
      BT_LEAF("model.token_decoder.layers", Int, model.token_decoder.layers),
      BT_LEAF("model.token_decoder.dim", Int, model.token_decoder.dim),
      BT_LEAF("model.token_decoder.heads", Int, model.token_decoder.heads),
      BT_LEAF("model.token_decoder.ffn_dim", Int, model.token_decoder.ffn_dim),
      BT_LEAF("model.token_decoder.prefix_length", Int, model.token_decoder.prefix_length),
      BT_LEAF("model.token_decoder.decoding_strategy", String, model.decoding_strategy),
      BT_LEAF("model.decoder.layers", Int, model.decoder.layers),
      BT_LEAF("model.decoder.dim", Int, model.decoder.dim),
      BT_LEAF("model.decoder.heads", Int, model.decoder.heads),
      BT_LEAF("model.decoder.ffn_dim", Int, model.decoder.ffn_dim),
      BT_LEAF("model.rotary_pct", Double, model.rotary_pct),
      BT_LEAF("model.rotary_base", Double, model.rotary_base),
      BT_LEAF("model.layernorm_eps", Double, model.layernorm_eps),
      BT_LEAF("model.init_std", Double, model.init_std),
      BT_LEAF("model.pad_token_id", Int, model.pad_token_id),
      BT_LEAF("model.bos_token_id", Int, model.bos_token_id),
      BT_LEAF("load_from_vanilla.enable", Bool, load_from_vanilla.enable),
      BT_LEAF("load_from_vanilla.checkpoint_path", String, load_from_vanilla.checkpoint_path),
      BT_LEAF("load_from_vanilla.method", String, load_from_vanilla.method),
      BT_LEAF("load_from_vanilla.initialize_mean_embedder_projection", Bool,
              load_from_vanilla.initialize_mean_embedder_projection),
      BT_LEAF("load_from_vanilla.initialize_identity_expansion_layer", Bool,
              load_from_vanilla.initialize_identity_expansion_layer),
      BT_LEAF("data.train", String, data.train),
      BT_LEAF("data.val", String, data.val),
      BT_LEAF("data.random_pad_first_block", Bool, data.random_pad_first_block),
      BT_LEAF("data.pad_to_block_boundary", Bool, data.pad_to_block_boundary),
      BT_LEAF("data.synthetic", String, data.synthetic),
      BT_LEAF("data.verify_checksums", Bool, data.verify_checksums),
      BT_LEAF("data.task_data", String, data.task_data),
      BT_LEAF("optim.lr", Double, optim.lr),
      BT_LEAF("optim.min_lr_ratio", Double, optim.min_lr_ratio),
      BT_LEAF("optim.warmup_steps", Int, optim.warmup_steps),
      BT_LEAF("optim.schedule", String, optim.schedule),
      BT_LEAF("optim.betas", Betas, optim),
      BT_LEAF("optim.eps", Double, optim.eps),
      BT_LEAF("optim.weight_decay", Double, optim.weight_decay),
      BT_LEAF("optim.decay", String, optim.decay),
      BT_LEAF("optim.grad_clip", Double, optim.grad_clip),
      BT_LEAF("train.steps", Int64, train.steps),
      BT_LEAF("train.stop_step", Int64, train.stop_step),
      BT_LEAF("train.global_batch", Int, train.global_batch),
      BT_LEAF("train.micro_batch", Int, train.micro_batch),
      BT_LEAF("train.device", String, train.device),
      BT_LEAF("train.precision", String, train.precision),
      BT_LEAF("train.zero", Int, train.zero),
      BT_LEAF("train.seed", UInt64, train.seed),
      BT_LEAF("train.log_every", Int, train.log_every),
      BT_LEAF("train.eval_every", Int, train.eval_every),
      BT_LEAF("train.eval_batches", Int, train.eval_batches),
      BT_LEAF("train.eval_tasks", String, train.eval_tasks),
      BT_LEAF("train.eval_tasks_every", Int, train.eval_tasks_every),
      BT_LEAF("train.eval_tasks_limit", Double, train.eval_tasks_limit),
      BT_LEAF("train.checkpoint_every", Int, train.checkpoint_every),
      BT_LEAF("train.keep_checkpoints", Int, train.keep_checkpoints),
      BT_LEAF("train.keep_every", Int, train.keep_every),
      BT_LEAF("train.out_dir", String, train.out_dir),
      BT_LEAF("train.deterministic", Bool, train.deterministic),
  };
  return table;
}
#undef BT_LEAF

const std::set<std::string>& sections() {
  static const std::set<std::string> s = {
      "model", "model.embedder", "model.block_decoder", "model.token_decoder", "model.decoder", "data",
      "optim", "train", "load_from_vanilla"};
  return s;
}

const Leaf* find_leaf(const std::string& path) {
  for (const Leaf& l : leaves())
    if (path == l.path) return &l;
  return nullptr;
}

bool is_section(const std::string& path) { return sections().count(path) > 0; }

std::string parent_of(const std::string& path) {
  size_t dot = path.rfind('.');
  return dot == std::string::npos ? "" : path.substr(0, dot);
}
std::string last_part(const std::string& path) {
  size_t dot = path.rfind('.');
  return dot == std::string::npos ? path : path.substr(dot + 1);
}
std::string join(const std::string& prefix, const std::string& key) {
  return prefix.empty() ? key : prefix + "." + key;
}

// Every known path (sections and leaves): the candidates for "did you mean".
std::vector<std::string> all_paths() {
  std::vector<std::string> out(sections().begin(), sections().end());
  for (const Leaf& l : leaves()) out.push_back(l.path);
  return out;
}

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t up = row[j];
      size_t sub = diag + (std::tolower(a[i - 1]) == std::tolower(b[j - 1]) ? 0 : 1);
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, sub});
      diag = up;
    }
  }
  return row[b.size()];
}

// " (did you mean 'model.block_decoder'?)" or "": first a near-miss among the siblings, then
// the same key name in another section (`model.lr` -> `optim.lr`).
std::string suggestion(const std::string& path) {
  const std::string parent = parent_of(path), key = last_part(path);
  std::string best;
  size_t best_d = std::max<size_t>(2, key.size() / 3) + 1;
  for (const std::string& p : all_paths()) {
    if (parent_of(p) != parent || p == path) continue;
    size_t d = edit_distance(key, last_part(p));
    if (d < best_d) best_d = d, best = p;
  }
  if (best.empty())
    for (const std::string& p : all_paths())
      if (last_part(p) == key && p != path) {
        best = p;
        break;
      }
  return best.empty() ? "" : " (did you mean '" + best + "'?)";
}

// ---- where a value came from ----------------------------------------------------------------

// Prefixes for messages: "file:line: " for a file value, "override 'k=v': " for an override.
struct Origin {
  std::string file;                              // "" when parsing text without a name
  std::map<std::string, std::string> overrides;  // path -> the override that set it (last wins)

  // "override 'k=v': " when an override set path or a section above it (model.embedder={...}
  // owns model.embedder.dim), else "".
  std::string override_of(const std::string& path) const {
    for (std::string p = path; !p.empty(); p = parent_of(p)) {
      auto it = overrides.find(p);
      if (it != overrides.end()) return "override '" + it->second + "': ";
    }
    return "";
  }
  std::string at(const std::string& path, const YAML::Mark& mark) const {
    std::string ov = override_of(path);
    if (!ov.empty()) return ov;
    if (!mark.is_null() && mark.line >= 0) return fmt::format("{}:{}: ", name(), mark.line + 1);
    return name() + ": ";
  }
  std::string name() const { return file.empty() ? "<config>" : file; }
};

// The key node of a path in the tree (an undefined node when absent): its mark is the line a
// message should point at (a value's mark can be on the next line, e.g. for `key:` with no value).
YAML::Node lookup(const YAML::Node& root, const std::string& path) {
  YAML::Node cur = root;
  size_t start = 0;
  while (true) {
    if (!cur.IsMap()) return YAML::Node(YAML::NodeType::Undefined);
    size_t dot = path.find('.', start);
    std::string part = path.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    YAML::Node next;
    bool found = false;
    for (auto it = cur.begin(); it != cur.end(); ++it)
      if (it->first.IsScalar() && it->first.Scalar() == part) {
        if (dot == std::string::npos) return it->first;
        next.reset(it->second);
        found = true;
        break;
      }
    if (!found) return YAML::Node(YAML::NodeType::Undefined);
    cur.reset(next);
    start = dot + 1;
  }
}

// ---- scalar conversion ----------------------------------------------------------------------

std::string describe(const YAML::Node& n) {
  switch (n.Type()) {
    case YAML::NodeType::Sequence:
      return "a list";
    case YAML::NodeType::Map:
      return "a mapping";
    case YAML::NodeType::Null:
      return "nothing";
    case YAML::NodeType::Scalar:
      return "'" + n.Scalar() + "'";
    default:
      return "nothing";
  }
}

bool parse_int64(const std::string& s, int64_t* out) {
  const char* b = s.data();
  const char* e = s.data() + s.size();
  if (b != e && *b == '+') ++b;
  if (b == e) return false;
  auto [p, ec] = std::from_chars(b, e, *out);
  return ec == std::errc() && p == e;
}

bool parse_uint64(const std::string& s, uint64_t* out) {
  const char* b = s.data();
  const char* e = s.data() + s.size();
  if (b != e && *b == '+') ++b;
  if (b == e || *b == '-') return false;
  auto [p, ec] = std::from_chars(b, e, *out);
  return ec == std::errc() && p == e;
}

bool parse_double(const std::string& s, double* out) {
  if (s.empty()) return false;
  // Decimal notation only: strtod would also take hex, "inf" and "nan".
  for (char ch : s)
    if (!(std::isdigit(static_cast<unsigned char>(ch)) || ch == '+' || ch == '-' || ch == '.' || ch == 'e' ||
          ch == 'E'))
      return false;
  errno = 0;
  char* end = nullptr;
  double v = std::strtod(s.c_str(), &end);
  if (end != s.c_str() + s.size() || errno == ERANGE || !std::isfinite(v)) return false;
  *out = v;
  return true;
}

void set_leaf(Config& c, const Leaf& leaf, const YAML::Node& n, const std::string& where) {
  const std::string path = leaf.path;
  auto bad = [&](const char* expected) -> void {
    BT_FAIL(where, path, ": expected ", expected, ", got ", describe(n));
  };
  void* field = leaf.field(c);
  if (leaf.type == Type::String) {
    if (n.IsNull()) {
      *static_cast<std::string*>(field) = "";
      return;
    }
    if (!n.IsScalar()) bad("a string");
    *static_cast<std::string*>(field) = n.Scalar();
    return;
  }
  if (leaf.type == Type::Betas) {
    if (!n.IsSequence() || n.size() != 2) bad("a list of 2 numbers like [0.9, 0.95]");
    double b[2] = {0, 0};
    for (size_t i = 0; i < 2; ++i)
      if (!n[i].IsScalar() || !parse_double(n[i].Scalar(), &b[i]))
        BT_FAIL(where, path, ": expected a list of 2 numbers like [0.9, 0.95], got ", describe(n[i]),
                " in it");
    auto* o = static_cast<OptimConfig*>(field);
    o->beta1 = b[0];
    o->beta2 = b[1];
    return;
  }
  if (!n.IsScalar()) {
    switch (leaf.type) {
      case Type::Double:
        bad("a number");
        break;
      case Type::Bool:
        bad("true or false");
        break;
      case Type::UInt64:
        bad("a non-negative integer");
        break;
      default:
        bad("an integer");
        break;
    }
  }
  const std::string& s = n.Scalar();
  switch (leaf.type) {
    case Type::Int: {
      int64_t v = 0;
      if (!parse_int64(s, &v)) bad("an integer");
      if (v < std::numeric_limits<int>::min() || v > std::numeric_limits<int>::max())
        BT_FAIL(where, path, ": expected an integer, got '", s, "' (out of range)");
      *static_cast<int*>(field) = static_cast<int>(v);
      break;
    }
    case Type::Int64: {
      int64_t v = 0;
      if (!parse_int64(s, &v)) bad("an integer");
      *static_cast<int64_t*>(field) = v;
      break;
    }
    case Type::UInt64: {
      uint64_t v = 0;
      if (!parse_uint64(s, &v)) bad("a non-negative integer");
      *static_cast<uint64_t*>(field) = v;
      break;
    }
    case Type::Double: {
      double v = 0;
      if (!parse_double(s, &v)) bad("a number");
      *static_cast<double*>(field) = v;
      break;
    }
    case Type::Bool: {
      bool v = false;
      if (s == "true" || s == "True" || s == "TRUE")
        v = true;
      else if (s == "false" || s == "False" || s == "FALSE")
        v = false;
      else
        bad("true or false");
      *static_cast<bool*>(field) = v;
      break;
    }
    default:
      break;
  }
}

// Walks one mapping of the tree against the key table.
void convert_map(Config& c, const YAML::Node& node, const std::string& prefix, const YAML::Mark& key_mark,
                 const Origin& origin) {
  if (node.IsNull()) return;  // `data:` with everything commented out
  if (!node.IsMap()) {
    if (prefix.empty())
      BT_FAIL(origin.at("", node.Mark()),
              "expected a mapping of sections (name, model, data, optim, train), got ", describe(node));
    BT_FAIL(origin.at(prefix, key_mark), prefix, ": expected a mapping, got ", describe(node));
  }
  std::set<std::string> seen;
  for (auto it = node.begin(); it != node.end(); ++it) {
    const YAML::Node k = it->first;  // a copy: it-> yields a temporary
    if (!k.IsScalar())
      BT_FAIL(origin.at(prefix, k.Mark()), "keys must be plain names, got ", describe(k),
              prefix.empty() ? "" : " in '" + prefix + "'");
    const std::string path = join(prefix, k.Scalar());
    if (!seen.insert(k.Scalar()).second) BT_FAIL(origin.at(path, k.Mark()), "duplicate key '", path, "'");
    if (is_section(path)) {
      convert_map(c, YAML::Node(it->second), path, k.Mark(), origin);
    } else if (const Leaf* leaf = find_leaf(path)) {
      set_leaf(c, *leaf, YAML::Node(it->second), origin.at(path, k.Mark()));
    } else {
      BT_FAIL(origin.at(path, k.Mark()), "unknown key '", path, "'", suggestion(path));
    }
  }
}

// Applies `a.b.c=value` to the tree; records which paths the override owns.
void apply_override(YAML::Node& root, const std::string& ov, Origin& origin) {
  size_t eq = ov.find('=');
  if (eq == std::string::npos || eq == 0)
    BT_FAIL("override '", ov, "': expected section.key=value (e.g. optim.lr=3e-4)");
  std::string path = ov.substr(0, eq);
  while (!path.empty() && std::isspace(static_cast<unsigned char>(path.back()))) path.pop_back();
  std::string text = ov.substr(eq + 1);
  std::vector<std::string> parts;
  for (size_t start = 0;;) {
    size_t dot = path.find('.', start);
    parts.push_back(path.substr(start, dot == std::string::npos ? std::string::npos : dot - start));
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  // Each proper prefix must be a section, and the whole path a section or a key.
  std::string sofar;
  for (size_t i = 0; i < parts.size(); ++i) {
    if (parts[i].empty()) BT_FAIL("override '", ov, "': expected section.key=value (e.g. optim.lr=3e-4)");
    sofar = join(sofar, parts[i]);
    bool last = i + 1 == parts.size();
    if (!last && find_leaf(sofar))  // optim.betas.0: a value has no sub-keys
      BT_FAIL("override '", ov, "': unknown key '", path, "' ('", sofar, "' is a value, not a section)");
    if (!(is_section(sofar) || (last && find_leaf(sofar))))
      BT_FAIL("override '", ov, "': unknown key '", sofar, "'", suggestion(sofar));
  }
  // The value is YAML (scalar or flow: `[0.9, 0.99]`, `{layers: 4}`); a value YAML rejects
  // (e.g. a glob starting with '*', which YAML reads as an alias) is taken as a plain string.
  YAML::Node value;
  try {
    value = YAML::Load(text);
  } catch (const YAML::Exception&) {
    value = YAML::Node(text);
  }
  if (!root.IsMap()) root = YAML::Node(YAML::NodeType::Map);
  YAML::Node cur;
  cur.reset(root);
  for (size_t i = 0; i + 1 < parts.size(); ++i) {
    YAML::Node next = cur[parts[i]];
    if (!next.IsMap()) {
      cur[parts[i]] = YAML::Node(YAML::NodeType::Map);
      next.reset(cur[parts[i]]);
    }
    cur.reset(next);
  }
  cur[parts.back()] = value;
  // A later override of a parent replaces what earlier ones set below it.
  for (auto it = origin.overrides.begin(); it != origin.overrides.end();)
    it = it->first.rfind(path + ".", 0) == 0 ? origin.overrides.erase(it) : std::next(it);
  origin.overrides[path] = ov;
}

// Defaults that depend on other keys.
void resolve(Config& c) {
  for (DecoderConfig* d : {&c.model.block_decoder, &c.model.token_decoder, &c.model.decoder})
    if (d->ffn_dim == 0) d->ffn_dim = 4 * d->dim;
  // summation: the expansion ratio is L_B (the official default for that strategy)
  if (c.model.is_block() && c.model.summation() && c.model.token_decoder.prefix_length == 0)
    c.model.token_decoder.prefix_length = c.model.block_length;
}

// ---- validation -----------------------------------------------------------------------------

// The message prefix for a check on these keys: an override that set any of them, else the
// file line of the first one the file has, else the file name.
using Where = std::function<std::string(const std::vector<std::string>& keys)>;

void check_decoder(const DecoderConfig& d, const std::string& name, bool token, const ModelConfig& m,
                   const Where& where) {
  auto positive = [&](int v, const char* key) {
    std::string path = name + "." + key;
    if (v <= 0) BT_FAIL(where({path}), path, " must be positive (got ", v, ")");
  };
  positive(d.layers, "layers");
  positive(d.dim, "dim");
  positive(d.heads, "heads");
  positive(d.ffn_dim, "ffn_dim");
  if (d.dim % d.heads != 0)
    BT_FAIL(where({name + ".heads", name + ".dim"}), name, ".heads (", d.heads, ") must divide ", name,
            ".dim (", d.dim, ")");
  int hd = d.dim / d.heads;
  int rd = static_cast<int>(hd * m.rotary_pct);
  if (rd % 2 != 0)
    BT_FAIL(where({"model.rotary_pct", name + ".heads", name + ".dim"}), "model.rotary_pct (", m.rotary_pct,
            ") gives an odd rotary dim ", rd, " for ", name, " (head dim ", hd, " = ", d.dim, " / ", d.heads,
            "); rotate-half needs an even number of rotary dims");
  if (token) {
    if (d.prefix_length < 1)
      BT_FAIL(where({name + ".prefix_length"}), name, ".prefix_length must be at least 1 (got ",
              d.prefix_length, ")");
  } else if (d.prefix_length != 0) {
    BT_FAIL(where({name}), name, ".prefix_length is only for model.token_decoder");
  }
}

void check_unused(const DecoderConfig& d, const std::string& name, const std::string& kind,
                  const Where& where) {
  if (d.layers != 0 || d.dim != 0 || d.heads != 0 || d.ffn_dim != 0 || d.prefix_length != 0)
    BT_FAIL(where({name}), name, " is set but model.kind is ", kind, "; remove it (",
            name == "model.decoder" ? "only vanilla models use it" : "only block models use it", ")");
}

void check_enum(const std::string& v, const std::string& path, std::initializer_list<const char*> allowed,
                const Where& where) {
  std::string list;
  for (const char* a : allowed) {
    if (v == a) return;
    list += list.empty() ? "" : " | ";
    list += a;
  }
  BT_FAIL(where({path}), path, " must be one of ", list, " (got '", v, "')");
}

void validate_impl(const Config& c, const Where& where) {
  auto positive = [&](int64_t v, const char* path) {
    if (v <= 0) BT_FAIL(where({path}), path, " must be positive (got ", v, ")");
  };
  auto non_negative = [&](int64_t v, const char* path) {
    if (v < 0) BT_FAIL(where({path}), path, " must be >= 0 (got ", v, ")");
  };
  auto in_range = [&](double v, double lo, double hi, const char* path) {
    if (!(v >= lo && v <= hi)) BT_FAIL(where({path}), path, " must be in [", lo, ", ", hi, "] (got ", v, ")");
  };
  auto positive_d = [&](double v, const char* path) {
    if (!(v > 0)) BT_FAIL(where({path}), path, " must be positive (got ", v, ")");
  };

  if (c.name.empty()) BT_FAIL(where({"name"}), "name must not be empty");

  // model
  const ModelConfig& m = c.model;
  check_enum(m.kind, "model.kind", {"block", "vanilla"}, where);
  positive(m.vocab_size, "model.vocab_size");
  positive(m.context_length, "model.context_length");
  positive(m.block_length, "model.block_length");
  in_range(m.rotary_pct, 0.0, 1.0, "model.rotary_pct");
  positive_d(m.rotary_base, "model.rotary_base");
  positive_d(m.layernorm_eps, "model.layernorm_eps");
  positive_d(m.init_std, "model.init_std");
  auto token_id = [&](int v, const char* path) {
    if (v < -1 || v >= m.vocab_size)
      BT_FAIL(where({path}), path, " must be -1 (the tokenizer's EOS) or a token id below model.vocab_size (",
              m.vocab_size, "), got ", v);
  };
  token_id(m.pad_token_id, "model.pad_token_id");
  token_id(m.bos_token_id, "model.bos_token_id");
  if (m.is_block()) {
    check_enum(m.embedder_kind, "model.embedder.kind", {"lookup"}, where);
    check_enum(m.projection_method, "model.embedder.projection_method", {"concat", "projection_layer"}, where);
    check_enum(m.decoding_strategy, "model.token_decoder.decoding_strategy", {"prefix", "summation"}, where);
    positive(m.embedder_dim, "model.embedder.dim");
    check_decoder(m.block_decoder, "model.block_decoder", false, m, where);
    check_decoder(m.token_decoder, "model.token_decoder", true, m, where);
    check_unused(m.decoder, "model.decoder", "block", where);
    int64_t d_b = int64_t{m.embedder_dim} * m.block_length;
    if (!m.projection_layer() && d_b != m.block_decoder.dim)
      BT_FAIL(where({"model.embedder.dim", "model.block_length", "model.block_decoder.dim"}),
              "model.embedder.dim (", m.embedder_dim, ") x model.block_length (", m.block_length, ") = ", d_b,
              " must equal model.block_decoder.dim (", m.block_decoder.dim,
              "); the concat embedder puts L_B token embeddings side by side (projection_method: "
              "projection_layer maps any embedder.dim to the block decoder's width)");
    if (m.summation() && m.token_decoder.prefix_length != m.block_length)
      BT_FAIL(where({"model.token_decoder.prefix_length", "model.token_decoder.decoding_strategy"}),
              "model.token_decoder.prefix_length (", m.token_decoder.prefix_length,
              ") is the expansion ratio; decoding_strategy summation adds one expanded vector to each of the L_B "
              "inputs, so it must be model.block_length (", m.block_length, ") or left out");
    if (m.context_length % m.block_length != 0)
      BT_FAIL(where({"model.context_length", "model.block_length"}), "model.context_length (",
              m.context_length, ") must be divisible by model.block_length (", m.block_length, ")");
  } else {
    if (m.block_length != ModelConfig{}.block_length)
      BT_FAIL(where({"model.block_length"}), "model.block_length is set (", m.block_length,
              ") but model.kind is vanilla; remove it (only block models have blocks)");
    check_decoder(m.decoder, "model.decoder", false, m, where);
    check_unused(m.block_decoder, "model.block_decoder", "vanilla", where);
    check_unused(m.token_decoder, "model.token_decoder", "vanilla", where);
    if (m.projection_method != "concat")
      BT_FAIL(where({"model.embedder.projection_method"}),
              "model.embedder.projection_method is set but model.kind is vanilla; remove it");
    if (m.decoding_strategy != "prefix")
      BT_FAIL(where({"model.token_decoder.decoding_strategy"}),
              "model.token_decoder.decoding_strategy is set but model.kind is vanilla; remove it");
    if (c.load_from_vanilla.enable)
      BT_FAIL(where({"load_from_vanilla.enable"}),
              "load_from_vanilla initialises a block model from a vanilla one; model.kind is vanilla");
    if (m.embedder_dim != 0)
      BT_FAIL(where({"model.embedder.dim"}),
              "model.embedder.dim is set but model.kind is vanilla; remove it "
              "(the vanilla embedding width is model.decoder.dim)");
  }

  // uptraining
  const LoadFromVanillaConfig& u = c.load_from_vanilla;
  check_enum(u.method, "load_from_vanilla.method", {"partition", "skip", "duplicate"}, where);
  if (u.enable && u.checkpoint_path.empty())
    BT_FAIL(where({"load_from_vanilla.checkpoint_path", "load_from_vanilla.enable"}),
            "load_from_vanilla.checkpoint_path is empty: give the vanilla checkpoint directory or its "
            "model.safetensors (ours, or an HF GPT-NeoX / Pythia file)");
  if (u.enable && u.initialize_mean_embedder_projection && !m.projection_layer())
    BT_FAIL(where({"load_from_vanilla.initialize_mean_embedder_projection", "model.embedder.projection_method"}),
            "load_from_vanilla.initialize_mean_embedder_projection needs model.embedder.projection_method: "
            "projection_layer (the concat embedder has no projection)");
  if (u.enable && u.initialize_mean_embedder_projection && m.embedder_dim != m.block_decoder.dim)
    BT_FAIL(where({"load_from_vanilla.initialize_mean_embedder_projection", "model.embedder.dim"}),
            "load_from_vanilla.initialize_mean_embedder_projection needs model.embedder.dim (", m.embedder_dim,
            ") = model.block_decoder.dim (", m.block_decoder.dim, "): the mean of the L_B token vectors is the "
            "block vector");
  if (u.enable && u.initialize_identity_expansion_layer && m.token_decoder.dim != m.block_decoder.dim)
    BT_FAIL(where({"load_from_vanilla.initialize_identity_expansion_layer", "model.token_decoder.dim"}),
            "load_from_vanilla.initialize_identity_expansion_layer needs model.token_decoder.dim (",
            m.token_decoder.dim, ") = model.block_decoder.dim (", m.block_decoder.dim, ")");

  // data
  const DataConfig& d = c.data;
  if (d.train.empty() && d.synthetic.empty())
    BT_FAIL(where({"data.train"}),
            "data.train is empty: set it to a glob of token shards "
            "(e.g. data/pile/train-*.h5) or set data.synthetic");
  // Only the kind: data/token_stream.cpp checks the numbers when it builds the stream.
  if (!d.synthetic.empty()) {
    std::string kind = d.synthetic.substr(0, d.synthetic.find(':'));
    if (kind != "repeat" && kind != "random")
      BT_FAIL(where({"data.synthetic"}),
              "data.synthetic must be repeat:<period>[:<tokens>] or random[:<tokens>] (got '", d.synthetic,
              "')");
  }

  // optim
  const OptimConfig& o = c.optim;
  positive_d(o.lr, "optim.lr");
  in_range(o.min_lr_ratio, 0.0, 1.0, "optim.min_lr_ratio");
  non_negative(o.warmup_steps, "optim.warmup_steps");
  check_enum(o.schedule, "optim.schedule", {"cosine", "constant"}, where);
  if (!(o.beta1 >= 0 && o.beta1 < 1 && o.beta2 >= 0 && o.beta2 < 1))
    BT_FAIL(where({"optim.betas"}), "optim.betas must both be in [0, 1) (got [", o.beta1, ", ", o.beta2,
            "])");
  positive_d(o.eps, "optim.eps");
  if (!(o.weight_decay >= 0))
    BT_FAIL(where({"optim.weight_decay"}), "optim.weight_decay must be >= 0 (got ", o.weight_decay, ")");
  check_enum(o.decay, "optim.decay", {"all", "matrices"}, where);
  if (!(o.grad_clip >= 0))
    BT_FAIL(where({"optim.grad_clip"}), "optim.grad_clip must be >= 0 (0 disables clipping; got ",
            o.grad_clip, ")");

  // train
  const TrainConfig& t = c.train;
  positive(t.steps, "train.steps");
  positive(t.global_batch, "train.global_batch");
  positive(t.micro_batch, "train.micro_batch");
  if (t.global_batch % t.micro_batch != 0)
    BT_FAIL(where({"train.global_batch", "train.micro_batch"}), "train.global_batch (", t.global_batch,
            ") must be divisible by train.micro_batch (", t.micro_batch, ")");
  check_enum(t.device, "train.device", {"auto", "cpu", "cuda"}, where);
  check_enum(t.precision, "train.precision", {"bf16", "fp32"}, where);
  if (t.zero != 0 && t.zero != 1)
    BT_FAIL(where({"train.zero"}), "train.zero must be 0 or 1 (got ", t.zero, ")");
  // Intervals are step counts (the trainer takes step % interval); a number larger than
  // train.steps means "only at the end".
  positive(t.log_every, "train.log_every");
  positive(t.eval_every, "train.eval_every");
  positive(t.eval_batches, "train.eval_batches");
  // checkpoint_every 0: only at the end (and when stopped); keep_checkpoints <= 0: keep all.
  non_negative(t.checkpoint_every, "train.checkpoint_every");
  // stop_step: the official stop_steps, a stop inside the schedule of train.steps (0: none).
  non_negative(t.stop_step, "train.stop_step");
  if (t.stop_step > t.steps)
    BT_FAIL(where({"train.stop_step", "train.steps"}), "train.stop_step (", t.stop_step,
            ") is past train.steps (", t.steps, "), the length of the lr schedule; raise train.steps or lower "
            "train.stop_step (0: stop at train.steps)");
  non_negative(t.keep_every, "train.keep_every");
  if (t.keep_every > 0 && t.checkpoint_every > 0 && t.keep_every % t.checkpoint_every != 0)
    BT_FAIL(where({"train.keep_every", "train.checkpoint_every"}), "train.keep_every (", t.keep_every,
            ") must be a multiple of train.checkpoint_every (", t.checkpoint_every,
            "): only steps with a checkpoint can be kept");
  positive(t.eval_tasks_every, "train.eval_tasks_every");
  if (!(t.eval_tasks_limit >= 0))
    BT_FAIL(where({"train.eval_tasks_limit"}), "train.eval_tasks_limit must be >= 0 (0: every document; a count, "
            "or a fraction below 1; got ", t.eval_tasks_limit, ")");
  if (!t.eval_tasks.empty() && d.task_data.empty())
    BT_FAIL(where({"data.task_data", "train.eval_tasks"}), "train.eval_tasks is set (", t.eval_tasks,
            ") but data.task_data is empty: give the directory of the tasks' files (docs/evaluation.md)");
  if (t.out_dir.empty()) BT_FAIL(where({"train.out_dir"}), "train.out_dir must not be empty");
}

// ---- YAML output ----------------------------------------------------------------------------

// The shortest text that reads back to the same double, always with a '.' (1.0, 1.0e-05) so
// that YAML 1.1 readers (PyYAML) also see a float.
std::string fmt_double(double v) {
  std::string s = fmt::format("{}", v);
  if (s.find('.') != std::string::npos || !std::isfinite(v)) return s;
  size_t e = s.find_first_of("eE");
  s.insert(e == std::string::npos ? s.size() : e, ".0");
  return s;
}

bool looks_special(const std::string& s) {
  static const std::set<std::string> words = {"true", "false", "yes", "no", "on",
                                              "off",  "null",  "y",   "n",  "~"};
  std::string lower;
  for (char ch : s) lower += static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  if (words.count(lower)) return true;
  double d;
  return parse_double(s, &d);
}

// A plain scalar when that is unambiguous, otherwise a double-quoted one.
std::string fmt_string(const std::string& s) {
  bool plain = !s.empty() && !looks_special(s);
  for (size_t i = 0; plain && i < s.size(); ++i) {
    unsigned char ch = static_cast<unsigned char>(s[i]);
    bool ok = std::isalnum(ch) || ch == '_' || ch == '.' || ch == '/' || ch == '-' || ch == '+' || ch == '*';
    if (i == 0) ok = std::isalnum(ch) || ch == '_' || ch == '/' || ch == '.';
    plain = ok;
  }
  if (plain) return s;
  std::string out = "\"";
  for (char ch : s) {
    switch (ch) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (static_cast<unsigned char>(ch) < 0x20)
          out += fmt::format("\\x{:02x}", static_cast<unsigned>(ch));
        else
          out += ch;
    }
  }
  return out + "\"";
}

std::string fmt_decoder(const DecoderConfig& d, bool token) {
  std::string s =
      fmt::format("{{layers: {}, dim: {}, heads: {}, ffn_dim: {}", d.layers, d.dim, d.heads, d.ffn_dim);
  if (token) s += fmt::format(", prefix_length: {}", d.prefix_length);
  return s + "}";
}

bool is_zero(const DecoderConfig& d) { return d == DecoderConfig{}; }

// Runs f, keeping its errors on one line: a value or an override quoted in a message may carry
// line breaks (a block scalar, a quoted "\n", an override with a newline); they are shown
// escaped.
template <class F>
auto with_one_line_errors(F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const Error& e) {
    const std::string m = e.what(), escaped = one_line(m);
    if (escaped == m) throw;
    throw Error(escaped, e.file(), e.line());
  }
}

Config parse_config_impl(const std::string& yaml_text, const std::string& path,
                         const std::vector<std::string>& overrides) {
  Origin origin;
  origin.file = path;
  YAML::Node root;
  try {
    root = YAML::Load(yaml_text);
  } catch (const YAML::ParserException& e) {
    if (!e.mark.is_null() && e.mark.line >= 0)
      BT_FAIL(origin.name(), ":", e.mark.line + 1, ": YAML syntax error: ", e.msg);
    BT_FAIL(origin.name(), ": YAML syntax error: ", e.msg);
  } catch (const YAML::Exception& e) {
    BT_FAIL(origin.name(), ": cannot read YAML: ", e.msg);
  }
  if (!root.IsDefined() || root.IsNull()) root = YAML::Node(YAML::NodeType::Map);
  if (!root.IsMap())
    BT_FAIL(origin.at("", root.Mark()),
            "expected a mapping of sections (name, model, data, optim, train), got ", describe(root));
  for (const std::string& ov : overrides) apply_override(root, ov, origin);

  Config c;
  try {
    convert_map(c, root, "", root.Mark(), origin);
  } catch (const YAML::Exception& e) {  // should not happen: every access above is checked
    BT_FAIL(origin.name(), ": cannot read YAML: ", e.msg);
  }
  resolve(c);
  c.source = path;
  // A vanilla model has no blocks: a model.block_length other than the default is refused below
  // (validate_impl); the key at its default value is named in a warning instead of passing
  // silently. Not an error: the config.yaml of vanilla checkpoints written by bt before
  // 2026-12-01 carries `block_length: 4`, and those checkpoints must still load.
  if (c.model.kind == "vanilla" && c.model.block_length == ModelConfig{}.block_length)
    if (YAML::Node n = lookup(root, "model.block_length"); n.IsDefined())
      log_warn("{}model.block_length is ignored: model.kind is vanilla (only block models have blocks); remove it",
               origin.at("model.block_length", n.Mark()));
  validate_impl(c, [&](const std::vector<std::string>& keys) {
    for (const std::string& k : keys)
      if (std::string ov = origin.override_of(k); !ov.empty()) return ov;
    for (const std::string& k : keys)
      if (YAML::Node n = lookup(root, k); n.IsDefined()) return origin.at(k, n.Mark());
    return origin.name() + ": ";
  });
  return c;
}

}  // namespace

// ---- public API -----------------------------------------------------------------------------

Config parse_config(const std::string& yaml_text, const std::string& path,
                    const std::vector<std::string>& overrides) {
  return with_one_line_errors([&] { return parse_config_impl(yaml_text, path, overrides); });
}

Config load_config(const std::string& path, const std::vector<std::string>& overrides) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) BT_FAIL("config file '", path, "' not found");
  std::ifstream in(path, std::ios::binary);
  if (!in) BT_FAIL("config file '", path, "' cannot be read");
  std::ostringstream text;
  text << in.rdbuf();
  return parse_config(text.str(), path, overrides);
}

void validate(const Config& c) {
  with_one_line_errors([&] {
    validate_impl(
        c, [&](const std::vector<std::string>&) { return c.source.empty() ? std::string() : c.source + ": "; });
  });
}

std::string to_yaml(const Config& c) {
  const ModelConfig& m = c.model;
  std::string y;
  auto line = [&](const std::string& s) { y += s + "\n"; };
  line("name: " + fmt_string(c.name));
  line("model:");
  line("  kind: " + fmt_string(m.kind));
  line(fmt::format("  vocab_size: {}", m.vocab_size));
  line(fmt::format("  context_length: {}", m.context_length));
  if (m.is_block() || m.block_length != ModelConfig{}.block_length)
    line(fmt::format("  block_length: {}", m.block_length));
  // Block-only sections are left out of a vanilla config and vice versa, unless set (so that
  // parsing the text back gives the same Config, and validate names the stray section).
  if (m.is_block() || m.embedder_kind != "lookup" || m.embedder_dim != 0 || m.projection_method != "concat")
    line(fmt::format("  embedder: {{kind: {}, dim: {}, projection_method: {}}}", fmt_string(m.embedder_kind),
                     m.embedder_dim, fmt_string(m.projection_method)));
  if (m.is_block() || !is_zero(m.block_decoder))
    line("  block_decoder: " + fmt_decoder(m.block_decoder, false));
  if (m.is_block() || !is_zero(m.token_decoder) || m.decoding_strategy != "prefix") {
    std::string td = fmt_decoder(m.token_decoder, true);
    td.insert(td.size() - 1, ", decoding_strategy: " + fmt_string(m.decoding_strategy));
    line("  token_decoder: " + td);
  }
  if (!m.is_block() || !is_zero(m.decoder)) line("  decoder: " + fmt_decoder(m.decoder, false));
  line("  rotary_pct: " + fmt_double(m.rotary_pct));
  line("  rotary_base: " + fmt_double(m.rotary_base));
  line("  layernorm_eps: " + fmt_double(m.layernorm_eps));
  line("  init_std: " + fmt_double(m.init_std));
  line(fmt::format("  pad_token_id: {}", m.pad_token_id));
  line(fmt::format("  bos_token_id: {}", m.bos_token_id));
  const LoadFromVanillaConfig& u = c.load_from_vanilla;
  if (m.is_block() || u != LoadFromVanillaConfig{}) {
    line("load_from_vanilla:");
    line(fmt::format("  enable: {}", u.enable));
    line("  checkpoint_path: " + fmt_string(u.checkpoint_path));
    line("  method: " + fmt_string(u.method));
    line(fmt::format("  initialize_mean_embedder_projection: {}", u.initialize_mean_embedder_projection));
    line(fmt::format("  initialize_identity_expansion_layer: {}", u.initialize_identity_expansion_layer));
  }
  const DataConfig& d = c.data;
  line("data:");
  line("  train: " + fmt_string(d.train));
  line("  val: " + fmt_string(d.val));
  line(fmt::format("  random_pad_first_block: {}", d.random_pad_first_block));
  line(fmt::format("  pad_to_block_boundary: {}", d.pad_to_block_boundary));
  line("  synthetic: " + fmt_string(d.synthetic));
  line(fmt::format("  verify_checksums: {}", d.verify_checksums));
  line("  task_data: " + fmt_string(d.task_data));
  const OptimConfig& o = c.optim;
  line("optim:");
  line("  lr: " + fmt_double(o.lr));
  line("  min_lr_ratio: " + fmt_double(o.min_lr_ratio));
  line(fmt::format("  warmup_steps: {}", o.warmup_steps));
  line("  schedule: " + fmt_string(o.schedule));
  line("  betas: [" + fmt_double(o.beta1) + ", " + fmt_double(o.beta2) + "]");
  line("  eps: " + fmt_double(o.eps));
  line("  weight_decay: " + fmt_double(o.weight_decay));
  line("  decay: " + fmt_string(o.decay));
  line("  grad_clip: " + fmt_double(o.grad_clip));
  const TrainConfig& t = c.train;
  line("train:");
  line(fmt::format("  steps: {}", t.steps));
  line(fmt::format("  stop_step: {}", t.stop_step));
  line(fmt::format("  global_batch: {}", t.global_batch));
  line(fmt::format("  micro_batch: {}", t.micro_batch));
  line("  device: " + fmt_string(t.device));
  line("  precision: " + fmt_string(t.precision));
  line(fmt::format("  zero: {}", t.zero));
  line(fmt::format("  seed: {}", t.seed));
  line(fmt::format("  log_every: {}", t.log_every));
  line(fmt::format("  eval_every: {}", t.eval_every));
  line(fmt::format("  eval_batches: {}", t.eval_batches));
  line("  eval_tasks: " + fmt_string(t.eval_tasks));
  line(fmt::format("  eval_tasks_every: {}", t.eval_tasks_every));
  line("  eval_tasks_limit: " + fmt_double(t.eval_tasks_limit));
  line(fmt::format("  checkpoint_every: {}", t.checkpoint_every));
  line(fmt::format("  keep_checkpoints: {}", t.keep_checkpoints));
  line(fmt::format("  keep_every: {}", t.keep_every));
  line("  out_dir: " + fmt_string(t.out_dir));
  line(fmt::format("  deterministic: {}", t.deterministic));
  return y;
}

ModelConfig with_token_ids(ModelConfig m, int eos_id) {
  if (eos_id < 0) return m;
  if (m.pad_token_id < 0) m.pad_token_id = eos_id;
  if (m.bos_token_id < 0) m.bos_token_id = eos_id;
  return m;
}

uint64_t config_hash(const Config& c) {
  // FNV-1a 64.
  uint64_t h = 1469598103934665603ull;
  for (unsigned char ch : to_yaml(c)) {
    h ^= ch;
    h *= 1099511628211ull;
  }
  return h;
}

}  // namespace bt
