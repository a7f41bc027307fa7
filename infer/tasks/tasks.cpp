// Task definitions and their local data: see tasks.h. Each `make_*` turns one published record
// into a TaskDoc the way the harness's YAML (doc_to_text / doc_to_target / doc_to_choice, with
// target_delimiter " ") and utils.py do.
#include "infer/tasks/tasks.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "infer/tasks/text.h"

namespace bt {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

const std::vector<MetricSpec> kMc = {{"acc", "mean", true}, {"acc_norm", "mean", true}};

const std::vector<TaskSpec>& specs() {
  static const std::vector<TaskSpec> s = {
      {"lambada_openai", "test", "EleutherAI/lambada_openai (default)", 1.0, OutputType::loglikelihood,
       {{"perplexity", "perplexity", false}, {"acc", "mean", true}}, 5153},
      {"wikitext", "test", "EleutherAI/wikitext_document_level (wikitext-2-raw-v1)", 2.0,
       OutputType::loglikelihood_rolling,
       {{"word_perplexity", "weighted_perplexity", false},
        {"byte_perplexity", "weighted_perplexity", false},
        {"bits_per_byte", "bits_per_byte", false}},
       62},
      {"hellaswag", "validation", "Rowan/hellaswag", 1.0, OutputType::multiple_choice, kMc, 10042},
      {"piqa", "validation", "piqa (ybisk/piqa, baber/piqa)", 1.0, OutputType::multiple_choice, kMc, 1838},
      {"arc_easy", "test", "allenai/ai2_arc (ARC-Easy)", 1.0, OutputType::multiple_choice, kMc, 2376},
      {"arc_challenge", "test", "allenai/ai2_arc (ARC-Challenge)", 1.0, OutputType::multiple_choice, kMc, 1172},
      {"sciq", "test", "allenai/sciq", 1.0, OutputType::multiple_choice, kMc, 1000},
      {"winogrande", "validation", "allenai/winogrande (winogrande_xl)", 1.0, OutputType::multiple_choice,
       {{"acc", "mean", true}}, 1267},
  };
  return s;
}

// ---- reading records --------------------------------------------------------------------------

struct Record {
  const json& j;
  const std::string& where;  // "file:line"
  const std::string& layout;
  const json& at(const char* key) const {
    auto it = j.find(key);
    BT_CHECK(j.is_object() && it != j.end(), where, ": no field '", key, "' (expected the layout of ", layout, ")");
    return *it;
  }
  std::string str(const char* key) const {
    const json& v = at(key);
    BT_CHECK(v.is_string(), where, ": field '", key, "' is not a string");
    return v.get<std::string>();
  }
  std::vector<std::string> strs(const json& v, const char* what) const {
    BT_CHECK(v.is_array(), where, ": field '", what, "' is not a list");
    std::vector<std::string> out;
    for (const json& e : v) {
      BT_CHECK(e.is_string(), where, ": field '", what, "' has an element that is not a string");
      out.push_back(e.get<std::string>());
    }
    return out;
  }
  // An integer label given as a number or as a string of digits.
  int label(const char* key) const {
    const json& v = at(key);
    if (v.is_number_integer()) return v.get<int>();
    if (v.is_string()) {
      const std::string s = v.get<std::string>();
      BT_CHECK(!s.empty() && s.find_first_not_of("0123456789") == std::string::npos, where, ": field '", key,
               "' is \"", s, "\", not a label (a test split without answers?)");
      return std::stoi(s);
    }
    BT_FAIL(where, ": field '", key, "' is not an integer label");
  }
};

TaskDoc mc_doc(std::string context, std::vector<std::string> choices, int gold) {
  TaskDoc d;
  d.contexts = {std::move(context)};
  for (const auto& c : choices) d.continuations.push_back(" " + c);
  d.choices = std::move(choices);
  d.gold = gold;
  return d;
}

// lambada_openai.yaml: doc_to_text "{{text.split(' ')[:-1]|join(' ')}}",
// doc_to_target "{{' '+text.split(' ')[-1]}}".
TaskDoc make_lambada(const Record& r) {
  std::vector<std::string> words = text::split(r.str("text"), " ");
  TaskDoc d;
  const std::string last = words.back();
  words.pop_back();
  d.contexts = {text::join(words, " ")};
  d.continuations = {" " + last};
  return d;
}

// wikitext.yaml: loglikelihood_rolling over wikitext_detokenizer(page); process_results counts
// words (re.split(r"\s+")) and UTF-8 bytes of the page *before* detokenization.
TaskDoc make_wikitext(const Record& r) {
  const std::string page = r.str("page");
  TaskDoc d;
  d.text = text::wikitext_detokenize(page);
  d.words = static_cast<int64_t>(text::count_words(page));
  d.bytes = static_cast<int64_t>(page.size());
  return d;
}

// hellaswag utils.process_docs: query = preprocess(activity_label + ": " + ctx_a + " " +
// ctx_b.capitalize()), choices = preprocess(ending) each, gold = int(label).
TaskDoc make_hellaswag(const Record& r) {
  const std::string ctx = r.str("ctx_a") + " " + text::capitalize(r.str("ctx_b"));
  std::vector<std::string> choices;
  for (const auto& e : r.strs(r.at("endings"), "endings")) choices.push_back(text::hellaswag_preprocess(e));
  return mc_doc(text::hellaswag_preprocess(r.str("activity_label") + ": " + ctx), std::move(choices),
                r.label("label"));
}

// piqa.yaml: "Question: {{goal}}\nAnswer:", choices [sol1, sol2], target label.
TaskDoc make_piqa(const Record& r, int label) {
  return mc_doc("Question: " + r.str("goal") + "\nAnswer:", {r.str("sol1"), r.str("sol2")}, label);
}

// arc_easy.yaml: "Question: {{question}}\nAnswer:", choices choices.text, target
// choices.label.index(answerKey). The original AI2 layout nests them:
// {"question": {"stem", "choices": [{"text", "label"}]}, "answerKey"}.
TaskDoc make_arc(const Record& r) {
  std::string question;
  std::vector<std::string> texts, labels;
  const json& q = r.at("question");
  if (q.is_object()) {
    const Record inner{q, r.where, r.layout};
    question = inner.str("stem");
    const json& cs = inner.at("choices");
    BT_CHECK(cs.is_array(), r.where, ": question.choices is not a list");
    for (const json& c : cs) {
      const Record cr{c, r.where, r.layout};
      texts.push_back(cr.str("text"));
      labels.push_back(cr.str("label"));
    }
  } else {
    question = r.str("question");
    const Record cr{r.at("choices"), r.where, r.layout};
    texts = r.strs(cr.at("text"), "choices.text");
    labels = r.strs(cr.at("label"), "choices.label");
  }
  BT_CHECK(texts.size() == labels.size(), r.where, ": ", texts.size(), " choice texts but ", labels.size(), " labels");
  const std::string key = r.str("answerKey");
  int gold = -1;
  for (size_t i = 0; i < labels.size(); ++i)
    if (labels[i] == key) gold = static_cast<int>(i);
  BT_CHECK(gold >= 0, r.where, ": answerKey \"", key, "\" is not one of the choice labels");
  return mc_doc("Question: " + question + "\nAnswer:", std::move(texts), gold);
}

// sciq.yaml: "{{support.lstrip()}}\nQuestion: {{question}}\nAnswer:", choices
// [distractor1, distractor2, distractor3, correct_answer], target 3.
TaskDoc make_sciq(const Record& r) {
  return mc_doc(text::lstrip(r.str("support")) + "\nQuestion: " + r.str("question") + "\nAnswer:",
                {r.str("distractor1"), r.str("distractor2"), r.str("distractor3"), r.str("correct_answer")}, 3);
}

// winogrande preprocess_winogrande.py (partial scoring): the choices are the sentence up to the
// blank with each option filled in (the contexts); the continuation is the rest of the sentence
// after the blank, stripped; gold = answer "1" -> 0, "2" -> 1.
TaskDoc make_winogrande(const Record& r) {
  const std::string s = r.str("sentence");
  const size_t idx = s.find('_');
  BT_CHECK(idx != std::string::npos, r.where, ": the sentence has no blank '_'");
  const std::string answer = r.at("answer").is_string() ? r.str("answer") : std::to_string(r.label("answer"));
  BT_CHECK(answer == "1" || answer == "2", r.where, ": answer \"", answer, "\" is not \"1\" or \"2\"");
  TaskDoc d;
  d.choices = {s.substr(0, idx) + r.str("option1"), s.substr(0, idx) + r.str("option2")};
  d.contexts = d.choices;
  const std::string target = text::strip(s.substr(idx + 1));
  d.continuations = {" " + target, " " + target};
  d.gold = answer == "1" ? 0 : 1;
  return d;
}

// ---- files --------------------------------------------------------------------------------

struct FileLayout {
  std::string file;         // relative to the task data directory
  std::string labels_file;  // piqa's original layout: labels in a separate file ("" otherwise)
  bool json_array = false;  // SciQ's original layout: one JSON array
  FileLayout(std::string f, std::string labels = "", bool array = false)
      : file(std::move(f)), labels_file(std::move(labels)), json_array(array) {}
};

std::vector<FileLayout> layouts(const std::string& name) {
  const TaskSpec& s = task_spec(name);
  std::vector<FileLayout> v = {{name + ".jsonl"}, {name + "/" + s.split + ".jsonl"}};
  if (name == "lambada_openai") v.push_back({"lambada_test.jsonl"});
  if (name == "hellaswag") v.push_back({"hellaswag_val.jsonl"});
  if (name == "piqa") v.push_back({"piqa/valid.jsonl", "piqa/valid-labels.lst"});
  if (name == "arc_easy") v.push_back({"ARC-Easy/ARC-Easy-Test.jsonl"});
  if (name == "arc_challenge") v.push_back({"ARC-Challenge/ARC-Challenge-Test.jsonl"});
  if (name == "sciq") v.push_back({"sciq/test.json", "", true});
  if (name == "winogrande") v.push_back({"winogrande/dev.jsonl"});
  return v;
}

std::vector<json> read_records(const std::string& path, bool array, std::vector<std::string>& where) {
  std::ifstream f(path);
  BT_CHECK(f.good(), path, ": cannot read");
  std::vector<json> out;
  if (array) {
    json j;
    try {
      j = json::parse(f);
    } catch (const json::exception& e) {
      BT_FAIL(path, ": not valid JSON (", e.what(), ")");
    }
    BT_CHECK(j.is_array(), path, ": expected a JSON array of records");
    for (size_t i = 0; i < j.size(); ++i) {
      out.push_back(j[i]);
      where.push_back(path + ": record " + std::to_string(i + 1));
    }
    return out;
  }
  std::string line;
  for (int64_t n = 1; std::getline(f, line); ++n) {
    if (text::strip(line).empty()) continue;
    try {
      out.push_back(json::parse(line));
    } catch (const json::exception& e) {
      BT_FAIL(path, ":", n, ": not a JSON line (", e.what(), ")");
    }
    where.push_back(path + ":" + std::to_string(n));
  }
  return out;
}

}  // namespace

const std::vector<std::string>& task_names() {
  static const std::vector<std::string> n = [] {
    std::vector<std::string> v;
    for (const auto& s : specs()) v.push_back(s.name);
    return v;
  }();
  return n;
}

const TaskSpec& task_spec(const std::string& name) {
  for (const auto& s : specs())
    if (s.name == name) return s;
  BT_FAIL("unknown task '", name, "': the tasks are ", text::join(task_names(), ", "), " (or all)");
}

std::vector<std::string> parse_task_list(const std::string& list) {
  std::vector<std::string> out;
  for (std::string t : text::split(list, ",")) {
    t = text::strip(t);
    if (t.empty()) continue;
    if (t == "all") {
      for (const auto& n : task_names())
        if (std::find(out.begin(), out.end(), n) == out.end()) out.push_back(n);
      continue;
    }
    task_spec(t);
    if (std::find(out.begin(), out.end(), t) == out.end()) out.push_back(t);
  }
  BT_CHECK(!out.empty(), "--task: no task named (the tasks are ", text::join(task_names(), ", "), ")");
  return out;
}

std::vector<std::string> task_files(const std::string& name) {
  std::vector<std::string> v;
  for (const auto& l : layouts(name)) v.push_back(l.file);
  return v;
}

LoadedTask load_task(const std::string& name, const std::string& dir) {
  const TaskSpec& spec = task_spec(name);
  const std::string layout = spec.hf_dataset;
  for (const FileLayout& l : layouts(name)) {
    const fs::path p = fs::path(dir) / l.file;
    if (!fs::is_regular_file(p)) continue;
    LoadedTask t;
    t.path = p.string();
    std::vector<std::string> where;
    const std::vector<json> recs = read_records(t.path, l.json_array, where);
    std::vector<int> labels;
    if (!l.labels_file.empty()) {
      const fs::path lp = fs::path(dir) / l.labels_file;
      std::ifstream lf(lp);
      BT_CHECK(lf.good(), t.path, " needs its labels in ", lp.string(), " (one 0 or 1 per line)");
      std::string line;
      for (int64_t n = 1; std::getline(lf, line); ++n) {
        line = text::strip(line);
        if (line.empty()) continue;
        BT_CHECK(line.find_first_not_of("0123456789") == std::string::npos, lp.string(), ":", n,
                 ": not a label: ", line);
        labels.push_back(std::stoi(line));
      }
      BT_CHECK(labels.size() == recs.size(), lp.string(), " has ", labels.size(), " labels for ", recs.size(),
               " records in ", t.path);
      t.path += " + " + lp.string();
    }
    for (size_t i = 0; i < recs.size(); ++i) {
      const Record r{recs[i], where[i], layout};
      TaskDoc d;
      if (name == "lambada_openai") d = make_lambada(r);
      else if (name == "wikitext") d = make_wikitext(r);
      else if (name == "hellaswag") d = make_hellaswag(r);
      else if (name == "piqa") d = make_piqa(r, labels.empty() ? r.label("label") : labels[i]);
      else if (name == "arc_easy" || name == "arc_challenge") d = make_arc(r);
      else if (name == "sciq") d = make_sciq(r);
      else if (name == "winogrande") d = make_winogrande(r);
      if (spec.type == OutputType::multiple_choice)
        BT_CHECK(d.gold >= 0 && d.gold < static_cast<int>(d.continuations.size()), where[i], ": label ", d.gold,
                 " is not one of the ", d.continuations.size(), " choices");
      t.docs.push_back(std::move(d));
    }
    BT_CHECK(!t.docs.empty(), t.path, ": no records");
    return t;
  }
  std::string tried;
  for (const auto& f : task_files(name)) tried += (tried.empty() ? "" : ", ") + f;
  BT_FAIL("task ", name, ": no data under ", dir, " (looked for ", tried, "; docs/evaluation.md shows how to export ",
          spec.hf_dataset, " split ", spec.split, ")");
}

}  // namespace bt
