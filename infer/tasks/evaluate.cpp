// One task through the scorer, the harness's per-document metrics and aggregation: see evaluate.h.
#include "infer/tasks/evaluate.h"

#include <fmt/format.h>

#include <cmath>
#include <map>

#include "core/error.h"
#include "core/timer.h"
#include "infer/tasks/text.h"

namespace bt {

using nlohmann::json;

namespace {

const char* output_type_name(OutputType t) {
  switch (t) {
    case OutputType::loglikelihood:
      return "loglikelihood";
    case OutputType::loglikelihood_rolling:
      return "loglikelihood_rolling";
    case OutputType::multiple_choice:
      return "multiple_choice";
  }
  return "";
}

// np.argmax: the first index of the maximum (a NaN counts as the maximum, as in numpy).
size_t argmax(const std::vector<double>& v) {
  size_t a = 0;
  for (size_t i = 0; i < v.size(); ++i) {
    if (std::isnan(v[i])) return i;
    if (v[i] > v[a]) a = i;
  }
  return a;
}

}  // namespace

TaskResult evaluate_task(const std::string& task, const LoadedTask& data, LMScorer& scorer, const Tokenizer& tok,
                         const TaskEvalOptions& o) {
  const TaskSpec& spec = task_spec(task);
  TaskResult tr;
  tr.name = task;
  tr.data_path = data.path;
  tr.docs_total = static_cast<int64_t>(data.docs.size());
  // The harness's --limit: a fraction (rounded up) below 1, else a count.
  int64_t n = tr.docs_total;
  if (o.limit > 0)
    n = o.limit < 1.0 ? static_cast<int64_t>(std::ceil(double(n) * o.limit)) : static_cast<int64_t>(o.limit);
  n = std::min(n, tr.docs_total);
  tr.docs_used = n;

  // Requests, in document order; first[d] .. first[d + 1] belong to document d.
  std::vector<LLRequest> reqs;
  std::vector<size_t> first = {0};
  for (int64_t d = 0; d < n; ++d) {
    const TaskDoc& doc = data.docs[size_t(d)];
    switch (spec.type) {
      case OutputType::loglikelihood: {
        LLRequest r = encode_request(tok, doc.contexts[0], doc.continuations[0]);
        r.need_greedy = true;
        reqs.push_back(std::move(r));
        break;
      }
      case OutputType::multiple_choice:
        for (size_t i = 0; i < doc.continuations.size(); ++i) {
          LLRequest r =
              encode_request(tok, doc.contexts.size() == 1 ? doc.contexts[0] : doc.contexts[i], doc.continuations[i]);
          r.need_greedy = false;
          reqs.push_back(std::move(r));
        }
        break;
      case OutputType::loglikelihood_rolling:
        for (LLRequest& r : rolling_windows(tok.encode(doc.text), tok.eos_id(), scorer.max_length()))
          reqs.push_back(std::move(r));
        break;
    }
    first.push_back(reqs.size());
  }
  tr.requests = static_cast<int64_t>(reqs.size());
  for (int64_t d = 0; d < n; ++d)
    for (size_t k = first[size_t(d)]; k < first[size_t(d) + 1]; ++k)
      BT_CHECK(static_cast<int>(reqs[k].continuation.size()) <= scorer.max_length(), task, " document ", d + 1,
               ": a continuation of ", reqs[k].continuation.size(), " tokens is longer than --max-length ",
               scorer.max_length(), " (the harness fails there too)");
  Timer timer;
  const std::vector<LLResult> res = scorer.score(reqs);
  tr.seconds = timer.seconds();

  // Per-document metric values (process_results), then the aggregates.
  std::map<std::string, std::vector<double>> values;
  std::map<std::string, std::vector<std::pair<double, double>>> weighted;
  for (int64_t d = 0; d < n; ++d) {
    const TaskDoc& doc = data.docs[size_t(d)];
    const size_t a = first[size_t(d)], b = first[size_t(d) + 1];
    json sample;
    if (o.samples) sample = {{"doc_id", d}};
    switch (spec.type) {
      case OutputType::loglikelihood: {
        values["perplexity"].push_back(res[a].logprob);
        values["acc"].push_back(res[a].is_greedy ? 1.0 : 0.0);
        if (o.samples)
          sample.update({{"target", doc.continuations[0]},
                         {"arguments", json::array({json::array({doc.contexts[0], doc.continuations[0]})})},
                         {"resps", {{res[a].logprob, res[a].is_greedy}}},
                         {"tokens", {{reqs[a].context.size(), reqs[a].continuation.size()}}},
                         {"perplexity", res[a].logprob},
                         {"acc", res[a].is_greedy ? 1 : 0}});
        break;
      }
      case OutputType::loglikelihood_rolling: {
        double ll = 0;
        for (size_t k = a; k < b; ++k) ll += res[k].logprob;
        weighted["word_perplexity"].push_back({ll, double(doc.words)});
        weighted["byte_perplexity"].push_back({ll, double(doc.bytes)});
        weighted["bits_per_byte"].push_back({ll, double(doc.bytes)});
        if (o.samples) {
          json windows = json::array();
          for (size_t k = a; k < b; ++k)
            windows.push_back({reqs[k].context.size(), reqs[k].continuation.size(), res[k].logprob});
          sample.update({{"arguments", json::array({json::array({doc.text})})},
                         {"resps", {{ll}}},
                         {"words", doc.words},
                         {"bytes", doc.bytes},
                         {"windows", windows}});
        }
        break;
      }
      case OutputType::multiple_choice: {
        std::vector<double> lls, norm;
        for (size_t k = a; k < b; ++k) {
          lls.push_back(res[k].logprob);
          // acc_norm divides by the length of the answer string in characters.
          norm.push_back(res[k].logprob / double(text::length(doc.choices[k - a])));
        }
        const double acc = int(argmax(lls)) == doc.gold ? 1.0 : 0.0;
        const double acc_norm = int(argmax(norm)) == doc.gold ? 1.0 : 0.0;
        values["acc"].push_back(acc);
        values["acc_norm"].push_back(acc_norm);
        if (o.samples) {
          json args = json::array(), resps = json::array(), toks = json::array();
          for (size_t k = a; k < b; ++k) {
            const size_t i = k - a;
            args.push_back(
                json::array({doc.contexts.size() == 1 ? doc.contexts[0] : doc.contexts[i], doc.continuations[i]}));
            resps.push_back({res[k].logprob, res[k].greedy_known ? json(res[k].is_greedy) : json(nullptr)});
            toks.push_back({reqs[k].context.size(), reqs[k].continuation.size()});
          }
          sample.update({{"target", doc.gold}, {"arguments", args}, {"resps", resps}, {"tokens", toks}, {"acc", acc}});
          if (spec.metrics.size() > 1) sample["acc_norm"] = acc_norm;
        }
        break;
      }
    }
    if (o.samples) tr.samples.push_back(std::move(sample));
  }
  for (const MetricSpec& m : spec.metrics)
    tr.metrics.push_back(
        {m.name, aggregate_metric(m.aggregation, values[m.name], weighted[m.name], o.bootstrap_iters)});
  return tr;
}

json results_json(const std::vector<TaskResult>& results) {
  json j = {{"results", json::object()},  {"group_subtasks", json::object()}, {"configs", json::object()},
            {"versions", json::object()}, {"n-shot", json::object()},         {"higher_is_better", json::object()},
            {"n-samples", json::object()}};
  for (const TaskResult& r : results) {
    const TaskSpec& s = task_spec(r.name);
    json res = {{"alias", r.name}};
    json hib = json::object(), metric_list = json::array();
    for (const auto& [name, agg] : r.metrics) {
      res[name + ",none"] = agg.value;
      if (agg.stderr_)
        res[name + "_stderr,none"] = *agg.stderr_;
      else
        res[name + "_stderr,none"] = "N/A";
    }
    for (const MetricSpec& m : s.metrics) {
      hib[m.name] = m.higher_is_better;
      metric_list.push_back(
          {{"metric", m.name}, {"aggregation", m.aggregation}, {"higher_is_better", m.higher_is_better}});
    }
    j["results"][r.name] = res;
    j["group_subtasks"][r.name] = json::array();
    j["configs"][r.name] = {{"task", r.name},
                            {"dataset_path", s.hf_dataset},
                            {"data_files", r.data_path},
                            {s.split == "test" ? "test_split" : "validation_split", s.split},
                            {"output_type", output_type_name(s.type)},
                            {"target_delimiter", " "},
                            {"num_fewshot", 0},
                            {"metric_list", metric_list},
                            {"metadata", {{"version", s.version}}}};
    j["versions"][r.name] = s.version;
    j["n-shot"][r.name] = 0;
    j["higher_is_better"][r.name] = hib;
    j["n-samples"][r.name] = {{"original", r.docs_total}, {"effective", r.docs_used}};
  }
  return j;
}

std::string results_table(const std::vector<TaskResult>& results) {
  std::vector<std::vector<std::string>> rows;
  for (const TaskResult& r : results) {
    const TaskSpec& s = task_spec(r.name);
    bool first = true;
    for (const auto& [name, agg] : r.metrics) {
      bool hib = true;
      for (const MetricSpec& m : s.metrics)
        if (m.name == name) hib = m.higher_is_better;
      rows.push_back({first ? r.name : "", first ? fmt::format("{:g}", s.version) : "", "none", first ? "0" : "", name,
                      hib ? "↑" : "↓", fmt::format("{:.4f}", agg.value), "±",
                      agg.stderr_ ? fmt::format("{:.4f}", *agg.stderr_) : "N/A"});
      first = false;
    }
  }
  const std::vector<std::string> head = {"Tasks", "Version", "Filter", "n-shot", "Metric", "", "Value", "", "Stderr"};
  const std::vector<bool> right = {false, true, false, true, false, false, true, false, true};
  std::vector<size_t> w(head.size());
  auto width = [](const std::string& s) { return text::length(s); };
  for (size_t c = 0; c < head.size(); ++c) {
    w[c] = std::max<size_t>(width(head[c]), 1);
    for (const auto& row : rows) w[c] = std::max(w[c], width(row[c]));
  }
  auto cell = [&](const std::string& s, size_t c) {
    const std::string pad(w[c] - width(s), ' ');
    return right[c] ? pad + s : s + pad;
  };
  std::string out = "|";
  for (size_t c = 0; c < head.size(); ++c) out += cell(head[c], c) + "|";
  out += "\n|";
  for (size_t c = 0; c < head.size(); ++c) out += std::string(w[c] - (right[c] ? 1 : 0), '-') + (right[c] ? ":|" : "|");
  out += "\n";
  for (const auto& row : rows) {
    out += "|";
    for (size_t c = 0; c < head.size(); ++c) out += cell(row[c], c) + "|";
    out += "\n";
  }
  return out;
}

}  // namespace bt
