//! The in-memory vector index: every item of the current embedding model as
//! a row of int8 codes (one scale per row) in one contiguous matrix, with the
//! columns a search filters on (namespace, classification, retention clock,
//! expiry, metadata tags), mirrored from SQLite and kept in step with this
//! process's writes.
//!
//! A search first turns its filter into the list of rows that pass it (one
//! pass over the scope columns, no SQL), then scores only those rows with an
//! int8 dot product (a quarter of the memory traffic of f32, which is what
//! bounds a scan of 100,000 x 384 on a small machine), split over the cores
//! when there are many, and keeps a shortlist several times larger than
//! `top_k`; the caller re-ranks the shortlist with the exact f32 vectors from
//! SQLite, under the same filter in SQL. See docs/benchmarks.md for the
//! measurements that chose this over an HNSW graph.

use std::cell::RefCell;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::hash::{Hash, Hasher};

use aios_shared::memory::Classification;

/// Rows scored per thread, at least, before a scan is split over the cores.
const PARALLEL_MIN_ROWS: usize = 16_384;

/// Where a row stands, for the scope filters.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RowScope {
    /// The item's `seq` in SQLite.
    pub seq: i64,
    /// Interned namespace.
    pub namespace: u32,
    /// Classification.
    pub classification: Classification,
    /// When its retention clock started (its last write).
    pub updated_ms: i64,
    /// Explicit expiry (`i64::MAX`: none).
    pub expires_ms: i64,
    /// Where its sorted tag hashes start in `VectorIndex::tag_arena`.
    pub tags_at: u32,
    /// How many tag hashes it has.
    pub tags_len: u32,
}

/// What a scan may return.
pub(crate) struct ScanFilter<'a> {
    /// Allowed namespaces (interned); a namespace the index has never seen matches nothing.
    pub namespaces: Vec<u32>,
    /// Allowed classifications.
    pub classifications: &'a [Classification],
    /// Retention per classification, in ms.
    pub retention: &'a BTreeMap<Classification, i64>,
    /// Metadata every row must carry (top-level key = value); empty: no metadata filter.
    pub metadata: &'a BTreeMap<String, String>,
    /// The current time.
    pub now_ms: i64,
}

/// A [`ScanFilter`] turned into lookups by column value.
struct CompiledFilter {
    /// Whether each interned namespace is allowed.
    namespaces: Vec<bool>,
    /// Per classification (by discriminant): allowed, and its retention.
    classes: [(bool, Option<i64>); 4],
    /// Tag hashes every row must carry.
    tags: Vec<u64>,
    /// The current time.
    now_ms: i64,
}

impl CompiledFilter {
    fn new(filter: &ScanFilter<'_>, n_namespaces: usize) -> CompiledFilter {
        let mut namespaces = vec![false; n_namespaces];
        for ns in &filter.namespaces {
            if let Some(allowed) = namespaces.get_mut(*ns as usize) {
                *allowed = true;
            }
        }
        let classes = Classification::ALL
            .map(|class| (filter.classifications.contains(&class), filter.retention.get(&class).copied()));
        let mut tags: Vec<u64> = filter.metadata.iter().map(|(key, value)| tag_hash(key, value)).collect();
        tags.sort_unstable();
        CompiledFilter { namespaces, classes, tags, now_ms: filter.now_ms }
    }

    /// Whether a row may be returned: the same rule as
    /// [`super::effective_expiry`] plus the scope and the metadata tags.
    #[inline]
    fn passes(&self, row: &RowScope, tag_arena: &[u64]) -> bool {
        let (allowed, retention) = self.classes[row.classification as usize];
        allowed
            && self.namespaces.get(row.namespace as usize).copied().unwrap_or(false)
            && row.expires_ms > self.now_ms
            && retention.is_none_or(|ms| row.updated_ms.saturating_add(ms) > self.now_ms)
            && (self.tags.is_empty() || {
                let tags = &tag_arena[row.tags_at as usize..(row.tags_at + row.tags_len) as usize];
                self.tags.iter().all(|tag| tags.binary_search(tag).is_ok())
            })
    }
}

/// The hash a metadata `key = value` is filtered by in memory. A collision
/// can only let a row onto the shortlist: SQL checks the real tags again.
pub(crate) fn tag_hash(key: &str, value: &str) -> u64 {
    // The same keys for every `DefaultHasher::new()`: stable within the
    // process, which is all the index (rebuilt on every load) needs.
    let mut hasher = std::hash::DefaultHasher::new();
    key.hash(&mut hasher);
    value.hash(&mut hasher);
    hasher.finish()
}

thread_local! {
    /// The rows that passed the filter, reused from one scan to the next on
    /// the same (blocking pool) thread so a search allocates no row list.
    static PASSING: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
}

/// int8 codes of every item's vector of one model, with their scopes.
#[derive(Debug, Default)]
pub struct VectorIndex {
    /// Width of the vectors.
    dims: usize,
    /// The memory generation of the database this reflects.
    pub(crate) generation: i64,
    /// Scope per slot.
    rows: Vec<RowScope>,
    /// Every row's sorted metadata tag hashes, one run per row, in the order
    /// rows were written: a scan under a metadata filter reads it nearly
    /// front to back (separate allocations per row cost a cache miss each).
    /// Replaced rows leave garbage behind, compacted when it dominates.
    tag_arena: Vec<u64>,
    /// `dims` codes per slot, slot after slot, each in -127..=127 (the dot
    /// product's kernel relies on -128 never occurring).
    codes: Vec<i8>,
    /// Dequantisation scale per slot.
    scales: Vec<f32>,
    /// Slot of each `seq`.
    slots: HashMap<i64, usize>,
    /// Interned namespaces.
    namespaces: HashMap<String, u32>,
}

impl VectorIndex {
    /// An empty index of `dims`-wide vectors at `generation`.
    pub(crate) fn new(dims: usize, generation: i64) -> VectorIndex {
        VectorIndex { dims, generation, ..VectorIndex::default() }
    }

    /// Rows held.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether it holds no rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Width of the vectors (0 before the first row).
    pub fn dims(&self) -> usize {
        self.dims
    }

    /// Bytes of vector codes held in memory.
    pub fn code_bytes(&self) -> usize {
        self.codes.len() + self.scales.len() * 4
    }

    /// The interned id of `namespace`, if any row has used it.
    pub(crate) fn namespace_id(&self, namespace: &str) -> Option<u32> {
        self.namespaces.get(namespace).copied()
    }

    /// Adds or replaces the row of `seq`; `tags` are its metadata tag hashes.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn upsert(
        &mut self,
        seq: i64,
        namespace: &str,
        classification: Classification,
        updated_ms: i64,
        expires_ms: Option<i64>,
        mut tags: Vec<u64>,
        vector: &[f32],
    ) {
        if self.dims == 0 {
            self.dims = vector.len();
        }
        if vector.len() != self.dims {
            // A vector of another width cannot be compared; it stays out.
            self.remove(seq);
            return;
        }
        let next_ns = self.namespaces.len() as u32;
        let namespace = *self.namespaces.entry(namespace.to_owned()).or_insert(next_ns);
        tags.sort_unstable();
        tags.dedup();
        let scope = RowScope {
            seq,
            namespace,
            classification,
            updated_ms,
            expires_ms: expires_ms.unwrap_or(i64::MAX),
            tags_at: self.tag_arena.len() as u32,
            tags_len: tags.len() as u32,
        };
        self.tag_arena.extend_from_slice(&tags);
        let (codes, scale) = quantize(vector);
        match self.slots.get(&seq) {
            Some(&slot) => {
                self.rows[slot] = scope;
                self.codes[slot * self.dims..(slot + 1) * self.dims].copy_from_slice(&codes);
                self.scales[slot] = scale;
                self.compact_tags();
            }
            None => {
                self.slots.insert(seq, self.rows.len());
                self.rows.push(scope);
                self.codes.extend_from_slice(&codes);
                self.scales.push(scale);
            }
        }
    }

    /// Removes the row of `seq`, if present.
    pub(crate) fn remove(&mut self, seq: i64) {
        let Some(slot) = self.slots.remove(&seq) else { return };
        let last = self.rows.len() - 1;
        if slot != last {
            self.rows.swap(slot, last);
            self.scales.swap(slot, last);
            let (head, tail) = self.codes.split_at_mut(last * self.dims);
            head[slot * self.dims..(slot + 1) * self.dims].copy_from_slice(&tail[..self.dims]);
            self.slots.insert(self.rows[slot].seq, slot);
        }
        self.rows.pop();
        self.scales.pop();
        self.codes.truncate(last * self.dims);
        self.compact_tags();
    }

    /// Rewrites the tag arena in slot order once replaced and removed rows'
    /// runs make up most of it.
    fn compact_tags(&mut self) {
        let live: usize = self.rows.iter().map(|r| r.tags_len as usize).sum();
        if self.tag_arena.len() <= 2 * live + 4096 {
            return;
        }
        let mut arena = Vec::with_capacity(live);
        for row in &mut self.rows {
            let at = arena.len() as u32;
            arena.extend_from_slice(&self.tag_arena[row.tags_at as usize..(row.tags_at + row.tags_len) as usize]);
            row.tags_at = at;
        }
        self.tag_arena = arena;
    }

    /// The `shortlist` rows that pass `filter` with the highest approximate
    /// similarity to `query`, best first, as `(seq, approximate score)`.
    pub(crate) fn scan(&self, query: &[f32], filter: &ScanFilter<'_>, shortlist: usize) -> Vec<(i64, f32)> {
        if query.len() != self.dims || self.rows.is_empty() || shortlist == 0 {
            return Vec::new();
        }
        let compiled = CompiledFilter::new(filter, self.namespaces.len());
        if !compiled.namespaces.contains(&true) || !compiled.classes.iter().any(|c| c.0) {
            return Vec::new();
        }
        let (query_codes, query_scale) = quantize(query);
        PASSING.with_borrow_mut(|passing| {
            passing.clear();
            passing.extend(
                (0..self.rows.len())
                    .filter(|&slot| compiled.passes(&self.rows[slot], &self.tag_arena))
                    .map(|slot| slot as u32),
            );
            let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(4);
            let threads = threads.min(passing.len() / PARALLEL_MIN_ROWS).max(1);
            let heap = if threads == 1 {
                self.score(passing, &query_codes, query_scale, shortlist)
            } else {
                let chunk = passing.len().div_ceil(threads);
                std::thread::scope(|scope| {
                    let mut parts = passing.chunks(chunk);
                    let mine = parts.next().expect("at least one chunk");
                    let handles: Vec<_> = parts
                        .map(|part| scope.spawn(|| self.score(part, &query_codes, query_scale, shortlist)))
                        .collect();
                    let mut heap = self.score(mine, &query_codes, query_scale, shortlist);
                    for handle in handles {
                        heap.merge(handle.join().expect("a scan thread does not panic"));
                    }
                    heap
                })
            };
            heap.into_sorted().into_iter().map(|(score, seq)| (seq, score)).collect()
        })
    }

    /// The best `shortlist` of `slots` by approximate score.
    fn score(&self, slots: &[u32], query_codes: &[i8], query_scale: f32, shortlist: usize) -> TopK {
        let mut heap = TopK::new(shortlist);
        let dims = self.dims;
        for (idx, &slot) in slots.iter().enumerate() {
            // The rows that passed a filter are scattered: ask for the row a
            // few ahead while this one is scored, as a sequential scan's
            // hardware prefetch would.
            if let Some(&ahead) = slots.get(idx + PREFETCH_AHEAD) {
                prefetch(&self.codes[ahead as usize * dims..(ahead as usize + 1) * dims]);
            }
            let slot = slot as usize;
            let codes = &self.codes[slot * dims..(slot + 1) * dims];
            heap.push(dot_i8(codes, query_codes) as f32 * self.scales[slot] * query_scale, self.rows[slot].seq);
        }
        heap
    }
}

/// Rows ahead of the one being scored whose codes are prefetched.
const PREFETCH_AHEAD: usize = 4;

/// Hints the CPU to bring `bytes` into cache.
#[inline(always)]
fn prefetch(bytes: &[i8]) {
    #[cfg(target_arch = "x86_64")]
    for line in bytes.chunks(64) {
        // SAFETY: SSE is part of the x86_64 baseline; a prefetch never
        // faults, and the pointer is within the slice anyway.
        unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(line.as_ptr()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = bytes;
}

/// Symmetric int8 quantisation with one scale per vector; codes stay in
/// -127..=127.
fn quantize(vector: &[f32]) -> (Vec<i8>, f32) {
    let max = vector.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    if max == 0.0 || !max.is_finite() {
        return (vec![0; vector.len()], 0.0);
    }
    let scale = max / 127.0;
    (vector.iter().map(|x| (x / scale).round().clamp(-127.0, 127.0) as i8).collect(), scale)
}

/// Integer dot product of two code vectors (each in -127..=127): AVX2 when
/// the CPU has it, otherwise a chunked loop the compiler vectorises.
fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked just above.
            return unsafe { dot_i8_avx2(a, b) };
        }
    }
    dot_i8_portable(a, b)
}

/// 32 codes per step: `maddubs` multiplies |a| (as u8) by b with a's sign
/// moved onto it and adds pairs into i16, which cannot saturate because no
/// code is -128 (2 x 127 x 127 < 32767); `madd` widens the pairs into i32.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dot_i8_avx2(a: &[i8], b: &[i8]) -> i32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let steps = n / 32;
    let ones = _mm256_set1_epi16(1);
    let mut acc = _mm256_setzero_si256();
    for step in 0..steps {
        // SAFETY: `step * 32 + 32 <= n`, within both slices; unaligned loads.
        let (va, vb) = unsafe {
            (
                _mm256_loadu_si256(a.as_ptr().add(step * 32).cast::<__m256i>()),
                _mm256_loadu_si256(b.as_ptr().add(step * 32).cast::<__m256i>()),
            )
        };
        let pairs = _mm256_maddubs_epi16(_mm256_sign_epi8(va, va), _mm256_sign_epi8(vb, va));
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, ones));
    }
    let half = _mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256::<1>(acc));
    let quarter = _mm_add_epi32(half, _mm_unpackhi_epi64(half, half));
    let total = _mm_add_epi32(quarter, _mm_shuffle_epi32::<0b01>(quarter));
    _mm_cvtsi128_si32(total) + dot_i8_portable(&a[steps * 32..n], &b[steps * 32..n])
}

/// Sixteen i32 lanes summed in chunks, so the compiler can vectorise it.
fn dot_i8_portable(a: &[i8], b: &[i8]) -> i32 {
    let mut lanes = [0i32; 16];
    let (chunks_a, chunks_b) = (a.chunks_exact(16), b.chunks_exact(16));
    let (rest_a, rest_b) = (chunks_a.remainder(), chunks_b.remainder());
    for (ca, cb) in chunks_a.zip(chunks_b) {
        for lane in 0..16 {
            lanes[lane] += i32::from(ca[lane]) * i32::from(cb[lane]);
        }
    }
    let rest: i32 = rest_a.iter().zip(rest_b).map(|(x, y)| i32::from(*x) * i32::from(*y)).sum();
    lanes.iter().sum::<i32>() + rest
}

/// Dot product of two f32 vectors (unit vectors: their cosine similarity).
pub(crate) fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// A bounded min-heap keeping the `k` highest scores.
struct TopK {
    k: usize,
    heap: BinaryHeap<std::cmp::Reverse<(Score, i64)>>,
}

/// An f32 with a total order (NaN sorts lowest).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Score(f32);

impl Eq for Score {}

impl PartialOrd for Score {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Score {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

impl TopK {
    fn new(k: usize) -> TopK {
        TopK { k, heap: BinaryHeap::with_capacity(k + 1) }
    }

    #[inline]
    fn push(&mut self, score: f32, seq: i64) {
        let score = if score.is_nan() { f32::NEG_INFINITY } else { score };
        if self.heap.len() < self.k {
            self.heap.push(std::cmp::Reverse((Score(score), seq)));
        } else if let Some(std::cmp::Reverse((lowest, _))) = self.heap.peek() {
            if score > lowest.0 {
                self.heap.pop();
                self.heap.push(std::cmp::Reverse((Score(score), seq)));
            }
        }
    }

    /// Takes in another thread's best.
    fn merge(&mut self, other: TopK) {
        for std::cmp::Reverse((score, seq)) in other.heap {
            self.push(score.0, seq);
        }
    }

    /// Best first; ties broken by `seq` for determinism.
    fn into_sorted(self) -> Vec<(f32, i64)> {
        let mut all: Vec<(f32, i64)> = self.heap.into_iter().map(|std::cmp::Reverse((s, seq))| (s.0, seq)).collect();
        all.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(values: &[f32]) -> Vec<f32> {
        let norm = values.iter().map(|x| x * x).sum::<f32>().sqrt();
        values.iter().map(|x| x / norm).collect()
    }

    fn random_source(mut state: u64) -> impl FnMut() -> f32 {
        move || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 33) as f32 / (1u64 << 31) as f32) - 0.5
        }
    }

    fn tags(pairs: &[(&str, &str)]) -> Vec<u64> {
        pairs.iter().map(|(k, v)| tag_hash(k, v)).collect()
    }

    #[test]
    fn scan_ranks_filters_and_survives_removal() {
        let mut index = VectorIndex::new(3, 0);
        index.upsert(1, "a", Classification::Public, 0, None, tags(&[("r", "eu")]), &unit(&[1.0, 0.0, 0.0]));
        index.upsert(2, "a", Classification::Restricted, 0, None, vec![], &unit(&[1.0, 0.1, 0.0]));
        index.upsert(3, "a", Classification::Public, 0, None, tags(&[("r", "us")]), &unit(&[0.0, 1.0, 0.0]));
        index.upsert(4, "b", Classification::Public, 0, None, vec![], &unit(&[1.0, 0.0, 0.01]));
        index.upsert(5, "a", Classification::Public, 0, Some(10), vec![], &unit(&[1.0, 0.0, 0.0]));
        let retention = Default::default();
        let no_metadata = BTreeMap::new();
        let filter = ScanFilter {
            namespaces: vec![index.namespace_id("a").unwrap()],
            classifications: &[Classification::Public],
            retention: &retention,
            metadata: &no_metadata,
            now_ms: 20,
        };
        let hits = index.scan(&unit(&[1.0, 0.0, 0.0]), &filter, 10);
        let seqs: Vec<i64> = hits.iter().map(|h| h.0).collect();
        assert_eq!(seqs, vec![1, 3], "restricted, other namespace and expired rows stay out");
        let us = BTreeMap::from([("r".to_owned(), "us".to_owned())]);
        let by_region = ScanFilter { namespaces: filter.namespaces.clone(), metadata: &us, ..filter };
        let hits = index.scan(&unit(&[1.0, 0.0, 0.0]), &by_region, 10);
        assert_eq!(hits.iter().map(|h| h.0).collect::<Vec<_>>(), vec![3], "the metadata filter holds");
        let filter = ScanFilter { metadata: &no_metadata, ..by_region };
        index.remove(1);
        index.remove(42);
        let hits = index.scan(&unit(&[1.0, 0.0, 0.0]), &filter, 10);
        assert_eq!(hits.iter().map(|h| h.0).collect::<Vec<_>>(), vec![3]);
        assert_eq!(index.len(), 4);
        // The swapped-in row kept its codes and tags.
        let everything = ScanFilter { classifications: &Classification::ALL, now_ms: 0, ..filter };
        let hits = index.scan(&unit(&[1.0, 0.1, 0.0]), &everything, 1);
        assert_eq!(hits[0].0, 2);
        assert!((hits[0].1 - 1.0).abs() < 0.02, "{hits:?}");
        let hits = index.scan(&unit(&[0.0, 1.0, 0.0]), &ScanFilter { metadata: &us, ..everything }, 10);
        assert_eq!(hits.iter().map(|h| h.0).collect::<Vec<_>>(), vec![3]);
    }

    #[test]
    fn rewritten_rows_keep_their_tags_through_compaction() {
        let mut index = VectorIndex::new(2, 0);
        index.upsert(1, "a", Classification::Public, 0, None, tags(&[("r", "eu")]), &unit(&[1.0, 0.0]));
        for round in 0..3_000 {
            let region = if round % 2 == 0 { "us" } else { "eu" };
            index.upsert(
                2,
                "a",
                Classification::Public,
                0,
                None,
                tags(&[("r", region), ("k", "v")]),
                &unit(&[0.0, 1.0]),
            );
        }
        assert!(index.tag_arena.len() < 4096 + 16, "garbage was compacted: {}", index.tag_arena.len());
        let retention = BTreeMap::new();
        let eu = BTreeMap::from([("r".to_owned(), "eu".to_owned())]);
        let filter = ScanFilter {
            namespaces: vec![0],
            classifications: &Classification::ALL,
            retention: &retention,
            metadata: &eu,
            now_ms: 0,
        };
        let seqs: Vec<i64> = index.scan(&unit(&[1.0, 1.0]), &filter, 10).iter().map(|h| h.0).collect();
        assert_eq!(seqs, vec![1, 2], "row 2's last write is in eu");
    }

    #[test]
    fn retention_counts_from_the_last_write() {
        let mut index = VectorIndex::new(2, 0);
        index.upsert(1, "a", Classification::Restricted, 100, None, vec![], &unit(&[1.0, 0.0]));
        index.upsert(2, "a", Classification::Public, 0, None, vec![], &unit(&[1.0, 0.0]));
        let retention = BTreeMap::from([(Classification::Restricted, 50)]);
        let no_metadata = BTreeMap::new();
        let at = |now_ms| ScanFilter {
            namespaces: vec![0],
            classifications: &Classification::ALL,
            retention: &retention,
            metadata: &no_metadata,
            now_ms,
        };
        let seqs = |now_ms| index.scan(&unit(&[1.0, 0.0]), &at(now_ms), 10).iter().map(|h| h.0).collect::<Vec<_>>();
        assert_eq!(seqs(149), vec![1, 2]);
        assert_eq!(seqs(150), vec![2], "gone at updated + retention, as effective_expiry says");
    }

    #[test]
    fn a_parallel_scan_finds_what_one_thread_finds() {
        let dims = 24;
        let mut random = random_source(11);
        let mut index = VectorIndex::new(dims, 0);
        for seq in 0..3 * PARALLEL_MIN_ROWS as i64 {
            let vector = unit(&(0..dims).map(|_| random()).collect::<Vec<_>>());
            index.upsert(seq, "a", Classification::Public, 0, None, vec![], &vector);
        }
        let query = unit(&(0..dims).map(|_| random()).collect::<Vec<_>>());
        let retention = BTreeMap::new();
        let no_metadata = BTreeMap::new();
        let filter = ScanFilter {
            namespaces: vec![0],
            classifications: &Classification::ALL,
            retention: &retention,
            metadata: &no_metadata,
            now_ms: 0,
        };
        let parallel = index.scan(&query, &filter, 20);
        let (codes, scale) = quantize(&query);
        let all: Vec<u32> = (0..index.len() as u32).collect();
        let single = index.score(&all, &codes, scale, 20).into_sorted();
        assert_eq!(parallel, single.into_iter().map(|(score, seq)| (seq, score)).collect::<Vec<_>>());
    }

    #[test]
    fn int8_scores_track_exact_scores() {
        let mut random = random_source(7);
        let a = unit(&(0..384).map(|_| random()).collect::<Vec<_>>());
        let b = unit(&(0..384).map(|_| random()).collect::<Vec<_>>());
        let (qa, sa) = quantize(&a);
        let (qb, sb) = quantize(&b);
        let approx = dot_i8(&qa, &qb) as f32 * sa * sb;
        assert!((approx - dot_f32(&a, &b)).abs() < 0.01, "{approx} vs {}", dot_f32(&a, &b));
    }

    #[test]
    fn the_dot_product_kernels_agree_at_the_extremes() {
        let naive = |a: &[i8], b: &[i8]| a.iter().zip(b).map(|(x, y)| i32::from(*x) * i32::from(*y)).sum::<i32>();
        let mut random = random_source(3);
        for len in [0, 1, 31, 32, 33, 100, 384, 1000] {
            let a: Vec<i8> = (0..len).map(|_| (random() * 254.0).round() as i8).collect();
            let b: Vec<i8> = (0..len).map(|_| (random() * 254.0).round() as i8).collect();
            assert_eq!(dot_i8(&a, &b), naive(&a, &b), "length {len}");
            assert_eq!(dot_i8_portable(&a, &b), naive(&a, &b), "length {len}");
            let high = vec![127i8; len];
            let low = vec![-127i8; len];
            assert_eq!(dot_i8(&high, &high), naive(&high, &high));
            assert_eq!(dot_i8(&high, &low), naive(&high, &low));
            assert_eq!(dot_i8(&low, &low), naive(&low, &low));
        }
    }
}
