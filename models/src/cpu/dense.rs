//! Dense products and the element-wise operations of an encoder layer: what
//! a BERT-family embedder spends its time in, and the products of chat
//! models whose weights are stored as F32, F16 or BF16.
//!
//! [`PackedMatrix`] holds a linear layer's weight (`[out][in]`, PyTorch's
//! layout) repacked at load into panels of [`PANEL`] output columns, each
//! panel `[in][PANEL]`, so the kernel reads one contiguous run per step of
//! the inner dimension. Panels keep the weights' own precision ([`Element`]:
//! f32, f16 or bf16) and the micro-kernel widens each run to f32 as it loads
//! it, so an f16 matrix reads half the bytes and every product is an f32
//! product of the stored values. bf16 panels interleave neighbouring steps
//! (`[in / 2][PANEL][2]`), the layout of `vdpbf16ps`: [`products_bf16`]
//! multiplies them with activations rounded to bf16 ([`round_to_bf16_pairs`]),
//! two products per lane per instruction where the CPU has AVX-512 BF16, as
//! llama.cpp does for bf16 weights. [`matmul`] computes `out = a · wᵀ + bias`
//! on the pool in tiles of up to [`BLOCK_ROWS`] rows by [`GROUP_PANELS`]
//! panels; the micro-kernel keeps an 8-row by 32-column block of `out` in
//! registers (sixteen AVX-512 accumulators), starts it from the bias (or
//! from `out`, to accumulate), and each tile is finished while it is still
//! in cache by its [`Epilogue`] (GELU, or the residual added).

use half::{bf16, f16};

use crate::cpu::{Level, Pool};

/// Output columns per packed panel (two AVX-512 vectors).
pub const PANEL: usize = 32;
/// Rows the micro-kernel holds in registers.
const KERNEL_ROWS: usize = 12;
/// Rows of `out` per pool chunk.
const BLOCK_ROWS: usize = 72;
/// Most panels of `out` per pool chunk.
const GROUP_PANELS: usize = 4;
/// Multiply-adds a pool chunk aims at (about 100 us on one core), so a
/// helper's chunk never looks like a helper that lost its core to the pool
/// (400 us).
const CHUNK_WORK: usize = 4 << 20;

/// The precision a [`PackedMatrix`] stores its weights in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// 32-bit floats.
    F32,
    /// IEEE half precision.
    F16,
    /// bfloat16 (the high half of an f32).
    BF16,
}

impl Kind {
    /// Steps of the inner dimension a panel stores for `cols` inputs: bf16
    /// panels hold pairs of steps, so an odd width gets a zero step.
    fn depth(self, cols: usize) -> usize {
        match self {
            Kind::BF16 => cols.next_multiple_of(2),
            Kind::F32 | Kind::F16 => cols,
        }
    }

    /// Where the weight of step `k` and output column `lane` sits in its panel.
    #[inline(always)]
    fn slot(self, k: usize, lane: usize) -> usize {
        match self {
            Kind::BF16 => (k / 2) * 2 * PANEL + lane * 2 + k % 2,
            Kind::F32 | Kind::F16 => k * PANEL + lane,
        }
    }
}

/// An element type panels can be stored in; widening to f32 is exact for
/// every one of them.
pub trait Element: Copy + Default + Send + Sync + 'static {
    /// Which one it is (the kernels branch on it at compile time).
    const KIND: Kind;
    /// The value as f32.
    fn widen(self) -> f32;
}

impl Element for f32 {
    const KIND: Kind = Kind::F32;
    fn widen(self) -> f32 {
        self
    }
}

impl Element for f16 {
    const KIND: Kind = Kind::F16;
    fn widen(self) -> f32 {
        self.to_f32()
    }
}

impl Element for bf16 {
    const KIND: Kind = Kind::BF16;
    fn widen(self) -> f32 {
        f32::from_bits((self.to_bits() as u32) << 16)
    }
}

/// Panels in the weights' own precision.
#[derive(Clone)]
enum Panels {
    F32(Vec<f32>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
}

/// A linear layer's weight and bias in the layout [`matmul`] reads.
#[derive(Clone)]
pub struct PackedMatrix {
    /// Output features.
    rows: usize,
    /// Input features.
    cols: usize,
    /// `[panel][cols][PANEL]` (bf16: `[panel][cols / 2][PANEL][2]`, see
    /// [`Kind::slot`]); columns past `rows` and a bf16 matrix's odd last
    /// step are zero.
    panels: Panels,
    /// `[panels * PANEL]`, zero-padded.
    bias: Vec<f32>,
}

impl std::fmt::Debug for PackedMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedMatrix")
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .field("kind", &self.kind())
            .finish_non_exhaustive()
    }
}

/// Repacks row-major `weight` into panels.
fn pack<E: Element>(weight: &[E], rows: usize, cols: usize) -> Vec<E> {
    assert_eq!(weight.len(), rows * cols, "weight is not {rows}x{cols}");
    let depth = E::KIND.depth(cols);
    let count = rows.div_ceil(PANEL);
    let mut panels = vec![E::default(); count * depth * PANEL];
    for (row, values) in weight.chunks_exact(cols.max(1)).enumerate().take(rows) {
        let (panel, lane) = (row / PANEL, row % PANEL);
        let base = panel * depth * PANEL;
        for (k, value) in values.iter().enumerate() {
            panels[base + E::KIND.slot(k, lane)] = *value;
        }
    }
    panels
}

/// Element types [`PackedMatrix`] keeps panels of.
trait Stored: Element {
    fn wrap(panels: Vec<Self>) -> Panels;
}

macro_rules! stored {
    ($ty:ty, $variant:ident) => {
        impl Stored for $ty {
            fn wrap(panels: Vec<Self>) -> Panels {
                Panels::$variant(panels)
            }
        }
    };
}
stored!(f32, F32);
stored!(f16, F16);
stored!(bf16, BF16);

impl PackedMatrix {
    /// Packs `weight` (`[rows][cols]`, row-major, f32, f16 or bf16, kept in
    /// that precision) and an optional f32 bias of `rows`.
    #[allow(private_bounds)]
    pub fn new<E: Element + Stored>(weight: &[E], rows: usize, cols: usize, bias: Option<&[f32]>) -> Self {
        let panels = E::wrap(pack(weight, rows, cols));
        let mut padded = vec![0f32; rows.div_ceil(PANEL) * PANEL];
        if let Some(bias) = bias {
            assert_eq!(bias.len(), rows, "bias is not {rows} long");
            padded[..rows].copy_from_slice(bias);
        }
        Self { rows, cols, panels, bias: padded }
    }

    /// Packs `rows` f32 rows that `fill(row, out)` writes (`cols` values
    /// each), with no bias, a panel at a time: no row-major copy of the
    /// whole matrix is made.
    pub fn from_rows(rows: usize, cols: usize, mut fill: impl FnMut(usize, &mut [f32])) -> Self {
        let count = rows.div_ceil(PANEL);
        let mut panels = Vec::with_capacity(count * cols * PANEL);
        let mut staged = vec![0f32; PANEL * cols];
        for panel in 0..count {
            let height = (rows - panel * PANEL).min(PANEL);
            for (lane, row) in staged.chunks_exact_mut(cols.max(1)).enumerate() {
                if lane < height {
                    fill(panel * PANEL + lane, row);
                } else {
                    row.fill(0.0);
                }
            }
            // Transposed sixteen columns at a time, so both sides stay in a
            // few cache lines.
            for k0 in (0..cols).step_by(16) {
                let k1 = (k0 + 16).min(cols);
                for k in k0..k1 {
                    panels.extend((0..PANEL).map(|lane| staged[lane * cols + k]));
                }
            }
        }
        Self { rows, cols, panels: Panels::F32(panels), bias: vec![0f32; count * PANEL] }
    }

    /// Output features.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input features.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The precision the weights are stored in.
    pub fn kind(&self) -> Kind {
        match self.panels {
            Panels::F32(_) => Kind::F32,
            Panels::F16(_) => Kind::F16,
            Panels::BF16(_) => Kind::BF16,
        }
    }

    /// Bytes of weights one product reads.
    pub fn weight_bytes(&self) -> usize {
        let size = match self.kind() {
            Kind::F32 => 4,
            Kind::F16 | Kind::BF16 => 2,
        };
        self.rows * self.cols * size
    }

    /// Row `row` of the weight as f32 (an embedding lookup).
    pub fn row_into(&self, row: usize, out: &mut [f32]) {
        fn gather<E: Element>(panels: &[E], row: usize, cols: usize, out: &mut [f32]) {
            let base = (row / PANEL) * E::KIND.depth(cols) * PANEL;
            for (k, value) in out.iter_mut().enumerate().take(cols) {
                *value = panels[base + E::KIND.slot(k, row % PANEL)].widen();
            }
        }
        assert!(row < self.rows, "row {row} of {}", self.rows);
        match &self.panels {
            Panels::F32(panels) => gather(panels, row, self.cols, out),
            Panels::F16(panels) => gather(panels, row, self.cols, out),
            Panels::BF16(panels) => gather(panels, row, self.cols, out),
        }
    }

    pub(crate) fn panel_count(&self) -> usize {
        self.rows.div_ceil(PANEL)
    }
}

/// What happens to each tile of `out` once its products are summed.
#[derive(Debug, Clone, Copy)]
pub enum Epilogue<'a> {
    /// Nothing: `out = a · wᵀ + bias`.
    Bias,
    /// `out = gelu(a · wᵀ + bias)` with the exact (erf) GELU.
    Gelu,
    /// `out = gelu_tanh(a · wᵀ + bias)`, the tanh approximation.
    GeluTanh,
    /// `out = max(0, a · wᵀ + bias)`.
    Relu,
    /// `out = a · wᵀ + bias + residual`, `residual` shaped like `out`.
    Residual(&'a [f32]),
}

/// Where the micro-kernel's sums start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Start {
    /// From the bias: `c = a · wᵀ + bias`.
    Bias,
    /// From `c` itself: `c += a · wᵀ + bias`.
    Output,
}

/// `out = epilogue(a · wᵀ + bias)` for `a` of `m` rows of `w.cols()`, `out`
/// of `m` rows of `w.rows()`, both row-major.
pub fn matmul(
    pool: &Pool,
    level: Level,
    a: &[f32],
    m: usize,
    w: &PackedMatrix,
    epilogue: Epilogue<'_>,
    out: &mut [f32],
) {
    let (k, n) = (w.cols, w.rows);
    assert!(a.len() >= m * k, "a has {} values, not {m}x{k}", a.len());
    assert!(out.len() >= m * n, "out has {} values, not {m}x{n}", out.len());
    if let Epilogue::Residual(residual) = epilogue {
        assert!(residual.len() >= m * n, "residual has {} values, not {m}x{n}", residual.len());
    }
    if m == 0 || n == 0 {
        return;
    }
    let blocks = m.div_ceil(BLOCK_ROWS);
    let per_group = (CHUNK_WORK / (BLOCK_ROWS * PANEL * k.max(1))).clamp(1, GROUP_PANELS);
    let groups = w.panel_count().div_ceil(per_group);
    let target = Target(out.as_mut_ptr());
    pool.run(blocks * groups, &|chunk| {
        let (block, group) = (chunk / groups, chunk % groups);
        let rows = block * BLOCK_ROWS..((block + 1) * BLOCK_ROWS).min(m);
        let first = group * per_group;
        let panels = first..(first + per_group).min(w.panel_count());
        // SAFETY: chunks are distinct (block, group) pairs, so each writes a
        // tile of `out` (its rows by its panels' columns) no other chunk
        // touches; `a`, `w` and `out` were checked to be large enough.
        unsafe { tile(level, a, w, rows, panels, epilogue, target, n) };
    });
}

/// `out`'s base pointer, shared by chunks that write disjoint tiles.
#[derive(Clone, Copy)]
struct Target(*mut f32);

// SAFETY: only used by `matmul`, whose chunks write disjoint tiles.
unsafe impl Sync for Target {}
// SAFETY: as above.
unsafe impl Send for Target {}

/// One pool chunk: rows `rows` of `out` for the columns of `panels`.
///
/// # Safety
/// `a` holds the rows, `out` has `n` columns and the rows, and no other
/// thread touches this tile.
#[allow(clippy::too_many_arguments)]
unsafe fn tile(
    level: Level,
    a: &[f32],
    w: &PackedMatrix,
    rows: std::ops::Range<usize>,
    panels: std::ops::Range<usize>,
    epilogue: Epilogue<'_>,
    out: Target,
    n: usize,
) {
    // SAFETY: forwarded.
    unsafe { products(level, a, w, rows.clone(), panels.clone(), out.0, n, Start::Bias) };
    let start = panels.start * PANEL;
    let end = (panels.end * PANEL).min(n);
    for row in rows {
        // SAFETY: this row's columns of the tile belong to this chunk alone.
        let values = unsafe { std::slice::from_raw_parts_mut(out.0.add(row * n + start), end - start) };
        match epilogue {
            Epilogue::Bias => {}
            Epilogue::Gelu => gelu(level, values),
            Epilogue::GeluTanh => values.iter_mut().for_each(|x| *x = gelu_tanh(*x)),
            Epilogue::Relu => values.iter_mut().for_each(|x| *x = x.max(0.0)),
            Epilogue::Residual(residual) => {
                for (x, r) in values.iter_mut().zip(&residual[row * n + start..row * n + end]) {
                    *x += r;
                }
            }
        }
    }
}

/// `c = a · wᵀ + bias` for every row of `a` (`m` rows of `w.cols()`),
/// on this thread; `c` has row stride `ldc`.
///
/// # Safety
/// `c` points at `m` rows of stride `ldc`, each with `w.rows()` writable values.
pub(crate) unsafe fn matmul_serial(level: Level, a: &[f32], m: usize, w: &PackedMatrix, c: *mut f32, ldc: usize) {
    assert!(a.len() >= m * w.cols, "a has {} values, not {m}x{}", a.len(), w.cols);
    // SAFETY: the caller's bounds.
    unsafe { products(level, a, w, 0..m, 0..w.panel_count(), c, ldc, Start::Bias) };
}

/// Rows `rows` of `c` for the columns of `panels` (whose first column is
/// `c`'s column `panels.start * PANEL`), micro-kernel by micro-kernel.
///
/// # Safety
/// `a` holds the rows; `c` has stride `ldc` and those rows and columns
/// writable (and initialised, for [`Start::Output`]).
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn products(
    level: Level,
    a: &[f32],
    w: &PackedMatrix,
    rows: std::ops::Range<usize>,
    panels: std::ops::Range<usize>,
    c: *mut f32,
    ldc: usize,
    start: Start,
) {
    assert!(panels.end <= w.panel_count() && a.len() >= rows.end * w.cols, "products out of range");
    // SAFETY: forwarded.
    unsafe {
        match &w.panels {
            Panels::F32(values) => products_in(level, a, w, values, rows, panels, c, ldc, start),
            Panels::F16(values) => products_in(level, a, w, values, rows, panels, c, ldc, start),
            Panels::BF16(values) => products_in(level, a, w, values, rows, panels, c, ldc, start),
        }
    }
}

/// [`products`] for one element type.
///
/// # Safety
/// As [`products`].
#[allow(clippy::too_many_arguments)]
unsafe fn products_in<E: Element>(
    level: Level,
    a: &[f32],
    w: &PackedMatrix,
    stored: &[E],
    rows: std::ops::Range<usize>,
    panels: std::ops::Range<usize>,
    c: *mut f32,
    ldc: usize,
    start: Start,
) {
    let size = E::KIND.depth(w.cols) * PANEL;
    // SAFETY: forwarded.
    unsafe {
        walk(a, w.cols, w, stored, size, rows, panels, c, ldc, start, |height, kernel, c| {
            micro(level, height, kernel, c)
        })
    }
}

/// Calls `micro(height, kernel, c)` for every micro-kernel's worth of rows
/// `rows` (activations `lda` apart in `a`) and every panel of `panels`
/// (`size` stored weights each).
///
/// # Safety
/// As [`products`]; `micro` may rely on its `height` rows being in range.
#[allow(clippy::too_many_arguments)]
unsafe fn walk<A, E>(
    a: &[A],
    lda: usize,
    w: &PackedMatrix,
    stored: &[E],
    size: usize,
    rows: std::ops::Range<usize>,
    panels: std::ops::Range<usize>,
    c: *mut f32,
    ldc: usize,
    start: Start,
    micro: impl Fn(usize, Kernel<'_, A, E>, *mut f32),
) {
    for panel in panels {
        let columns = (w.rows - panel * PANEL).min(PANEL);
        let weights = &stored[panel * size..(panel + 1) * size];
        let bias = &w.bias[panel * PANEL..(panel + 1) * PANEL];
        let mut row = rows.start;
        while row < rows.end {
            let height = (rows.end - row).min(KERNEL_ROWS);
            let kernel = Kernel { a: &a[row * lda..], lda, panel: weights, bias, ldc, columns, start };
            micro(height, kernel, c.wrapping_add(row * ldc + panel * PANEL));
            row += height;
        }
    }
}

/// Rounds `cols`-wide rows of `values` to bf16 (to nearest, ties to even;
/// NaN stays NaN, as ggml's `GGML_FP32_TO_BF16`) and packs each row's
/// neighbouring pairs into one word, the even step in the low half: the
/// activations of [`products_bf16`]. A row takes `cols.div_ceil(2)` words
/// of `out`; an odd row ends in a zero half.
pub fn round_to_bf16_pairs(values: &[f32], cols: usize, out: &mut [u32]) {
    #[inline(always)]
    fn round(value: f32) -> u32 {
        let bits = value.to_bits();
        if bits & 0x7fff_ffff > 0x7f80_0000 {
            (bits >> 16) | 0x40
        } else {
            bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16
        }
    }
    let words = cols.div_ceil(2);
    assert!(out.len() * cols >= values.len() * words, "out holds {} words, too few", out.len());
    for (row, out) in values.chunks_exact(cols.max(1)).zip(out.chunks_exact_mut(words.max(1))) {
        let pairs = row.chunks_exact(2);
        if let [last] = pairs.remainder() {
            out[words - 1] = round(*last);
        }
        for (word, pair) in out.iter_mut().zip(pairs) {
            *word = round(pair[0]) | (round(pair[1]) << 16);
        }
    }
}

/// [`products`] of a bf16 matrix with activations rounded to bf16:
/// `pairs` holds every row's [`round_to_bf16_pairs`] words (`w.cols()`
/// halves, rounded up, a row). Each pair of products is summed in f32
/// (`vdpbf16ps` with AVX-512 BF16, fused multiply-adds of the widened
/// values otherwise), so levels agree to f32 rounding, not bit for bit.
///
/// # Safety
/// As [`products`].
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn products_bf16(
    level: Level,
    pairs: &[u32],
    w: &PackedMatrix,
    rows: std::ops::Range<usize>,
    panels: std::ops::Range<usize>,
    c: *mut f32,
    ldc: usize,
    start: Start,
) {
    let Panels::BF16(stored) = &w.panels else {
        panic!("bf16 products of a {:?} matrix", w.kind());
    };
    let words = w.cols.div_ceil(2);
    assert!(panels.end <= w.panel_count() && pairs.len() >= rows.end * words, "products out of range");
    let size = words * 2 * PANEL;
    let micro = |height, kernel: Kernel<'_, u32, bf16>, c| {
        // SAFETY: the caller's bounds; `walk` hands `height` rows that are
        // in range; each body only runs where the CPU has its features.
        unsafe {
            match level {
                #[cfg(target_arch = "x86_64")]
                Level::Avx512Bf16 => by_height!(height, micro_dpbf16(kernel, c)),
                #[cfg(target_arch = "x86_64")]
                Level::Avx2 | Level::Avx512Vnni => by_height!(height, micro_pairs_fma(kernel, c)),
                _ => by_height!(height, micro_pairs_portable(kernel, c)),
            }
        }
    };
    // SAFETY: forwarded.
    unsafe { walk(pairs, words, w, stored, size, rows, panels, c, ldc, start, micro) }
}

/// The operands of one micro-kernel call.
#[derive(Clone, Copy)]
struct Kernel<'a, A, E> {
    /// The first row of activations (`lda` apart): f32 values, or words of
    /// two bf16 values.
    a: &'a [A],
    lda: usize,
    /// A panel of weights (see [`Kind::slot`]).
    panel: &'a [E],
    /// `PANEL` biases.
    bias: &'a [f32],
    /// Stride of `c`.
    ldc: usize,
    /// Columns of `c` that are real (the rest of the panel is padding).
    columns: usize,
    start: Start,
}

/// Calls a micro-kernel body instantiated for `height` rows (1 to
/// [`KERNEL_ROWS`]): `by_height!(height, body::<Types>(args))` calls
/// `body::<height, Types>(args)` (the types are optional).
macro_rules! by_height {
    ($height:expr, $kernel:ident $(::<$($ty:ty),*>)?($($arg:expr),*)) => {
        match $height {
            1 => $kernel::<1 $($(, $ty)*)?>($($arg),*),
            2 => $kernel::<2 $($(, $ty)*)?>($($arg),*),
            3 => $kernel::<3 $($(, $ty)*)?>($($arg),*),
            4 => $kernel::<4 $($(, $ty)*)?>($($arg),*),
            5 => $kernel::<5 $($(, $ty)*)?>($($arg),*),
            6 => $kernel::<6 $($(, $ty)*)?>($($arg),*),
            7 => $kernel::<7 $($(, $ty)*)?>($($arg),*),
            8 => $kernel::<8 $($(, $ty)*)?>($($arg),*),
            9 => $kernel::<9 $($(, $ty)*)?>($($arg),*),
            10 => $kernel::<10 $($(, $ty)*)?>($($arg),*),
            11 => $kernel::<11 $($(, $ty)*)?>($($arg),*),
            _ => $kernel::<12 $($(, $ty)*)?>($($arg),*),
        }
    };
}
use by_height;

/// One micro-kernel call on the best body `level` allows.
///
/// # Safety
/// `c` points at `height` rows of stride `ldc` with `columns` writable values each.
unsafe fn micro<E: Element>(level: Level, height: usize, kernel: Kernel<'_, f32, E>, c: *mut f32) {
    debug_assert!(
        kernel.a.len() >= (height - 1) * kernel.lda + kernel.lda
            && kernel.panel.len() >= E::KIND.depth(kernel.lda) * PANEL
            && kernel.bias.len() >= PANEL
    );
    // SAFETY: the caller's bounds; each body is only chosen when the CPU has its features.
    unsafe {
        match level {
            #[cfg(target_arch = "x86_64")]
            Level::Avx512Vnni | Level::Avx512Bf16 => by_height!(height, micro_avx512::<E>(kernel, c)),
            #[cfg(target_arch = "x86_64")]
            Level::Avx2 => by_height!(height, micro_fma::<E>(kernel, c)),
            #[cfg(target_arch = "aarch64")]
            Level::Neon | Level::NeonDot => by_height!(height, micro_neon::<E>(kernel, c)),
            _ => by_height!(height, micro_portable::<E>(kernel, c)),
        }
    }
}

/// Step `k` of a panel of stored weights as f32. `F16C` says the caller
/// runs with F16C (and AVX), so f16 runs widen with `vcvtph2ps`.
///
/// # Safety
/// `panel` holds step `k`; with `F16C`, the CPU has F16C.
#[inline(always)]
unsafe fn widen_step<E: Element, const F16C: bool>(panel: &[E], k: usize) -> [f32; PANEL] {
    if E::KIND == Kind::BF16 {
        return std::array::from_fn(|lane| panel[Kind::BF16.slot(k, lane)].widen());
    }
    let run = &panel[k * PANEL..(k + 1) * PANEL];
    #[cfg(target_arch = "x86_64")]
    if F16C && E::KIND == Kind::F16 {
        use std::arch::x86_64::*;
        let mut out = [0f32; PANEL];
        // SAFETY: `run` has PANEL two-byte values and `out` PANEL floats.
        unsafe {
            let source = run.as_ptr().cast::<__m128i>();
            for i in 0..PANEL / 8 {
                _mm256_storeu_ps(out.as_mut_ptr().add(8 * i), _mm256_cvtph_ps(_mm_loadu_si128(source.add(i))));
            }
        }
        return out;
    }
    std::array::from_fn(|i| run[i].widen())
}

/// The sums of `R` rows of a plain-Rust micro-kernel, started from the
/// bias or from `c` plus the bias.
///
/// # Safety
/// As [`micro`].
#[inline(always)]
unsafe fn start_rows<const R: usize>(
    bias: &[f32],
    start: Start,
    c: *const f32,
    ldc: usize,
    columns: usize,
) -> [[f32; PANEL]; R] {
    let mut acc = [[0f32; PANEL]; R];
    for (r, row) in acc.iter_mut().enumerate() {
        match start {
            Start::Bias => row.copy_from_slice(&bias[..PANEL]),
            // SAFETY: the caller's bounds: `columns` values of row `r` are initialised.
            Start::Output => unsafe {
                std::ptr::copy_nonoverlapping(c.add(r * ldc), row.as_mut_ptr(), columns);
                for (sum, b) in row.iter_mut().zip(bias) {
                    *sum += b;
                }
            },
        }
    }
    acc
}

/// Writes the real columns of `R` rows of sums to `c`.
///
/// # Safety
/// As [`micro`].
#[inline(always)]
unsafe fn store_rows<const R: usize>(acc: &[[f32; PANEL]; R], c: *mut f32, ldc: usize, columns: usize) {
    for (r, row) in acc.iter().enumerate() {
        // SAFETY: the caller's bounds.
        unsafe { std::ptr::copy_nonoverlapping(row.as_ptr(), c.add(r * ldc), columns) };
    }
}

/// The micro-kernel in plain Rust: `R` rows by one panel.
///
/// # Safety
/// As [`micro`].
#[inline(always)]
unsafe fn micro_body<const R: usize, E: Element, const F16C: bool>(kernel: Kernel<'_, f32, E>, c: *mut f32) {
    let Kernel { a, lda, panel, bias, ldc, columns, start } = kernel;
    // SAFETY: the caller's bounds.
    let mut acc = unsafe { start_rows::<R>(bias, start, c, ldc, columns) };
    for k in 0..lda {
        // SAFETY: the panel holds `lda` steps; F16C as the caller promises.
        let weights = unsafe { widen_step::<E, F16C>(panel, k) };
        for (r, row) in acc.iter_mut().enumerate() {
            let x = a[r * lda + k];
            for (sum, w) in row.iter_mut().zip(&weights) {
                *sum = x.mul_add(*w, *sum);
            }
        }
    }
    // SAFETY: the caller's bounds.
    unsafe { store_rows(&acc, c, ldc, columns) };
}

/// # Safety
/// As [`micro`].
unsafe fn micro_portable<const R: usize, E: Element>(kernel: Kernel<'_, f32, E>, c: *mut f32) {
    // SAFETY: forwarded; no F16C promised.
    unsafe { micro_body::<R, E, false>(kernel, c) }
}

/// # Safety
/// As [`micro`], on a CPU with AVX2, FMA and F16C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn micro_fma<const R: usize, E: Element>(kernel: Kernel<'_, f32, E>, c: *mut f32) {
    // SAFETY: forwarded; this body runs with F16C.
    unsafe { micro_body::<R, E, true>(kernel, c) }
}

/// The micro-kernel in NEON: `R` rows by one panel, taken four rows by
/// sixteen columns at a time (sixteen accumulators and four weight
/// registers of NEON's 32), each block re-reading its half panel from
/// cache. Every sum is accumulated in the portable body's order.
///
/// # Safety
/// As [`micro`], on a CPU with NEON.
#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
unsafe fn micro_neon<const R: usize, E: Element>(kernel: Kernel<'_, f32, E>, c: *mut f32) {
    for half in 0..PANEL.div_ceil(16) {
        if half * 16 >= kernel.columns {
            break;
        }
        let mut row = 0;
        while row < R {
            let height = (R - row).min(4);
            // SAFETY: the caller's bounds; rows `row..row + height` are among its `R`.
            unsafe {
                match height {
                    4 => neon_block::<4, E>(kernel, row, half * 16, c),
                    3 => neon_block::<3, E>(kernel, row, half * 16, c),
                    2 => neon_block::<2, E>(kernel, row, half * 16, c),
                    _ => neon_block::<1, E>(kernel, row, half * 16, c),
                }
            }
            row += height;
        }
    }
}

/// Rows `first..first + H` by columns `column..column + 16` of a panel.
///
/// # Safety
/// As [`micro`], for rows `first..first + H`, on a CPU with NEON.
#[cfg(target_arch = "aarch64")]
#[inline(always)]
unsafe fn neon_block<const H: usize, E: Element>(kernel: Kernel<'_, f32, E>, first: usize, column: usize, c: *mut f32) {
    use std::arch::aarch64::*;
    let Kernel { a, lda, panel, bias, ldc, columns, start } = kernel;
    let real = (columns - column).min(16);
    // SAFETY: `bias` has PANEL values, the rows of `c` `columns` each (and
    // initialised ones for `Start::Output`), `a` H rows of `lda` values
    // from row `first`, and `panel` `lda` steps.
    unsafe {
        let mut acc = [[vdupq_n_f32(0.0); 4]; H];
        for (r, sums) in acc.iter_mut().enumerate() {
            let mut init = [0f32; 16];
            init.copy_from_slice(&bias[column..column + 16]);
            if start == Start::Output {
                let row = c.add((first + r) * ldc + column);
                for (j, value) in init.iter_mut().enumerate().take(real) {
                    *value += *row.add(j);
                }
            }
            for (v, sum) in sums.iter_mut().enumerate() {
                *sum = vld1q_f32(init.as_ptr().add(4 * v));
            }
        }
        let a = a.as_ptr().add(first * lda);
        for k in 0..lda {
            let mut weights = [vdupq_n_f32(0.0); 4];
            if E::KIND == Kind::F32 {
                let run = panel.as_ptr().add(k * PANEL + column).cast::<f32>();
                for (v, w) in weights.iter_mut().enumerate() {
                    *w = vld1q_f32(run.add(4 * v));
                }
            } else {
                let widened: [f32; 16] = std::array::from_fn(|lane| panel[E::KIND.slot(k, column + lane)].widen());
                for (v, w) in weights.iter_mut().enumerate() {
                    *w = vld1q_f32(widened.as_ptr().add(4 * v));
                }
            }
            for (r, sums) in acc.iter_mut().enumerate() {
                let x = *a.add(r * lda + k);
                for (sum, w) in sums.iter_mut().zip(&weights) {
                    *sum = vfmaq_n_f32(*sum, *w, x);
                }
            }
        }
        for (r, sums) in acc.iter().enumerate() {
            let mut out = [0f32; 16];
            for (v, sum) in sums.iter().enumerate() {
                vst1q_f32(out.as_mut_ptr().add(4 * v), *sum);
            }
            std::ptr::copy_nonoverlapping(out.as_ptr(), c.add((first + r) * ldc + column), real);
        }
    }
}

/// The bf16-pair micro-kernel in plain Rust: each pair of products added
/// in `vdpbf16ps`'s documented order (the odd step, then the even one;
/// the products of two bf16 values are exact in f32).
///
/// # Safety
/// As [`micro`].
#[inline(always)]
unsafe fn micro_pairs_body<const R: usize>(kernel: Kernel<'_, u32, bf16>, c: *mut f32) {
    let Kernel { a, lda, panel, bias, ldc, columns, start } = kernel;
    // SAFETY: the caller's bounds.
    let mut acc = unsafe { start_rows::<R>(bias, start, c, ldc, columns) };
    for (p, pair) in panel.chunks_exact(2 * PANEL).take(lda).enumerate() {
        let even: [f32; PANEL] = std::array::from_fn(|lane| pair[2 * lane].widen());
        let odd: [f32; PANEL] = std::array::from_fn(|lane| pair[2 * lane + 1].widen());
        for (r, row) in acc.iter_mut().enumerate() {
            let word = a[r * lda + p];
            let (x_even, x_odd) = (f32::from_bits(word << 16), f32::from_bits(word & 0xffff_0000));
            for ((sum, w_even), w_odd) in row.iter_mut().zip(&even).zip(&odd) {
                *sum = x_even.mul_add(*w_even, x_odd.mul_add(*w_odd, *sum));
            }
        }
    }
    // SAFETY: the caller's bounds.
    unsafe { store_rows(&acc, c, ldc, columns) };
}

/// # Safety
/// As [`micro`].
unsafe fn micro_pairs_portable<const R: usize>(kernel: Kernel<'_, u32, bf16>, c: *mut f32) {
    // SAFETY: forwarded.
    unsafe { micro_pairs_body::<R>(kernel, c) }
}

/// # Safety
/// As [`micro`], on a CPU with AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn micro_pairs_fma<const R: usize>(kernel: Kernel<'_, u32, bf16>, c: *mut f32) {
    // SAFETY: forwarded.
    unsafe { micro_pairs_body::<R>(kernel, c) }
}

/// Sixteen stored weights from `w` as f32.
///
/// # Safety
/// `w` points at sixteen values; the CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn load16<E: Element>(w: *const E) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    // SAFETY: the caller's bounds and features.
    unsafe {
        match E::KIND {
            Kind::F32 => _mm512_loadu_ps(w.cast()),
            Kind::F16 => _mm512_cvtph_ps(_mm256_loadu_si256(w.cast())),
            Kind::BF16 => {
                _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(w.cast())), 16))
            }
        }
    }
}

/// The AVX-512 masks of the real columns of a panel (its low and high
/// sixteen).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn column_masks(columns: usize) -> [u16; 2] {
    let low = if columns >= 16 { 0xffff } else { (1u16 << columns) - 1 };
    let high = if columns >= 32 {
        0xffff
    } else if columns <= 16 {
        0
    } else {
        (1u16 << (columns - 16)) - 1
    };
    [low, high]
}

/// `R` rows of AVX-512 sums (low and high sixteen columns), started from
/// the bias or from `c` plus the bias.
///
/// # Safety
/// As [`micro`], on a CPU with AVX-512F.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn start_sums<const R: usize>(
    bias: &[f32],
    start: Start,
    c: *const f32,
    ldc: usize,
    masks: [u16; 2],
) -> [[std::arch::x86_64::__m512; 2]; R] {
    use std::arch::x86_64::*;
    // SAFETY: `bias` has PANEL values; the caller's rows of `c` are read
    // under the column masks.
    unsafe {
        let low = _mm512_loadu_ps(bias.as_ptr());
        let high = _mm512_loadu_ps(bias.as_ptr().add(16));
        let mut acc = [[low, high]; R];
        if start == Start::Output {
            for (r, sums) in acc.iter_mut().enumerate() {
                let row = c.add(r * ldc);
                sums[0] = _mm512_add_ps(sums[0], _mm512_maskz_loadu_ps(masks[0], row));
                sums[1] = _mm512_add_ps(sums[1], _mm512_maskz_loadu_ps(masks[1], row.add(16)));
            }
        }
        acc
    }
}

/// Writes `R` rows of AVX-512 sums to `c` under the column masks.
///
/// # Safety
/// As [`micro`], on a CPU with AVX-512F.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn store_sums<const R: usize>(
    acc: &[[std::arch::x86_64::__m512; 2]; R],
    c: *mut f32,
    ldc: usize,
    masks: [u16; 2],
) {
    use std::arch::x86_64::*;
    for (r, sums) in acc.iter().enumerate() {
        // SAFETY: the caller's rows, written under the masks.
        unsafe {
            let row = c.add(r * ldc);
            _mm512_mask_storeu_ps(row, masks[0], sums[0]);
            _mm512_mask_storeu_ps(row.add(16), masks[1], sums[1]);
        }
    }
}

/// The AVX-512 micro-kernel: `R` rows by 32 columns in `2R` accumulators.
/// bf16 panels are read a pair of steps at a time: each 32-bit lane holds
/// one column's two weights, which a shift and a mask widen.
///
/// # Safety
/// As [`micro`], on a CPU with AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn micro_avx512<const R: usize, E: Element>(kernel: Kernel<'_, f32, E>, c: *mut f32) {
    use std::arch::x86_64::*;
    let Kernel { a, lda, panel, bias, ldc, columns, start } = kernel;
    let masks = column_masks(columns);
    // SAFETY: every pointer stays inside the slices (`panel` has `lda`
    // steps of PANEL, rounded up to a pair for bf16; `a` has R rows of
    // `lda`) or the caller's rows of `c` (read and written under the
    // column masks).
    unsafe {
        let mut acc = start_sums::<R>(bias, start, c, ldc, masks);
        let a = a.as_ptr();
        let mut w = panel.as_ptr();
        if E::KIND == Kind::BF16 {
            let high_half = _mm512_set1_epi32(0xffff_0000u32 as i32);
            for k in (0..lda).step_by(2) {
                let [low, high] = [_mm512_loadu_si512(w.cast()), _mm512_loadu_si512(w.add(PANEL).cast())];
                let even = [low, high].map(|run| _mm512_castsi512_ps(_mm512_slli_epi32(run, 16)));
                let odd = [low, high].map(|run| _mm512_castsi512_ps(_mm512_and_si512(run, high_half)));
                for (r, sums) in acc.iter_mut().enumerate() {
                    let x = _mm512_set1_ps(*a.add(r * lda + k));
                    sums[0] = _mm512_fmadd_ps(x, even[0], sums[0]);
                    sums[1] = _mm512_fmadd_ps(x, even[1], sums[1]);
                    if k + 1 < lda {
                        let x = _mm512_set1_ps(*a.add(r * lda + k + 1));
                        sums[0] = _mm512_fmadd_ps(x, odd[0], sums[0]);
                        sums[1] = _mm512_fmadd_ps(x, odd[1], sums[1]);
                    }
                }
                w = w.add(2 * PANEL);
            }
        } else {
            for k in 0..lda {
                let w0 = load16(w);
                let w1 = load16(w.add(16));
                for (r, sums) in acc.iter_mut().enumerate() {
                    let x = _mm512_set1_ps(*a.add(r * lda + k));
                    sums[0] = _mm512_fmadd_ps(x, w0, sums[0]);
                    sums[1] = _mm512_fmadd_ps(x, w1, sums[1]);
                }
                w = w.add(PANEL);
            }
        }
        store_sums(&acc, c, ldc, masks);
    }
}

/// The AVX-512 BF16 micro-kernel: `R` rows by 32 columns, each
/// `vdpbf16ps` adding two steps' products to sixteen sums.
///
/// # Safety
/// As [`micro`], on a CPU with AVX-512F and AVX-512 BF16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn micro_dpbf16<const R: usize>(kernel: Kernel<'_, u32, bf16>, c: *mut f32) {
    use std::arch::x86_64::*;
    let Kernel { a, lda, panel, bias, ldc, columns, start } = kernel;
    let masks = column_masks(columns);
    // SAFETY: as in `micro_avx512`: `panel` has `lda` pairs of PANEL
    // weights, `a` R rows of `lda` words. `__m512i` and `__m512bh` are
    // both 64 bytes, so the transmutes only relabel lanes.
    unsafe {
        let mut acc = start_sums::<R>(bias, start, c, ldc, masks);
        let a = a.as_ptr();
        let mut w = panel.as_ptr();
        for p in 0..lda {
            let low: __m512bh = std::mem::transmute(_mm512_loadu_si512(w.cast()));
            let high: __m512bh = std::mem::transmute(_mm512_loadu_si512(w.add(PANEL).cast()));
            for (r, sums) in acc.iter_mut().enumerate() {
                let x: __m512bh = std::mem::transmute(_mm512_set1_epi32(*a.add(r * lda + p) as i32));
                sums[0] = _mm512_dpbf16_ps(sums[0], low, x);
                sums[1] = _mm512_dpbf16_ps(sums[1], high, x);
            }
            w = w.add(2 * PANEL);
        }
        store_sums(&acc, c, ldc, masks);
    }
}

/// `a · b` in sixteen f32 lanes.
pub fn dot(level: Level, a: &[f32], b: &[f32]) -> f32 {
    match level {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Level::Avx2` and above are only produced when the CPU has AVX2 and FMA.
        Level::Avx2 | Level::Avx512Vnni | Level::Avx512Bf16 => unsafe { dot_fma(a, b) },
        _ => dot_body(a, b),
    }
}

#[inline(always)]
fn dot_body(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    let (a_runs, b_runs) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = a_runs.remainder().iter().zip(b_runs.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in a_runs.zip(b_runs) {
        for (lane, (x, y)) in lanes.iter_mut().zip(x.iter().zip(y)) {
            *lane = x.mul_add(*y, *lane);
        }
    }
    lanes.iter().sum::<f32>() + tail
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_fma(a: &[f32], b: &[f32]) -> f32 {
    dot_body(a, b)
}

/// `out += w * x`.
pub fn axpy(level: Level, w: f32, x: &[f32], out: &mut [f32]) {
    match level {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as in `dot`.
        Level::Avx2 | Level::Avx512Vnni | Level::Avx512Bf16 => unsafe { axpy_fma(w, x, out) },
        _ => axpy_body(w, x, out),
    }
}

#[inline(always)]
fn axpy_body(w: f32, x: &[f32], out: &mut [f32]) {
    for (o, v) in out.iter_mut().zip(x) {
        *o = w.mul_add(*v, *o);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn axpy_fma(w: f32, x: &[f32], out: &mut [f32]) {
    axpy_body(w, x, out);
}

/// Softmax attention of one query row in f32: `out = softmax(q · k_t * scale) v`
/// over `count` positions, key `t` at `keys[t * stride..][..d]` and value
/// `t` at `values[t * stride..][..d]` (`d = out.len()`); `scores` holds at
/// least `count` values.
#[allow(clippy::too_many_arguments)]
pub fn attend_row(
    level: Level,
    query: &[f32],
    keys: &[f32],
    values: &[f32],
    stride: usize,
    count: usize,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let d = out.len();
    let scores = &mut scores[..count];
    let mut max = f32::NEG_INFINITY;
    for (t, score) in scores.iter_mut().enumerate() {
        *score = dot(level, query, &keys[t * stride..][..d]) * scale;
        max = max.max(*score);
    }
    let mut sum = 0f64;
    for score in scores.iter_mut() {
        *score = exp_negative(*score - max);
        sum += *score as f64;
    }
    let inverse = (1.0 / sum) as f32;
    out.fill(0.0);
    for (t, score) in scores.iter().enumerate() {
        axpy(level, score * inverse, &values[t * stride..][..d], out);
    }
}

/// The exact GELU, `x / 2 * (1 + erf(x / sqrt 2))`, in place.
pub fn gelu(level: Level, x: &mut [f32]) {
    match level {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Level::Avx2` and above are only produced when the CPU has AVX2 and FMA.
        Level::Avx2 | Level::Avx512Vnni | Level::Avx512Bf16 => unsafe { gelu_fma(x) },
        _ => gelu_body(x),
    }
}

#[inline(always)]
fn gelu_body(x: &mut [f32]) {
    for v in x {
        *v = 0.5 * *v * (1.0 + erf(*v * std::f32::consts::FRAC_1_SQRT_2));
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gelu_fma(x: &mut [f32]) {
    gelu_body(x);
}

/// GELU's tanh approximation (`hidden_act = "gelu_new"` and kin).
fn gelu_tanh(x: f32) -> f32 {
    let inner = 0.797_884_6 * (x + 0.044_715 * x * x * x);
    0.5 * x * (1.0 + inner.tanh())
}

/// `erf(x)` within 6e-7 absolute (the formula's 1.5e-7 plus f32 rounding):
/// Abramowitz and Stegun's formula 7.1.26,
/// `1 - t (a1 + t (a2 + ...)) e^(-x^2)` with `t = 1 / (1 + p |x|)`. No
/// branches, so the compiler vectorises the loops that call it.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [0.254_829_6, -0.284_496_74, 1.421_413_8, -1.453_152, 1.061_405_4];
    let ax = x.abs();
    let t = 1.0 / P.mul_add(ax, 1.0);
    let poly = A[4].mul_add(t, A[3]).mul_add(t, A[2]).mul_add(t, A[1]).mul_add(t, A[0]) * t;
    let y = 1.0 - poly * exp_negative(-(ax * ax));
    y.copysign(x)
}

/// `e^x` for `x <= 0` (below -87 it returns `e^-87`, far under anything
/// [`erf`] can see): `x = n ln 2 + r`, a degree-6 Taylor polynomial in `r`,
/// `2^n` built in the exponent bits. No branches.
#[inline(always)]
pub(crate) fn exp_negative(x: f32) -> f32 {
    const SHIFT: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer
    let x = x.max(-87.0);
    let z = x.mul_add(std::f32::consts::LOG2_E, SHIFT);
    let n = z - SHIFT;
    // ln 2 = 0.693359375 - 2.12194440e-4; `n` times the first part is exact.
    let r = (-n).mul_add(-2.121_944_4e-4, (-n).mul_add(0.693_359_4, x));
    let poly = (1.0 / 720.0f32)
        .mul_add(r, 1.0 / 120.0)
        .mul_add(r, 1.0 / 24.0)
        .mul_add(r, 1.0 / 6.0)
        .mul_add(r, 0.5)
        .mul_add(r, 1.0)
        .mul_add(r, 1.0);
    // `z`'s low bits hold `n` (offset by the shift): `n + 127` in the exponent field.
    let biased = z.to_bits().wrapping_sub(SHIFT.to_bits()).wrapping_add(127);
    poly * f32::from_bits(biased << 23)
}

/// Layer normalisation of one row in place: `(x - mean) / sqrt(var + eps) * weight + bias`.
pub fn layer_norm(x: &mut [f32], weight: &[f32], bias: &[f32], eps: f32) {
    let width = x.len() as f32;
    let mean = sum16(x.iter().copied()) / width;
    let variance = sum16(x.iter().map(|v| (v - mean) * (v - mean))) / width;
    let scale = 1.0 / (variance + eps).sqrt();
    for ((v, w), b) in x.iter_mut().zip(weight).zip(bias) {
        *v = ((*v - mean) * scale).mul_add(*w, *b);
    }
}

/// A sum in sixteen lanes (so it vectorises) then added up.
#[inline(always)]
fn sum16(values: impl Iterator<Item = f32>) -> f32 {
    let mut lanes = [0f32; 16];
    for (i, v) in values.enumerate() {
        lanes[i % 16] += v;
    }
    lanes.iter().sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::test_values;

    /// `a · wᵀ + bias` in f64, one product at a time.
    fn reference(a: &[f32], w: &[f32], bias: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
        let mut out = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let dot: f64 = (0..k).map(|p| a[i * k + p] as f64 * w[j * k + p] as f64).sum();
                out[i * n + j] = (dot + bias[j] as f64) as f32;
            }
        }
        out
    }

    #[test]
    fn every_level_matches_the_scalar_product_on_awkward_shapes() {
        let pool = Pool::new(2);
        for (m, n, k) in [(1, 1, 1), (3, 5, 7), (9, 33, 17), (70, 47, 130), (130, 200, 64), (8, 32, 384)] {
            let seed = (m * 1000 + n * 10 + k) as u64;
            let a = test_values(seed, m * k, 1.0);
            let w = test_values(seed + 1, n * k, 0.5);
            let bias = test_values(seed + 2, n, 0.5);
            let residual = test_values(seed + 3, m * n, 1.0);
            let expected = reference(&a, &w, &bias, m, n, k);
            let packed = PackedMatrix::new(&w, n, k, Some(&bias));
            let staged = PackedMatrix::from_rows(n, k, |row, out| out.copy_from_slice(&w[row * k..(row + 1) * k]));
            assert_eq!(f32_panels(&staged), f32_panels(&PackedMatrix::new(&w, n, k, None)), "{m}x{n}x{k} from_rows");
            for level in Level::available() {
                let mut out = vec![f32::NAN; m * n];
                matmul(&pool, level, &a, m, &packed, Epilogue::Bias, &mut out);
                for (i, (got, want)) in out.iter().zip(&expected).enumerate() {
                    let tolerance = 1e-5 * (k as f32).sqrt().max(1.0);
                    assert!((got - want).abs() <= tolerance, "{level:?} {m}x{n}x{k} at {i}: {got} vs {want}");
                }
                let mut with_residual = vec![f32::NAN; m * n];
                matmul(&pool, level, &a, m, &packed, Epilogue::Residual(&residual), &mut with_residual);
                for i in 0..m * n {
                    assert!((with_residual[i] - (out[i] + residual[i])).abs() <= 1e-6, "{level:?} residual at {i}");
                }
                let mut activated = vec![f32::NAN; m * n];
                matmul(&pool, level, &a, m, &packed, Epilogue::Gelu, &mut activated);
                for i in 0..m * n {
                    let x = out[i] as f64;
                    let want = 0.5 * x * (1.0 + candle_core::cpu::erf::erf_f64(x / std::f64::consts::SQRT_2));
                    assert!((activated[i] as f64 - want).abs() <= 1e-6, "{level:?} gelu at {i}");
                }
            }
        }
    }

    fn f32_panels(matrix: &PackedMatrix) -> &[f32] {
        match &matrix.panels {
            Panels::F32(values) => values,
            _ => panic!("not f32"),
        }
    }

    /// f16 and bf16 panels: every level gives the f32 product of the stored
    /// values, both starting from the bias and accumulating into `c`, and
    /// rows read back as stored.
    #[test]
    fn half_precision_panels_multiply_their_stored_values() {
        fn check<E: Element + Stored>(narrow: impl Fn(f32) -> E) {
            let pool = Pool::new(2);
            for (m, n, k) in [(1, 1, 1), (1, 33, 576), (3, 70, 17), (9, 47, 130), (65, 96, 64)] {
                let seed = (m * 7 + n * 3 + k) as u64;
                let a = test_values(seed, m * k, 1.0);
                let stored: Vec<E> = test_values(seed + 1, n * k, 0.5).into_iter().map(&narrow).collect();
                let widened: Vec<f32> = stored.iter().map(|v| v.widen()).collect();
                let bias = test_values(seed + 2, n, 0.5);
                let expected = reference(&a, &widened, &bias, m, n, k);
                let packed = PackedMatrix::new(&stored, n, k, Some(&bias));
                assert_eq!(packed.kind(), E::KIND);
                assert_eq!(packed.weight_bytes(), n * k * 2);
                for row in [0, n / 2, n - 1] {
                    let mut out = vec![f32::NAN; k];
                    packed.row_into(row, &mut out);
                    assert_eq!(out, widened[row * k..(row + 1) * k], "{:?} row {row}", E::KIND);
                }
                let tolerance = 1e-5 * (k as f32).sqrt().max(1.0);
                for level in Level::available() {
                    let mut out = vec![f32::NAN; m * n];
                    matmul(&pool, level, &a, m, &packed, Epilogue::Bias, &mut out);
                    for (i, (got, want)) in out.iter().zip(&expected).enumerate() {
                        assert!(
                            (got - want).abs() <= tolerance,
                            "{:?} {level:?} {m}x{n}x{k} at {i}: {got} vs {want}",
                            E::KIND
                        );
                    }
                    // Accumulating into a strided `c`, a few panels at a time.
                    let ldc = n + 3;
                    let before = test_values(seed + 3, m * ldc, 1.0);
                    let mut c = before.clone();
                    let count = packed.panel_count();
                    for panels in [0..count / 2, count / 2..count] {
                        // SAFETY: `c` has `m` rows of stride `ldc >= n`, all initialised.
                        unsafe { products(level, &a, &packed, 0..m, panels, c.as_mut_ptr(), ldc, Start::Output) };
                    }
                    for row in 0..m {
                        for col in 0..ldc {
                            let (got, old) = (c[row * ldc + col], before[row * ldc + col]);
                            let want = if col < n { old + expected[row * n + col] } else { old };
                            assert!(
                                (got - want).abs() <= tolerance,
                                "{:?} {level:?} accumulate {row},{col}: {got} vs {want}",
                                E::KIND
                            );
                        }
                    }
                }
            }
        }
        check(f16::from_f32);
        check(bf16::from_f32);
    }

    /// bf16 weights times activations rounded to bf16 pairs: every level
    /// (`vdpbf16ps` included where the CPU has it) gives the product of the
    /// rounded values, from the bias and accumulating into a strided `c`,
    /// on odd widths too.
    #[test]
    fn bf16_pairs_multiply_the_rounded_activations() {
        for (m, n, k) in [(1, 1, 1), (1, 33, 576), (2, 5, 3), (9, 47, 131), (17, 64, 64)] {
            let seed = (m * 11 + n * 5 + k) as u64;
            let a = test_values(seed, m * k, 2.0);
            let words = k.div_ceil(2);
            let mut pairs = vec![u32::MAX; m * words];
            round_to_bf16_pairs(&a, k, &mut pairs);
            let rounded: Vec<f32> = a.iter().map(|v| bf16::from_f32(*v).to_f32()).collect();
            let stored: Vec<bf16> = test_values(seed + 1, n * k, 0.5).into_iter().map(bf16::from_f32).collect();
            let widened: Vec<f32> = stored.iter().map(|v| v.widen()).collect();
            let bias = test_values(seed + 2, n, 0.5);
            let expected = reference(&rounded, &widened, &bias, m, n, k);
            let packed = PackedMatrix::new(&stored, n, k, Some(&bias));
            let tolerance = 2e-5 * (k as f32).sqrt().max(1.0);
            for level in Level::available() {
                let ldc = n + 2;
                let before = test_values(seed + 3, m * ldc, 1.0);
                let mut assigned = before.clone();
                let mut added = before.clone();
                let count = packed.panel_count();
                // SAFETY: both have `m` rows of stride `ldc >= n`, all initialised.
                unsafe {
                    products_bf16(level, &pairs, &packed, 0..m, 0..count, assigned.as_mut_ptr(), ldc, Start::Bias);
                    for panels in [0..count / 2, count / 2..count] {
                        products_bf16(level, &pairs, &packed, 0..m, panels, added.as_mut_ptr(), ldc, Start::Output);
                    }
                }
                for row in 0..m {
                    for col in 0..ldc {
                        let old = before[row * ldc + col];
                        let product = if col < n { expected[row * n + col] } else { 0.0 };
                        let (got, want) = (assigned[row * ldc + col], if col < n { product } else { old });
                        assert!(
                            (got - want).abs() <= tolerance,
                            "{level:?} {m}x{n}x{k} at {row},{col}: {got} vs {want}"
                        );
                        let (got, want) = (added[row * ldc + col], old + product);
                        assert!(
                            (got - want).abs() <= tolerance,
                            "{level:?} {m}x{n}x{k} add {row},{col}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn activations_round_to_bf16_as_ggml_rounds_them() {
        let mut values = test_values(3, 999, 1e3);
        values.extend([0.0, -0.0, 1.0, f32::MAX, f32::MIN_POSITIVE, 1e-40, f32::INFINITY, f32::NEG_INFINITY]);
        // Halfway cases: both neighbours' parities, and a carry into the exponent.
        values.extend([0x3f80_8000, 0x3f81_8000, 0x3fff_8000, 0x3f80_8001].map(f32::from_bits));
        values.extend([f32::NAN, f32::from_bits(0x7f80_0001), f32::from_bits(0xffc1_2345)]);
        for cols in [values.len(), 3, 1] {
            let rows = values.len() / cols;
            let words = cols.div_ceil(2);
            let mut pairs = vec![u32::MAX; rows * words];
            round_to_bf16_pairs(&values[..rows * cols], cols, &mut pairs);
            for (i, value) in values[..rows * cols].iter().enumerate() {
                let word = pairs[(i / cols) * words + (i % cols) / 2];
                let half = if i % cols % 2 == 0 { word & 0xffff } else { word >> 16 };
                let want = bf16::from_f32(*value);
                if value.is_nan() {
                    assert!(bf16::from_bits(half as u16).is_nan(), "{value} at {i}");
                    assert_eq!(half & 0x40, 0x40, "{value:?} at {i} stays a quiet NaN");
                } else {
                    assert_eq!(half as u16, want.to_bits(), "{value:e} ({:#x}) at {i}", value.to_bits());
                }
            }
            if cols % 2 == 1 {
                assert!(pairs.chunks(words).all(|row| row[words - 1] >> 16 == 0), "odd rows end in a zero half");
            }
        }
    }

    #[test]
    fn erf_is_within_its_bound_everywhere() {
        let mut worst = 0f64;
        for i in -200_000..=200_000 {
            let x = i as f32 * 5e-5;
            let error = (erf(x) as f64 - candle_core::cpu::erf::erf_f64(x as f64)).abs();
            worst = worst.max(error);
        }
        for x in [-20.0f32, -9.0, 9.0, 100.0, f32::MAX, -f32::MAX] {
            assert_eq!(erf(x), x.signum(), "erf({x})");
        }
        assert!(erf(0.0).abs() < 6e-7);
        assert!(worst < 6e-7, "worst error {worst}");
    }

    #[test]
    fn layer_norm_centres_and_scales() {
        let mut x = test_values(7, 45, 3.0);
        let weight = test_values(8, 45, 1.0);
        let bias = test_values(9, 45, 1.0);
        let original = x.clone();
        layer_norm(&mut x, &weight, &bias, 1e-12);
        let mean = original.iter().map(|v| *v as f64).sum::<f64>() / 45.0;
        let variance = original.iter().map(|v| (*v as f64 - mean).powi(2)).sum::<f64>() / 45.0;
        for i in 0..45 {
            let want = (original[i] as f64 - mean) / variance.sqrt() * weight[i] as f64 + bias[i] as f64;
            assert!((x[i] as f64 - want).abs() < 1e-5, "at {i}: {} vs {want}", x[i]);
        }
    }
}
