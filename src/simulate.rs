//! Synthetic Xenium output folders with known ground truth (`seggpu simulate`).
//!
//! [`simulate`] writes, into a directory:
//!
//! * `transcripts.parquet` — Xenium's columns and Arrow types: `transcript_id`
//!   uint64, `cell_id` utf8 (`UNASSIGNED` outside cells), `overlaps_nucleus`
//!   uint8, `feature_name` utf8, `x_location` / `y_location` / `z_location`
//!   float32 (µm), `qv` float32;
//! * `nucleus_boundaries.parquet` — `cell_id` utf8, `vertex_x` / `vertex_y`
//!   float32, one row per vertex, the rows of a cell contiguous, in cell-id
//!   order, every ring closed (first vertex repeated at the end) as Xenium
//!   writes them;
//! * `ground_truth.parquet` — `transcript_id` uint64, `true_cell_id` utf8 (the
//!   cell that generated the transcript, or [`BACKGROUND`]), `true_cell_type`
//!   utf8 (the cell's type, or `background` / `control` for noise), in the row
//!   order of `transcripts.parquet`;
//! * `ground_truth_cells.parquet` — one row per cell: `cell_id`, `cell_type`
//!   utf8, `center_x` / `center_y` / `radius` / `nucleus_radius` float32
//!   (`radius` bounds the cell, `nucleus_radius` the nucleus, both from the
//!   cell centre), `n_transcripts` uint32.
//!
//! The tissue: cells on a jittered hexagonal lattice (spacing
//! [`SimulateOptions::spacing`]), each an irregular blob (nominal radius
//! 5–9 µm, a few low harmonics) cut by the Voronoi cell of its centre, so
//! cells pack like tissue and never overlap. Each cell has a nucleus, a
//! polygon of 16–40 vertices with 40–60 % of the cell's radius, entirely
//! inside the cell. A cell of type *t* draws its transcripts mostly from the
//! marker genes of *t* (with per-cell variation), some from shared genes and a
//! few from anywhere in the panel; they fill the whole cell, denser towards the
//! centre, at z in [0, 10] µm. Noise: background transcripts of random panel
//! genes and control probes (`NegControlProbe_*`, `BLANK_*`,
//! `UnassignedCodeword_*`) anywhere; low-quality reads (qv < 20) among all.
//! Xenium semantics: `cell_id` is the cell whose region holds the point (for
//! noise too), `overlaps_nucleus` is 1 iff the point is inside that cell's
//! nucleus polygon (as stored, in float32).
//!
//! Output is a pure function of the options (chunks of cells are generated in
//! parallel, each from its own seeded RNG): a seed gives byte-identical files.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use arrow::array::{ArrayRef, Float32Array, StringBuilder, UInt32Array, UInt64Array, UInt8Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Gamma, Normal};
use rayon::prelude::*;

use crate::output::write_parquet_batches;
use crate::staging::Staging;

/// Name of the transcripts file.
pub const TRANSCRIPTS_FILE: &str = "transcripts.parquet";
/// Name of the nucleus polygons file.
pub const NUCLEI_FILE: &str = "nucleus_boundaries.parquet";
/// Name of the per-transcript ground truth file.
pub const GROUND_TRUTH_FILE: &str = "ground_truth.parquet";
/// Name of the per-cell ground truth file.
pub const GROUND_TRUTH_CELLS_FILE: &str = "ground_truth_cells.parquet";
/// `cell_id` of transcripts outside every cell (Xenium's value).
pub const UNASSIGNED: &str = "UNASSIGNED";
/// `true_cell_id` of noise transcripts (background and control probes).
pub const BACKGROUND: &str = "BACKGROUND";
/// The first `transcript_id` (2^48, as Xenium's ids start).
pub const FIRST_TRANSCRIPT_ID: u64 = 1 << 48;

/// Names of the first twelve cell types (further types are `type_<n>`), and the
/// prefix of their marker genes.
const TYPES: [(&str, &str); 12] = [
    ("epithelial", "EPI"),
    ("fibroblast", "FIB"),
    ("t_cell", "TCL"),
    ("b_cell", "BCL"),
    ("macrophage", "MAC"),
    ("endothelial", "END"),
    ("smooth_muscle", "SMC"),
    ("plasma_cell", "PLA"),
    ("dendritic_cell", "DCL"),
    ("mast_cell", "MST"),
    ("neutrophil", "NEU"),
    ("adipocyte", "ADI"),
];

/// Largest relative amplitude of a cell outline's harmonics (summed).
const CELL_HARMONICS: usize = 3;
/// Nominal cell radius range (µm).
const CELL_RADIUS: (f64, f64) = (5.0, 9.0);
/// Cell centres are jittered by up to this much in x and y (µm).
const JITTER: f64 = 2.5;
/// Cells per generation chunk (a chunk is whole lattice rows, at least this many cells).
const CHUNK_CELLS: usize = 1024;
/// Probability that a cell transcript is one of its type's markers.
const P_MARKER: f64 = 0.7;
/// Probability that a cell transcript is a shared gene (else any panel gene).
const P_SHARED: f64 = 0.22;

/// What to simulate. [`Default`] gives the configuration the demo model was
/// trained on (only `cells` and `seed` usually change).
#[derive(Debug, Clone, PartialEq)]
pub struct SimulateOptions {
    /// Number of cells (≥ 1). About 150 transcripts each, noise included.
    pub cells: usize,
    /// RNG seed; equal options give byte-identical files.
    pub seed: u64,
    /// Number of cell types (1–64), each with its own marker genes.
    pub cell_types: usize,
    /// Marker genes per cell type.
    pub markers_per_type: usize,
    /// Genes expressed by every type at a lower level.
    pub shared_genes: usize,
    /// Distance between neighbouring cell centres on the lattice (µm, ≥ 12).
    pub spacing: f64,
    /// Range of transcripts generated per cell (inclusive).
    pub transcripts_per_cell: (u32, u32),
    /// Fraction of all transcripts with qv < 20.
    pub low_quality_fraction: f64,
    /// Fraction of all transcripts that are control probes.
    pub control_fraction: f64,
    /// Fraction of all transcripts that are background noise (random panel genes).
    pub background_fraction: f64,
    /// Rows per Parquet row group.
    pub row_group_size: usize,
}

impl Default for SimulateOptions {
    fn default() -> Self {
        Self {
            cells: 1000,
            seed: 0,
            cell_types: 12,
            markers_per_type: 20,
            shared_genes: 60,
            spacing: 15.0,
            transcripts_per_cell: (95, 187),
            low_quality_fraction: 0.05,
            control_fraction: 0.01,
            background_fraction: 0.05,
            row_group_size: 1 << 20,
        }
    }
}

/// What [`simulate`] wrote.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SimulationSummary {
    /// Output directory.
    pub dir: PathBuf,
    /// Cells (= nuclei).
    pub cells: usize,
    /// Rows of `transcripts.parquet`.
    pub transcripts: usize,
    /// Transcripts generated by cells.
    pub cell_transcripts: usize,
    /// Background noise transcripts (random panel genes).
    pub background: usize,
    /// Control-probe transcripts.
    pub control: usize,
    /// Transcripts with qv < 20.
    pub low_quality: usize,
    /// Transcripts with `overlaps_nucleus == 1`.
    pub nuclear: usize,
    /// Rows of `nucleus_boundaries.parquet`.
    pub nucleus_vertices: usize,
    /// Size of the panel (non-control genes).
    pub genes: usize,
    /// Tissue extent in x and y (µm).
    pub extent: [f64; 2],
    /// Wall-clock seconds.
    pub seconds: f64,
}

impl std::fmt::Display for SimulationSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "simulated {} cells, {} transcripts ({} from cells, {} background, {} control, {} qv<20, {} nuclear), {} genes, {:.0} × {:.0} µm → {} in {:.2} s",
            self.cells,
            self.transcripts,
            self.cell_transcripts,
            self.background,
            self.control,
            self.low_quality,
            self.nuclear,
            self.genes,
            self.extent[0],
            self.extent[1],
            self.dir.display(),
            self.seconds
        )
    }
}

impl SimulateOptions {
    /// Name of cell type `t`.
    pub fn type_name(&self, t: usize) -> String {
        match TYPES.get(t) {
            Some((name, _)) => (*name).to_owned(),
            None => format!("type_{}", t + 1),
        }
    }

    fn marker_name(t: usize, i: usize) -> String {
        match TYPES.get(t) {
            Some((_, prefix)) => format!("{prefix}{:03}", i + 1),
            None => format!("T{:02}M{:03}", t + 1, i + 1),
        }
    }

    /// The panel's (non-control) gene names, sorted: the vocabulary a model
    /// for this data uses (docs/contract.md §3).
    pub fn gene_panel(&self) -> Vec<String> {
        let mut genes = self.genes_unsorted();
        genes.sort();
        genes
    }

    /// Gene names in generation order (markers of type 0, 1, …, then shared).
    fn genes_unsorted(&self) -> Vec<String> {
        let mut genes: Vec<String> = (0..self.cell_types)
            .flat_map(|t| (0..self.markers_per_type).map(move |i| Self::marker_name(t, i)))
            .collect();
        genes.extend((0..self.shared_genes).map(|i| format!("SHR{:03}", i + 1)));
        genes
    }

    fn validate(&self) -> Result<()> {
        if self.cells == 0 {
            bail!("--cells must be at least 1");
        }
        if self.cells > 50_000_000 {
            bail!(
                "--cells {} is more than the 50,000,000 supported",
                self.cells
            );
        }
        if !(1..=64).contains(&self.cell_types) {
            bail!("cell_types must be 1..=64, got {}", self.cell_types);
        }
        if self.markers_per_type == 0 || self.shared_genes == 0 {
            bail!("markers_per_type and shared_genes must be at least 1");
        }
        if self.cell_types * self.markers_per_type + self.shared_genes > 60_000 {
            bail!("the panel must have at most 60,000 genes");
        }
        if !(self.spacing.is_finite() && self.spacing >= 12.0) {
            bail!("spacing must be at least 12 µm, got {}", self.spacing);
        }
        let (lo, hi) = self.transcripts_per_cell;
        if lo == 0 || lo > hi {
            bail!("transcripts_per_cell must be a range 1 ≤ lo ≤ hi, got {lo}..={hi}");
        }
        let fractions = [
            self.low_quality_fraction,
            self.control_fraction,
            self.background_fraction,
        ];
        if fractions.iter().any(|f| !(0.0..0.9).contains(f))
            || self.control_fraction + self.background_fraction >= 0.9
        {
            bail!("noise and low-quality fractions must be in [0, 0.9) with control + background < 0.9");
        }
        if self.row_group_size == 0 {
            bail!("row_group_size must be at least 1");
        }
        Ok(())
    }
}

/// The default configuration's gene panel (sorted, no control probes): the
/// vocabulary of the demo model.
pub fn gene_panel() -> Vec<String> {
    SimulateOptions::default().gene_panel()
}

/// The control-probe names the simulator writes (all carry a docs/contract.md §2 Xenium
/// control prefix).
pub fn control_probes() -> Vec<String> {
    let mut names: Vec<String> = (1..=20)
        .map(|i| format!("NegControlProbe_{i:05}"))
        .collect();
    names.extend((1..=20).map(|i| format!("BLANK_{i:04}")));
    names.extend((1..=10).map(|i| format!("UnassignedCodeword_{i:04}")));
    names
}

/// Xenium-style cell id of cell `index`: eight letters encoding the index in
/// hexadecimal with digits `a`–`p`, then `-1` (`aaaaaaaa-1`, `aaaaaaab-1`, …).
/// Ids sort in index order.
pub fn xenium_cell_id(index: usize) -> String {
    let mut s = String::with_capacity(10);
    for shift in (0..8).rev() {
        let digit = ((index >> (4 * shift)) & 0xf) as u8;
        s.push((b'a' + digit) as char);
    }
    s.push_str("-1");
    s
}

/// A per-stream seed: splitmix64 of the seed and a stream number.
fn stream_seed(seed: u64, stream: u64) -> u64 {
    let mut z = seed ^ stream.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5851_f42d_4c95_7f2d;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// One cell of the layout.
struct Cell {
    center: [f64; 2],
    /// Nominal radius R.
    radius: f64,
    /// Outline harmonics (k = 2, 3, 4): relative amplitude and phase.
    harmonics: [(f64, f64); CELL_HARMONICS],
    kind: usize,
    z_center: f64,
    /// Nucleus ring (open, counter-clockwise), float32 as written.
    nucleus: Vec<[f32; 2]>,
    /// Nucleus bounding box for quick rejection.
    nucleus_bbox: [f64; 4],
    /// Largest distance of a nucleus vertex from `center`.
    nucleus_extent: f64,
    /// Lattice neighbours that may compete for this cell's points.
    neighbors: Vec<u32>,
}

impl Cell {
    fn outline_radius(&self, theta: f64) -> f64 {
        let mut f = 1.0;
        for (k, &(a, phi)) in self.harmonics.iter().enumerate() {
            f += a * ((k as f64 + 2.0) * theta + phi).cos();
        }
        self.radius * f
    }

    fn max_radius(&self) -> f64 {
        self.radius * (1.0 + self.harmonics.iter().map(|h| h.0).sum::<f64>())
    }

    fn min_radius(&self) -> f64 {
        self.radius * (1.0 - self.harmonics.iter().map(|h| h.0).sum::<f64>())
    }

    /// Whether the float32 point lies strictly inside the stored nucleus ring
    /// (even-odd rule on the float32 vertices, computed in f64).
    fn in_nucleus(&self, x: f32, y: f32) -> bool {
        let (x, y) = (f64::from(x), f64::from(y));
        let b = &self.nucleus_bbox;
        if x <= b[0] || x >= b[2] || y <= b[1] || y >= b[3] {
            return false;
        }
        let ring = &self.nucleus;
        let mut inside = false;
        let mut j = ring.len() - 1;
        for i in 0..ring.len() {
            let (xi, yi) = (f64::from(ring[i][0]), f64::from(ring[i][1]));
            let (xj, yj) = (f64::from(ring[j][0]), f64::from(ring[j][1]));
            if (yi > y) != (yj > y) && x < (xj - xi) * (y - yi) / (yj - yi) + xi {
                inside = !inside;
            }
            j = i;
        }
        inside
    }
}

/// Cells on a jittered hexagonal lattice.
struct Layout {
    cols: usize,
    rows: usize,
    spacing: f64,
    row_step: f64,
    origin: [f64; 2],
    cells: Vec<Cell>,
}

impl Layout {
    fn lattice_point(&self, row: usize, col: usize) -> [f64; 2] {
        let shift = if row % 2 == 1 { 0.5 } else { 0.0 };
        [
            self.origin[0] + (col as f64 + 0.5 + shift) * self.spacing,
            self.origin[1] + (row as f64 + 0.5) * self.row_step,
        ]
    }

    fn extent(&self) -> [f64; 2] {
        [
            (self.cols as f64 + 0.5) * self.spacing,
            self.rows as f64 * self.row_step,
        ]
    }

    /// Cells whose lattice point is within two rows and columns of (row, col).
    fn window(&self, row: isize, col: isize) -> impl Iterator<Item = usize> + '_ {
        (row - 2..=row + 2).flat_map(move |r| {
            (col - 2..=col + 2).filter_map(move |c| {
                if r < 0 || c < 0 || r as usize >= self.rows || c as usize >= self.cols {
                    return None;
                }
                let k = r as usize * self.cols + c as usize;
                (k < self.cells.len()).then_some(k)
            })
        })
    }

    /// The lattice (row, col) nearest a point.
    fn lattice_of(&self, x: f64, y: f64) -> (isize, isize) {
        let row = ((y - self.origin[1]) / self.row_step).floor() as isize;
        let shift = if row.rem_euclid(2) == 1 { 0.5 } else { 0.0 };
        let col = ((x - self.origin[0]) / self.spacing - shift).floor() as isize;
        (row, col)
    }

    /// Whether `(x, y)` is in the region of cell `k`: inside its outline and
    /// closer to its centre than to any competing centre.
    fn in_cell(&self, k: usize, x: f64, y: f64) -> bool {
        let c = &self.cells[k];
        let (dx, dy) = (x - c.center[0], y - c.center[1]);
        let d2 = dx * dx + dy * dy;
        if d2 >= c.outline_radius(dy.atan2(dx)).powi(2) {
            return false;
        }
        c.neighbors.iter().all(|&n| {
            let o = &self.cells[n as usize].center;
            (x - o[0]).powi(2) + (y - o[1]).powi(2) > d2
        })
    }

    /// The cell whose region holds `(x, y)`, if any.
    fn locate(&self, x: f64, y: f64) -> Option<usize> {
        let (row, col) = self.lattice_of(x, y);
        let nearest = self.window(row, col).min_by(|&a, &b| {
            let da = dist2(self.cells[a].center, x, y);
            let db = dist2(self.cells[b].center, x, y);
            da.total_cmp(&db).then(a.cmp(&b))
        })?;
        self.in_cell(nearest, x, y).then_some(nearest)
    }
}

fn dist2(c: [f64; 2], x: f64, y: f64) -> f64 {
    (x - c[0]).powi(2) + (y - c[1]).powi(2)
}

fn build_layout(opts: &SimulateOptions) -> Layout {
    let n = opts.cells;
    let row_step = opts.spacing * 3f64.sqrt() / 2.0;
    // About as wide as high.
    let cols = ((n as f64 * row_step / opts.spacing).sqrt().ceil() as usize).max(1);
    let rows = n.div_ceil(cols);
    let mut layout = Layout {
        cols,
        rows,
        spacing: opts.spacing,
        row_step,
        origin: [opts.spacing, opts.spacing],
        cells: Vec::with_capacity(n),
    };
    let mut rng = StdRng::seed_from_u64(stream_seed(opts.seed, u64::MAX));
    // Unequal type proportions, as in tissue.
    let type_weights: Vec<f64> = (0..opts.cell_types)
        .map(|t| 1.0 / (1.0 + 0.25 * t as f64))
        .collect();
    let type_total: f64 = type_weights.iter().sum();
    for k in 0..n {
        let p = layout.lattice_point(k / cols, k % cols);
        let center = [
            p[0] + rng.random_range(-JITTER..JITTER),
            p[1] + rng.random_range(-JITTER..JITTER),
        ];
        let radius = rng.random_range(CELL_RADIUS.0..CELL_RADIUS.1);
        let harmonics = std::array::from_fn(|_| {
            (
                rng.random_range(0.0..0.06),
                rng.random_range(0.0..std::f64::consts::TAU),
            )
        });
        let mut u = rng.random_range(0.0..type_total);
        let mut kind = opts.cell_types - 1;
        for (t, w) in type_weights.iter().enumerate() {
            if u < *w {
                kind = t;
                break;
            }
            u -= w;
        }
        layout.cells.push(Cell {
            center,
            radius,
            harmonics,
            kind,
            z_center: rng.random_range(3.0..7.0),
            nucleus: Vec::new(),
            nucleus_bbox: [0.0; 4],
            nucleus_extent: 0.0,
            neighbors: Vec::new(),
        });
    }
    // Competing neighbours: any centre within twice the largest outline.
    let reach = 2.0 * CELL_RADIUS.1 * (1.0 + 0.06 * CELL_HARMONICS as f64);
    let neighbor_lists: Vec<Vec<u32>> = (0..n)
        .into_par_iter()
        .map(|k| {
            let c = layout.cells[k].center;
            layout
                .window((k / cols) as isize, (k % cols) as isize)
                .filter(|&o| o != k && dist2(layout.cells[o].center, c[0], c[1]) < reach * reach)
                .map(|o| o as u32)
                .collect()
        })
        .collect();
    for (cell, list) in layout.cells.iter_mut().zip(neighbor_lists) {
        cell.neighbors = list;
    }
    // Nuclei: irregular polygons inside the cell (within the outline's
    // smallest radius and within half the distance to the nearest centre, so
    // inside the cell's Voronoi region too).
    for k in 0..n {
        let (center, radius, min_radius, half_nn) = {
            let c = &layout.cells[k];
            let nn = c
                .neighbors
                .iter()
                .map(|&o| dist2(layout.cells[o as usize].center, c.center[0], c.center[1]))
                .fold(f64::INFINITY, f64::min)
                .sqrt();
            (c.center, c.radius, c.min_radius(), nn / 2.0)
        };
        let limit = (0.85 * min_radius).min(0.9 * half_nn);
        let mut rn = radius * rng.random_range(0.4..0.6);
        let offset_r = radius * rng.random_range(0.0..0.08);
        let offset_a = rng.random_range(0.0..std::f64::consts::TAU);
        let vertices: usize = rng.random_range(16..=40);
        let harm: [(f64, f64); 2] = std::array::from_fn(|_| {
            (
                rng.random_range(0.0..0.06),
                rng.random_range(0.0..std::f64::consts::TAU),
            )
        });
        let wobble: Vec<(f64, f64)> = (0..vertices)
            .map(|_| (rng.random_range(-0.3..0.3), rng.random_range(-0.03..0.03)))
            .collect();
        // Elongation along a random axis.
        let stretch: f64 = rng.random_range(1.0..1.35);
        let axis = rng.random_range(0.0..std::f64::consts::PI);
        let reach_factor = (1.0 + harm.iter().map(|h| h.0).sum::<f64>() + 0.03) * stretch;
        let mut offset = offset_r;
        if offset + rn * reach_factor > limit {
            let scale = limit / (offset + rn * reach_factor);
            rn *= scale;
            offset *= scale;
        }
        let nc = [
            center[0] + offset * offset_a.cos(),
            center[1] + offset * offset_a.sin(),
        ];
        let ring: Vec<[f32; 2]> = wobble
            .iter()
            .enumerate()
            .map(|(i, &(da, dr))| {
                let theta = std::f64::consts::TAU * (i as f64 + da) / vertices as f64;
                let mut f = 1.0 + dr;
                for (h, &(a, phi)) in harm.iter().enumerate() {
                    f += a * ((h as f64 + 2.0) * theta + phi).cos();
                }
                let (u, v) = (
                    rn * f * theta.cos() * stretch,
                    rn * f * theta.sin() / stretch,
                );
                let (sin_a, cos_a) = axis.sin_cos();
                [
                    (nc[0] + u * cos_a - v * sin_a) as f32,
                    (nc[1] + u * sin_a + v * cos_a) as f32,
                ]
            })
            .collect();
        let mut bbox = [
            f64::INFINITY,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NEG_INFINITY,
        ];
        let mut extent: f64 = 0.0;
        for v in &ring {
            let (x, y) = (f64::from(v[0]), f64::from(v[1]));
            bbox = [
                bbox[0].min(x),
                bbox[1].min(y),
                bbox[2].max(x),
                bbox[3].max(y),
            ];
            extent = extent.max(dist2(center, x, y).sqrt());
        }
        let cell = &mut layout.cells[k];
        cell.nucleus = ring;
        cell.nucleus_bbox = bbox;
        cell.nucleus_extent = extent;
    }
    layout
}

/// Transcripts of one chunk, column by column.
#[derive(Default)]
struct Columns {
    x: Vec<f32>,
    y: Vec<f32>,
    z: Vec<f32>,
    qv: Vec<f32>,
    /// Index into the generation-order gene list followed by the controls.
    gene: Vec<u16>,
    /// Cell whose region holds the point (`u32::MAX`: none).
    cell: Vec<u32>,
    nuclear: Vec<u8>,
    /// Generating cell (`u32::MAX`: noise).
    truth: Vec<u32>,
}

impl Columns {
    fn len(&self) -> usize {
        self.x.len()
    }

    fn permuted(self, order: &[usize]) -> Columns {
        fn gather<T: Copy>(v: &[T], order: &[usize]) -> Vec<T> {
            order.iter().map(|&i| v[i]).collect()
        }
        Columns {
            x: gather(&self.x, order),
            y: gather(&self.y, order),
            z: gather(&self.z, order),
            qv: gather(&self.qv, order),
            gene: gather(&self.gene, order),
            cell: gather(&self.cell, order),
            nuclear: gather(&self.nuclear, order),
            truth: gather(&self.truth, order),
        }
    }

    fn append(&mut self, other: &Columns) {
        self.x.extend_from_slice(&other.x);
        self.y.extend_from_slice(&other.y);
        self.z.extend_from_slice(&other.z);
        self.qv.extend_from_slice(&other.qv);
        self.gene.extend_from_slice(&other.gene);
        self.cell.extend_from_slice(&other.cell);
        self.nuclear.extend_from_slice(&other.nuclear);
        self.truth.extend_from_slice(&other.truth);
    }
}

/// Fixed expression model shared by all chunks.
struct Expression {
    /// Base weight of the i-th marker of a type.
    marker_base: Vec<f64>,
    /// Cumulative weights of the shared genes.
    shared_cum: Vec<f64>,
    markers_per_type: usize,
    first_shared: usize,
    panel: usize,
    controls: usize,
}

fn sample_cum(cum: &[f64], rng: &mut StdRng) -> usize {
    let total = cum.last().copied().unwrap_or(0.0);
    let u = rng.random_range(0.0..total);
    cum.partition_point(|&c| c <= u).min(cum.len() - 1)
}

struct ChunkCtx<'a> {
    opts: &'a SimulateOptions,
    layout: &'a Layout,
    expr: &'a Expression,
}

impl ChunkCtx<'_> {
    fn qv(&self, rng: &mut StdRng) -> f32 {
        if rng.random_bool(self.opts.low_quality_fraction) {
            rng.random_range(0.0f32..20.0)
        } else if rng.random_bool(0.6) {
            40.0
        } else {
            rng.random_range(20.0f32..40.0)
        }
    }

    // The fields of one transcript row; a struct would only rename them.
    #[allow(clippy::too_many_arguments)]
    fn push(
        &self,
        cols: &mut Columns,
        x: f64,
        y: f64,
        z: f64,
        gene: u16,
        truth: u32,
        rng: &mut StdRng,
    ) {
        let (xf, yf) = (x as f32, y as f32);
        let owner = self.layout.locate(f64::from(xf), f64::from(yf));
        let nuclear = owner.is_some_and(|k| self.layout.cells[k].in_nucleus(xf, yf));
        cols.x.push(xf);
        cols.y.push(yf);
        cols.z.push(z as f32);
        cols.qv.push(self.qv(rng));
        cols.gene.push(gene);
        cols.cell.push(owner.map_or(u32::MAX, |k| k as u32));
        cols.nuclear.push(u8::from(nuclear));
        cols.truth.push(truth);
    }

    /// Transcripts of cells `first..end` (whole lattice rows `row0..row1`)
    /// plus the noise over their band, shuffled.
    fn chunk(
        &self,
        index: usize,
        first: usize,
        end: usize,
        row0: usize,
        row1: usize,
    ) -> (Columns, Vec<u32>) {
        let o = self.opts;
        let e = self.expr;
        let mut rng = StdRng::seed_from_u64(stream_seed(o.seed, index as u64));
        let mut cols = Columns::default();
        let mut counts = Vec::with_capacity(end - first);
        // Bursty, overdispersed expression: each cell favours its own few markers.
        let gamma = Gamma::new(0.5, 1.0).expect("valid gamma");
        let z_noise = Normal::new(0.0, 2.0).expect("valid normal");
        let mut cum = vec![0.0; e.markers_per_type];
        for k in first..end {
            let cell = &self.layout.cells[k];
            let n: u32 = rng.random_range(o.transcripts_per_cell.0..=o.transcripts_per_cell.1);
            counts.push(n);
            let mut acc = 0.0;
            for (c, base) in cum.iter_mut().zip(&e.marker_base) {
                acc += base * gamma.sample(&mut rng);
                *c = acc;
            }
            let marker0 = cell.kind * e.markers_per_type;
            for _ in 0..n {
                let u: f64 = rng.random();
                let gene = if u < P_MARKER {
                    marker0 + sample_cum(&cum, &mut rng)
                } else if u < P_MARKER + P_SHARED {
                    e.first_shared + sample_cum(&e.shared_cum, &mut rng)
                } else {
                    rng.random_range(0..e.panel)
                };
                let mut point = cell.center;
                for _ in 0..32 {
                    let theta = rng.random_range(0.0..std::f64::consts::TAU);
                    let r = cell.outline_radius(theta) * rng.random::<f64>().powf(0.6);
                    let (x, y) = (
                        cell.center[0] + r * theta.cos(),
                        cell.center[1] + r * theta.sin(),
                    );
                    let (xf, yf) = (f64::from(x as f32), f64::from(y as f32));
                    if self.layout.in_cell(k, xf, yf) {
                        point = [x, y];
                        break;
                    }
                }
                let z = (cell.z_center + z_noise.sample(&mut rng)).clamp(0.0, 10.0);
                self.push(
                    &mut cols,
                    point[0],
                    point[1],
                    z,
                    gene as u16,
                    k as u32,
                    &mut rng,
                );
            }
        }
        // Noise over this chunk's band, in proportion to its cell transcripts.
        let cell_tx = cols.len() as f64;
        let keep = 1.0 - o.background_fraction - o.control_fraction;
        let draw = |fraction: f64, rng: &mut StdRng| -> usize {
            let expected = cell_tx * fraction / keep;
            let whole = expected.floor();
            whole as usize + usize::from(rng.random_bool(expected - whole))
        };
        let n_background = draw(o.background_fraction, &mut rng);
        let n_control = draw(o.control_fraction, &mut rng);
        let extent = self.layout.extent();
        let y0 = self.layout.origin[1] + row0 as f64 * self.layout.row_step;
        let y1 = self.layout.origin[1] + row1 as f64 * self.layout.row_step;
        let x0 = self.layout.origin[0];
        for i in 0..n_background + n_control {
            let x = rng.random_range(x0..x0 + extent[0]);
            let y = rng.random_range(y0..y1);
            let z = rng.random_range(0.0..10.0);
            let gene = if i < n_background {
                rng.random_range(0..e.panel)
            } else {
                e.panel + rng.random_range(0..e.controls)
            };
            self.push(&mut cols, x, y, z, gene as u16, u32::MAX, &mut rng);
        }
        // File order is not grouped by cell.
        let mut order: Vec<usize> = (0..cols.len()).collect();
        for i in (1..order.len()).rev() {
            let j = rng.random_range(0..=i);
            order.swap(i, j);
        }
        (cols.permuted(&order), counts)
    }
}

fn transcripts_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("transcript_id", DataType::UInt64, true),
        Field::new("cell_id", DataType::Utf8, true),
        Field::new("overlaps_nucleus", DataType::UInt8, true),
        Field::new("feature_name", DataType::Utf8, true),
        Field::new("x_location", DataType::Float32, true),
        Field::new("y_location", DataType::Float32, true),
        Field::new("z_location", DataType::Float32, true),
        Field::new("qv", DataType::Float32, true),
    ]))
}

fn ground_truth_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("transcript_id", DataType::UInt64, true),
        Field::new("true_cell_id", DataType::Utf8, true),
        Field::new("true_cell_type", DataType::Utf8, true),
    ]))
}

fn nuclei_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("cell_id", DataType::Utf8, true),
        Field::new("vertex_x", DataType::Float32, true),
        Field::new("vertex_y", DataType::Float32, true),
    ]))
}

fn cells_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("cell_id", DataType::Utf8, true),
        Field::new("cell_type", DataType::Utf8, true),
        Field::new("center_x", DataType::Float32, true),
        Field::new("center_y", DataType::Float32, true),
        Field::new("radius", DataType::Float32, true),
        Field::new("nucleus_radius", DataType::Float32, true),
        Field::new("n_transcripts", DataType::UInt32, true),
    ]))
}

fn strings<'a>(values: impl ExactSizeIterator<Item = &'a str>) -> ArrayRef {
    let mut b = StringBuilder::with_capacity(values.len(), values.len() * 10);
    for v in values {
        b.append_value(v);
    }
    Arc::new(b.finish())
}

/// Writes a synthetic Xenium output folder (see the module docs) into `dir`,
/// creating it if needed. Files are written under temporary names and
/// renamed at the end, so a failure leaves no partial file under a final name.
pub fn simulate(dir: &Path, opts: &SimulateOptions) -> Result<SimulationSummary> {
    let started = Instant::now();
    opts.validate()?;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create output directory {}", dir.display()))?;

    let layout = build_layout(opts);
    let gen_genes = opts.genes_unsorted();
    let panel = gen_genes.len();
    let controls = control_probes();
    // Feature name of each generation-order gene index (controls after the panel).
    let names: Vec<&str> = gen_genes
        .iter()
        .chain(&controls)
        .map(String::as_str)
        .collect();
    let expr = Expression {
        marker_base: (0..opts.markers_per_type)
            .map(|i| 1.0 / (1.0 + i as f64).powf(0.6))
            .collect(),
        shared_cum: (0..opts.shared_genes)
            .scan(0.0, |acc, j| {
                *acc += 1.0 / (1.0 + j as f64).powf(0.4);
                Some(*acc)
            })
            .collect(),
        markers_per_type: opts.markers_per_type,
        first_shared: opts.cell_types * opts.markers_per_type,
        panel,
        controls: controls.len(),
    };
    let ctx = ChunkCtx {
        opts,
        layout: &layout,
        expr: &expr,
    };
    let rows_per_chunk = CHUNK_CELLS.div_ceil(layout.cols).max(1);
    let chunk_specs: Vec<(usize, usize, usize, usize)> = (0..layout.rows)
        .step_by(rows_per_chunk)
        .map(|row0| {
            let row1 = (row0 + rows_per_chunk).min(layout.rows);
            let first = row0 * layout.cols;
            let end = (row1 * layout.cols).min(opts.cells);
            (first, end, row0, row1)
        })
        .collect();
    let chunks: Vec<(Columns, Vec<u32>)> = chunk_specs
        .par_iter()
        .enumerate()
        .map(|(i, &(first, end, row0, row1))| ctx.chunk(i, first, end, row0, row1))
        .collect();
    let total: usize = chunks.iter().map(|c| c.0.len()).sum();
    let mut all = Columns::default();
    all.x.reserve(total);
    let mut counts = Vec::with_capacity(opts.cells);
    for (c, n) in &chunks {
        all.append(c);
        counts.extend_from_slice(n);
    }
    drop(chunks);

    let ids: Vec<String> = (0..opts.cells).map(xenium_cell_id).collect();
    let type_names: Vec<String> = (0..opts.cell_types).map(|t| opts.type_name(t)).collect();
    let row_group = opts.row_group_size;

    let mut staging = Staging::new();
    let tmp = [
        TRANSCRIPTS_FILE,
        GROUND_TRUTH_FILE,
        NUCLEI_FILE,
        GROUND_TRUTH_CELLS_FILE,
    ]
    .map(|name| staging.stage(&dir.join(name)))
    .into_iter()
    .collect::<Result<Vec<_>>>()?;
    let all = &all;
    let tx_ids = |r: &std::ops::Range<usize>| -> ArrayRef {
        Arc::new(UInt64Array::from_iter_values(
            r.clone().map(|i| FIRST_TRANSCRIPT_ID + i as u64),
        ))
    };
    let write_transcripts = || {
        write_parquet_batches(&tmp[0], transcripts_schema(), total, row_group, |r| {
            let f32s =
                |v: &[f32]| -> ArrayRef { Arc::new(Float32Array::from(v[r.clone()].to_vec())) };
            let cell_ids = strings(all.cell[r.clone()].iter().map(|&c| {
                if c == u32::MAX {
                    UNASSIGNED
                } else {
                    ids[c as usize].as_str()
                }
            }));
            let genes = strings(all.gene[r.clone()].iter().map(|&g| names[g as usize]));
            Ok(RecordBatch::try_new(
                transcripts_schema(),
                vec![
                    tx_ids(&r),
                    cell_ids,
                    Arc::new(UInt8Array::from(all.nuclear[r.clone()].to_vec())),
                    genes,
                    f32s(&all.x),
                    f32s(&all.y),
                    f32s(&all.z),
                    f32s(&all.qv),
                ],
            )?)
        })
    };
    let write_truth = || {
        write_parquet_batches(&tmp[1], ground_truth_schema(), total, row_group, |r| {
            let truth_ids = strings(all.truth[r.clone()].iter().map(|&c| {
                if c == u32::MAX {
                    BACKGROUND
                } else {
                    ids[c as usize].as_str()
                }
            }));
            let truth_types = strings(r.clone().map(|i| match all.truth[i] {
                u32::MAX if (all.gene[i] as usize) < panel => "background",
                u32::MAX => "control",
                c => type_names[layout.cells[c as usize].kind].as_str(),
            }));
            Ok(RecordBatch::try_new(
                ground_truth_schema(),
                vec![tx_ids(&r), truth_ids, truth_types],
            )?)
        })
    };
    let vertex_rows: usize = layout.cells.iter().map(|c| c.nucleus.len() + 1).sum();
    let write_nuclei = || {
        let mut cell_col = Vec::with_capacity(vertex_rows);
        let mut vx = Vec::with_capacity(vertex_rows);
        let mut vy = Vec::with_capacity(vertex_rows);
        for (k, c) in layout.cells.iter().enumerate() {
            for v in c.nucleus.iter().chain(c.nucleus.first()) {
                cell_col.push(k);
                vx.push(v[0]);
                vy.push(v[1]);
            }
        }
        write_parquet_batches(&tmp[2], nuclei_schema(), vertex_rows, row_group, |r| {
            Ok(RecordBatch::try_new(
                nuclei_schema(),
                vec![
                    strings(cell_col[r.clone()].iter().map(|&k| ids[k].as_str())),
                    Arc::new(Float32Array::from(vx[r.clone()].to_vec())),
                    Arc::new(Float32Array::from(vy[r.clone()].to_vec())),
                ],
            )?)
        })
    };
    let write_cells = || {
        let cells = &layout.cells;
        write_parquet_batches(&tmp[3], cells_schema(), cells.len(), row_group, |r| {
            let f32s = |f: &dyn Fn(&Cell) -> f64| -> ArrayRef {
                Arc::new(Float32Array::from_iter_values(
                    cells[r.clone()].iter().map(|c| f(c) as f32),
                ))
            };
            Ok(RecordBatch::try_new(
                cells_schema(),
                vec![
                    strings(r.clone().map(|k| ids[k].as_str())),
                    strings(cells[r.clone()].iter().map(|c| type_names[c.kind].as_str())),
                    f32s(&|c| c.center[0]),
                    f32s(&|c| c.center[1]),
                    // Rounded up so that float32 still bounds the outline.
                    f32s(&|c| c.max_radius() * (1.0 + 1e-6) + 1e-4),
                    f32s(&|c| c.nucleus_extent * (1.0 + 1e-6) + 1e-4),
                    Arc::new(UInt32Array::from(counts[r.clone()].to_vec())),
                ],
            )?)
        })
    };
    let (a, (b, (c, d))) = rayon::join(write_transcripts, || {
        rayon::join(write_truth, || rayon::join(write_nuclei, write_cells))
    });
    a?;
    b?;
    c?;
    d?;
    staging.commit()?;

    let background = all
        .truth
        .iter()
        .zip(&all.gene)
        .filter(|(&t, &g)| t == u32::MAX && (g as usize) < panel)
        .count();
    let control = all.gene.iter().filter(|&&g| g as usize >= panel).count();
    Ok(SimulationSummary {
        dir: dir.to_path_buf(),
        cells: opts.cells,
        transcripts: total,
        cell_transcripts: total - background - control,
        background,
        control,
        low_quality: all.qv.iter().filter(|&&q| q < 20.0).count(),
        nuclear: all.nuclear.iter().filter(|&&n| n == 1).count(),
        nucleus_vertices: vertex_rows,
        genes: panel,
        extent: layout.extent(),
        seconds: started.elapsed().as_secs_f64(),
    })
}
