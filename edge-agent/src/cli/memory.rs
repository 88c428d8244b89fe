//! `aios-edge memory ...`: semantic memory on this edge's database, opened
//! directly (SQLite lets the CLI and a running daemon share it; the daemon
//! notices the change through the memory generation). The embedding model
//! and retention come from the bundle in force.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use serde_json::Value;

use aios_shared::memory::{Classification, MemorySpec};

use crate::memory::{EmbedderSource, ExportOptions, Item, Memory, NewItem, Provenance, SearchRequest};
use crate::store::EdgeStore;
use aios_daemon::clock::unix_ms;

/// The memory subcommands.
#[derive(Debug, Subcommand)]
pub enum MemoryCommand {
    /// Add an item (or a new version of one, with --id).
    Add(AddArgs),
    /// Search semantic memory; prints one JSON hit per line, best first.
    Search(SearchArgs),
    /// Print an item with its provenance as JSON.
    Show {
        /// The item's id.
        id: String,
    },
    /// Counts per namespace, classification and model; database size.
    Stats,
    /// Erase every item about a data subject, from search, export and the embedding cache.
    Forget {
        /// The data subject (as given with `add --subject`).
        #[arg(long)]
        subject: String,
    },
    /// Write items as JSON lines (text, metadata, provenance; vectors optional).
    Export {
        /// Only this namespace.
        #[arg(long)]
        namespace: Option<String>,
        /// Include each item's vector and model.
        #[arg(long)]
        vectors: bool,
        /// Output file [default: standard output].
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Read items from JSON lines as `export` writes them (`-` for standard input).
    Import {
        /// The file.
        file: PathBuf,
    },
    /// Rebuild the vectors of items embedded with another model than the one in force.
    Reindex,
    /// Remove expired items now (the daemon also does this every 30 s).
    Sweep,
}

/// `aios-edge memory add`.
#[derive(Debug, Args)]
pub struct AddArgs {
    /// The text; `-` reads standard input.
    pub text: String,
    /// Namespace, such as `policies` or `customers.acme`.
    #[arg(long)]
    pub namespace: String,
    /// public, internal, confidential or restricted.
    #[arg(long)]
    pub classification: Classification,
    /// Stable id; an existing id gets a new version [default: generated].
    #[arg(long)]
    pub id: Option<String>,
    /// Metadata, a JSON object; top-level scalar values can be filtered on.
    #[arg(long)]
    pub metadata: Option<String>,
    /// A data subject the item is about; repeatable.
    #[arg(long = "subject")]
    pub subjects: Vec<String>,
    /// Where the text came from [default: cli].
    #[arg(long, default_value = "cli")]
    pub source: String,
    /// Why it is added.
    #[arg(long)]
    pub reason: Option<String>,
    /// Remove it after this long, such as 30d.
    #[arg(long)]
    pub expires_in: Option<String>,
}

/// `aios-edge memory search`.
#[derive(Debug, Args)]
pub struct SearchArgs {
    /// The query.
    pub query: String,
    /// Namespace to search; repeatable.
    #[arg(long = "namespace", required = true)]
    pub namespaces: Vec<String>,
    /// Classification that may be returned; repeatable [default: all].
    #[arg(long = "classification")]
    pub classifications: Vec<Classification>,
    /// Metadata KEY=VALUE every hit must carry; repeatable.
    #[arg(long = "filter", value_parser = parse_pair)]
    pub filter: Vec<(String, String)>,
    /// Most hits.
    #[arg(long, default_value_t = 5)]
    pub top_k: usize,
    /// Drop hits scoring below this.
    #[arg(long, default_value_t = 0.0)]
    pub min_score: f32,
    /// Weight of FTS5 keyword scores, 0 to 1.
    #[arg(long, default_value_t = 0.0)]
    pub keyword_weight: f32,
}

fn parse_pair(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("'{text}' is not KEY=VALUE")),
    }
}

/// Runs a memory subcommand on the database in `data_dir`.
pub async fn run(data_dir: &Path, command: MemoryCommand) -> anyhow::Result<()> {
    let memory = open(data_dir).await?;
    let now = unix_ms();
    match command {
        MemoryCommand::Add(args) => {
            let text = if args.text == "-" {
                std::io::read_to_string(std::io::stdin()).context("cannot read standard input")?
            } else {
                args.text
            };
            let metadata: Value = match &args.metadata {
                Some(json) => serde_json::from_str(json).context("--metadata is not JSON")?,
                None => Value::Object(Default::default()),
            };
            let expires_ms = match &args.expires_in {
                Some(text) => {
                    let ttl = aios_shared::duration::parse_duration(text).map_err(anyhow::Error::msg)?;
                    Some(now.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)))
                }
                None => None,
            };
            let item = NewItem {
                id: args.id,
                namespace: args.namespace,
                text,
                metadata,
                classification: args.classification,
                subjects: args.subjects,
                provenance: Provenance {
                    added_by: format!("cli:{}", std::env::var("USER").unwrap_or_else(|_| "unknown".into())),
                    source: args.source,
                    task_id: None,
                    reason: args.reason,
                    created_ms: 0,
                },
                expires_ms,
            };
            for added in memory.add(vec![item], now).await? {
                println!("{}", serde_json::to_string(&added)?);
            }
        }
        MemoryCommand::Search(args) => {
            let request = SearchRequest {
                query: args.query,
                namespaces: args.namespaces,
                classifications: if args.classifications.is_empty() {
                    Classification::ALL.to_vec()
                } else {
                    args.classifications
                },
                filter: args.filter.into_iter().collect(),
                top_k: args.top_k,
                min_score: args.min_score,
                keyword_weight: args.keyword_weight,
            };
            for hit in memory.search(&request, now).await? {
                println!("{}", serde_json::to_string(&hit)?);
            }
        }
        MemoryCommand::Show { id } => match memory.show(&id).await? {
            Some(item) => println!("{}", serde_json::to_string_pretty(&item)?),
            None => bail!("no memory item `{id}`"),
        },
        MemoryCommand::Stats => println!("{}", serde_json::to_string_pretty(&memory.stats().await?)?),
        MemoryCommand::Forget { subject } => {
            let forgotten = memory.forget_subject(&subject, now).await?;
            eprintln!(
                "erased {} item(s) and {} record(s) about the subject",
                forgotten.items.len(),
                forgotten.records.len()
            );
            if !forgotten.checkpointed {
                eprintln!(
                    "warning: another process is reading the database, so erased pages may stay in the \
                     write-ahead log until its next checkpoint; run this again when the daemon is idle"
                );
            }
            for id in forgotten.items {
                println!("{id}");
            }
            for (namespace, key) in forgotten.records {
                println!("record {namespace}/{key}");
            }
        }
        MemoryCommand::Export { namespace, vectors, output } => {
            let items = memory.export(ExportOptions { namespace, vectors }).await?;
            let mut out: Box<dyn Write> = match &output {
                Some(path) => Box::new(std::io::BufWriter::new(
                    std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?,
                )),
                None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
            };
            for item in &items {
                serde_json::to_writer(&mut out, item)?;
                out.write_all(b"\n")?;
            }
            out.flush()?;
            eprintln!("exported {} item(s)", items.len());
        }
        MemoryCommand::Import { file } => {
            let items = read_jsonl(&file)?;
            let added = memory.import(items, now).await?;
            let cached = added.iter().filter(|a| a.cached).count();
            println!("imported {} item(s), {cached} without a model call", added.len());
        }
        MemoryCommand::Reindex => {
            println!("re-embedded {} item(s) with {}", memory.reindex(now).await?, memory.model_id())
        }
        MemoryCommand::Sweep => println!("removed {} expired item(s)", memory.sweep(now).await?.len()),
    }
    Ok(())
}

/// The memory plane of the edge in `data_dir`, with the bundle's settings.
async fn open(data_dir: &Path) -> anyhow::Result<Memory> {
    let store = EdgeStore::open(data_dir).context("cannot open the edge database")?;
    let identity = store.identity().await?;
    let spec = match (&identity, store.bundle().await?) {
        (Some(identity), Some(signed)) => {
            signed.open(&identity.bundle_key).map(|body| body.definitions.memory).unwrap_or_default()
        }
        _ => MemorySpec::default(),
    };
    let source = EmbedderSource::Catalog {
        models: aios_models::ModelStore::from_env(),
        load: aios_models::LoadOptions::default(),
    };
    Ok(Memory::new(&store, identity, source, &spec))
}

fn read_jsonl(path: &Path) -> anyhow::Result<Vec<Item>> {
    let reader: Box<dyn BufRead> = if path == Path::new("-") {
        Box::new(std::io::BufReader::new(std::io::stdin()))
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?,
        ))
    };
    let mut items = Vec::new();
    for (n, line) in reader.lines().enumerate() {
        let line = line.with_context(|| format!("cannot read {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let item: Item = serde_json::from_str(&line)
            .with_context(|| format!("{} line {}: not a memory item as export writes it", path.display(), n + 1))?;
        items.push(item);
    }
    Ok(items)
}
