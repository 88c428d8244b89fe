//! The in-memory vector index: every item of the current embedding model as
//! a row of int8 codes (one scale per row) with the scope columns a search
//! filters on (namespace, classification, expiry), mirrored from SQLite.
//!
//! A search scans the rows that pass the filters, scores them with an int8
//! dot product (a quarter of the memory traffic of f32, which is what bounds
//! a scan of 100,000 x 384 on a small machine), keeps a shortlist several
//! times larger than `top_k`, and the caller re-ranks the shortlist with the
//! exact f32 vectors from SQLite. See ARCHITECTURE.md for the measurements
//! that chose this over an HNSW graph.

use std::collections::{BinaryHeap, HashMap, HashSet};

use aios_shared::memory::Classification;

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
}

/// What a scan may return.
pub(crate) struct ScanFilter<'a> {
    /// Allowed namespaces (interned); a namespace the index has never seen matches nothing.
    pub namespaces: Vec<u32>,
    /// Allowed classifications.
    pub classifications: &'a [Classification],
    /// Retention per classification, in ms.
    pub retention: &'a std::collections::BTreeMap<Classification, i64>,
    /// Rows that pass the metadata filter (`None`: no metadata filter).
    pub allowed: Option<&'a HashSet<i64>>,
    /// The current time.
    pub now_ms: i64,
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
    /// `dims` codes per slot.
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

    /// Adds or replaces the row of `seq`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn upsert(
        &mut self,
        seq: i64,
        namespace: &str,
        classification: Classification,
        updated_ms: i64,
        expires_ms: Option<i64>,
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
        let scope = RowScope { seq, namespace, classification, updated_ms, expires_ms: expires_ms.unwrap_or(i64::MAX) };
        let (codes, scale) = quantize(vector);
        match self.slots.get(&seq) {
            Some(&slot) => {
                self.rows[slot] = scope;
                self.codes[slot * self.dims..(slot + 1) * self.dims].copy_from_slice(&codes);
                self.scales[slot] = scale;
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
    }

    /// The `shortlist` rows that pass `filter` with the highest approximate
    /// similarity to `query`, best first, as `(seq, approximate score)`.
    pub(crate) fn scan(&self, query: &[f32], filter: &ScanFilter<'_>, shortlist: usize) -> Vec<(i64, f32)> {
        if query.len() != self.dims || self.rows.is_empty() || shortlist == 0 {
            return Vec::new();
        }
        let (query_codes, query_scale) = quantize(query);
        let passes = |row: &RowScope| {
            filter.namespaces.contains(&row.namespace)
                && filter.classifications.contains(&row.classification)
                && filter.allowed.is_none_or(|set| set.contains(&row.seq))
                && super::effective_expiry(
                    filter.retention,
                    row.classification,
                    row.updated_ms,
                    Some(row.expires_ms).filter(|e| *e != i64::MAX),
                ) > filter.now_ms
        };
        let score_slot = |slot: usize| {
            let codes = &self.codes[slot * self.dims..(slot + 1) * self.dims];
            dot_i8(codes, &query_codes) as f32 * self.scales[slot] * query_scale
        };
        // A small metadata-filtered set is visited through the slot map, not a full pass.
        let mut heap = TopK::new(shortlist);
        match filter.allowed {
            Some(set) if set.len() * 8 < self.rows.len() => {
                for seq in set {
                    if let Some(&slot) = self.slots.get(seq) {
                        if passes(&self.rows[slot]) {
                            heap.push(score_slot(slot), *seq);
                        }
                    }
                }
            }
            _ => {
                let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(4);
                if threads > 1 && self.rows.len() >= 20_000 {
                    let chunk = self.rows.len().div_ceil(threads);
                    let partials: Vec<TopK> = std::thread::scope(|scope| {
                        let handles: Vec<_> = (0..threads)
                            .map(|t| {
                                let (passes, score_slot) = (&passes, &score_slot);
                                scope.spawn(move || {
                                    let mut local = TopK::new(shortlist);
                                    let end = ((t + 1) * chunk).min(self.rows.len());
                                    for slot in t * chunk..end {
                                        let row = &self.rows[slot];
                                        if passes(row) {
                                            local.push(score_slot(slot), row.seq);
                                        }
                                    }
                                    local
                                })
                            })
                            .collect();
                        handles.into_iter().map(|h| h.join().expect("a scan thread does not panic")).collect()
                    });
                    for partial in partials {
                        for (score, seq) in partial.into_sorted() {
                            heap.push(score, seq);
                        }
                    }
                } else {
                    for (slot, row) in self.rows.iter().enumerate() {
                        if passes(row) {
                            heap.push(score_slot(slot), row.seq);
                        }
                    }
                }
            }
        }
        heap.into_sorted().into_iter().map(|(score, seq)| (seq, score)).collect()
    }
}

/// Symmetric int8 quantisation with one scale per vector.
fn quantize(vector: &[f32]) -> (Vec<i8>, f32) {
    let max = vector.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    if max == 0.0 || !max.is_finite() {
        return (vec![0; vector.len()], 0.0);
    }
    let scale = max / 127.0;
    (vector.iter().map(|x| (x / scale).round().clamp(-127.0, 127.0) as i8).collect(), scale)
}

/// Integer dot product; AVX2 when the CPU has it (LLVM vectorises the loop).
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

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dot_i8_avx2(a: &[i8], b: &[i8]) -> i32 {
    dot_i8_portable(a, b)
}

#[inline(always)]
fn dot_i8_portable(a: &[i8], b: &[i8]) -> i32 {
    a.iter().zip(b).map(|(x, y)| i32::from(*x) * i32::from(*y)).sum()
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

    #[test]
    fn scan_ranks_filters_and_survives_removal() {
        let mut index = VectorIndex::new(3, 0);
        index.upsert(1, "a", Classification::Public, 0, None, &unit(&[1.0, 0.0, 0.0]));
        index.upsert(2, "a", Classification::Restricted, 0, None, &unit(&[1.0, 0.1, 0.0]));
        index.upsert(3, "a", Classification::Public, 0, None, &unit(&[0.0, 1.0, 0.0]));
        index.upsert(4, "b", Classification::Public, 0, None, &unit(&[1.0, 0.0, 0.01]));
        index.upsert(5, "a", Classification::Public, 0, Some(10), &unit(&[1.0, 0.0, 0.0]));
        let retention = Default::default();
        let filter = ScanFilter {
            namespaces: vec![index.namespace_id("a").unwrap()],
            classifications: &[Classification::Public],
            retention: &retention,
            allowed: None,
            now_ms: 20,
        };
        let hits = index.scan(&unit(&[1.0, 0.0, 0.0]), &filter, 10);
        let seqs: Vec<i64> = hits.iter().map(|h| h.0).collect();
        assert_eq!(seqs, vec![1, 3], "restricted, other namespace and expired rows stay out");
        index.remove(1);
        index.remove(42);
        let hits = index.scan(&unit(&[1.0, 0.0, 0.0]), &filter, 10);
        assert_eq!(hits.iter().map(|h| h.0).collect::<Vec<_>>(), vec![3]);
        assert_eq!(index.len(), 4);
        // The swapped-in row kept its codes.
        let everything = ScanFilter { classifications: &Classification::ALL, now_ms: 0, ..filter };
        let hits = index.scan(&unit(&[1.0, 0.1, 0.0]), &everything, 1);
        assert_eq!(hits[0].0, 2);
        assert!((hits[0].1 - 1.0).abs() < 0.02, "{hits:?}");
    }

    #[test]
    fn int8_scores_track_exact_scores() {
        let mut state = 7u64;
        let mut random = || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 33) as f32 / (1u64 << 31) as f32) - 0.5
        };
        let a = unit(&(0..384).map(|_| random()).collect::<Vec<_>>());
        let b = unit(&(0..384).map(|_| random()).collect::<Vec<_>>());
        let (qa, sa) = quantize(&a);
        let (qb, sb) = quantize(&b);
        let approx = dot_i8(&qa, &qb) as f32 * sa * sb;
        assert!((approx - dot_f32(&a, &b)).abs() < 0.01, "{approx} vs {}", dot_f32(&a, &b));
        assert_eq!(dot_i8(&qa, &qb), dot_i8_portable(&qa, &qb));
    }
}
