//! `segmentation_report.html`: one self-contained page (inline CSS and
//! inline SVG, no scripts, no network references) with the run's
//! parameters and counts, the best-score histogram with the cut and the
//! knee, transcripts per cell, the genes that stay unassigned most, a
//! spatial overview and the seconds per stage.
//!
//! The SVG is written by hand: a map of 20 000 points is one `<path>` per
//! class (about 12 bytes a point), where a plotting crate's SVG backend
//! writes one element per point; the charts are simple bars and lines.
//! The size does not grow with the number of transcripts: the map is a
//! fixed-size deterministic sample, the detail window a bounded one, and
//! outlines keep at most one vertex per pixel under a byte budget.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};

use crate::io::{Nuclei, Transcripts};
use crate::output::CellRow;
use crate::pipeline::{Assignment, SegmentParams, Segmentation, Summary};

/// File name of the report.
pub const REPORT_FILE: &str = "segmentation_report.html";

/// Most transcripts drawn on the overview map.
pub const MAP_POINTS: usize = 20_000;
/// Most transcripts drawn in the detail window.
pub const DETAIL_POINTS: usize = 8_000;
/// Most outlines drawn on the overview map: with more, a cell is a few
/// pixels wide there and its outline hides its transcripts, so the outlines
/// are drawn in the detail window only.
pub const MAP_OUTLINES: usize = 10_000;
/// Largest outline path (bytes) drawn on a map, after dropping vertices
/// closer than a pixel: the overview's outlines are left to the detail
/// window beyond it, and the detail window's (only in the odd case of very
/// many small outlines there) not drawn. With the point budgets, this keeps
/// the report under 3 MB whatever the sample.
pub const MAP_OUTLINE_BYTES: usize = 1_500_000;
/// The same for the detail window.
pub const DETAIL_OUTLINE_BYTES: usize = 500_000;
/// Genes listed in the unassigned-genes chart.
pub const GENES_SHOWN: usize = 30;
/// Kept transcripts a gene needs to be ranked (when any gene has as many).
pub const GENE_MIN_COUNT: usize = 20;

/// What the report needs of one input row.
#[derive(Debug, Clone, Copy)]
pub struct ReportRow {
    /// x, µm.
    pub x: f64,
    /// y, µm.
    pub y: f64,
    /// Gene, an index into `gene_names`.
    pub gene: u32,
    /// What became of the row.
    pub assignment: Assignment,
    /// Best score, NaN without candidate.
    pub score: f32,
}

/// The rows of a run, read in input order as often as the report needs.
pub enum ReportRows<'a> {
    /// Held in memory: slices indexed by input row, of equal lengths.
    Slices {
        /// x per row, µm.
        x: &'a [f64],
        /// y per row, µm.
        y: &'a [f64],
        /// Gene per row, an index into `gene_names`.
        gene: &'a [u32],
        /// What became of each row.
        assignment: &'a [Assignment],
        /// Best score per row, NaN without candidate.
        score: &'a [f32],
    },
    /// Spilled to a file by the flow that reads and writes in batches.
    File(&'a RowFile),
}

impl ReportRows<'_> {
    /// Number of rows.
    fn len(&self) -> usize {
        match self {
            ReportRows::Slices { assignment, .. } => assignment.len(),
            ReportRows::File(file) => file.rows,
        }
    }

    /// Calls `f` with every row and its index, in input order.
    fn each(&self, mut f: impl FnMut(usize, ReportRow)) -> Result<()> {
        match self {
            ReportRows::Slices {
                x,
                y,
                gene,
                assignment,
                score,
            } => {
                for r in 0..self.len() {
                    f(
                        r,
                        ReportRow {
                            x: x[r],
                            y: y[r],
                            gene: gene[r],
                            assignment: assignment[r],
                            score: score[r],
                        },
                    );
                }
                Ok(())
            }
            ReportRows::File(file) => file.each(f),
        }
    }
}

/// Bytes of a row in a [`RowFile`]: x, y (f64), gene (u32), assignment
/// (u8), score (f32), little-endian.
const ROW_BYTES: usize = 25;

/// The report's rows written to a file one by one, in input order.
pub struct RowFileWriter {
    path: std::path::PathBuf,
    file: std::io::BufWriter<std::fs::File>,
    rows: usize,
}

impl RowFileWriter {
    /// Creates the file.
    pub fn create(path: &Path) -> Result<Self> {
        let file = std::fs::File::create(path)
            .with_context(|| format!("cannot create spill file {} (--tmp-dir)", path.display()))?;
        Ok(RowFileWriter {
            path: path.to_path_buf(),
            file: std::io::BufWriter::new(file),
            rows: 0,
        })
    }

    /// Appends the next row.
    pub fn push(&mut self, row: ReportRow) -> Result<()> {
        use std::io::Write;
        let mut bytes = [0u8; ROW_BYTES];
        bytes[..8].copy_from_slice(&row.x.to_le_bytes());
        bytes[8..16].copy_from_slice(&row.y.to_le_bytes());
        bytes[16..20].copy_from_slice(&row.gene.to_le_bytes());
        bytes[20] = match row.assignment {
            Assignment::Cell => 0,
            Assignment::Fragment => 1,
            Assignment::Unassigned => 2,
            Assignment::Filtered => 3,
        };
        bytes[21..].copy_from_slice(&row.score.to_le_bytes());
        self.rows += 1;
        self.file.write_all(&bytes).with_context(|| {
            format!(
                "cannot write spill file {} (is --tmp-dir full?)",
                self.path.display()
            )
        })
    }

    /// Finishes the file; `gene_order[g]` is the index into the report's
    /// `gene_names` of the gene the rows call `g`.
    pub fn finish(mut self, gene_order: Vec<u32>) -> Result<RowFile> {
        use std::io::Write;
        self.file.flush().with_context(|| {
            format!(
                "cannot write spill file {} (is --tmp-dir full?)",
                self.path.display()
            )
        })?;
        Ok(RowFile {
            path: self.path,
            rows: self.rows,
            gene_order,
        })
    }
}

/// A file of rows written by [`RowFileWriter`].
pub struct RowFile {
    path: std::path::PathBuf,
    rows: usize,
    gene_order: Vec<u32>,
}

impl RowFile {
    fn each(&self, mut f: impl FnMut(usize, ReportRow)) -> Result<()> {
        use std::io::Read;
        let cannot = || format!("cannot read spill file {}", self.path.display());
        let file = std::fs::File::open(&self.path).with_context(cannot)?;
        let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
        let mut bytes = [0u8; ROW_BYTES];
        for r in 0..self.rows {
            reader.read_exact(&mut bytes).with_context(cannot)?;
            let f64_at = |a: usize| {
                let mut w = [0u8; 8];
                w.copy_from_slice(&bytes[a..a + 8]);
                f64::from_le_bytes(w)
            };
            let gene = u32::from_le_bytes([bytes[16], bytes[17], bytes[18], bytes[19]]);
            let assignment = match bytes[20] {
                0 => Assignment::Cell,
                1 => Assignment::Fragment,
                2 => Assignment::Unassigned,
                _ => Assignment::Filtered,
            };
            f(
                r,
                ReportRow {
                    x: f64_at(0),
                    y: f64_at(8),
                    gene: self.gene_order.get(gene as usize).copied().unwrap_or(gene),
                    assignment,
                    score: f32::from_le_bytes([bytes[21], bytes[22], bytes[23], bytes[24]]),
                },
            );
        }
        Ok(())
    }
}

/// Everything the report shows, as plain data.
pub struct ReportData<'a> {
    /// seggpu version.
    pub version: &'a str,
    /// The command line of the run.
    pub command_line: &'a [String],
    /// Run parameters (a JSON object; nested objects are flattened into
    /// dotted keys).
    pub parameters: serde_json::Value,
    /// Run summary: counts, score statistics, tiles… (a JSON object, as in
    /// the log's `result`).
    pub summary: serde_json::Value,
    /// The input rows.
    pub rows: ReportRows<'a>,
    /// Gene names.
    pub gene_names: &'a [String],
    /// Score cut in use.
    pub score_cut: f32,
    /// Knee of the sorted best-score curve.
    pub knee: Option<f64>,
    /// Cells and fragments (`cells.parquet` rows).
    pub cells: &'a [CellRow],
    /// Outlines to draw on the map, `None` for none.
    pub polygons: Option<Outlines<'a>>,
    /// What the rings are ("cell polygons", "nucleus polygons").
    pub polygons_label: &'a str,
    /// Seconds per stage, in stage order.
    pub stage_seconds: &'a [(&'a str, f64)],
}

impl<'a> ReportData<'a> {
    /// The report of a run from its summary, its rows, the genes the rows
    /// index, the rows of `cells.parquet` and the outlines to draw.
    #[allow(clippy::too_many_arguments)]
    pub fn from_parts(
        summary: &Summary,
        rows: ReportRows<'a>,
        gene_names: &'a [String],
        cells: &'a [CellRow],
        params: &SegmentParams,
        command_line: &'a [String],
        stage_seconds: &'a [(&'static str, f64)],
        polygons: Option<(Outlines<'a>, &'a str)>,
    ) -> Result<Self> {
        Ok(Self {
            version: env!("CARGO_PKG_VERSION"),
            command_line,
            parameters: serde_json::to_value(params)?,
            summary: serde_json::to_value(summary)?,
            rows,
            gene_names,
            score_cut: summary.score_cut,
            knee: summary.scores.knee,
            cells,
            polygons: polygons.as_ref().map(|(p, _)| *p),
            polygons_label: polygons.map_or("", |(_, label)| label),
            stage_seconds,
        })
    }

    /// The report of a `segment` run: `transcripts` as returned by
    /// [`crate::pipeline::segment`] with `result`, the outlines to draw
    /// (rings and what they are) when there are any.
    pub fn from_run(
        result: &'a Segmentation,
        transcripts: &'a Transcripts,
        params: &SegmentParams,
        command_line: &'a [String],
        stage_seconds: &'a [(&'static str, f64)],
        polygons: Option<(Outlines<'a>, &'a str)>,
    ) -> Result<Self> {
        Self::from_parts(
            &result.summary,
            ReportRows::Slices {
                x: &transcripts.x,
                y: &transcripts.y,
                gene: &transcripts.gene,
                assignment: &result.assignment,
                score: &result.score,
            },
            &transcripts.gene_names,
            &result.cells,
            params,
            command_line,
            stage_seconds,
            polygons,
        )
    }
}

/// Outlines to draw: outer rings (µm) held, or the output cells' polygons
/// (read a block at a time when spilled).
#[derive(Clone, Copy)]
pub enum Outlines<'a> {
    /// Rings.
    Rings(&'a [Vec<[f64; 2]>]),
    /// The cells' polygons' outer rings.
    Cells(&'a super::cells::OutputCells),
}

impl Outlines<'_> {
    /// Number of outlines.
    pub fn len(&self) -> usize {
        match self {
            Outlines::Rings(rings) => rings.len(),
            Outlines::Cells(cells) => cells.len(),
        }
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The rings for which `keep` holds, in order.
    fn collect(&self, keep: impl Fn(&[[f64; 2]]) -> bool) -> Result<Vec<Vec<[f64; 2]>>> {
        match self {
            Outlines::Rings(rings) => Ok(rings.iter().filter(|r| keep(r)).cloned().collect()),
            Outlines::Cells(cells) => {
                let mut kept = Vec::new();
                cells.each_block(|_, polygons| {
                    for p in polygons {
                        let ring: Vec<[f64; 2]> =
                            p.polygon.exterior().coords().map(|c| [c.x, c.y]).collect();
                        if keep(&ring) {
                            kept.push(ring);
                        }
                    }
                    Ok(())
                })?;
                Ok(kept)
            }
        }
    }
}

/// Outer rings of the nuclei (µm), to draw until cell polygons are given.
pub fn nucleus_rings(nuclei: &Nuclei) -> Result<Vec<Vec<[f64; 2]>>> {
    Ok(nuclei
        .polygons_in(0..nuclei.ids.len())?
        .iter()
        .map(|p| p.exterior().coords().map(|c| [c.x, c.y]).collect())
        .collect())
}

/// Writes the report to `path`.
pub fn write(path: &Path, data: &ReportData) -> Result<()> {
    std::fs::write(path, render(data)?).with_context(|| format!("cannot write {}", path.display()))
}

const CELL_COLOUR: &str = "#1f77b4";
const FRAGMENT_COLOUR: &str = "#ff7f0e";
const UNASSIGNED_COLOUR: &str = "#9a9a9a";
const CUT_COLOUR: &str = "#d62728";
const KNEE_COLOUR: &str = "#2ca02c";

const STYLE: &str = "body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px auto;max-width:1100px;color:#222;padding:0 16px}\
h1{font-size:1.6em;margin-bottom:4px}h2{font-size:1.2em;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}\
.meta{color:#555;font-size:.9em;word-break:break-all}.tiles{display:flex;flex-wrap:wrap;gap:12px}\
.tile{border:1px solid #ddd;border-radius:6px;padding:8px 14px;min-width:130px}.tile b{display:block;font-size:1.35em}\
.tile span{color:#555;font-size:.85em}.caption{color:#444;font-size:.9em;max-width:900px}\
table{border-collapse:collapse;font-size:.85em}td{border-bottom:1px solid #eee;padding:2px 12px 2px 0;vertical-align:top}\
td:first-child{color:#555;font-family:ui-monospace,monospace}.cols{display:flex;flex-wrap:wrap;gap:32px}\
svg{display:block;margin:8px 0}svg text{font-family:system-ui,-apple-system,'Segoe UI',sans-serif}\
.maps{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}.empty{color:#888;font-style:italic}";

/// The report as one HTML string.
pub fn render(data: &ReportData) -> Result<String> {
    let mut h = String::with_capacity(1 << 20);
    h.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">");
    h.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">");
    h.push_str("<title>seggpu segmentation report</title><style>");
    h.push_str(STYLE);
    h.push_str("</style></head><body>\n<h1>seggpu segmentation report</h1>\n");
    let _ = writeln!(
        h,
        "<p class=\"meta\">seggpu {} · <code>{}</code></p>",
        esc(data.version),
        esc(&data.command_line.join(" "))
    );
    summary_section(&mut h, data)?;
    score_section(&mut h, data)?;
    cells_section(&mut h, data);
    genes_section(&mut h, data)?;
    spatial_section(&mut h, data)?;
    stages_section(&mut h, data);
    parameters_section(&mut h, data);
    h.push_str("</body></html>\n");
    Ok(h)
}

/// Escapes text for HTML and SVG.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A count with thousands separators.
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `part` of `whole` in percent, 0 for an empty whole.
fn percent(part: usize, whole: usize) -> f64 {
    if whole == 0 {
        0.0
    } else {
        100.0 * part as f64 / whole as f64
    }
}

fn section_start(h: &mut String, id: &str, title: &str) {
    let _ = writeln!(h, "<section id=\"{id}\"><h2>{title}</h2>");
}

fn empty(h: &mut String, what: &str) {
    let _ = writeln!(h, "<p class=\"empty\">{}</p>", esc(what));
}

/// Rows per assignment class.
#[derive(Default)]
struct ClassCounts {
    cell: usize,
    fragment: usize,
    unassigned: usize,
    filtered: usize,
}

impl ClassCounts {
    fn of(rows: &ReportRows) -> Result<Self> {
        let mut c = Self::default();
        rows.each(|_, row| match row.assignment {
            Assignment::Cell => c.cell += 1,
            Assignment::Fragment => c.fragment += 1,
            Assignment::Unassigned => c.unassigned += 1,
            Assignment::Filtered => c.filtered += 1,
        })?;
        Ok(c)
    }

    fn kept(&self) -> usize {
        self.cell + self.fragment + self.unassigned
    }
}

fn summary_section(h: &mut String, data: &ReportData) -> Result<()> {
    section_start(h, "summary", "Summary");
    let c = ClassCounts::of(&data.rows)?;
    let cells: Vec<u64> = data
        .cells
        .iter()
        .filter(|r| r.kind == "cell" && r.n_transcripts > 0)
        .map(|r| r.n_transcripts)
        .collect();
    let fragments = data.cells.iter().filter(|r| r.kind == "fragment").count();
    let median = median(&cells).map_or_else(|| "–".to_string(), |m| format!("{m}"));
    let kept = c.kept();
    let tiles: [(String, String); 8] = [
        (thousands(data.rows.len()), "transcripts read".into()),
        (
            thousands(kept),
            format!("kept ({:.1}% of read)", percent(kept, data.rows.len())),
        ),
        (
            format!("{:.1}%", percent(c.cell, kept)),
            format!("of kept in cells ({})", thousands(c.cell)),
        ),
        (
            format!("{:.1}%", percent(c.fragment, kept)),
            format!("of kept in fragments ({})", thousands(c.fragment)),
        ),
        (
            format!("{:.1}%", percent(c.unassigned, kept)),
            format!("of kept unassigned ({})", thousands(c.unassigned)),
        ),
        (thousands(cells.len()), "cells with transcripts".into()),
        (median, "median transcripts per cell".into()),
        (thousands(fragments), "fragments".into()),
    ];
    h.push_str("<div class=\"tiles\">");
    for (value, label) in tiles {
        let _ = write!(
            h,
            "<div class=\"tile\"><b>{}</b><span>{}</span></div>",
            esc(&value),
            esc(&label)
        );
    }
    h.push_str("</div></section>\n");
    Ok(())
}

/// Lower median of `v`.
fn median(v: &[u64]) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    let mid = (s.len() - 1) / 2;
    Some(*s.select_nth_unstable(mid).1)
}

/// A stacked series of a bar chart.
struct Series<'a> {
    counts: Vec<u64>,
    colour: &'a str,
    label: &'a str,
}

/// A vertical line on a chart.
struct Marker<'a> {
    at: f64,
    colour: &'a str,
    label: String,
    dashed: bool,
}

/// "Nice" tick positions covering [lo, hi] with about `n` ticks.
fn ticks(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    if hi.partial_cmp(&lo) != Some(std::cmp::Ordering::Greater)
        || !lo.is_finite()
        || !hi.is_finite()
    {
        return vec![lo];
    }
    let raw = (hi - lo) / n.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step + 1e-9).floor() as i64;
    (first..=last).map(|i| i as f64 * step).collect()
}

/// A tick label: integers plainly, others with up to 3 decimals.
fn tick_label(v: f64) -> String {
    if v.abs() >= 1e6 {
        format!("{:.0}M", v / 1e6)
    } else if v.abs() >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// `v` with 3 significant digits (scientific below 0.01).
fn significant(v: f64) -> String {
    if v != 0.0 && v.abs() < 0.01 {
        format!("{v:.2e}")
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

const CHART_W: f64 = 760.0;
const CHART_H: f64 = 300.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 28.0;
const BOTTOM: f64 = 46.0;

/// A stacked histogram over [x_lo, x_hi] with equal-width bins, with
/// vertical markers and a legend.
struct Histogram<'a> {
    series: Vec<Series<'a>>,
    x_lo: f64,
    x_hi: f64,
    markers: Vec<Marker<'a>>,
    x_label: &'a str,
    y_label: &'a str,
    /// Count axis logarithmic.
    log_y: bool,
}

fn histogram_svg(h: &mut String, hist: &Histogram) {
    let Histogram {
        series,
        x_lo,
        x_hi,
        markers,
        x_label,
        y_label,
        log_y,
    } = hist;
    let (x_lo, x_hi, log_y) = (*x_lo, *x_hi, *log_y);
    let bins = series.first().map_or(0, |s| s.counts.len());
    let totals: Vec<u64> = (0..bins)
        .map(|b| series.iter().map(|s| s.counts[b]).sum())
        .collect();
    let y_max = totals.iter().copied().max().unwrap_or(0).max(1) as f64;
    // A log axis plots log10(1 + count), so empty bins stay at 0 and the
    // ticks at powers of ten sit where the counts do.
    let (y_ticks, y_top, lift): (Vec<f64>, f64, fn(f64) -> f64) = if log_y {
        let decades = y_max.log10().ceil().max(1.0) as i32;
        let t: Vec<f64> = std::iter::once(0.0)
            .chain((0..=decades).map(|k| 10f64.powi(k)))
            .collect();
        (t, (1.0 + 10f64.powi(decades)).log10(), |c| {
            (1.0 + c).log10()
        })
    } else {
        let t = ticks(0.0, y_max, 5);
        let top = t.last().copied().unwrap_or(y_max).max(y_max);
        (t, top, |c| c)
    };
    let pw = CHART_W - LEFT - RIGHT;
    let ph = CHART_H - TOP - BOTTOM;
    let sx = |x: f64| LEFT + (x - x_lo) / (x_hi - x_lo) * pw;
    let sy = |y: f64| TOP + ph - lift(y) / y_top * ph;
    let _ = write!(
        h,
        "<svg width=\"{CHART_W}\" height=\"{CHART_H}\" viewBox=\"0 0 {CHART_W} {CHART_H}\" font-size=\"11\">"
    );
    axes(h, pw, ph);
    for &t in &y_ticks {
        let y = sy(t);
        let _ = write!(
            h,
            "<line x1=\"{LEFT}\" x2=\"{:.1}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#eee\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            LEFT + pw,
            LEFT - 5.0,
            y + 4.0,
            tick_label(t)
        );
    }
    for t in ticks(x_lo, x_hi, 10) {
        let x = sx(t);
        let _ = write!(
            h,
            "<line x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#333\"/><text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            TOP + ph,
            TOP + ph + 4.0,
            TOP + ph + 16.0,
            tick_label(t)
        );
    }
    let bw = pw / bins.max(1) as f64;
    for s_idx in 0..series.len() {
        let mut d = String::new();
        for b in 0..bins {
            let below: u64 = series[..s_idx].iter().map(|s| s.counts[b]).sum();
            let v = series[s_idx].counts[b];
            if v == 0 {
                continue;
            }
            let x = LEFT + b as f64 * bw;
            let y0 = sy(below as f64);
            let y1 = sy((below + v) as f64);
            let _ = write!(
                d,
                "M{x:.1} {y0:.1}V{y1:.1}H{:.1}V{y0:.1}Z",
                x + (bw - 0.5).max(0.5)
            );
        }
        if !d.is_empty() {
            let _ = write!(h, "<path d=\"{d}\" fill=\"{}\"/>", series[s_idx].colour);
        }
    }
    for m in markers {
        if !(m.at >= x_lo && m.at <= x_hi) {
            continue;
        }
        let x = sx(m.at);
        let _ = write!(
            h,
            "<line x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{TOP}\" y2=\"{:.1}\" stroke=\"{}\" stroke-width=\"2\"{}/>",
            TOP + ph,
            m.colour,
            if m.dashed { " stroke-dasharray=\"6 4\"" } else { "" }
        );
    }
    // Legend along the top: series, then markers.
    let mut lx = LEFT;
    for s in series {
        let _ = write!(
            h,
            "<rect x=\"{lx:.1}\" y=\"8\" width=\"12\" height=\"12\" fill=\"{}\"/><text x=\"{:.1}\" y=\"18\">{}</text>",
            s.colour,
            lx + 16.0,
            esc(s.label)
        );
        lx += 24.0 + 6.5 * s.label.chars().count() as f64;
    }
    for m in markers {
        let _ = write!(
            h,
            "<line x1=\"{lx:.1}\" x2=\"{:.1}\" y1=\"14\" y2=\"14\" stroke=\"{}\" stroke-width=\"2\"{}/><text x=\"{:.1}\" y=\"18\">{}</text>",
            lx + 14.0,
            m.colour,
            if m.dashed { " stroke-dasharray=\"4 2\"" } else { "" },
            lx + 18.0,
            esc(&m.label)
        );
        lx += 26.0 + 6.5 * m.label.chars().count() as f64;
    }
    axis_labels(h, pw, ph, x_label, y_label);
    h.push_str("</svg>\n");
}

fn axes(h: &mut String, pw: f64, ph: f64) {
    let _ = write!(
        h,
        "<path d=\"M{LEFT} {TOP}V{:.1}H{:.1}\" fill=\"none\" stroke=\"#333\"/>",
        TOP + ph,
        LEFT + pw
    );
}

fn axis_labels(h: &mut String, pw: f64, ph: f64, x_label: &str, y_label: &str) {
    let _ = write!(
        h,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"12\">{}</text><text transform=\"translate(14 {:.1}) rotate(-90)\" text-anchor=\"middle\" font-size=\"12\">{}</text>",
        LEFT + pw / 2.0,
        TOP + ph + 36.0,
        esc(x_label),
        TOP + ph / 2.0,
        esc(y_label)
    );
}

fn score_section(h: &mut String, data: &ReportData) -> Result<()> {
    section_start(h, "scores", "Best scores");
    const BINS: usize = 50;
    let mut below = vec![0u64; BINS];
    let mut above = vec![0u64; BINS];
    let mut n = 0usize;
    data.rows.each(|_, row| {
        let s = row.score;
        if row.assignment == Assignment::Filtered || !s.is_finite() {
            return;
        }
        n += 1;
        let b = ((s.clamp(0.0, 1.0) * BINS as f32) as usize).min(BINS - 1);
        if s >= data.score_cut {
            above[b] += 1;
        } else {
            below[b] += 1;
        }
    })?;
    if n == 0 {
        empty(
            h,
            "No kept transcript has a candidate nucleus: no scores to show.",
        );
        h.push_str("</section>\n");
        return Ok(());
    }
    let mut markers = vec![Marker {
        at: data.score_cut as f64,
        colour: CUT_COLOUR,
        label: format!("score cut {}", significant(data.score_cut as f64)),
        dashed: false,
    }];
    if let Some(k) = data.knee {
        markers.push(Marker {
            at: k,
            colour: KNEE_COLOUR,
            label: format!("knee {}", significant(k)),
            dashed: true,
        });
    }
    histogram_svg(
        h,
        &Histogram {
            series: vec![
                Series {
                    counts: below,
                    colour: UNASSIGNED_COLOUR,
                    label: "below the cut",
                },
                Series {
                    counts: above,
                    colour: CELL_COLOUR,
                    label: "at or above the cut",
                },
            ],
            x_lo: 0.0,
            x_hi: 1.0,
            markers,
            x_label: "best score (transcript → its best nucleus)",
            y_label: "kept transcripts (log scale)",
            log_y: true,
        },
    );
    let _ = writeln!(
        h,
        "<p class=\"caption\">Best score of each of the {} kept transcripts with a candidate nucleus, in {BINS} bins over [0, 1]. Transcripts at or above the cut join their best nucleus; the knee of the sorted score curve is what <code>--score-cut auto</code> would use.</p></section>",
        thousands(n)
    );
    Ok(())
}

fn cells_section(h: &mut String, data: &ReportData) {
    section_start(h, "transcripts-per-cell", "Transcripts per cell");
    let cell_counts: Vec<u64> = data
        .cells
        .iter()
        .filter(|r| r.kind == "cell" && r.n_transcripts > 0)
        .map(|r| r.n_transcripts)
        .collect();
    let fragment_counts: Vec<u64> = data
        .cells
        .iter()
        .filter(|r| r.kind == "fragment")
        .map(|r| r.n_transcripts)
        .collect();
    let all: Vec<u64> = cell_counts
        .iter()
        .chain(&fragment_counts)
        .copied()
        .collect();
    if all.is_empty() {
        empty(h, "No cell or fragment has transcripts.");
        h.push_str("</section>\n");
        return;
    }
    // The axis ends at the 99th percentile so that a few huge cells do not
    // flatten the rest; larger ones land in the last bin.
    let mut sorted = all.clone();
    sorted.sort_unstable();
    let p99 = sorted[((sorted.len() as f64 * 0.99).ceil() as usize).clamp(1, sorted.len()) - 1];
    let top = p99.max(1) + 1;
    let width = top.div_ceil(60).max(1);
    let bins = top.div_ceil(width) as usize;
    let bin_of = |n: u64| ((n / width) as usize).min(bins - 1);
    let hist = |v: &[u64]| {
        let mut c = vec![0u64; bins];
        for &n in v {
            c[bin_of(n)] += 1;
        }
        c
    };
    let over = all.iter().filter(|&&n| n >= bins as u64 * width).count();
    let median = median(&cell_counts);
    let markers: Vec<Marker> = median
        .map(|m| Marker {
            at: m as f64 + 0.5,
            colour: CUT_COLOUR,
            label: format!("median of cells {m}"),
            dashed: true,
        })
        .into_iter()
        .collect();
    histogram_svg(
        h,
        &Histogram {
            series: vec![
                Series {
                    counts: hist(&cell_counts),
                    colour: CELL_COLOUR,
                    label: "cells (nucleus)",
                },
                Series {
                    counts: hist(&fragment_counts),
                    colour: FRAGMENT_COLOUR,
                    label: "fragments",
                },
            ],
            x_lo: 0.0,
            x_hi: (bins as u64 * width) as f64,
            markers,
            x_label: "transcripts per cell",
            y_label: "cells",
            log_y: false,
        },
    );
    let _ = writeln!(
        h,
        "<p class=\"caption\">{} cells with transcripts and {} fragments, stacked, bins of {width}{}.</p></section>",
        thousands(cell_counts.len()),
        thousands(fragment_counts.len()),
        if over > 0 {
            format!(
                "; the {} with more than {} transcripts are counted in the last bin",
                thousands(over),
                bins as u64 * width - 1
            )
        } else {
            String::new()
        }
    );
}

fn genes_section(h: &mut String, data: &ReportData) -> Result<()> {
    section_start(h, "genes", "Assigned fraction per gene");
    // [cell, fragment, unassigned] per gene, kept rows only.
    let mut per_gene = vec![[0usize; 3]; data.gene_names.len()];
    data.rows.each(|_, row| {
        let slot = match row.assignment {
            Assignment::Cell => 0,
            Assignment::Fragment => 1,
            Assignment::Unassigned => 2,
            Assignment::Filtered => return,
        };
        if let Some(counts) = per_gene.get_mut(row.gene as usize) {
            counts[slot] += 1;
        }
    })?;
    let total = |c: &[usize; 3]| c[0] + c[1] + c[2];
    let present = per_gene.iter().filter(|c| total(c) > 0).count();
    let min_count = if per_gene.iter().any(|c| total(c) >= GENE_MIN_COUNT) {
        GENE_MIN_COUNT
    } else {
        1
    };
    let mut ranked: Vec<usize> = (0..per_gene.len())
        .filter(|&g| total(&per_gene[g]) >= min_count)
        .collect();
    if ranked.is_empty() {
        empty(h, "No kept transcripts: no genes to rank.");
        h.push_str("</section>\n");
        return Ok(());
    }
    let fraction = |g: usize| per_gene[g][0] as f64 / total(&per_gene[g]) as f64;
    ranked.sort_by(|&a, &b| {
        fraction(a)
            .total_cmp(&fraction(b))
            .then(total(&per_gene[b]).cmp(&total(&per_gene[a])))
            .then(data.gene_names[a].cmp(&data.gene_names[b]))
    });
    let all_fractions: Vec<f64> = ranked.iter().map(|&g| fraction(g)).collect();
    let median_fraction = all_fractions[(all_fractions.len() - 1) / 2];
    ranked.truncate(GENES_SHOWN);

    let row_h = 18.0;
    let left = 150.0;
    let bar_w = 480.0;
    let top = 30.0;
    let height = top + row_h * ranked.len() as f64 + 30.0;
    let width = left + bar_w + 130.0;
    let _ = write!(
        h,
        "<svg width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" font-size=\"11\">"
    );
    let mut lx = left;
    for (colour, label) in [
        (CELL_COLOUR, "in cells"),
        (FRAGMENT_COLOUR, "in fragments"),
        (UNASSIGNED_COLOUR, "unassigned"),
    ] {
        let _ = write!(
            h,
            "<rect x=\"{lx}\" y=\"6\" width=\"12\" height=\"12\" fill=\"{colour}\"/><text x=\"{}\" y=\"16\">{label}</text>",
            lx + 16.0
        );
        lx += 110.0;
    }
    for (i, &g) in ranked.iter().enumerate() {
        let y = top + i as f64 * row_h;
        let c = per_gene[g];
        let t = total(&c) as f64;
        let mut x = left;
        for (slot, colour) in [CELL_COLOUR, FRAGMENT_COLOUR, UNASSIGNED_COLOUR]
            .iter()
            .enumerate()
        {
            let w = c[slot] as f64 / t * bar_w;
            if w > 0.0 {
                let _ = write!(
                    h,
                    "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{w:.1}\" height=\"{:.1}\" fill=\"{colour}\"/>",
                    y + 2.0,
                    row_h - 4.0
                );
            }
            x += w;
        }
        let _ = write!(
            h,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text><text x=\"{:.1}\" y=\"{:.1}\">{:.1}% of {}</text>",
            left - 6.0,
            y + 13.0,
            esc(&data.gene_names[g]),
            left + bar_w + 6.0,
            y + 13.0,
            100.0 * c[0] as f64 / t,
            thousands(c[0] + c[1] + c[2])
        );
    }
    let axis_y = top + row_h * ranked.len() as f64 + 4.0;
    for t in [0.0, 0.25, 0.5, 0.75, 1.0] {
        let x = left + t * bar_w;
        let _ = write!(
            h,
            "<line x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{top}\" y2=\"{axis_y:.1}\" stroke=\"#fff\" stroke-opacity=\"0.6\"/><text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{:.0}%</text>",
            axis_y + 14.0,
            t * 100.0
        );
    }
    h.push_str("</svg>\n");
    let _ = writeln!(
        h,
        "<p class=\"caption\">The {} genes (of {} ranked, {} present) with the lowest fraction of their kept transcripts in cells, lowest first; genes with fewer than {min_count} kept transcripts are not ranked. The median gene has {:.1}% in cells. Each bar splits a gene's kept transcripts into cells, fragments and unassigned; the figure is the fraction in cells and the gene's kept count.</p></section>",
        ranked.len(),
        thousands(all_fractions.len()),
        thousands(present),
        100.0 * median_fraction
    );
    Ok(())
}

/// splitmix64: a fixed hash of the row index, so the sample is the same on
/// every run and spread over the whole file (files are often sorted by
/// position or by gene, so every k-th row would not do).
fn mix(i: u64) -> u64 {
    let mut z = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// At most `limit` of `candidates` rows, chosen by hash with a rate
/// slightly under `limit / candidates` so that the cap is rarely reached
/// (reaching it would favour early rows); all of them when they are few.
struct Sampler {
    threshold: Option<u64>,
    limit: usize,
}

impl Sampler {
    fn new(candidates: usize, limit: usize) -> Self {
        let threshold = (candidates > limit).then(|| {
            let rate = 0.97 * limit as f64 / candidates as f64;
            (rate * u64::MAX as f64) as u64
        });
        Sampler { threshold, limit }
    }

    /// Whether candidate row `r` is taken when `taken` rows already are.
    fn takes(&self, r: usize, taken: usize) -> bool {
        match self.threshold {
            None => true,
            Some(t) => taken < self.limit && mix(r as u64) < t,
        }
    }
}

/// Maps µm to the pixels of a map panel.
struct MapFrame {
    x0: f64,
    y0: f64,
    scale: f64,
    width: f64,
    height: f64,
}

impl MapFrame {
    /// A frame of `width` pixels showing [x0, x1] × [y0, y1] (µm), height
    /// by aspect ratio (capped).
    fn new(x0: f64, x1: f64, y0: f64, y1: f64, width: f64) -> Self {
        let w = (x1 - x0).max(1e-6);
        let hgt = (y1 - y0).max(1e-6);
        let scale = (width / w).min(1.4 * width / hgt);
        Self {
            x0,
            y0,
            scale,
            width: w * scale,
            height: hgt * scale,
        }
    }

    /// Pixel position in tenths of a pixel (the SVG's viewBox unit), so
    /// coordinates are short integers.
    fn px(&self, x: f64, y: f64) -> (i64, i64) {
        (
            ((x - self.x0) * self.scale * 10.0).round() as i64,
            ((y - self.y0) * self.scale * 10.0).round() as i64,
        )
    }

    fn open(&self, h: &mut String) {
        let _ = write!(
            h,
            "<svg width=\"{:.0}\" height=\"{:.0}\" viewBox=\"0 0 {:.0} {:.0}\" style=\"border:1px solid #ccc;background:#fff\">",
            self.width,
            self.height,
            self.width * 10.0,
            self.height * 10.0
        );
    }
}

/// One `<path>` of dots per class for `rows`, unassigned first so the
/// assigned ones stay visible.
fn dots(h: &mut String, frame: &MapFrame, rows: &[ReportRow], dot: f64) {
    for (class, colour) in [
        (Assignment::Unassigned, UNASSIGNED_COLOUR),
        (Assignment::Fragment, FRAGMENT_COLOUR),
        (Assignment::Cell, CELL_COLOUR),
    ] {
        let mut d = String::new();
        for row in rows.iter().filter(|row| row.assignment == class) {
            let (x, y) = frame.px(row.x, row.y);
            let _ = write!(d, "M{x} {y}h0");
        }
        if !d.is_empty() {
            let _ = write!(
                h,
                "<path d=\"{d}\" stroke=\"{colour}\" stroke-width=\"{:.0}\" stroke-linecap=\"round\" fill=\"none\"/>",
                dot * 10.0
            );
        }
    }
}

/// The rings as the `d` of one path, in the frame's units; vertices closer
/// than `min_step` (tenths of a pixel) to the last one kept are dropped, and
/// rings left with fewer than 3 vertices (smaller than the step) are not
/// drawn, so the path's size is bounded by the map's pixels, not by the
/// number of vertices.
fn outline_path(frame: &MapFrame, rings: &[&Vec<[f64; 2]>], min_step: i64) -> String {
    let mut d = String::new();
    let mut kept: Vec<(i64, i64)> = Vec::new();
    for ring in rings {
        kept.clear();
        for p in ring.iter() {
            let q = frame.px(p[0], p[1]);
            let far =
                |last: &(i64, i64)| (q.0 - last.0).abs().max((q.1 - last.1).abs()) >= min_step;
            if kept.last().is_none_or(far) {
                kept.push(q);
            }
        }
        // The closing vertex repeats the first.
        if kept.len() > 1 && kept.first() == kept.last() {
            kept.pop();
        }
        if kept.len() < 3 {
            continue;
        }
        for (i, q) in kept.iter().enumerate() {
            let _ = write!(d, "{}{} {}", if i == 0 { 'M' } else { 'L' }, q.0, q.1);
        }
        d.push('Z');
    }
    d
}

/// Draws an [`outline_path`], clipped to `clip` (a clipPath id) when given.
fn draw_outlines(h: &mut String, d: &str, width: f64, clip: Option<&str>) {
    if !d.is_empty() {
        let _ = write!(
            h,
            "<path d=\"{d}\" stroke=\"#222\" stroke-opacity=\"0.7\" stroke-width=\"{:.0}\" fill=\"none\"{}/>",
            width * 10.0,
            clip.map(|c| format!(" clip-path=\"url(#{c})\""))
                .unwrap_or_default()
        );
    }
}

fn spatial_section(h: &mut String, data: &ReportData) -> Result<()> {
    section_start(h, "spatial", "Spatial overview");
    let kept_at = |row: &ReportRow| {
        row.assignment != Assignment::Filtered && row.x.is_finite() && row.y.is_finite()
    };
    let mut candidates = 0usize;
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    data.rows.each(|_, row| {
        if kept_at(&row) {
            candidates += 1;
            x0 = x0.min(row.x);
            x1 = x1.max(row.x);
            y0 = y0.min(row.y);
            y1 = y1.max(row.y);
        }
    })?;
    if candidates == 0 {
        empty(h, "No kept transcripts to map.");
        h.push_str("</section>\n");
        return Ok(());
    }
    let overview = Sampler::new(candidates, MAP_POINTS);
    let mut rows: Vec<ReportRow> = Vec::new();
    let mut first = None;
    data.rows.each(|r, row| {
        if kept_at(&row) {
            first.get_or_insert(row);
            if overview.takes(r, rows.len()) {
                rows.push(row);
            }
        }
    })?;
    if rows.is_empty() {
        // The hash sample can in principle miss every row; the map still
        // needs one to centre the detail window on.
        rows.extend(first);
    }
    // Detail window: a square around the centre of the sample, sized so
    // that it holds about DETAIL_POINTS kept transcripts (estimated from
    // the sample).
    let mid = |v: &mut Vec<f64>| {
        let m = (v.len() - 1) / 2;
        *v.select_nth_unstable_by(m, f64::total_cmp).1
    };
    let cx = mid(&mut rows.iter().map(|row| row.x).collect());
    let cy = mid(&mut rows.iter().map(|row| row.y).collect());
    let mut reach: Vec<f64> = rows
        .iter()
        .map(|row| (row.x - cx).abs().max((row.y - cy).abs()))
        .collect();
    let want = ((DETAIL_POINTS as f64 * rows.len() as f64 / candidates as f64) as usize)
        .clamp(1, reach.len());
    let half = (*reach.select_nth_unstable_by(want - 1, f64::total_cmp).1).max(5.0);
    let (wx0, wx1, wy0, wy1) = (cx - half, cx + half, cy - half, cy + half);
    let in_window = |row: &ReportRow| {
        kept_at(row) && row.x >= wx0 && row.x <= wx1 && row.y >= wy0 && row.y <= wy1
    };
    let mut window_count = 0usize;
    data.rows
        .each(|_, row| window_count += usize::from(in_window(&row)))?;
    let in_detail = Sampler::new(window_count, DETAIL_POINTS);
    let mut detail_rows: Vec<ReportRow> = Vec::new();
    data.rows.each(|r, row| {
        if in_window(&row) && in_detail.takes(r, detail_rows.len()) {
            detail_rows.push(row);
        }
    })?;

    // Every outline when the overview draws them all, else those the
    // detail window shows: a whole slide's need not be held.
    let outline_count = data.polygons.map_or(0, |p| p.len());
    let near_window = |ring: &[[f64; 2]]| {
        ring.iter().any(|p| p[0] >= wx0 && p[0] <= wx1)
            && ring.iter().any(|p| p[1] >= wy0 && p[1] <= wy1)
    };
    let kept_rings = match data.polygons {
        Some(outlines) => {
            outlines.collect(|ring| outline_count <= MAP_OUTLINES || near_window(ring))?
        }
        None => Vec::new(),
    };
    let rings: Vec<&Vec<[f64; 2]>> = kept_rings.iter().collect();
    let frame = MapFrame::new(x0, x1, y0, y1, 600.0);
    let detail = MapFrame::new(wx0, wx1, wy0, wy1, 440.0);
    let overview_path = if outline_count <= MAP_OUTLINES {
        outline_path(&frame, &rings, 10)
    } else {
        String::new()
    };
    let overview_outlines = !overview_path.is_empty() && overview_path.len() <= MAP_OUTLINE_BYTES;
    // Each map's caption as wide as its map, so the two sit side by side.
    let _ = write!(
        h,
        "<div class=\"maps\"><div style=\"width:{:.0}px\">",
        frame.width.max(200.0)
    );
    frame.open(h);
    let dot = if rows.len() > 5000 { 1.6 } else { 2.4 };
    dots(h, &frame, &rows, dot);
    if overview_outlines {
        draw_outlines(h, &overview_path, 0.6, None);
    }
    let (a, b) = frame.px(wx0, wy0);
    let (c, d) = frame.px(wx1, wy1);
    let _ = write!(
        h,
        "<rect x=\"{a}\" y=\"{b}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"{CUT_COLOUR}\" stroke-width=\"20\"/></svg>",
        c - a,
        d - b
    );
    let _ = write!(
        h,
        "<p class=\"caption\">All of the sample: {} of the {} kept transcripts (a fixed hash sample), x {:.0}–{:.0} µm, y {:.0}–{:.0} µm (y down){}. The red square is the detail window.</p></div><div style=\"width:{:.0}px\">",
        thousands(rows.len()),
        thousands(candidates),
        x0,
        x1,
        y0,
        y1,
        if overview_outlines {
            format!(", with the {}", esc(data.polygons_label))
        } else if outline_count == 0 {
            String::new()
        } else {
            format!("; the {} are drawn in the detail window only", esc(data.polygons_label))
        },
        detail.width.max(200.0)
    );

    detail.open(h);
    let (cw, ch) = (detail.width * 10.0, detail.height * 10.0);
    let _ = write!(
        h,
        "<defs><clipPath id=\"detail-clip\"><rect width=\"{cw:.0}\" height=\"{ch:.0}\"/></clipPath></defs>"
    );
    dots(h, &detail, &detail_rows, 3.0);
    let near: Vec<&Vec<[f64; 2]>> = rings
        .iter()
        .copied()
        .filter(|ring| near_window(ring))
        .collect();
    let detail_path = outline_path(&detail, &near, 3);
    if detail_path.len() <= DETAIL_OUTLINE_BYTES {
        draw_outlines(h, &detail_path, 1.0, Some("detail-clip"));
    }
    h.push_str("</svg>");
    let _ = write!(
        h,
        "<p class=\"caption\">Detail: x {:.0}–{:.0} µm, y {:.0}–{:.0} µm, {} of its {} kept transcripts{}.</p></div></div>",
        wx0,
        wx1,
        wy0,
        wy1,
        thousands(detail_rows.len()),
        thousands(window_count),
        if near.is_empty() {
            String::new()
        } else {
            format!(" and {} {}", thousands(near.len()), esc(data.polygons_label))
        }
    );
    let _ = writeln!(
        h,
        "<p class=\"caption\"><span style=\"color:{CELL_COLOUR}\">●</span> in a cell &nbsp; <span style=\"color:{FRAGMENT_COLOUR}\">●</span> in a fragment &nbsp; <span style=\"color:{UNASSIGNED_COLOUR}\">●</span> unassigned (filtered transcripts are not drawn)</p></section>"
    );
    Ok(())
}

fn stages_section(h: &mut String, data: &ReportData) {
    section_start(h, "stages", "Seconds per stage");
    if data.stage_seconds.is_empty() {
        empty(h, "No stage timings.");
        h.push_str("</section>\n");
        return;
    }
    let total: f64 = data.stage_seconds.iter().map(|(_, s)| s.max(0.0)).sum();
    let longest = data
        .stage_seconds
        .iter()
        .map(|(_, s)| *s)
        .fold(0.0f64, f64::max)
        .max(1e-9);
    let (left, bar_w, row_h, top) = (150.0, 460.0, 22.0, 6.0);
    let height = top + row_h * data.stage_seconds.len() as f64 + 6.0;
    let width = left + bar_w + 160.0;
    let _ = write!(
        h,
        "<svg width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" font-size=\"12\">"
    );
    for (i, (stage, s)) in data.stage_seconds.iter().enumerate() {
        let y = top + i as f64 * row_h;
        let w = (s.max(0.0) / longest * bar_w).max(1.0);
        let _ = write!(
            h,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text><rect x=\"{left}\" y=\"{:.1}\" width=\"{w:.1}\" height=\"{:.1}\" fill=\"{CELL_COLOUR}\"/><text x=\"{:.1}\" y=\"{:.1}\">{:.2} s ({:.0}%)</text>",
            left - 6.0,
            y + 15.0,
            esc(stage),
            y + 3.0,
            row_h - 6.0,
            left + w + 6.0,
            y + 15.0,
            s,
            percent_f(*s, total)
        );
    }
    h.push_str("</svg>\n");
    let _ = writeln!(
        h,
        "<p class=\"caption\">{total:.2} s over these stages (writing this report comes after them and is in the log's <code>seconds</code>).</p></section>"
    );
}

fn percent_f(part: f64, whole: f64) -> f64 {
    if whole > 0.0 {
        100.0 * part / whole
    } else {
        0.0
    }
}

/// `value` flattened into (dotted key, text) rows.
fn flatten(prefix: &str, value: &serde_json::Value, rows: &mut Vec<(String, String)>) {
    use serde_json::Value;
    let key = |k: &str| {
        if prefix.is_empty() {
            k.to_string()
        } else {
            format!("{prefix}.{k}")
        }
    };
    match value {
        Value::Object(map) => {
            if map.is_empty() {
                rows.push((prefix.to_string(), "{}".into()));
            }
            for (k, v) in map {
                flatten(&key(k), v, rows);
            }
        }
        Value::Number(n) => {
            let text = match (n.as_i64(), n.as_u64(), n.as_f64()) {
                (Some(i), _, _) => i.to_string(),
                (_, Some(u), _) => u.to_string(),
                (_, _, Some(f)) => {
                    let s = format!("{f:.4}");
                    s.trim_end_matches('0').trim_end_matches('.').to_string()
                }
                _ => n.to_string(),
            };
            rows.push((prefix.to_string(), text));
        }
        Value::String(s) => rows.push((prefix.to_string(), s.clone())),
        other => rows.push((prefix.to_string(), other.to_string())),
    }
}

fn table(h: &mut String, title: &str, value: &serde_json::Value) {
    let mut rows = Vec::new();
    flatten("", value, &mut rows);
    let _ = write!(h, "<div><h3>{}</h3><table>", esc(title));
    for (k, v) in rows {
        let _ = write!(h, "<tr><td>{}</td><td>{}</td></tr>", esc(&k), esc(&v));
    }
    h.push_str("</table></div>");
}

fn parameters_section(h: &mut String, data: &ReportData) {
    section_start(h, "parameters", "Parameters and counts");
    h.push_str("<div class=\"cols\">");
    table(h, "Parameters", &data.parameters);
    table(h, "Result", &data.summary);
    h.push_str("</div></section>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        let labels = |lo, hi| {
            ticks(lo, hi, 5)
                .into_iter()
                .map(tick_label)
                .collect::<Vec<_>>()
        };
        assert_eq!(labels(0.0, 1.0), ["0", "0.2", "0.4", "0.6", "0.8", "1"]);
        assert_eq!(labels(0.0, 950.0), ["0", "200", "400", "600", "800"]);
        assert_eq!(labels(0.0, 48_000.0), ["0", "10k", "20k", "30k", "40k"]);
        assert_eq!(labels(3.0, 3.0), ["3"]);
    }

    /// The rows `keep` takes of `0..n_rows`, sampled as the maps are.
    fn sample(
        n_rows: usize,
        candidates: usize,
        limit: usize,
        keep: impl Fn(usize) -> bool,
    ) -> Vec<usize> {
        let sampler = Sampler::new(candidates, limit);
        let mut out = Vec::new();
        for r in 0..n_rows {
            if keep(r) && sampler.takes(r, out.len()) {
                out.push(r);
            }
        }
        out
    }

    #[test]
    fn sample_is_capped_deterministic_and_spread() {
        let a = sample(1_000_000, 1_000_000, 20_000, |_| true);
        assert!(a.len() <= 20_000 && a.len() > 19_000, "{}", a.len());
        assert_eq!(a, sample(1_000_000, 1_000_000, 20_000, |_| true));
        // Rows from the whole file, not a prefix.
        assert!(*a.last().unwrap() > 990_000);
        let odd = sample(1000, 500, 20_000, |r| r % 2 == 1);
        assert_eq!(odd.len(), 500);
    }

    /// A run with `rows` rows, all filtered, and nothing else.
    fn render_filtered(rows: usize) -> String {
        let x = vec![1.0; rows];
        let gene = vec![0; rows];
        let assignment = vec![Assignment::Filtered; rows];
        let score = vec![f32::NAN; rows];
        render(&ReportData {
            version: "0",
            command_line: &[],
            parameters: serde_json::Value::Null,
            summary: serde_json::json!({}),
            rows: ReportRows::Slices {
                x: &x,
                y: &x,
                gene: &gene,
                assignment: &assignment,
                score: &score,
            },
            gene_names: &["A".to_string()],
            score_cut: 0.5,
            knee: None,
            cells: &[],
            polygons: Some(Outlines::Rings(&[])),
            polygons_label: "cell polygons",
            stage_seconds: &[],
        })
        .unwrap()
    }

    #[test]
    fn a_run_without_rows_or_with_all_filtered_gives_every_section_with_a_note() {
        for rows in [0, 3] {
            let html = render_filtered(rows);
            for id in [
                "summary",
                "scores",
                "transcripts-per-cell",
                "genes",
                "spatial",
                "stages",
            ] {
                assert!(html.contains(&format!("<section id=\"{id}\">")), "{id}");
            }
            // Every plot replaced by its note.
            assert_eq!(html.matches("class=\"empty\"").count(), 5);
            assert!(!html.contains("<svg"));
            assert!(html.contains(&format!("<b>{rows}</b><span>transcripts read")));
        }
    }

    #[test]
    fn outlines_keep_at_most_one_vertex_per_step() {
        // 100 µm shown on 100 px: 1 µm is 10 units of the path.
        let frame = MapFrame::new(0.0, 100.0, 0.0, 100.0, 100.0);
        let circle = |cx: f64, r: f64, n: usize| -> Vec<[f64; 2]> {
            (0..=n)
                .map(|i| {
                    let a = i as f64 / n as f64 * std::f64::consts::TAU;
                    [cx + r * a.cos(), 50.0 + r * a.sin()]
                })
                .collect()
        };
        // A 0.2 µm ring is under a pixel: not drawn.
        let tiny = circle(10.0, 0.2, 50);
        assert_eq!(outline_path(&frame, &[&tiny], 10), "");
        // A ring of 10 000 vertices and 63 px of perimeter keeps at most one
        // vertex per pixel of it.
        let big = circle(50.0, 10.0, 10_000);
        let d = outline_path(&frame, &[&big], 10);
        let vertices = d.matches(['M', 'L']).count();
        assert!((20..=64).contains(&vertices), "{vertices}");
        assert!(d.starts_with('M') && d.ends_with('Z'));
    }

    /// The report of `rows` transcripts spread over 2 × 2 mm, a third of
    /// each class, with `cells` square outlines of 12 vertices.
    fn render_large(rows: usize, cells: usize) -> String {
        let coord = |i: usize, salt: u64| (mix(i as u64 ^ salt) % 2_000_000) as f64 / 1000.0;
        let x: Vec<f64> = (0..rows).map(|i| coord(i, 1)).collect();
        let y: Vec<f64> = (0..rows).map(|i| coord(i, 2)).collect();
        let gene: Vec<u32> = (0..rows).map(|i| (i % 300) as u32).collect();
        let gene_names: Vec<String> = (0..300).map(|g| format!("G{g}")).collect();
        let classes = [
            Assignment::Cell,
            Assignment::Fragment,
            Assignment::Unassigned,
        ];
        let assignment: Vec<Assignment> = (0..rows).map(|i| classes[i % 3]).collect();
        let score: Vec<f32> = (0..rows).map(|i| (i % 1000) as f32 / 1000.0).collect();
        let rings: Vec<Vec<[f64; 2]>> = (0..cells)
            .map(|c| {
                let (cx, cy) = (coord(c, 3), coord(c, 4));
                (0..=12)
                    .map(|k| {
                        let a = k as f64 / 12.0 * std::f64::consts::TAU;
                        [cx + 5.0 * a.cos(), cy + 5.0 * a.sin()]
                    })
                    .collect()
            })
            .collect();
        let cells_rows: Vec<CellRow> = (0..cells)
            .map(|c| CellRow {
                id: format!("c{c}"),
                kind: "cell",
                n_transcripts: (rows / cells.max(1)) as u64,
                centroid_x: None,
                centroid_y: None,
                nucleus_area: None,
            })
            .collect();
        render(&ReportData {
            version: "0",
            command_line: &[],
            parameters: serde_json::json!({"k": 1}),
            summary: serde_json::json!({"n": rows}),
            rows: ReportRows::Slices {
                x: &x,
                y: &y,
                gene: &gene,
                assignment: &assignment,
                score: &score,
            },
            gene_names: &gene_names,
            score_cut: 0.5,
            knee: Some(0.2),
            cells: &cells_rows,
            polygons: Some(Outlines::Rings(&rings)),
            polygons_label: "cell polygons",
            stage_seconds: &[("read", 1.0)],
        })
        .unwrap()
    }

    #[test]
    fn report_size_does_not_grow_with_the_transcripts() {
        // The same 9 000 outlines (drawn on the overview), 10× the rows.
        let small = render_large(200_000, 9_000).len();
        let large = render_large(2_000_000, 9_000).len();
        assert!(
            (large as f64) < 1.05 * small as f64,
            "{small} bytes for 200k rows, {large} for 2M"
        );
        // Many more outlines than the overview draws: left to the detail
        // window, and the page stays far under 5 MB.
        let crowded = render_large(2_000_000, 200_000).len();
        assert!(crowded < 3_000_000, "{crowded} bytes");
        assert!(large < 3_000_000, "{large} bytes");
    }

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(thousands(12), "12");
    }
}
