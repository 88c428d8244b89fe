//! The `models` command family, mounted by the edge agent as
//! `aios-edge models ...` and by this crate's own `aios-models` binary:
//! list the catalogue, pull, verify, print paths, and benchmark a model on
//! this machine.

use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::catalog::{Catalog, ModelKind};
use crate::chat::{ChatMessage, GenerateRequest, Prompt, SamplingParams};
use crate::device::DeviceConfig;
use crate::store::{cache, ModelStore};
use crate::worker::{ChatModel, EmbeddingModel, FetchPolicy, LoadOptions};

/// `models` subcommands. The cache is `$AIOS_MODEL_CACHE`, else
/// `$HF_HOME/hub`, else `~/.cache/huggingface/hub`; `$AIOS_MODEL_CATALOG`
/// replaces the built-in catalogue.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum ModelsCommand {
    /// List the catalogue and whether each model's files are cached
    List,
    /// Fetch a model into the cache, verifying every file
    Pull {
        /// Catalogue id, e.g. smollm2-135m-instruct
        id: String,
    },
    /// Re-hash cached files against the catalogue (every cached model when no id is given)
    Verify {
        /// Catalogue id
        id: Option<String>,
    },
    /// Print the cached path of each file of a model
    Path {
        /// Catalogue id
        id: String,
    },
    /// Measure load time, throughput, latency and peak memory on this machine
    Bench {
        /// Catalogue id (a chat or an embedding model)
        id: String,
        /// Device: cpu, cuda[:N] or metal[:N] (default cpu)
        #[arg(long, default_value = "cpu", env = "AIOS_MODEL_DEVICE")]
        device: DeviceConfig,
        /// Tokens to generate for the generation figure (default 128)
        #[arg(long, default_value_t = 128)]
        generate_tokens: usize,
        /// Approximate prompt length for the prompt-processing figure (default 200)
        #[arg(long, default_value_t = 200)]
        prompt_tokens: usize,
        /// Threads for the CPU kernels, the calling thread included (default: one per core)
        #[arg(long, env = "AIOS_MODEL_THREADS")]
        threads: Option<usize>,
        /// Run the bench once per kernel level this CPU has (each in its own
        /// process, capped with `$AIOS_CPU_LEVEL`) and print a table by level
        #[arg(long)]
        levels: bool,
    },
}

/// Runs one `models` subcommand, printing to stdout.
pub async fn run_models_command(command: ModelsCommand) -> anyhow::Result<()> {
    let catalog = match std::env::var_os("AIOS_MODEL_CATALOG") {
        Some(path) => Catalog::from_file(std::path::Path::new(&path))
            .with_context(|| format!("loading catalogue {}", std::path::Path::new(&path).display()))?,
        None => Catalog::builtin(),
    };
    let store = ModelStore::new(catalog, cache::default_cache_root());
    match command {
        ModelsCommand::List => {
            println!("cache: {}", store.cache_root().display());
            for model in &store.catalog().models {
                let cached = if model_files_present(&store, &model.id) { "cached" } else { "not cached" };
                let size: u64 = model.files.iter().filter_map(|f| f.size).sum();
                println!(
                    "{:<24} {:<9} {:>7.1} MB  {:<12} {:<10}  {}",
                    model.id,
                    model.kind.as_str(),
                    size as f64 / 1e6,
                    model.licence,
                    cached,
                    model.description
                );
            }
        }
        ModelsCommand::Pull { id } => {
            let resolved = blocking(move || store.pull(&id)).await?;
            println!("{} is ready:", resolved.entry.id);
            for (name, path) in &resolved.files {
                println!("  {name}: {}", path.display());
            }
        }
        ModelsCommand::Verify { id } => {
            let ids: Vec<String> = match id {
                Some(id) => vec![id],
                None => store
                    .catalog()
                    .models
                    .iter()
                    .filter(|m| model_files_present(&store, &m.id))
                    .map(|m| m.id.clone())
                    .collect(),
            };
            if ids.is_empty() {
                println!("no cached models to verify");
            }
            for id in ids {
                let store = store.clone();
                let resolved = blocking(move || store.verify(&id)).await?;
                println!("{}: {} files verified", resolved.entry.id, resolved.files.len());
            }
        }
        ModelsCommand::Path { id } => {
            let resolved = blocking(move || store.locate(&id)).await?;
            for path in resolved.files.values() {
                println!("{}", path.display());
            }
        }
        ModelsCommand::Bench { levels: true, .. } => bench_levels().await?,
        ModelsCommand::Bench { id, device, generate_tokens, prompt_tokens, threads, levels: false } => {
            if let Some(threads) = threads {
                crate::cpu::pool::set_threads(threads);
            }
            let kind = store.catalog().find(&id)?.kind;
            let options = LoadOptions { device, fetch: FetchPolicy::Pull, embedding_batch_size: 32 };
            // Fetch and verify first so load time measures loading only.
            let pull_store = store.clone();
            let pull_id = id.clone();
            blocking(move || pull_store.pull(&pull_id)).await?;
            let options = LoadOptions { fetch: FetchPolicy::CacheOnly, ..options };
            match kind {
                ModelKind::Chat => bench_chat(&store, &id, &options, generate_tokens, prompt_tokens).await?,
                ModelKind::Embedding => bench_embed(&store, &id, &options).await?,
            }
        }
    }
    Ok(())
}

fn model_files_present(store: &ModelStore, id: &str) -> bool {
    let Ok(entry) = store.catalog().find(id) else {
        return false;
    };
    let repo = cache::RepoCache::new(store.cache_root(), &entry.repo);
    let snapshots = repo.snapshot_candidates(entry);
    entry.files.iter().all(|file| snapshots.iter().any(|s| s.join(&file.name).is_file()))
}

async fn blocking<T: Send + 'static>(
    job: impl FnOnce() -> Result<T, crate::StoreError> + Send + 'static,
) -> anyhow::Result<T> {
    Ok(tokio::task::spawn_blocking(job).await.context("store task failed")??)
}

async fn bench_chat(
    store: &ModelStore,
    id: &str,
    options: &LoadOptions,
    generate_tokens: usize,
    prompt_tokens: usize,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let model = ChatModel::load(store, id, options).await?;
    let load_time = started.elapsed();
    let info = model.info().clone();

    // A prompt of about `prompt_tokens` tokens.
    let sentence = "The shop ships parcels every weekday morning, and customers may ask for a refund within thirty days of delivery. ";
    let mut text = String::new();
    let mut prompt_len = 0;
    while prompt_len < prompt_tokens {
        text.push_str(sentence);
        prompt_len = model.tokenize(Prompt::Text(text.clone())).await?.1.len();
    }
    let prefill_request = GenerateRequest {
        prompt: Prompt::Text(text),
        max_tokens: 1,
        sampling: SamplingParams::greedy(),
        stop: Vec::new(),
        ignore_eos: true,
        constraint: None,
    };
    model.generate(prefill_request.clone()).await?; // warm-up
    let mut prefill_times = Vec::new();
    for _ in 0..3 {
        prefill_times.push(model.generate(prefill_request.clone()).await?.time_to_first_token);
    }
    let prefill = median(&mut prefill_times);

    let generation = model
        .generate(GenerateRequest {
            prompt: Prompt::Chat(vec![ChatMessage::user("Write a long story about a lighthouse keeper.")]),
            max_tokens: generate_tokens,
            sampling: SamplingParams::greedy(),
            stop: Vec::new(),
            ignore_eos: true,
            constraint: None,
        })
        .await?;
    let decode_tokens = generation.completion_tokens.saturating_sub(1).max(1);
    let decode_rate = decode_tokens as f64 / generation.decode_time.as_secs_f64();

    // Constrained decoding against free decoding on the same prompt, runs
    // interleaved; the first constrained run also indexes the vocabulary.
    let schema = serde_json::json!({
        "type": "object",
        "properties": { "story": { "type": "array", "items": { "type": "string", "maxLength": 80 },
                                   "minItems": 12, "maxItems": 12 } },
        "required": ["story"],
        "additionalProperties": false
    });
    let story = |constraint: Option<crate::OutputConstraint>| GenerateRequest {
        prompt: Prompt::Chat(vec![ChatMessage::user(
            "Write a story about a lighthouse keeper as JSON: {\"story\": [twelve sentences]}.",
        )]),
        max_tokens: 200,
        sampling: SamplingParams::greedy(),
        stop: Vec::new(),
        ignore_eos: true,
        constraint,
    };
    let rate =
        |g: &crate::Generation| g.completion_tokens.saturating_sub(1).max(1) as f64 / g.decode_time.as_secs_f64();
    let started = Instant::now();
    model.generate(story(Some(crate::OutputConstraint::JsonSchema(schema.clone())))).await?;
    let first_constrained = started.elapsed();
    let (mut free_rates, mut constrained_rates, mut constrained_tokens) = (Vec::new(), Vec::new(), 0);
    for _ in 0..3 {
        free_rates.push(rate(&model.generate(story(None)).await?));
        let constrained = model.generate(story(Some(crate::OutputConstraint::JsonSchema(schema.clone())))).await?;
        constrained_tokens = constrained.completion_tokens;
        constrained_rates.push(rate(&constrained));
    }
    let mid = |rates: &mut Vec<f64>| {
        rates.sort_by(f64::total_cmp);
        rates[rates.len() / 2]
    };
    let (free_rate, constrained_rate) = (mid(&mut free_rates), mid(&mut constrained_rates));

    let labels: Vec<String> = ["refund", "shipping", "other"].iter().map(|s| s.to_string()).collect();
    let score_prompt = Prompt::Chat(vec![ChatMessage::user(
        "Classify this customer message as refund, shipping or other: 'Where is my parcel?'",
    )]);
    model.score(score_prompt.clone(), labels.clone()).await?; // warm-up
    let mut score_times = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        model.score(score_prompt.clone(), labels.clone()).await?;
        score_times.push(started.elapsed());
    }
    let score_latency = median(&mut score_times);

    println!("model: {id} ({}, context {} tokens) on {}", info.architecture, info.context_length, options.device);
    print_cpu();
    println!("load time: {:.3} s", load_time.as_secs_f64());
    println!(
        "prompt processing: {:.1} tokens/s ({prompt_len} tokens in {:.3} s)",
        prompt_len as f64 / prefill.as_secs_f64(),
        prefill.as_secs_f64()
    );
    println!("time to first token ({prompt_len}-token prompt): {:.1} ms", prefill.as_secs_f64() * 1e3);
    println!(
        "generation: {decode_rate:.1} tokens/s ({} greedy tokens, end-of-sequence ignored)",
        generation.completion_tokens
    );
    if let Some(bytes) = info.weight_bytes_per_token {
        let pool = crate::cpu::pool::global();
        let bandwidth =
            tokio::task::spawn_blocking(|| crate::cpu::bandwidth::read_bandwidth(crate::cpu::pool::global()))
                .await
                .context("bandwidth probe failed")?;
        let limit = bandwidth / bytes as f64;
        println!(
            "roofline: {:.1} MB of weights per token, read bandwidth {:.1} GB/s ({} threads) -> at most {limit:.0} tokens/s; generation reaches {:.0}%",
            bytes as f64 / 1e6,
            bandwidth / 1e9,
            pool.threads(),
            100.0 * decode_rate / limit
        );
    }
    println!(
        "constrained generation (JSON Schema, {constrained_tokens} tokens): {constrained_rate:.1} tokens/s against {free_rate:.1} free on the same prompt ({:+.1}% per token); first constrained request {:.0} ms (indexes the vocabulary)",
        100.0 * (free_rate / constrained_rate - 1.0),
        first_constrained.as_secs_f64() * 1e3
    );
    println!(
        "scored choice (3 labels, {} prompt tokens): {:.1} ms",
        model.tokenize(score_prompt).await?.1.len(),
        score_latency.as_secs_f64() * 1e3
    );
    println!("peak RSS: {}", peak_rss());
    Ok(())
}

/// The 256 short sentences `bench` embeds (the gateway bench and the peer
/// scripts embed the same ones).
#[doc(hidden)]
pub fn bench_sentences() -> Vec<String> {
    let subjects = [
        "My parcel",
        "The refund",
        "Our store",
        "The kettle",
        "A customer",
        "The courier",
        "This order",
        "The invoice",
    ];
    let verbs = [
        "arrived late",
        "was never sent",
        "needs checking",
        "is broken",
        "was cancelled",
        "looks fine",
        "got lost",
        "came twice",
    ];
    let places =
        ["today.", "last week.", "in Paris.", "again.", "yesterday.", "at the depot.", "on Monday.", "this morning."];
    (0..256).map(|i| format!("{} {} {}", subjects[i % 8], verbs[(i / 8) % 8], places[(i / 64 + i) % 8])).collect()
}

async fn bench_embed(store: &ModelStore, id: &str, options: &LoadOptions) -> anyhow::Result<()> {
    let started = Instant::now();
    let model = EmbeddingModel::load(store, id, options).await?;
    let load_time = started.elapsed();
    let sentences = bench_sentences();
    model.embed(sentences[..32].to_vec()).await?; // warm-up
    let started = Instant::now();
    let embedded = model.embed_counted(sentences.clone()).await?;
    let elapsed = started.elapsed();
    let vectors = embedded.vectors;
    println!("model: {id} ({} dimensions) on {}", model.dimensions(), options.device);
    print_cpu();
    println!("load time: {:.3} s", load_time.as_secs_f64());
    println!(
        "embeddings: {:.1} sentences/s ({} short sentences in batches of 32, {:.3} s)",
        vectors.len() as f64 / elapsed.as_secs_f64(),
        vectors.len(),
        elapsed.as_secs_f64()
    );
    println!(
        "tokens: {} ({:.0} tokens/s, no padding on the CPU path)",
        embedded.tokens,
        embedded.tokens as f64 / elapsed.as_secs_f64()
    );
    // One short text at a time, as a memory search embeds its query.
    let mut latencies = Vec::with_capacity(200);
    for sentence in sentences.iter().cycle().take(200) {
        let started = Instant::now();
        model.embed(vec![sentence.clone()]).await?;
        latencies.push(started.elapsed());
    }
    latencies.sort();
    println!(
        "one short text: p50 {:.2} ms, p95 {:.2} ms (200 calls)",
        latencies[100].as_secs_f64() * 1e3,
        latencies[190].as_secs_f64() * 1e3
    );
    println!("peak RSS: {}", peak_rss());
    Ok(())
}

/// Threads and instruction-set level of the CPU kernels.
/// `bench --levels`: this process's own command line without `--levels`,
/// run once per level with `$AIOS_CPU_LEVEL` set, its figures gathered into
/// one table.
async fn bench_levels() -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("no path to this executable")?;
    let args: Vec<String> = std::env::args().skip(1).filter(|arg| arg != "--levels").collect();
    let figures = [
        ("prompt processing:", "prompt tok/s"),
        ("generation:", "generation tok/s"),
        ("scored choice", "scored choice ms"),
        ("embeddings:", "sentences/s"),
        ("one short text:", "one text p50 ms"),
    ];
    let mut rows = Vec::new();
    for level in crate::cpu::Level::available() {
        let command = (exe.clone(), args.clone(), level.cap_name());
        let output = tokio::task::spawn_blocking(move || {
            let (exe, args, cap) = command;
            std::process::Command::new(exe).args(args).env("AIOS_CPU_LEVEL", cap).output()
        })
        .await
        .context("bench task failed")?
        .with_context(|| format!("running the bench at {}", level.name()))?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            anyhow::bail!("the bench at {} failed: {}", level.name(), String::from_utf8_lossy(&output.stderr));
        }
        print!("{stdout}");
        // The figure is the first number after the line's colon (so "3
        // labels, 48 prompt tokens" and "p50" are skipped).
        let values: Vec<Option<f64>> = figures
            .iter()
            .map(|(label, _)| {
                let line = stdout.lines().find(|line| line.starts_with(label))?;
                line.split_once(": ")?.1.split_whitespace().find_map(|word| word.parse().ok())
            })
            .collect();
        rows.push((level, values));
    }
    let present: Vec<usize> = (0..figures.len()).filter(|i| rows.iter().any(|(_, v)| v[*i].is_some())).collect();
    println!();
    print!("| kernels |");
    for i in &present {
        print!(" {} |", figures[*i].1);
    }
    println!();
    println!("|---|{}", "---|".repeat(present.len()));
    for (level, values) in &rows {
        print!("| {} |", level.name());
        for i in &present {
            match values[*i] {
                Some(value) => print!(" {value:.1} |"),
                None => print!(" |"),
            }
        }
        println!();
    }
    Ok(())
}

fn print_cpu() {
    println!(
        "threads: {} (of {} cores), kernels: {}",
        crate::cpu::pool::global().threads(),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        crate::cpu::Level::detect().name()
    );
}

fn median(times: &mut [Duration]) -> Duration {
    times.sort();
    times[times.len() / 2]
}

/// `VmHWM` from `/proc/self/status` (Linux), else "unknown".
fn peak_rss() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("VmHWM:"))
                .map(|line| line.trim_start_matches("VmHWM:").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned())
}
