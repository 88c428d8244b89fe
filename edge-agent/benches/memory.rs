//! Semantic memory at edge scale on the real all-MiniLM-L6-v2 (384
//! dimensions) and a real SQLite file: insert throughput (items/s, embedding
//! included), search latency p50/p95 and recall@10 against an exact f32 scan
//! of the same filtered set, at 10,000 and 100,000 items, and the database
//! size per item.
//!
//! Items are short support-ticket sentences generated from word lists (all
//! distinct, so every one is embedded), spread over 4 namespaces, 4
//! classifications and 5 regions (metadata). Searches are timed end to end
//! without the query's embedding (reported separately): the generation
//! check, the metadata filter in SQL, the int8 scan, the exact re-ranking
//! read from SQLite. Three filters: none (every item), scope (2 of 4
//! namespaces, 3 of 4 classifications: ~37% of items) and scope plus a
//! metadata filter (`region`, ~7%).
//!
//! Run: `cargo bench -p aios-edge-agent --bench memory`
//! (`AIOS_MEMORY_BENCH_SIZES`, default `10000,100000`; `AIOS_MEMORY_BENCH_QUERIES`, default 200).
//! Embedding 100,000 items takes half an hour on a 2-core machine; with
//! `AIOS_MEMORY_BENCH_DIR` the database is kept in that directory and a later
//! run inserts only what is missing (a size below what it holds is skipped).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aios_edge_agent::memory::{Embed, EmbedderSource, LazyEmbedder, Memory, NewItem, Provenance, SearchRequest};
use aios_edge_agent::store::EdgeStore;
use aios_models::{LoadOptions, ModelStore};
use aios_shared::memory::{Classification, MemorySpec};
use serde_json::json;

const NAMESPACES: [&str; 4] = ["tickets", "notes", "orders", "policies"];
const REGIONS: [&str; 5] = ["eu-west", "eu-north", "us-east", "us-west", "apac"];
const FIRST: [&str; 24] = [
    "Anna", "Ben", "Chloe", "David", "Emma", "Farid", "Grace", "Hugo", "Ines", "Jonas", "Kira", "Liam", "Maya", "Noah",
    "Olga", "Pablo", "Quinn", "Rosa", "Sven", "Tara", "Umar", "Vera", "Wes", "Yara",
];
const PRODUCTS: [&str; 20] = [
    "kettle",
    "toaster",
    "blender",
    "coffee machine",
    "microwave",
    "rice cooker",
    "air fryer",
    "juicer",
    "mixer",
    "grill",
    "waffle iron",
    "espresso grinder",
    "food processor",
    "slow cooker",
    "bread maker",
    "vacuum cleaner",
    "steam iron",
    "fan heater",
    "dehumidifier",
    "water filter",
];
const ISSUES: [&str; 16] = [
    "arrived broken",
    "stopped working",
    "is making a loud noise",
    "was never delivered",
    "was charged twice",
    "came with a missing lid",
    "leaks water",
    "smells of burning plastic",
    "does not heat up",
    "has a cracked jug",
    "was delivered to the wrong address",
    "shows an error light",
    "trips the fuse",
    "was the wrong colour",
    "arrived late",
    "has a faulty switch",
];
const ASKS: [&str; 12] = [
    "wants a refund",
    "asks for a replacement",
    "wants to know the warranty terms",
    "asks to cancel the order",
    "wants a repair",
    "asks where the parcel is",
    "requests an invoice",
    "wants store credit",
    "asks for the manual",
    "complains about support",
    "asks for a discount",
    "wants to return it",
];
const CITIES: [&str; 16] = [
    "Paris", "Lyon", "Berlin", "Munich", "Madrid", "Lisbon", "Rome", "Milan", "Vienna", "Oslo", "Dublin", "Warsaw",
    "Prague", "Ghent", "Porto", "Zurich",
];

/// A deterministic mixing function, so runs are comparable.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d049bb133111eb);
    x ^ (x >> 31)
}

fn pick<'a>(list: &[&'a str], seed: u64, salt: u64) -> &'a str {
    list[(mix(seed.wrapping_mul(31).wrapping_add(salt)) % list.len() as u64) as usize]
}

fn sentence(i: u64) -> String {
    format!(
        "{} from {} says the {} {} and {} (order {}).",
        pick(&FIRST, i, 1),
        pick(&CITIES, i, 2),
        pick(&PRODUCTS, i, 3),
        pick(&ISSUES, i, 4),
        pick(&ASKS, i, 5),
        10_000 + i
    )
}

fn query(i: u64) -> String {
    let i = i + 1_000_000;
    format!("customer whose {} {} and {}", pick(&PRODUCTS, i, 3), pick(&ISSUES, i, 4), pick(&ASKS, i, 5))
}

/// What the benchmark remembers of each item, for exact search.
struct Row {
    namespace: usize,
    classification: Classification,
    region: usize,
    vector: Vec<f32>,
}

fn scope_of(i: u64) -> (usize, Classification, usize) {
    let h = mix(i ^ 0x5eed);
    ((h % 4) as usize, Classification::ALL[((h >> 8) % 4) as usize], ((h >> 16) % 5) as usize)
}

#[derive(Clone, Copy)]
enum Filter {
    None,
    Scope,
    ScopeAndMetadata,
}

impl Filter {
    fn name(self) -> &'static str {
        match self {
            Filter::None => "no filter",
            Filter::Scope => "scope",
            Filter::ScopeAndMetadata => "scope+metadata",
        }
    }

    fn request(self) -> SearchRequest {
        let mut request = SearchRequest {
            query: String::new(),
            namespaces: NAMESPACES.iter().map(|s| s.to_string()).collect(),
            classifications: Classification::ALL.to_vec(),
            filter: BTreeMap::new(),
            top_k: 10,
            min_score: -1.0,
            keyword_weight: 0.0,
        };
        if !matches!(self, Filter::None) {
            request.namespaces.truncate(2);
            request.classifications.truncate(3);
        }
        if matches!(self, Filter::ScopeAndMetadata) {
            request.filter.insert("region".into(), REGIONS[0].into());
        }
        request
    }

    fn passes(self, row: &Row) -> bool {
        match self {
            Filter::None => true,
            Filter::Scope => row.namespace < 2 && row.classification != Classification::Restricted,
            Filter::ScopeAndMetadata => Filter::Scope.passes(row) && row.region == 0,
        }
    }
}

fn exact_top10(rows: &[Row], filter: Filter, query: &[f32]) -> Vec<usize> {
    let mut scored: Vec<(f32, usize)> = rows
        .iter()
        .enumerate()
        .filter(|(_, row)| filter.passes(row))
        .map(|(i, row)| (row.vector.iter().zip(query).map(|(a, b)| a * b).sum::<f32>(), i))
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    scored.into_iter().take(10).map(|(_, i)| i).collect()
}

fn percentile(samples: &[Duration], fraction: f64) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    sorted[((sorted.len() as f64 - 1.0) * fraction).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let sizes: Vec<usize> = std::env::var("AIOS_MEMORY_BENCH_SIZES")
        .unwrap_or_else(|_| "10000,100000".into())
        .split(',')
        .map(|s| s.trim().parse())
        .collect::<Result<_, _>>()?;
    let n_queries: u64 = std::env::var("AIOS_MEMORY_BENCH_QUERIES").ok().and_then(|s| s.parse().ok()).unwrap_or(200);
    let temp = tempfile::tempdir()?;
    let dir = std::env::var_os("AIOS_MEMORY_BENCH_DIR").map_or_else(|| temp.path().to_owned(), Into::into);
    std::fs::create_dir_all(&dir)?;
    let store = EdgeStore::open(&dir)?;
    let embedder = Arc::new(LazyEmbedder::new(ModelStore::from_env(), LoadOptions::default(), "all-minilm-l6-v2"));
    let memory = Memory::new(&store, None, EmbedderSource::Fixed(embedder.clone()), &MemorySpec::default());
    println!("model: all-minilm-l6-v2 (384 dimensions), threads: {}", std::thread::available_parallelism()?.get());

    // Query vectors, timing single-query embedding on the way.
    embedder.embed(vec!["warm-up".into()]).await?;
    let mut query_vectors = Vec::new();
    let mut embed_times = Vec::new();
    for q in 0..n_queries {
        let started = Instant::now();
        query_vectors.push(embedder.embed(vec![query(q)]).await?.remove(0));
        embed_times.push(started.elapsed());
    }
    println!(
        "query embedding (one short text): p50 {:.2} ms, p95 {:.2} ms",
        ms(percentile(&embed_times, 0.5)),
        ms(percentile(&embed_times, 0.95))
    );

    // Items kept from an earlier run (`AIOS_MEMORY_BENCH_DIR`) are `b-0` .. `b-(n-1)`.
    let kept = memory.stats().await?.items as usize;
    let mut rows: Vec<Row> = (0..kept)
        .map(|i| {
            let (namespace, classification, region) = scope_of(i as u64);
            Row { namespace, classification, region, vector: Vec::new() }
        })
        .collect();
    for &size in &sizes {
        if size < kept {
            println!("\n== {size} items: skipped, the kept database holds {kept} ==");
            continue;
        }
        // Insert up to `size`, in batches, embedding included.
        let started = Instant::now();
        let from = rows.len();
        while rows.len() < size {
            let batch_end = (rows.len() + 512).min(size);
            let items: Vec<NewItem> = (rows.len()..batch_end)
                .map(|i| {
                    let (ns, class, region) = scope_of(i as u64);
                    NewItem {
                        id: Some(format!("b-{i}")),
                        namespace: NAMESPACES[ns].into(),
                        text: sentence(i as u64),
                        metadata: json!({ "region": REGIONS[region], "n": i }),
                        classification: class,
                        subjects: vec![],
                        provenance: Provenance {
                            added_by: "bench".into(),
                            source: "generated".into(),
                            task_id: None,
                            reason: None,
                            created_ms: 0,
                        },
                        expires_ms: None,
                    }
                })
                .collect();
            memory.add(items, 1).await?;
            for i in rows.len()..batch_end {
                let (ns, class, region) = scope_of(i as u64);
                rows.push(Row { namespace: ns, classification: class, region, vector: Vec::new() });
            }
        }
        let elapsed = started.elapsed();
        let inserted = size - from;
        println!("\n== {size} items ==");
        if inserted > 0 {
            println!(
                "insert: {inserted} items in {:.1} s = {:.0} items/s (embedding included, batches of 512)",
                elapsed.as_secs_f64(),
                inserted as f64 / elapsed.as_secs_f64()
            );
        } else {
            println!("insert: none (kept from an earlier run)");
        }
        // Stored vectors for the exact baseline.
        let vectors = stored_vectors(&store).await?;
        for (i, row) in rows.iter_mut().enumerate() {
            row.vector = vectors.get(&format!("b-{i}")).cloned().unwrap_or_default();
        }
        let stats = memory.stats().await?;
        println!(
            "database: {:.1} MiB, {:.0} bytes per item (text, metadata, provenance, f32 vector, FTS5, indexes)",
            stats.db_bytes as f64 / (1 << 20) as f64,
            stats.db_bytes as f64 / stats.items as f64
        );
        // Load the index once (not timed as a search).
        let started = Instant::now();
        memory.search_vector(&Filter::None.request(), &query_vectors[0], 2).await?;
        println!("index load: {:.2} s", started.elapsed().as_secs_f64());
        for filter in [Filter::None, Filter::Scope, Filter::ScopeAndMetadata] {
            let request = filter.request();
            let candidates = rows.iter().filter(|r| filter.passes(r)).count();
            let mut times = Vec::new();
            let mut found = 0usize;
            let mut wanted = 0usize;
            for vector in &query_vectors {
                let started = Instant::now();
                let hits = memory.search_vector(&request, vector, 2).await?;
                times.push(started.elapsed());
                let exact = exact_top10(&rows, filter, vector);
                let got: Vec<String> = hits.iter().map(|h| h.id.clone()).collect();
                wanted += exact.len();
                found += exact.iter().filter(|i| got.contains(&format!("b-{i}"))).count();
            }
            println!(
                "search top-10, {:<15} ({candidates:>6} candidates): p50 {:.2} ms, p95 {:.2} ms, recall@10 {:.4}",
                filter.name(),
                ms(percentile(&times, 0.5)),
                ms(percentile(&times, 0.95)),
                found as f64 / wanted.max(1) as f64
            );
        }
    }
    Ok(())
}

async fn stored_vectors(store: &EdgeStore) -> anyhow::Result<std::collections::HashMap<String, Vec<f32>>> {
    let memory = Memory::new(
        store,
        None,
        EmbedderSource::Catalog { models: ModelStore::from_env(), load: LoadOptions::default() },
        &MemorySpec::default(),
    );
    let items = memory.export(aios_edge_agent::memory::ExportOptions { namespace: None, vectors: true }).await?;
    use base64::Engine as _;
    let mut out = std::collections::HashMap::new();
    for item in items {
        let bytes = base64::engine::general_purpose::STANDARD.decode(item.vector.unwrap_or_default())?;
        let vector = aios_edge_agent::memory::vector_from_bytes(&bytes)?;
        out.insert(item.id, vector);
    }
    Ok(out)
}
