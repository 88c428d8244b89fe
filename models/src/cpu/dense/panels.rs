//! The layout [`matmul`](super::matmul) reads: a linear layer's weight
//! repacked into panels of [`PANEL`] output columns in the weights' own
//! precision ([`Kind`], [`Element`]), and activations rounded to bf16
//! pairs for bf16 panels ([`round_to_bf16_pairs`]).

use half::{bf16, f16};

use super::PANEL;

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
    pub(super) fn depth(self, cols: usize) -> usize {
        match self {
            Kind::BF16 => cols.next_multiple_of(2),
            Kind::F32 | Kind::F16 => cols,
        }
    }

    /// Where the weight of step `k` and output column `lane` sits in its panel.
    #[inline(always)]
    pub(super) fn slot(self, k: usize, lane: usize) -> usize {
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
pub(super) enum Panels {
    F32(Vec<f32>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
}

/// A linear layer's weight and bias in the layout [`matmul`](super::matmul) reads.
#[derive(Clone)]
pub struct PackedMatrix {
    /// Output features.
    pub(super) rows: usize,
    /// Input features.
    pub(super) cols: usize,
    /// `[panel][cols][PANEL]` (bf16: `[panel][cols / 2][PANEL][2]`, see
    /// [`Kind::slot`]); columns past `rows` and a bf16 matrix's odd last
    /// step are zero.
    pub(super) panels: Panels,
    /// `[panels * PANEL]`, zero-padded.
    pub(super) bias: Vec<f32>,
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
pub(super) trait Stored: Element {
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

/// Rounds `cols`-wide rows of `values` to bf16 (to nearest, ties to even;
/// NaN stays NaN, as ggml's `GGML_FP32_TO_BF16`) and packs each row's
/// neighbouring pairs into one word, the even step in the low half: the
/// activations of [`products_bf16`](super::products_bf16). A row takes `cols.div_ceil(2)` words
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
