// The zero-shot tasks of the paper, defined as lm-evaluation-harness v0.4 defines them (the
// task YAML and utils.py of each: prompt, answer format, split, metrics), over documents read
// from local JSONL files in the layouts the datasets are published in (docs/evaluation.md lists
// them and shows how to export each). Nothing is downloaded.
//
//   task            split       requests                                    metrics
//   lambada_openai  test        (text up to the last space, " " + last word) perplexity, acc
//   wikitext        test        rolling over the detokenized page            word_perplexity,
//                                                                             byte_perplexity, bits_per_byte
//   hellaswag       validation  (preprocessed "label: ctx_a Ctx_b", " " + ending)  acc, acc_norm
//   piqa            validation  ("Question: goal\nAnswer:", " " + sol)       acc, acc_norm
//   arc_easy        test        ("Question: q\nAnswer:", " " + choice)       acc, acc_norm
//   arc_challenge   test        same                                         acc, acc_norm
//   sciq            test        ("support\nQuestion: q\nAnswer:", " " + choice)  acc, acc_norm
//   winogrande      validation  (sentence up to "_" + option, " " + the rest)    acc (partial scoring)
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace bt {

enum class OutputType { loglikelihood, loglikelihood_rolling, multiple_choice };

struct MetricSpec {
  std::string name;         // "acc", "acc_norm", "perplexity", "word_perplexity", ...
  std::string aggregation;  // mean | perplexity | weighted_perplexity | bits_per_byte
  bool higher_is_better = true;
};

struct TaskSpec {
  std::string name;
  std::string split;        // the harness's evaluation split
  std::string hf_dataset;   // published dataset (HF path and config) the JSONL layout follows
  double version = 1.0;
  OutputType type = OutputType::multiple_choice;
  std::vector<MetricSpec> metrics;
  int64_t published_docs = 0;  // documents in the published split
};

// One document, as the requests and the scoring need it.
struct TaskDoc {
  // multiple_choice: one context shared by all choices, or one per choice (winogrande), and the
  // continuation of each choice (target delimiter " " included). loglikelihood: contexts[0],
  // continuations[0].
  std::vector<std::string> contexts, continuations;
  std::vector<std::string> choices;  // the answer strings (acc_norm divides by their length)
  int gold = -1;                     // index of the right choice (-1: none)
  // loglikelihood_rolling: the text scored, and the word and byte counts of the original document.
  std::string text;
  int64_t words = 0, bytes = 0;
};

const std::vector<std::string>& task_names();
// Throws a one-line error listing the known tasks.
const TaskSpec& task_spec(const std::string& name);
// "a,b" or "all" -> names, checked.
std::vector<std::string> parse_task_list(const std::string& list);

struct LoadedTask {
  std::string path;            // the file(s) read
  std::vector<TaskDoc> docs;
};
// The documents of task `name` under `dir` (see task_files for the names looked for). A missing
// file or a record without a field it needs is a one-line error naming the file and line.
LoadedTask load_task(const std::string& name, const std::string& dir);
// The file names load_task tries, in order, relative to dir.
std::vector<std::string> task_files(const std::string& name);

}  // namespace bt
