//! The working context of a model step: the task input, the results of
//! earlier steps and the retrieved items, fitted into a token budget counted
//! with the model's own tokenizer.
//!
//! What goes in is decided by priority: the input first (cut to half the
//! budget if it alone would take more than three quarters), then retrieved items by score, then
//! earlier results newest first; results older than the last two are
//! compressed to a summary (their first sentence) before they are offered.
//! A piece that does not fit whole is offered as a summary, and left out
//! when even that does not fit. What appears is always in the same order
//! (input, earlier results in step order, retrieved items by score), so the
//! same task gives the same context. Everything left out is reported.

use std::future::Future;

use serde::{Deserialize, Serialize};

/// Earlier results kept whole when there is room; older ones are summarised.
const RECENT_RESULTS: usize = 2;
/// Longest summary, in characters.
const SUMMARY_CHARS: usize = 200;

/// What a context may be built from.
#[derive(Debug, Clone, Default)]
pub struct ContextInput {
    /// The task input, as text.
    pub input: String,
    /// Earlier steps' results, in step order: (step id, text).
    pub results: Vec<(String, String)>,
    /// Retrieved items, best first: (item id, text, score).
    pub retrieved: Vec<(String, String, f32)>,
}

/// One piece considered for the context.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContextPart {
    /// `input`, `step:ID` or `memory:ID`.
    pub source: String,
    /// Tokens it took (or would have taken, when left out).
    pub tokens: usize,
    /// `whole`, `summary`, `truncated`; for what was left out, why.
    pub how: String,
}

/// The context as built, with what it holds and what it left out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkingContext {
    /// The text offered to the prompt template as `context`.
    pub text: String,
    /// Its length in the model's tokens.
    pub tokens: usize,
    /// The budget it was built for.
    pub budget: usize,
    /// What it holds.
    pub included: Vec<ContextPart>,
    /// What did not fit.
    pub left_out: Vec<ContextPart>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Section {
    Input,
    Results,
    Retrieved,
}

#[derive(Debug, Clone)]
struct Chosen {
    section: Section,
    /// Position within its section (step order, score rank).
    position: usize,
    line: String,
    part: ContextPart,
}

/// Builds the context within `budget` tokens; `count` counts a text's tokens
/// with the model's tokenizer.
pub async fn build_context<F, Fut>(input: &ContextInput, budget: usize, count: F) -> Result<WorkingContext, String>
where
    F: Fn(String) -> Fut,
    Fut: Future<Output = Result<usize, String>>,
{
    let mut chosen: Vec<Chosen> = Vec::new();
    let mut left_out = Vec::new();
    let mut used = 0usize;

    // The input: whole if it leaves a quarter of the budget, else cut to half.
    let whole = format!("Task input:\n{}", input.input.trim());
    let tokens = count(whole.clone()).await?;
    if tokens <= budget * 3 / 4 {
        used += tokens;
        chosen.push(chosen_part(Section::Input, 0, whole, "input", tokens, "whole"));
    } else {
        let (line, tokens) = truncate_to(&input.input, budget / 2, &count).await?;
        let line = format!("Task input:\n{line}");
        if tokens > 0 {
            used += tokens;
            chosen.push(chosen_part(Section::Input, 0, line, "input", tokens, "truncated"));
        } else {
            left_out.push(ContextPart { source: "input".into(), tokens, how: "no room".into() });
        }
    }

    // Retrieved items by score, then earlier results newest first.
    let mut offers: Vec<(Section, usize, String, String, bool)> = Vec::new();
    for (rank, (id, text, score)) in input.retrieved.iter().enumerate() {
        offers.push((Section::Retrieved, rank, format!("memory:{id}"), format!("- [{id}] ({score:.2}) {text}"), false));
    }
    let n_results = input.results.len();
    for (position, (step, text)) in input.results.iter().enumerate().rev() {
        let older = n_results - position > RECENT_RESULTS;
        offers.push((
            Section::Results,
            position,
            format!("step:{step}"),
            format!("- {step}: {}", one_line(text)),
            older,
        ));
    }
    for (section, position, source, line, summarise_first) in offers {
        let summary = summarise(&line);
        let mut candidates = Vec::new();
        if !summarise_first {
            candidates.push((line.clone(), "whole"));
        }
        if summary != line || summarise_first {
            candidates.push((summary, "summary"));
        }
        let mut placed = false;
        let mut smallest = usize::MAX;
        for (text, how) in candidates {
            let tokens = count(text.clone()).await?;
            smallest = smallest.min(tokens);
            if used + tokens + headings_cost(&chosen, section) <= budget {
                used += tokens;
                chosen.push(chosen_part(section, position, text, &source, tokens, how));
                placed = true;
                break;
            }
        }
        if !placed {
            left_out.push(ContextPart { source, tokens: smallest, how: "no room".into() });
        }
    }

    // Render in a fixed order and check the whole against the budget: a
    // tokenizer may count a joined text differently from its parts.
    loop {
        let text = render(&chosen);
        let tokens = if text.is_empty() { 0 } else { count(text.clone()).await? };
        if tokens <= budget || chosen.is_empty() {
            let mut included: Vec<ContextPart> = Vec::new();
            let mut ordered = chosen.clone();
            ordered.sort_by_key(|c| (c.section, c.position));
            included.extend(ordered.into_iter().map(|c| c.part));
            return Ok(WorkingContext { text, tokens, budget, included, left_out });
        }
        let dropped = chosen.pop().expect("not empty");
        left_out.push(ContextPart { how: "no room".into(), ..dropped.part });
    }
}

fn chosen_part(section: Section, position: usize, line: String, source: &str, tokens: usize, how: &str) -> Chosen {
    Chosen { section, position, line, part: ContextPart { source: source.to_owned(), tokens, how: how.to_owned() } }
}

/// A rough allowance for the section headings not yet placed.
fn headings_cost(chosen: &[Chosen], section: Section) -> usize {
    if chosen.iter().any(|c| c.section == section) {
        0
    } else {
        6
    }
}

fn render(chosen: &[Chosen]) -> String {
    let mut ordered: Vec<&Chosen> = chosen.iter().collect();
    ordered.sort_by_key(|c| (c.section, c.position));
    let mut out = String::new();
    let mut current = None;
    for c in ordered {
        if current != Some(c.section) {
            if !out.is_empty() {
                out.push_str("\n\n");
            }
            match c.section {
                Section::Input => {}
                Section::Results => out.push_str("Earlier results:\n"),
                Section::Retrieved => out.push_str("Retrieved from memory:\n"),
            }
            current = Some(c.section);
        } else {
            out.push('\n');
        }
        out.push_str(&c.line);
    }
    out
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The first sentence, at most [`SUMMARY_CHARS`] characters, marked as a summary.
fn summarise(line: &str) -> String {
    let end = line
        .char_indices()
        .skip(8)
        .find(|(_, c)| matches!(c, '.' | '!' | '?'))
        .map_or(line.len(), |(i, c)| i + c.len_utf8());
    let mut summary: String = line[..end].chars().take(SUMMARY_CHARS).collect();
    if summary.len() < line.len() {
        summary.push_str(" [...]");
    }
    summary
}

/// The longest prefix (by words) of `text` within `limit` tokens.
async fn truncate_to<F, Fut>(text: &str, limit: usize, count: &F) -> Result<(String, usize), String>
where
    F: Fn(String) -> Fut,
    Fut: Future<Output = Result<usize, String>>,
{
    let words: Vec<&str> = text.split_whitespace().collect();
    let (mut low, mut high) = (0usize, words.len());
    let mut best = (String::new(), 0usize);
    // Binary search over the number of words: a handful of tokenizer calls.
    while low < high {
        let mid = (low + high).div_ceil(2);
        let candidate = format!("{} [...]", words[..mid].join(" "));
        let tokens = count(format!("Task input:\n{candidate}")).await?;
        if tokens <= limit {
            best = (candidate, tokens);
            low = mid;
        } else {
            high = mid - 1;
        }
    }
    Ok(best)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts words, a stand-in tokenizer.
    async fn words(text: String) -> Result<usize, String> {
        Ok(text.split_whitespace().count())
    }

    fn input() -> ContextInput {
        ContextInput {
            input: "My kettle broke after two days and I want a refund.".into(),
            results: vec![
                ("category".into(), "refund".into()),
                (
                    "notes".into(),
                    "The customer has ordered four times. All orders arrived on time. None returned.".into(),
                ),
                ("draft".into(), "Thank you for writing. We will refund you.".into()),
            ],
            retrieved: vec![
                ("p1".into(), "Refunds are paid within 14 days of the return arriving. Keep the receipt.".into(), 0.71),
                ("p2".into(), "Broken items may be returned within 30 days of delivery.".into(), 0.64),
            ],
        }
    }

    #[tokio::test]
    async fn a_roomy_budget_keeps_everything_in_a_fixed_order() {
        let context = build_context(&input(), 500, words).await.unwrap();
        assert!(context.left_out.is_empty(), "{context:#?}");
        let sources: Vec<&str> = context.included.iter().map(|p| p.source.as_str()).collect();
        assert_eq!(sources, ["input", "step:category", "step:notes", "step:draft", "memory:p1", "memory:p2"]);
        // The oldest result is summarised even with room to spare.
        assert_eq!(context.included[1].how, "summary");
        assert!(context.text.starts_with("Task input:\nMy kettle"), "{}", context.text);
        assert!(context.tokens <= 500);
        assert_eq!(build_context(&input(), 500, words).await.unwrap(), context, "deterministic");
    }

    #[tokio::test]
    async fn a_tight_budget_summarises_then_leaves_out_and_says_so() {
        let context = build_context(&input(), 40, words).await.unwrap();
        assert!(context.tokens <= 40, "{context:#?}");
        assert!(!context.left_out.is_empty(), "{context:#?}");
        assert_eq!(context.included[0].source, "input");
        // Retrieved items come before older results in priority.
        assert!(context.included.iter().any(|p| p.source == "memory:p1"), "{context:#?}");
        let all: usize = context.included.len() + context.left_out.len();
        assert_eq!(all, 6, "every piece is either in or reported out");

        let long = ContextInput { input: "word ".repeat(500), ..ContextInput::default() };
        let context = build_context(&long, 50, words).await.unwrap();
        assert_eq!(context.included[0].how, "truncated");
        assert!(context.tokens <= 50, "{context:#?}");
    }
}
