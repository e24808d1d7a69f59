//! The bucketed path of `segment` (`--max-memory`, docs/streaming.md): the
//! kept transcripts are spilled as compact records into spatial buckets on
//! disk (blocks of whole tiles), and the score and fragment stages visit
//! one bucket at a time with the records of its neighbours within the
//! exact margin, so that every result equals the in-memory path's. Finished
//! buckets are kept as files, so that `--resume` reuses them after a kill.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::assign;
use super::fragments::{self, FragmentSummary, Fragments};
use super::prepare::{self, Prepared};
use super::progress::Progress;
use super::report;
use super::report::Assignment;
use super::score_tiles::{self, Overlap, OwnedBest, ScoreClock, TileScores, TileSource};
use super::{SegmentParams, Segmentation, Summary, UnknownGenes};
use crate::backend::{Backend, FragmentSlots};
use crate::io::{
    FilterReason, IdKind, InputSpec, MembershipReport, MembershipTally, Nuclei, TranscriptLayout,
    Transcripts,
};
use crate::kernels::edge_similarity::HISTOGRAM_BINS;
use crate::model::Model;
use crate::output::aggregate::{CellAggregator, PerCellFacts, PerCellOutputs, WrittenRow};
use crate::output::{TableFormat, TableSink};
use crate::tiles::{self, Cell, TileGrid};
use arrow::array::RecordBatch;

/// Bytes a transcript of a tile (core and margin) costs while the tile is
/// scored: its graphs, embeddings and attention (measured about 1.8 KB at
/// the demo model's sizes; rounded up).
pub const TILE_BYTES_PER_TRANSCRIPT: f64 = 2048.0;

/// Bytes a record loaded for a bucket costs (the record, its columns and
/// its tile index).
pub const BUCKET_BYTES_PER_RECORD: f64 = 128.0;

/// Share of `--max-memory` given to the tile being scored and to the
/// records of its bucket; the rest holds what this path still keeps in
/// memory (the input rows, the per-row results).
const TILE_SHARE: f64 = 0.5;
const BUCKET_SHARE: f64 = 0.25;

/// Environment variable (builds with the `testing` feature only): abort the
/// process after this many finished bucket steps, as a kill would.
#[cfg(feature = "testing")]
pub const ABORT_AFTER_ENV: &str = "SEGGPU_TEST_ABORT_AFTER_BUCKETS";

/// Bytes of one spilled record: kept index, x, y, z, token, nucleus.
const RECORD_BYTES: usize = 4 + 3 * 8 + 4 + 4;

/// How the bucketed path runs.
#[derive(Debug, Clone)]
pub struct StreamSettings {
    /// Memory budget in bytes (`--max-memory`).
    pub max_memory: u64,
    /// Folder the spill folder is made in (`--tmp-dir`, default the output folder).
    pub tmp_dir: PathBuf,
    /// Output folder, naming the spill folder.
    pub out: PathBuf,
    /// Reuse the finished buckets of a killed run (`--resume`).
    pub resume: bool,
    /// Tiles per bucket side, instead of the choice from the budget (`--bucket-tiles`).
    pub bucket_tiles: Option<u64>,
}

/// Facts of a bucketed run, for the log (`streaming`).
#[derive(Debug, Clone, Serialize)]
pub struct StreamFacts {
    /// The budget, bytes.
    pub max_memory: u64,
    /// Where the buckets were spilled (removed at the end).
    pub spill_dir: String,
    /// Tiles per bucket side.
    pub bucket_tiles: u64,
    /// Occupied buckets.
    pub buckets: usize,
    /// Bucket steps (score and fragment) taken from a killed run by `--resume`.
    pub bucket_steps_reused: usize,
    /// Bytes of records spilled.
    pub spilled_bytes: u64,
    /// Most records loaded for one bucket (its own and its margin's).
    pub largest_bucket_records: usize,
    /// Transcripts gathered by the tiles (core and margin) per kept
    /// transcript scored: the recompute factor of the tiles.
    pub recompute_factor: f64,
    /// Records loaded by the score stage per record owned: the
    /// recompute factor of the buckets.
    pub bucket_load_factor: f64,
    /// Most input rows decoded and held at once: a batch of the reader and
    /// the rows waiting to be written (the path that reads and writes in
    /// batches; absent where the input rows are held whole).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub largest_rows_held: Option<usize>,
}

/// Parses a size such as `4G`, `512M`, `1.5GiB` or `1000000` (bytes);
/// K, M, G, T are powers of 1024.
pub fn parse_size(text: &str) -> std::result::Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let scale: f64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1.0,
        "K" | "KB" | "KIB" => 1024.0,
        "M" | "MB" | "MIB" => 1024f64.powi(2),
        "G" | "GB" | "GIB" => 1024f64.powi(3),
        "T" | "TB" | "TIB" => 1024f64.powi(4),
        _ => return Err(format!("`{text}` is not a size: expected a number with an optional unit K, M, G or T (e.g. 4G)")),
    };
    match number.parse::<f64>() {
        Ok(v) if v.is_finite() && v * scale >= 1.0 && v * scale < 1.8e19 => Ok((v * scale) as u64),
        _ => Err(format!(
            "`{text}` is not a size: expected a positive number with an optional unit K, M, G or T (e.g. 4G)"
        )),
    }
}

/// The peak resident memory of this process so far, in bytes (Linux; `None` elsewhere).
pub fn peak_rss_bytes() -> Option<u64> {
    status_bytes("VmHWM:")
}

/// A memory line of `/proc/self/status` in bytes (Linux; `None` elsewhere).
fn status_bytes(key: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// One spilled record, as loaded.
#[derive(Clone, Copy)]
struct Record {
    kept: u32,
    pos: [f64; 3],
    token: u32,
    member: i32,
}

impl Record {
    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.kept.to_le_bytes());
        for v in self.pos {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&self.token.to_le_bytes());
        out.extend_from_slice(&self.member.to_le_bytes());
    }

    fn read(b: &[u8]) -> Self {
        let u = |at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        let f = |at: usize| {
            let mut v = [0u8; 8];
            v.copy_from_slice(&b[at..at + 8]);
            f64::from_le_bytes(v)
        };
        Record {
            kept: u(0),
            pos: [f(4), f(12), f(20)],
            token: u(28),
            member: u(32) as i32,
        }
    }
}

/// The buckets: blocks of `side × side` tile cores, aligned with the grid.
struct BucketPlan {
    side: u64,
    /// Occupied buckets `[row, column]` (in bucket units), ascending.
    cells: Vec<Cell>,
    /// Tiles of every occupied bucket, ascending.
    tiles: Vec<Vec<Cell>>,
}

impl BucketPlan {
    fn new(grid: &TileGrid, side: u64) -> Self {
        let mut cells: Vec<Cell> = Vec::new();
        let mut tiles: Vec<Vec<Cell>> = Vec::new();
        let mut by_cell: HashMap<Cell, usize> = HashMap::new();
        for t in 0..grid.len() {
            let tile = grid.tile(t);
            let bucket = [tile[0] / side, tile[1] / side];
            let at = *by_cell.entry(bucket).or_insert_with(|| {
                cells.push(bucket);
                tiles.push(Vec::new());
                cells.len() - 1
            });
            tiles[at].push(tile);
        }
        let mut order: Vec<usize> = (0..cells.len()).collect();
        order.sort_by_key(|&i| cells[i]);
        BucketPlan {
            side,
            cells: order.iter().map(|&i| cells[i]).collect(),
            tiles: order
                .iter()
                .map(|&i| std::mem::take(&mut tiles[i]))
                .collect(),
        }
    }

    fn index_of(&self, tile: Cell) -> usize {
        let bucket = [tile[0] / self.side, tile[1] / self.side];
        self.cells
            .binary_search(&bucket)
            .expect("every tile lies in an occupied bucket")
    }

    /// Bounds `[x0, y0, x1, y1]` of bucket `b` extended by `reach` µm, each
    /// side unbounded at the border of the grid (as tiles are).
    fn reach(&self, grid: &TileGrid, b: usize, reach: f64) -> [f64; 4] {
        let [row, col] = self.cells[b];
        let first = [row * self.side, col * self.side];
        let last = [
            (first[0] + self.side).min(grid.rows) - 1,
            (first[1] + self.side).min(grid.cols) - 1,
        ];
        let lo = grid.core(first);
        let hi = grid.core(last);
        let side = |at_border: bool, v: f64| if at_border { None } else { Some(v) };
        [
            side(first[1] == 0, lo[0] - reach).unwrap_or(f64::NEG_INFINITY),
            side(first[0] == 0, lo[1] - reach).unwrap_or(f64::NEG_INFINITY),
            side(last[1] + 1 == grid.cols, hi[2] + reach).unwrap_or(f64::INFINITY),
            side(last[0] + 1 == grid.rows, hi[3] + reach).unwrap_or(f64::INFINITY),
        ]
    }

    /// Occupied buckets whose records may lie within `reach` µm of bucket `b`.
    fn near(&self, grid: &TileGrid, b: usize, reach: f64) -> Vec<usize> {
        let span = (self.side as f64) * grid.size;
        let rings = (reach / span).ceil();
        let rings = if rings.is_finite() {
            rings.max(0.0) as u64
        } else {
            u64::MAX
        };
        let [row, col] = self.cells[b];
        (0..self.cells.len())
            .filter(|&o| {
                let [r, c] = self.cells[o];
                r.abs_diff(row) <= rings && c.abs_diff(col) <= rings
            })
            .collect()
    }
}

/// The spill folder: removed when dropped unless the process dies first
/// (a kill leaves it for `--resume`).
struct SpillDir {
    path: PathBuf,
}

impl SpillDir {
    fn file(&self, kind: &str, b: usize) -> PathBuf {
        self.path.join(kind).join(format!("b{b}.bin"))
    }

    /// Writes `bytes` to `path` under a temporary name, then renames it, so
    /// that a file present is complete.
    fn write(&self, path: &Path, bytes: &[u8]) -> Result<()> {
        let part = path.with_extension("part");
        let written = std::fs::File::create(&part)
            .and_then(|mut f| f.write_all(bytes).and_then(|()| f.flush()))
            .and_then(|()| std::fs::rename(&part, path));
        written.with_context(|| {
            format!(
                "cannot write spill file {} (--tmp-dir {}); the bucketed path needs free space there for about 40 bytes per transcript",
                path.display(),
                self.path.parent().unwrap_or(&self.path).display()
            )
        })
    }

    fn read(&self, path: &Path) -> Result<Vec<u8>> {
        std::fs::read(path).with_context(|| format!("cannot read spill file {}", path.display()))
    }
}

impl Drop for SpillDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Records of the buckets `near`, within `bounds`, sorted by kept index;
/// with whether each is owned by bucket `own`.
fn load(
    spill: &SpillDir,
    near: &[usize],
    own: usize,
    bounds: [f64; 4],
) -> Result<(Vec<Record>, Vec<bool>)> {
    let mut records: Vec<(Record, bool)> = Vec::new();
    for &o in near {
        let bytes = spill.read(&spill.file("records", o))?;
        for chunk in bytes.chunks_exact(RECORD_BYTES) {
            let r = Record::read(chunk);
            let [x, y, _] = r.pos;
            if o == own || (x >= bounds[0] && y >= bounds[1] && x < bounds[2] && y < bounds[3]) {
                records.push((r, o == own));
            }
        }
    }
    records.sort_unstable_by_key(|(r, _)| r.kept);
    Ok(records.into_iter().unzip())
}

/// Aborts after `steps` finished bucket steps when the test hook asks for it.
#[cfg(feature = "testing")]
fn test_abort(steps: usize) {
    if std::env::var(ABORT_AFTER_ENV)
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .is_some_and(|n| steps >= n)
    {
        std::process::abort();
    }
}

#[cfg(not(feature = "testing"))]
fn test_abort(_steps: usize) {}

/// Transcripts owned by the fullest tile of `grid` among `points`.
fn fullest_tile(grid: &TileGrid, points: &[[f64; 2]]) -> u64 {
    let mut per_tile: HashMap<Cell, u64> = HashMap::with_capacity(grid.len());
    for &p in points {
        *per_tile.entry(grid.owner(p)).or_default() += 1;
    }
    per_tile.values().copied().max().unwrap_or(1)
}

/// Tiles per bucket side for `budget` bytes: the largest block whose
/// records with the margin fit its share, at the density of the fullest
/// tile (`fullest` transcripts); an error when the fullest tile with its
/// margin does not fit its share.
fn bucket_side(grid: &TileGrid, margin: f64, fullest: u64, budget: u64) -> Result<u64> {
    let whole = grid.cols.max(grid.rows);
    if !margin.is_finite() {
        // One tile holds everything: there is nothing to bound.
        return Ok(whole);
    }
    let fullest = fullest.max(1) as f64;
    let size = grid.size;
    let tile = fullest * ((size + 2.0 * margin) / size).powi(2);
    if tile * TILE_BYTES_PER_TRANSCRIPT > budget as f64 * TILE_SHARE {
        bail!(
            "--max-memory {budget} bytes is too small: the fullest tile of {size} µm with its {margin:.1} µm margin holds about {tile:.0} transcripts here, about {} MB to score (half of --max-memory is for that); use a larger --max-memory or a smaller --tile-size",
            (tile * TILE_BYTES_PER_TRANSCRIPT / 1e6).ceil()
        );
    }
    // fullest · ((side·size + 2·margin) / size)² ≤ records
    let records = budget as f64 * BUCKET_SHARE / BUCKET_BYTES_PER_RECORD;
    let side = ((records / fullest).sqrt() * size - 2.0 * margin) / size;
    Ok((side.floor().max(1.0) as u64).min(whole))
}

/// Segments one sample on the bucketed path; the same results as
/// [`super::segment`], with the facts of the buckets. The input rows and
/// the per-row results are held in memory (the outputs that need them);
/// [`segment_file`] is the path that holds neither.
pub fn segment(
    mut transcripts: Transcripts,
    nuclei: &Nuclei,
    model: &Model,
    params: &SegmentParams,
    backend: &mut dyn Backend,
    progress: &Progress,
    settings: &StreamSettings,
) -> Result<(Segmentation, Transcripts, StreamFacts)> {
    let mut seconds = Vec::new();
    let clock = Instant::now();
    let mut prepared = prepare::run(&mut transcripts, nuclei, model, params)?;
    // Membership and z are settled (in the records from here on); no output reads them.
    transcripts.nuclear_cell = None;
    transcripts.z = Vec::new();
    let grid = prepared.grid.clone();
    let side = match settings.bucket_tiles {
        Some(side) => side.max(1),
        None => bucket_side(
            &grid,
            prepared.margin,
            fullest_tile(&grid, &prepared.flat),
            settings.max_memory,
        )?,
    };
    let plan = BucketPlan::new(&grid, side);
    seconds.push(("prepare", clock.elapsed().as_secs_f64()));

    let clock = Instant::now();
    let (spill, reuse, spilled_bytes) = spill(&prepared, &plan, params, model, settings)?;
    // The spilled columns are read back per bucket from here on.
    prepared.flat = Vec::new();
    prepared.tokens = Vec::new();
    prepared.member = Vec::new();
    seconds.push(("spill", clock.elapsed().as_secs_f64()));
    let held = status_bytes("VmRSS:").unwrap_or(0);
    let left = settings.max_memory as f64 * (1.0 - TILE_SHARE - BUCKET_SHARE);
    if held as f64 > left {
        log::warn!(
            "--max-memory {} bytes: this path holds the input rows in memory for the outputs asked for ({} MB now), more than the {:.0} MB the budget leaves for them; the peak will exceed --max-memory (docs/streaming.md)",
            settings.max_memory,
            held / 1_000_000,
            left / 1e6
        );
    }

    let n_kept = prepared.kept.len();
    let mut work = Work::default();
    let scores = score_stage(
        &spill,
        &plan,
        &grid,
        prepared.margin,
        n_kept,
        nuclei,
        model,
        params,
        backend,
        progress,
        reuse,
        &mut work,
    )?;
    seconds.push(("graphs", work.clock.graph));
    seconds.push(("model+score", work.clock.model));

    let clock = Instant::now();
    let (assigned, fragments) = assign_and_fragments(
        &spill,
        &plan,
        &grid,
        &scores,
        model,
        params,
        backend,
        reuse,
        &mut work,
        |labels, candidates, min_transcripts| {
            Ok(fragments::name_components(
                labels,
                candidates,
                &prepared.kept,
                &transcripts.id_key,
                min_transcripts,
            ))
        },
    )?;
    seconds.push(("assign+fragments", clock.elapsed().as_secs_f64()));

    let facts = work.facts(
        settings,
        &spill,
        side,
        plan.cells.len(),
        spilled_bytes,
        n_kept,
    );
    drop(spill);
    let mut result = report::run(report::Stages {
        filter: std::mem::take(&mut transcripts.filter),
        nuclei,
        prepared: &prepared,
        scores: &scores,
        assigned: &assigned,
        fragments,
        score_cut: params.score_cut,
        tile_size: params.tile_size,
        backend: backend.describe(),
    });
    result.stage_seconds = seconds;
    Ok((result, transcripts, facts))
}

/// The score cut over every kept transcript's best score, then (when
/// fragments are on) the fragment stage bucket by bucket; `name` names the
/// components, given the smallest fragment.
#[allow(clippy::too_many_arguments)]
fn assign_and_fragments(
    spill: &SpillDir,
    plan: &BucketPlan,
    grid: &TileGrid,
    scores: &TileScores,
    model: &Model,
    params: &SegmentParams,
    backend: &mut dyn Backend,
    reuse: bool,
    work: &mut Work,
    name: impl FnOnce(&[u32], &[u32], usize) -> Result<(Vec<Option<u32>>, Vec<String>)>,
) -> Result<(assign::Assigned, Option<Fragments>)> {
    let assigned = assign::run(scores, params.score_cut);
    let Some(settings) = params.fragments else {
        return Ok((assigned, None));
    };
    let fragment_params = fragments::FragmentParams {
        k_tx: params.graph.k_tx,
        dist_tx: params.graph.dist_tx,
        cut: settings.cut.unwrap_or(assigned.cut),
        min_transcripts: settings.min_transcripts,
    };
    let fragments = bucketed_fragments(
        spill,
        plan,
        grid,
        scores.best_score.len(),
        &assigned.assigned,
        model,
        &fragment_params,
        backend,
        reuse,
        work,
        |labels, candidates| name(labels, candidates, settings.min_transcripts),
    )?;
    Ok((assigned, Some(fragments)))
}

/// Work counted over the bucket steps, for the log.
#[derive(Default)]
struct Work {
    clock: ScoreClock,
    /// Bucket steps finished (score and fragment).
    steps: usize,
    /// Bucket steps taken from a killed run.
    reused: usize,
    /// Records loaded by the score stage.
    loaded: u64,
    /// Most records loaded for one bucket.
    largest: usize,
    /// Most input rows decoded and held at once (the bounded path).
    rows_held: usize,
}

impl Work {
    fn step(&mut self) {
        self.steps += 1;
        test_abort(self.steps);
    }

    fn facts(
        &self,
        settings: &StreamSettings,
        spill: &SpillDir,
        side: u64,
        buckets: usize,
        spilled_bytes: u64,
        n_kept: usize,
    ) -> StreamFacts {
        StreamFacts {
            max_memory: settings.max_memory,
            spill_dir: spill.path.display().to_string(),
            bucket_tiles: side,
            buckets,
            bucket_steps_reused: self.reused,
            spilled_bytes,
            largest_bucket_records: self.largest,
            largest_rows_held: (self.rows_held > 0).then_some(self.rows_held),
            recompute_factor: ratio(self.clock.gathered, n_kept as u64),
            bucket_load_factor: ratio(self.loaded, n_kept as u64),
        }
    }
}

/// The score stage bucket by bucket: every bucket's tiles from its records
/// and those of its neighbours within `margin`; the best match of every
/// kept transcript.
#[allow(clippy::too_many_arguments)]
fn score_stage(
    spill: &SpillDir,
    plan: &BucketPlan,
    grid: &TileGrid,
    margin: f64,
    n_kept: usize,
    nuclei: &Nuclei,
    model: &Model,
    params: &SegmentParams,
    backend: &mut dyn Backend,
    progress: &Progress,
    reuse: bool,
    work: &mut Work,
) -> Result<TileScores> {
    let bd_members = tiles::bucket(grid, &nuclei.centroid);
    let overlap = score_tiles::Overlap::from_env(backend)?;
    let mut scores = TileScores {
        best_score: vec![f32::NAN; n_kept],
        best_index: vec![-1; n_kept],
        graph_seconds: 0.0,
        model_seconds: 0.0,
    };
    let bar = progress.bar("buckets", plan.cells.len() as u64);
    for b in 0..plan.cells.len() {
        bar.inc(1);
        let path = spill.file("scores", b);
        let found: Vec<(u32, f32, i32)> = if reuse && path.exists() {
            work.reused += 1;
            spill
                .read(&path)?
                .chunks_exact(12)
                .map(|c| {
                    let w = |at: usize| [c[at], c[at + 1], c[at + 2], c[at + 3]];
                    (
                        u32::from_le_bytes(w(0)),
                        f32::from_le_bytes(w(4)),
                        i32::from_le_bytes(w(8)),
                    )
                })
                .collect()
        } else {
            let near = plan.near(grid, b, margin);
            let bounds = plan.reach(grid, b, margin);
            let (records, _) = load(spill, &near, b, bounds)?;
            work.loaded += records.len() as u64;
            work.largest = work.largest.max(records.len());
            let found = score_bucket(
                &records,
                grid,
                &plan.tiles[b],
                &bd_members,
                nuclei,
                model,
                params,
                backend,
                overlap,
                &mut work.clock,
            )?;
            let mut bytes = Vec::with_capacity(found.len() * 12);
            for &(k, s, n) in &found {
                bytes.extend_from_slice(&k.to_le_bytes());
                bytes.extend_from_slice(&s.to_le_bytes());
                bytes.extend_from_slice(&n.to_le_bytes());
            }
            spill.write(&path, &bytes)?;
            found
        };
        for (k, s, n) in found {
            scores.best_score[k as usize] = s;
            scores.best_index[k as usize] = n;
        }
        work.step();
    }
    bar.finish_and_clear();
    scores.graph_seconds = work.clock.graph;
    scores.model_seconds = work.clock.model;
    Ok(scores)
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

/// Makes the spill folder (a run without `--resume` removes a stale one
/// first); returns it and the key of the run that left it, if any.
fn open_spill(settings: &StreamSettings) -> Result<(SpillDir, Option<String>)> {
    let out = std::path::absolute(&settings.out).unwrap_or_else(|_| settings.out.clone());
    let name = format!(
        ".seggpu-spill-{}",
        &hex(&Sha256::digest(out.to_string_lossy().as_bytes()))[..16]
    );
    let path = settings.tmp_dir.join(name);
    let previous = std::fs::read_to_string(path.join(MANIFEST)).ok();
    if !settings.resume && path.exists() {
        std::fs::remove_dir_all(&path)
            .with_context(|| format!("cannot remove the old spill folder {}", path.display()))?;
    }
    for kind in ["records", "scores", "fragments"] {
        std::fs::create_dir_all(path.join(kind)).with_context(|| {
            format!(
                "cannot create the spill folder {} (--tmp-dir {})",
                path.display(),
                settings.tmp_dir.display()
            )
        })?;
    }
    Ok((SpillDir { path }, previous))
}

/// File of the spill folder naming the key of the run that wrote it.
const MANIFEST: &str = "manifest.json";

/// The key of a run: what the buckets' results depend on, with the records
/// hashed into `key` by the caller.
fn start_key(params: &SegmentParams, model: &Model, side: u64, tile_size: f64) -> Result<Sha256> {
    let mut key = Sha256::new();
    key.update(env!("CARGO_PKG_VERSION").as_bytes());
    key.update(serde_json::to_string(params)?.as_bytes());
    key.update(model.sha256.as_bytes());
    key.update(side.to_le_bytes());
    key.update(tile_size.to_le_bytes());
    Ok(key)
}

/// Writes the key; whether the finished buckets of the run that left the
/// folder may be reused (`--resume` and the same key). Otherwise they are
/// removed.
fn settle_key(
    spill: &SpillDir,
    key: Sha256,
    previous: Option<String>,
    settings: &StreamSettings,
) -> Result<bool> {
    let key = hex(&key.finalize());
    let reuse = settings.resume && previous.as_deref() == Some(key.as_str());
    if settings.resume && !reuse {
        log::warn!(
            "--resume: no finished buckets of this run under {} (another sample, model or setting, or none left); starting over",
            spill.path.display()
        );
        for kind in ["scores", "fragments"] {
            let dir = spill.path.join(kind);
            std::fs::remove_dir_all(&dir)
                .and_then(|()| std::fs::create_dir_all(&dir))
                .with_context(|| format!("cannot empty the spill folder {}", dir.display()))?;
        }
    }
    spill.write(&spill.path.join(MANIFEST), key.as_bytes())?;
    Ok(reuse)
}

/// Writes the records of every bucket and the manifest; returns the spill
/// folder, whether its finished buckets may be reused, and the bytes spilled.
fn spill(
    prepared: &Prepared,
    plan: &BucketPlan,
    params: &SegmentParams,
    model: &Model,
    settings: &StreamSettings,
) -> Result<(SpillDir, bool, u64)> {
    let (spill, previous) = open_spill(settings)?;
    // Records grouped by bucket, each group in kept order.
    let bucket_of: Vec<u32> = prepared
        .flat
        .iter()
        .map(|&p| plan.index_of(prepared.grid.owner(p)) as u32)
        .collect();
    let mut starts = vec![0usize; plan.cells.len() + 1];
    for &b in &bucket_of {
        starts[b as usize + 1] += 1;
    }
    for b in 0..plan.cells.len() {
        starts[b + 1] += starts[b];
    }
    let mut order = vec![0u32; bucket_of.len()];
    let mut next = starts.clone();
    for (i, &b) in bucket_of.iter().enumerate() {
        order[next[b as usize]] = i as u32;
        next[b as usize] += 1;
    }
    drop(bucket_of);
    let mut key = start_key(params, model, plan.side, prepared.grid.size)?;
    let mut bytes = Vec::new();
    let mut total = 0u64;
    for b in 0..plan.cells.len() {
        bytes.clear();
        for &i in &order[starts[b]..starts[b + 1]] {
            let i = i as usize;
            Record {
                kept: i as u32,
                pos: prepared.pos[i],
                token: prepared.tokens[i],
                member: prepared.member[i],
            }
            .write(&mut bytes);
        }
        key.update(&bytes);
        total += bytes.len() as u64;
        spill.write(&spill.file("records", b), &bytes)?;
    }
    let reuse = settle_key(&spill, key, previous, settings)?;
    Ok((spill, reuse, total))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Scores the tiles of one bucket from its records (its own and its
/// margin's); returns (kept index, score, nucleus) of the owned transcripts
/// with a candidate. With `overlap`, a tile's graphs are built while the
/// backend scores the one before (as in the in-memory path).
#[allow(clippy::too_many_arguments)]
fn score_bucket(
    records: &[Record],
    grid: &TileGrid,
    bucket_tiles: &[Cell],
    bd_members: &tiles::Buckets,
    nuclei: &Nuclei,
    model: &Model,
    params: &SegmentParams,
    backend: &mut dyn Backend,
    overlap: Overlap,
    work: &mut ScoreClock,
) -> Result<Vec<(u32, f32, i32)>> {
    let flat: Vec<[f64; 2]> = records.iter().map(|r| [r.pos[0], r.pos[1]]).collect();
    let pos: Vec<[f64; 3]> = records.iter().map(|r| r.pos).collect();
    let tokens: Vec<u32> = records.iter().map(|r| r.token).collect();
    let member: Vec<i32> = records.iter().map(|r| r.member).collect();
    let members = tiles::bucket(grid, &flat);
    let source = TileSource {
        grid,
        members: &members,
        flat: &flat,
        pos: &pos,
        tokens: &tokens,
        member: &member,
        bd_members,
    };
    let mut found: Vec<OwnedBest> = Vec::new();
    let built = bucket_tiles.iter().map(|&tile| {
        Ok(score_tiles::build_tile(
            &source,
            tile,
            nuclei,
            &params.graph,
        ))
    });
    score_tiles::score_all(built, overlap, model, backend, work, |_, owned| {
        found.extend_from_slice(owned);
        Ok(())
    })?;
    Ok(found
        .into_iter()
        .map(|(local, s, n)| (records[local as usize].kept, s, n))
        .collect())
}

/// Union–find over kept transcripts whose roots are the smallest member.
struct Components {
    parent: Vec<u32>,
}

impl Components {
    fn new(n: usize) -> Self {
        Components {
            parent: (0..n as u32).collect(),
        }
    }

    fn find(&mut self, mut a: u32) -> u32 {
        while self.parent[a as usize] != a {
            let up = self.parent[self.parent[a as usize] as usize];
            self.parent[a as usize] = up;
            a = up;
        }
        a
    }

    fn union(&mut self, a: u32, b: u32) {
        let (ra, rb) = (self.find(a), self.find(b));
        let (lo, hi) = if ra < rb { (ra, rb) } else { (rb, ra) };
        self.parent[hi as usize] = lo;
    }
}

/// A fragment bucket file: the histogram as (bin, count) pairs, the two
/// edge counts, then the candidate edges at or above the cut.
struct FragmentBucket {
    histogram: Vec<(u32, u32)>,
    neighbour_edges: u64,
    candidate_edges: u64,
    edges: Vec<(u32, u32, f32)>,
}

impl FragmentBucket {
    fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&(self.histogram.len() as u64).to_le_bytes());
        for &(bin, count) in &self.histogram {
            out.extend_from_slice(&bin.to_le_bytes());
            out.extend_from_slice(&count.to_le_bytes());
        }
        out.extend_from_slice(&self.neighbour_edges.to_le_bytes());
        out.extend_from_slice(&self.candidate_edges.to_le_bytes());
        for &(a, b, s) in &self.edges {
            out.extend_from_slice(&a.to_le_bytes());
            out.extend_from_slice(&b.to_le_bytes());
            out.extend_from_slice(&s.to_le_bytes());
        }
        out
    }

    fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self> {
        let broken = || anyhow::anyhow!("spill file {} is damaged", path.display());
        let u64_at = |at: usize| -> Result<u64> {
            let b = bytes.get(at..at + 8).ok_or_else(broken)?;
            Ok(u64::from_le_bytes(b.try_into()?))
        };
        let u32_at = |at: usize| -> Result<u32> {
            let b = bytes.get(at..at + 4).ok_or_else(broken)?;
            Ok(u32::from_le_bytes(b.try_into()?))
        };
        let bins = u64_at(0)? as usize;
        let mut histogram = Vec::with_capacity(bins);
        let mut at = 8;
        for _ in 0..bins {
            histogram.push((u32_at(at)?, u32_at(at + 4)?));
            at += 8;
        }
        let neighbour_edges = u64_at(at)?;
        let candidate_edges = u64_at(at + 8)?;
        at += 16;
        let rest = bytes.get(at..).ok_or_else(broken)?;
        if rest.len() % 12 != 0 {
            return Err(broken());
        }
        let edges = rest
            .chunks_exact(12)
            .map(|c| {
                let w = |o: usize| [c[o], c[o + 1], c[o + 2], c[o + 3]];
                (
                    u32::from_le_bytes(w(0)),
                    u32::from_le_bytes(w(4)),
                    f32::from_le_bytes(w(8)),
                )
            })
            .collect();
        Ok(FragmentBucket {
            histogram,
            neighbour_edges,
            candidate_edges,
            edges,
        })
    }
}

/// The fragment stage (docs/contract.md §9) bucket by bucket: neighbour
/// lists and similarities of each bucket's own transcripts (its records
/// within `dist_tx` around it suffice), the sample-wide histogram merged,
/// then components over the spilled candidate edges.
#[allow(clippy::too_many_arguments)]
fn bucketed_fragments(
    spill: &SpillDir,
    plan: &BucketPlan,
    grid: &TileGrid,
    n_kept: usize,
    assigned: &[bool],
    model: &Model,
    params: &fragments::FragmentParams,
    backend: &mut dyn Backend,
    reuse: bool,
    work: &mut Work,
    name: impl FnOnce(&[u32], &[u32]) -> Result<(Vec<Option<u32>>, Vec<String>)>,
) -> Result<Fragments> {
    let dim = model.arch.emb;
    let unit = fragments::normalised_embeddings(&model.tx_embedding, dim);
    let k = params.k_tx;
    // Neighbours lie within dist_tx (inclusive, in 3-D, so also in x–y);
    // the slack only loads a few more records, which cannot change them.
    let reach = params
        .dist_tx
        .map_or(f64::INFINITY, |d| d + 1e-6 * (1.0 + d));
    let mut histogram = vec![0u32; HISTOGRAM_BINS];
    let (mut neighbour_edges, mut candidate_edges) = (0u64, 0u64);
    for b in 0..plan.cells.len() {
        let path = spill.file("fragments", b);
        let bucket = if reuse && path.exists() {
            work.reused += 1;
            FragmentBucket::from_bytes(&spill.read(&path)?, &path)?
        } else {
            let near = plan.near(grid, b, reach);
            let (records, own) = load(spill, &near, b, plan.reach(grid, b, reach))?;
            let pos: Vec<[f64; 3]> = records.iter().map(|r| r.pos).collect();
            let tokens: Vec<u32> = records.iter().map(|r| r.token).collect();
            let mut neighbors = fragments::fragment_neighbours(&pos, k, params.dist_tx);
            // Only the bucket's own transcripts count here; the others are
            // counted by their own buckets.
            for (row, &mine) in neighbors.chunks_mut(k.max(1)).zip(&own) {
                if !mine {
                    row.fill(-1);
                }
            }
            let scored = backend.fragment_similarity(FragmentSlots {
                neighbors: &neighbors,
                k,
                tokens: &tokens,
                unit: &unit,
                dim,
            })?;
            let mut bucket = FragmentBucket {
                histogram: scored
                    .histogram
                    .iter()
                    .enumerate()
                    .filter(|(_, &c)| c > 0)
                    .map(|(bin, &c)| (bin as u32, c))
                    .collect(),
                neighbour_edges: 0,
                candidate_edges: 0,
                edges: Vec::new(),
            };
            for (e, (&j, &s)) in neighbors.iter().zip(&scored.similarity).enumerate() {
                if j < 0 {
                    continue;
                }
                bucket.neighbour_edges += 1;
                let (a, b) = (records[e / k].kept, records[j as usize].kept);
                if assigned[a as usize] || assigned[b as usize] {
                    continue;
                }
                bucket.candidate_edges += 1;
                // The threshold is at least the cut, so lower edges never count.
                if s >= params.cut {
                    bucket.edges.push((a, b, s));
                }
            }
            spill.write(&path, &bucket.to_bytes())?;
            bucket
        };
        for &(bin, count) in &bucket.histogram {
            histogram[bin as usize] += count;
        }
        neighbour_edges += bucket.neighbour_edges;
        candidate_edges += bucket.candidate_edges;
        work.step();
    }
    let median = fragments::histogram_median(&histogram);
    let threshold = median.map_or(params.cut, |m| m.max(params.cut));

    let mut components = Components::new(n_kept);
    let mut kept_edges = 0usize;
    for b in 0..plan.cells.len() {
        let path = spill.file("fragments", b);
        let bucket = FragmentBucket::from_bytes(&spill.read(&path)?, &path)?;
        for (a, b, s) in bucket.edges {
            if s >= threshold {
                kept_edges += 1;
                components.union(a, b);
            }
        }
    }
    let candidates: Vec<u32> = (0..assigned.len() as u32)
        .filter(|&i| !assigned[i as usize])
        .collect();
    // The smallest kept index of a component orders components as the
    // smallest candidate index does (the backend's labels).
    let labels: Vec<u32> = candidates.iter().map(|&c| components.find(c)).collect();
    drop(components);
    let (fragment_of, ids) = name(&labels, &candidates)?;
    let summary = FragmentSummary {
        candidates: candidates.len(),
        neighbour_edges: neighbour_edges as usize,
        candidate_edges: candidate_edges as usize,
        median_similarity: median,
        threshold,
        kept_edges,
        fragments: ids.len(),
        fragment_transcripts: fragment_of.iter().filter(|f| f.is_some()).count(),
    };
    Ok(Fragments {
        fragment_of,
        ids,
        summary,
    })
}

/// Where the path that reads and writes in batches writes its tables.
pub struct FileOutputs {
    /// Staged path of `segger_transcripts.parquet` (or `.csv`), when asked for.
    pub transcripts: Option<PathBuf>,
    /// Staged path of `cells.parquet` (or `.csv`), when asked for.
    pub cells: Option<PathBuf>,
    /// Format of both.
    pub format: TableFormat,
    /// The polygons, AnnData, SpatialData and report, when any is asked for.
    pub per_cell: Option<PerCellOutputs>,
}

/// What [`segment_file`] found, for the log.
pub struct FileRun {
    /// The `result` object of the log.
    pub summary: Summary,
    /// Seconds per stage.
    pub stage_seconds: Vec<(&'static str, f64)>,
    /// Nuclear membership as checked.
    pub membership: MembershipReport,
    /// The buckets.
    pub facts: StreamFacts,
    /// The per-cell outputs, when written.
    pub per_cell: Option<PerCellFacts>,
}

/// Rows per batch written to the output tables: a multiple of the parquet
/// writer's 1024-row mini-batches that divides [`crate::output::ROW_GROUP`],
/// so that the pages are those of writing a whole row group at once.
const WRITE_ROWS: usize = 64 * 1024;

/// Environment variable (builds with the `testing` feature only): rows per
/// written batch instead of [`WRITE_ROWS`] (a multiple of 1024).
#[cfg(feature = "testing")]
pub const WRITE_ROWS_ENV: &str = "SEGGPU_TEST_WRITE_ROWS";

fn write_rows() -> usize {
    #[cfg(feature = "testing")]
    if let Some(n) = std::env::var(WRITE_ROWS_ENV)
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        return n.max(1024) / 1024 * 1024;
    }
    WRITE_ROWS
}

/// A spill file written record by record under a temporary name.
struct SpillWriter {
    path: PathBuf,
    part: PathBuf,
    file: std::io::BufWriter<std::fs::File>,
    tmp_dir: PathBuf,
}

impl SpillWriter {
    fn create(spill: &SpillDir, path: PathBuf) -> Result<Self> {
        let part = path.with_extension("part");
        let tmp_dir = spill.path.parent().unwrap_or(&spill.path).to_path_buf();
        let file = std::fs::File::create(&part)
            .map_err(anyhow::Error::from)
            .with_context(|| spill_error(&path, &tmp_dir))?;
        Ok(SpillWriter {
            path,
            part,
            file: std::io::BufWriter::with_capacity(1 << 16, file),
            tmp_dir,
        })
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.file
            .write_all(bytes)
            .map_err(anyhow::Error::from)
            .with_context(|| spill_error(&self.path, &self.tmp_dir))
    }

    fn finish(mut self) -> Result<()> {
        self.file
            .flush()
            .and_then(|()| std::fs::rename(&self.part, &self.path))
            .map_err(anyhow::Error::from)
            .with_context(|| spill_error(&self.path, &self.tmp_dir))
    }
}

fn spill_error(path: &Path, tmp_dir: &Path) -> String {
    format!(
        "cannot write spill file {} (--tmp-dir {}); the bucketed path needs free space there for about 40 bytes per transcript",
        path.display(),
        tmp_dir.display()
    )
}

/// The records of a spill file, read in blocks.
fn each_record(path: &Path, mut f: impl FnMut(Record) -> Result<()>) -> Result<()> {
    use std::io::Read;
    let file = std::fs::File::open(path)
        .with_context(|| format!("cannot read spill file {}", path.display()))?;
    let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
    let mut block = vec![0u8; RECORD_BYTES * 4096];
    loop {
        let mut filled = 0;
        while filled < block.len() {
            let n = reader
                .read(&mut block[filled..])
                .with_context(|| format!("cannot read spill file {}", path.display()))?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled % RECORD_BYTES != 0 {
            bail!("spill file {} is damaged", path.display());
        }
        for chunk in block[..filled].chunks_exact(RECORD_BYTES) {
            f(Record::read(chunk))?;
        }
        if filled < block.len() {
            return Ok(());
        }
    }
}

/// The kept transcripts as pass 1 leaves them: every one a record in
/// `kept.bin`, in input order.
struct Kept {
    /// Filter of every input row.
    filter: Vec<Option<FilterReason>>,
    /// Input row of every kept transcript.
    rows: Vec<u32>,
    membership: MembershipReport,
    largest_radius: f64,
    /// Kept points with the least and largest x and y: the extent.
    extremes: Vec<[f64; 2]>,
}

/// Pass 1: reads the transcripts batch by batch, decides every row's
/// filter, token and membership as [`prepare::run`] does, and writes the
/// kept ones as records to `path`, in input order.
#[allow(clippy::too_many_arguments)]
fn read_pass(
    layout: &TranscriptLayout,
    spec: &InputSpec,
    nuclei: &Nuclei,
    model: &Model,
    params: &SegmentParams,
    spill: &SpillDir,
    path: &Path,
    work: &mut Work,
) -> Result<Kept> {
    use rayon::prelude::*;
    let index = model.gene_index();
    let by_id: HashMap<&str, i32> = nuclei
        .ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.as_str(), i as i32))
        .collect();
    let locator = prepare::NucleusLocator::new(nuclei);
    let mut tally = MembershipTally::new(nuclei);
    let mut stream = layout.stream(spec)?;
    let mut token_of: Vec<Option<u32>> = Vec::new();
    let mut missing_seen: Vec<bool> = Vec::new();
    let mut missing: Vec<String> = Vec::new();
    let mut filter: Vec<Option<FilterReason>> = Vec::new();
    let mut rows: Vec<u32> = Vec::new();
    let mut radius = prepare::polygon_radius(nuclei);
    let mut lo = [[f64::INFINITY; 2]; 2];
    let mut hi = [[f64::NEG_INFINITY; 2]; 2];
    let mut out = SpillWriter::create(spill, path.to_path_buf())?;
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next_chunk()? {
        let n = chunk.x.len();
        work.rows_held = work.rows_held.max(n);
        while token_of.len() < stream.genes() {
            let name = stream.gene_name(token_of.len() as u32);
            token_of.push(index.get(name).copied());
            missing_seen.push(false);
        }
        if let Some(cells) = &chunk.nuclear_cell {
            for cell in cells.iter().flatten() {
                tally.see(cell);
            }
        }
        let mut chunk_filter = chunk.filter;
        let mut kept_here: Vec<usize> = Vec::new();
        for (i, f) in chunk_filter.iter_mut().enumerate() {
            if f.is_some() {
                continue;
            }
            let g = chunk.gene[i] as usize;
            match token_of[g] {
                Some(_) => kept_here.push(i),
                None if params.unknown_genes == UnknownGenes::Skip => {
                    *f = Some(FilterReason::UnknownGene)
                }
                None => {
                    if !missing_seen[g] {
                        missing_seen[g] = true;
                        missing.push(stream.gene_name(g as u32).to_string());
                    }
                }
            }
        }
        if !missing.is_empty() {
            // The run stops after reading (the names of every missing gene).
            kept_here.clear();
        }
        let member: Vec<i32> = match &chunk.nuclear_cell {
            Some(cells) => kept_here
                .iter()
                .map(|&i| {
                    cells[i]
                        .as_deref()
                        .and_then(|cell| by_id.get(cell).copied())
                        .unwrap_or(-1)
                })
                .collect(),
            None => kept_here
                .par_iter()
                .map(|&i| locator.locate([chunk.x[i], chunk.y[i]]))
                .collect(),
        };
        bytes.clear();
        for (&i, &m) in kept_here.iter().zip(&member) {
            let pos = [chunk.x[i], chunk.y[i], chunk.z[i]];
            radius = radius.max(prepare::member_radius(nuclei, pos, m));
            for a in 0..2 {
                if pos[a] < lo[a][a] {
                    lo[a] = [pos[0], pos[1]];
                }
                if pos[a] > hi[a][a] {
                    hi[a] = [pos[0], pos[1]];
                }
            }
            Record {
                kept: rows.len() as u32,
                pos,
                token: token_of[chunk.gene[i] as usize].unwrap_or(0),
                member: m,
            }
            .write(&mut bytes);
            rows.push((chunk.row0 + i) as u32);
        }
        out.write(&bytes)?;
        filter.extend(chunk_filter);
    }
    out.finish()?;
    let n_rows = stream.rows();
    if n_rows == 0 {
        return Err(layout.no_rows_error());
    }
    let membership = tally.finish(nuclei, spec, &layout.columns())?;
    if !missing.is_empty() {
        return Err(prepare::unknown_genes_error(
            missing.iter().map(String::as_str).collect(),
        ));
    }
    if rows.is_empty() {
        bail!("no transcript is left after filtering ({n_rows} rows read); check --qv-min, the control prefixes and the gene vocabulary");
    }
    if layout.has_membership() && membership.source == "point_in_polygon" {
        // The flag column never marks a row: membership by the polygons.
        radius = relocate(spill, path, nuclei, &locator)?;
    }
    Ok(Kept {
        filter,
        rows,
        membership,
        largest_radius: radius,
        extremes: vec![lo[0], lo[1], hi[0], hi[1]],
    })
}

/// Rewrites the records of `path` with the membership by point-in-polygon;
/// returns the largest radius.
fn relocate(
    spill: &SpillDir,
    path: &Path,
    nuclei: &Nuclei,
    locator: &prepare::NucleusLocator,
) -> Result<f64> {
    let mut radius = prepare::polygon_radius(nuclei);
    let located = path.with_extension("located");
    let mut out = SpillWriter::create(spill, located.clone())?;
    let mut bytes = Vec::new();
    each_record(path, |mut r| {
        r.member = locator.locate([r.pos[0], r.pos[1]]);
        radius = radius.max(prepare::member_radius(nuclei, r.pos, r.member));
        bytes.clear();
        r.write(&mut bytes);
        out.write(&bytes)
    })?;
    out.finish()?;
    std::fs::rename(&located, path)
        .with_context(|| spill_error(path, spill.path.parent().unwrap_or(&spill.path)))?;
    Ok(radius)
}

/// Segments the sample of `spec` on the bucketed path reading and writing in
/// batches: the transcripts file is read batch by batch into records
/// spilled by bucket (never all rows at once), the buckets are scored and
/// fragmented as by [`segment`], and a last pass reads the file again to
/// write the transcripts and cells tables, row group by row group, with
/// the bytes of the in-memory path. Held per row meanwhile: the filter
/// (1 byte), and per kept transcript its row, best score and nucleus
/// (12 bytes) and the fragment stage's labels.
#[allow(clippy::too_many_arguments)]
pub fn segment_file(
    layout: &TranscriptLayout,
    id_kind: Option<IdKind>,
    spec: &InputSpec,
    nuclei: &Nuclei,
    model: &Model,
    params: &SegmentParams,
    backend: &mut dyn Backend,
    progress: &Progress,
    settings: &StreamSettings,
    outputs: &FileOutputs,
) -> Result<FileRun> {
    let mut seconds = Vec::new();
    let mut work = Work::default();
    let clock = Instant::now();
    let (spill, previous) = open_spill(settings)?;
    let kept_path = spill.path.join("kept.bin");
    let kept = read_pass(
        layout, spec, nuclei, model, params, &spill, &kept_path, &mut work,
    )?;
    let n_kept = kept.rows.len();
    let exact_margin = tiles::exact_margin(
        model.arch.layers(),
        params.graph.dist_tx.unwrap_or(f64::INFINITY),
        params.graph.dist_bd,
        kept.largest_radius,
    );
    let margin = params.margin.unwrap_or(exact_margin);
    // The extent first, then one point of every occupied core: the grid of
    // the in-memory path.
    let extent = prepare::tile_grid(&kept.extremes, params.tile_size, margin)?;
    let mut per_tile: HashMap<Cell, (u64, [f64; 2])> = HashMap::new();
    each_record(&kept_path, |r| {
        let p = [r.pos[0], r.pos[1]];
        per_tile.entry(extent.owner(p)).or_insert((0, p)).0 += 1;
        Ok(())
    })?;
    let fullest = per_tile.values().map(|v| v.0).max().unwrap_or(1);
    let mut points = kept.extremes.clone();
    points.extend(per_tile.values().map(|v| v.1));
    drop(per_tile);
    let grid = prepare::tile_grid(&points, params.tile_size, margin)?;
    let side = match settings.bucket_tiles {
        Some(side) => side.max(1),
        None => bucket_side(&grid, margin, fullest, settings.max_memory)?,
    };
    let plan = BucketPlan::new(&grid, side);

    // Records by bucket, each file in kept order; a bounded number of
    // files open at once.
    let mut key = start_key(params, model, plan.side, grid.size)?;
    let mut spilled_bytes = 0u64;
    let buckets: Vec<usize> = (0..plan.cells.len()).collect();
    for (sweep, group) in buckets.chunks(OPEN_SPILL_FILES).enumerate() {
        let mut writers = group
            .iter()
            .map(|&b| SpillWriter::create(&spill, spill.file("records", b)))
            .collect::<Result<Vec<_>>>()?;
        let mut bytes = Vec::with_capacity(RECORD_BYTES);
        each_record(&kept_path, |r| {
            bytes.clear();
            r.write(&mut bytes);
            if sweep == 0 {
                key.update(&bytes);
            }
            let b = plan.index_of(grid.owner([r.pos[0], r.pos[1]]));
            if b >= group[0] && b < group[0] + group.len() {
                spilled_bytes += RECORD_BYTES as u64;
                writers[b - group[0]].write(&bytes)?;
            }
            Ok(())
        })?;
        for w in writers {
            w.finish()?;
        }
    }
    std::fs::remove_file(&kept_path)
        .with_context(|| format!("cannot remove spill file {}", kept_path.display()))?;
    let reuse = settle_key(&spill, key, previous, settings)?;
    seconds.push(("read+spill", clock.elapsed().as_secs_f64()));

    let scores = score_stage(
        &spill, &plan, &grid, margin, n_kept, nuclei, model, params, backend, progress, reuse,
        &mut work,
    )?;
    seconds.push(("graphs", work.clock.graph));
    seconds.push(("model+score", work.clock.model));

    let clock = Instant::now();
    let (assigned, fragments) = assign_and_fragments(
        &spill,
        &plan,
        &grid,
        &scores,
        model,
        params,
        backend,
        reuse,
        &mut work,
        |labels, candidates, min_transcripts| {
            name_fragments(
                layout,
                id_kind,
                &kept.rows,
                labels,
                candidates,
                min_transcripts,
            )
        },
    )?;
    seconds.push(("assign+fragments", clock.elapsed().as_secs_f64()));
    let facts_spill = work.facts(
        settings,
        &spill,
        side,
        plan.cells.len(),
        spilled_bytes,
        n_kept,
    );
    drop(spill);

    // Per kept transcript: its cell (nucleus, then fragment) and score.
    let n_nuclei = nuclei.ids.len();
    let (fragment_of, fragment_ids, fragment_summary) = match fragments {
        Some(f) => (Some(f.fragment_of), f.ids, Some(f.summary)),
        None => (None, Vec::new(), None),
    };
    let kept_cell: Vec<u32> = (0..n_kept)
        .map(|i| {
            let fragment = fragment_of.as_ref().and_then(|f| f[i]);
            cell_of(&scores, &assigned.assigned, fragment, i, n_nuclei)
        })
        .collect();
    drop(fragment_of);
    let kept_score: Vec<f32> = scores
        .best_score
        .iter()
        .zip(&scores.best_index)
        .map(|(&s, &n)| if n >= 0 { s } else { f32::NAN })
        .collect();
    let stats = assigned.stats.clone();
    let cut = assigned.cut;
    drop(assigned);
    drop(scores);

    let clock = Instant::now();
    let mut cell_ids: Vec<&str> = nuclei.ids.iter().map(String::as_str).collect();
    cell_ids.extend(fragment_ids.iter().map(String::as_str));
    let written = write_pass(
        layout,
        id_kind,
        spec,
        &kept.filter,
        &kept_cell,
        &kept_score,
        &cell_ids,
        n_nuclei,
        outputs,
        &mut work,
    )?;
    let cells = report::cell_rows(
        nuclei,
        &fragment_ids,
        &written.sums[..n_nuclei],
        &written.sums[n_nuclei..],
    );
    if let Some(path) = &outputs.cells {
        crate::output::write_cells(path, &cells, outputs.format)?;
    }
    let per_cell = match written.per_cell {
        Some(aggregator) => {
            let facts = aggregator.finish(&cells, nuclei, written.gene_names)?;
            seconds.push(("polygons", facts.polygon_seconds));
            Some(facts)
        }
        None => None,
    };
    seconds.push(("write", clock.elapsed().as_secs_f64()));

    let mut filtered: std::collections::BTreeMap<&'static str, usize> = Default::default();
    for reason in kept.filter.iter().flatten() {
        *filtered.entry(reason.as_str()).or_default() += 1;
    }
    let summary = Summary {
        counts: report::Counts {
            read: kept.filter.len(),
            filtered,
            kept: n_kept,
            assigned: written.counts[0],
            fragment: written.counts[1],
            unassigned: written.counts[2],
            nuclei: n_nuclei,
            nuclei_skipped: nuclei.skipped.len(),
            cells_with_transcripts: written.sums[..n_nuclei].iter().filter(|c| c.0 > 0).count(),
            fragments: fragment_ids.len(),
        },
        score_cut: cut,
        score_cut_mode: match params.score_cut {
            super::ScoreCut::Auto => "auto",
            super::ScoreCut::Fixed(_) => "fixed",
        },
        scores: stats,
        tiles: report::TileSummary {
            size: params.tile_size,
            count: grid.len(),
            margin,
            exact_margin,
            largest_nucleus_radius: kept.largest_radius,
        },
        fragments: fragment_summary,
        backend: backend.describe(),
    };
    let mut facts = facts_spill;
    facts.largest_rows_held = Some(work.rows_held);
    Ok(FileRun {
        summary,
        stage_seconds: seconds,
        membership: kept.membership,
        facts,
        per_cell,
    })
}

/// Spill files written at once while records are sorted into buckets.
const OPEN_SPILL_FILES: usize = 256;

/// The cell of kept transcript `i`: its nucleus when assigned, else its
/// fragment (after the nuclei), else none.
fn cell_of(
    scores: &TileScores,
    assigned: &[bool],
    fragment: Option<u32>,
    i: usize,
    n_nuclei: usize,
) -> u32 {
    if assigned[i] {
        scores.best_index[i] as u32
    } else if let Some(f) = fragment {
        (n_nuclei + f as usize) as u32
    } else {
        Segmentation::NO_CELL
    }
}

/// Names the fragments as [`fragments::name_components`] does, reading
/// the ids of the transcripts in large enough components from the file.
fn name_fragments(
    layout: &TranscriptLayout,
    id_kind: Option<IdKind>,
    rows: &[u32],
    labels: &[u32],
    candidates: &[u32],
    min_transcripts: usize,
) -> Result<(Vec<Option<u32>>, Vec<String>)> {
    let mut size: HashMap<u32, usize> = HashMap::new();
    for &l in labels {
        *size.entry(l).or_default() += 1;
    }
    let needed: Vec<u32> = labels
        .iter()
        .zip(candidates)
        .filter(|(l, _)| size[l] >= min_transcripts)
        .map(|(_, &c)| c)
        .collect();
    let needed_rows: Vec<usize> = needed.iter().map(|&k| rows[k as usize] as usize).collect();
    let keys = layout.keys_of_rows(id_kind, &needed_rows)?;
    // name_components looks a key up by kept index: map the needed ones to
    // their place in `keys`.
    let mut slot = vec![0u32; rows.len()];
    for (s, &k) in needed.iter().enumerate() {
        slot[k as usize] = s as u32;
    }
    Ok(fragments::name_components(
        labels,
        candidates,
        &slot,
        &keys,
        min_transcripts,
    ))
}

/// What the last pass counted.
struct Written {
    /// (transcripts, Σx, Σy) of every nucleus, then every fragment, summed in input order.
    sums: Vec<(u64, f64, f64)>,
    /// Rows assigned to a cell, to a fragment, unassigned.
    counts: [usize; 3],
    /// The per-cell outputs' aggregates, when asked for.
    per_cell: Option<CellAggregator>,
    /// The genes as the pass numbered them.
    gene_names: Vec<String>,
}

/// Rows read but not yet written, with their results.
#[derive(Default)]
struct Pending {
    row0: usize,
    batches: Vec<RecordBatch>,
    x: Vec<f64>,
    y: Vec<f64>,
    gene: Vec<u32>,
    cell: Vec<u32>,
    score: Vec<f32>,
    assignment: Vec<Assignment>,
    filter: Vec<Option<FilterReason>>,
}

/// The last pass: reads the transcripts again batch by batch, joins every
/// row's result and writes the transcripts table in batches of
/// [`write_rows`] rows; sums the cells' positions in input order.
#[allow(clippy::too_many_arguments)]
fn write_pass(
    layout: &TranscriptLayout,
    id_kind: Option<IdKind>,
    spec: &InputSpec,
    filter: &[Option<FilterReason>],
    kept_cell: &[u32],
    kept_score: &[f32],
    cell_ids: &[&str],
    n_nuclei: usize,
    outputs: &FileOutputs,
    work: &mut Work,
) -> Result<Written> {
    let mut sums = vec![(0u64, 0.0f64, 0.0f64); cell_ids.len()];
    let mut counts = [0usize; 3];
    let mut stream = layout.stream(spec)?;
    let mut sink: Option<(TableSink, arrow::datatypes::SchemaRef)> = None;
    let mut pending = Pending::default();
    let mut next_kept = 0usize;
    let batch_rows = write_rows();
    let mut per_cell = outputs
        .per_cell
        .as_ref()
        .map(|o| CellAggregator::new(o, cell_ids.len()))
        .transpose()?;
    let write = outputs.transcripts.is_some()
        || per_cell.as_ref().is_some_and(CellAggregator::writes_points);
    while let Some(chunk) = stream.next_chunk()? {
        let n = chunk.x.len();
        anyhow::ensure!(
            chunk.row0 + n <= filter.len(),
            "{}: the file holds more rows than when it was first read",
            layout.path().display()
        );
        work.rows_held = work.rows_held.max(n + pending.x.len());
        let mut at = 0;
        while at < n {
            let take = if write {
                (batch_rows - pending.x.len()).min(n - at)
            } else {
                n - at
            };
            for i in at..at + take {
                let row = chunk.row0 + i;
                let (cell, score, assignment) = match filter[row] {
                    Some(_) => (Segmentation::NO_CELL, f32::NAN, Assignment::Filtered),
                    None => {
                        let k = next_kept;
                        next_kept += 1;
                        let cell = kept_cell[k];
                        let assignment = if cell == Segmentation::NO_CELL {
                            counts[2] += 1;
                            Assignment::Unassigned
                        } else {
                            let acc = &mut sums[cell as usize];
                            acc.0 += 1;
                            acc.1 += chunk.x[i];
                            acc.2 += chunk.y[i];
                            if (cell as usize) < n_nuclei {
                                counts[0] += 1;
                                Assignment::Cell
                            } else {
                                counts[1] += 1;
                                Assignment::Fragment
                            }
                        };
                        (cell, kept_score[k], assignment)
                    }
                };
                if let Some(aggregator) = per_cell.as_mut() {
                    aggregator.add(WrittenRow {
                        cell,
                        gene: chunk.gene[i],
                        x: chunk.x[i],
                        y: chunk.y[i],
                        assignment,
                        score,
                    })?;
                }
                if write {
                    pending.cell.push(cell);
                    pending.score.push(score);
                    pending.assignment.push(assignment);
                    pending.filter.push(filter[row]);
                }
            }
            if write {
                if pending.x.is_empty() {
                    pending.row0 = chunk.row0 + at;
                }
                pending.batches.push(chunk.batch.slice(at, take));
                pending.x.extend_from_slice(&chunk.x[at..at + take]);
                pending.y.extend_from_slice(&chunk.y[at..at + take]);
                pending.gene.extend_from_slice(&chunk.gene[at..at + take]);
                if pending.x.len() == batch_rows {
                    flush(
                        layout,
                        id_kind,
                        spec,
                        &stream,
                        &mut pending,
                        cell_ids,
                        outputs,
                        &mut sink,
                        per_cell.as_mut(),
                    )?;
                }
            }
            at += take;
        }
    }
    anyhow::ensure!(
        stream.rows() == filter.len() && next_kept == kept_cell.len(),
        "{}: the file holds fewer rows than when it was first read",
        layout.path().display()
    );
    if write {
        if !pending.x.is_empty() {
            flush(
                layout,
                id_kind,
                spec,
                &stream,
                &mut pending,
                cell_ids,
                outputs,
                &mut sink,
                per_cell.as_mut(),
            )?;
        }
        if let Some((sink, _)) = sink {
            sink.finish()?;
        }
    }
    let gene_names = (0..stream.genes() as u32)
        .map(|g| stream.gene_name(g).to_string())
        .collect();
    Ok(Written {
        sums,
        counts,
        per_cell,
        gene_names,
    })
}

/// Writes the pending rows as one batch of the transcripts table.
#[allow(clippy::too_many_arguments)]
fn flush(
    layout: &TranscriptLayout,
    id_kind: Option<IdKind>,
    spec: &InputSpec,
    stream: &crate::io::TranscriptStream,
    pending: &mut Pending,
    cell_ids: &[&str],
    outputs: &FileOutputs,
    sink: &mut Option<(TableSink, arrow::datatypes::SchemaRef)>,
    per_cell: Option<&mut CellAggregator>,
) -> Result<()> {
    let p = std::mem::take(pending);
    let mut genes = arrow::array::StringBuilder::with_capacity(p.gene.len(), p.gene.len() * 8);
    for &g in &p.gene {
        genes.append_value(stream.gene_name(g));
    }
    let mut columns = layout.output_columns(
        spec,
        &p.batches,
        p.row0,
        &p.x,
        &p.y,
        std::sync::Arc::new(genes.finish()),
        id_kind,
    )?;
    crate::output::push_result_columns(
        &mut columns,
        p.cell.iter().map(|&c| match c {
            Segmentation::NO_CELL => report::UNASSIGNED_ID,
            c => cell_ids[c as usize],
        }),
        p.score.iter().map(|&s| (!s.is_nan()).then_some(s)),
        p.assignment.iter().map(|a| a.as_str()),
        p.filter.iter().map(|f| f.map(FilterReason::as_str)),
    );
    if let Some(aggregator) = per_cell.filter(|a| a.writes_points()) {
        let names: Vec<String> = (0..stream.genes() as u32)
            .map(|g| stream.gene_name(g).to_string())
            .collect();
        aggregator.write_points(&columns, &p.gene, &names)?;
    }
    let Some(path) = &outputs.transcripts else {
        return Ok(());
    };
    if sink.is_none() {
        let schema = crate::output::schema_of(&columns);
        *sink = Some((
            TableSink::create(path, schema.clone(), outputs.format)?,
            schema,
        ));
    }
    let Some((sink, schema)) = sink.as_mut() else {
        bail!("internal: no transcripts table to write");
    };
    let batch = RecordBatch::try_new(
        schema.clone(),
        columns.into_iter().map(|(_, a)| a).collect(),
    )
    .with_context(|| format!("cannot assemble a batch of {}", path.display()))?;
    sink.write(&batch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("4G"), Ok(4 << 30));
        assert_eq!(parse_size("512m"), Ok(512 << 20));
        assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_size("1000"), Ok(1000));
        for bad in ["", "G", "-1G", "4X", "0"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn components_are_labelled_by_their_smallest_member() {
        let mut c = Components::new(6);
        c.union(4, 2);
        c.union(5, 4);
        c.union(1, 3);
        let labels: Vec<u32> = (0..6).map(|i| c.find(i)).collect();
        assert_eq!(labels, vec![0, 1, 2, 1, 2, 2]);
    }

    #[test]
    fn records_and_fragment_buckets_read_back_as_written() {
        let r = Record {
            kept: 7,
            pos: [1.5, -2.25, 3e9],
            token: 11,
            member: -1,
        };
        let mut bytes = Vec::new();
        r.write(&mut bytes);
        assert_eq!(bytes.len(), RECORD_BYTES);
        let back = Record::read(&bytes);
        assert_eq!(
            (back.kept, back.pos, back.token, back.member),
            (7, r.pos, 11, -1)
        );
        let bucket = FragmentBucket {
            histogram: vec![(3, 4), (65535, 1)],
            neighbour_edges: 9,
            candidate_edges: 5,
            edges: vec![(1, 2, 0.5), (2, 1, -0.25)],
        };
        let path = Path::new("b0.bin");
        let back = FragmentBucket::from_bytes(&bucket.to_bytes(), path).unwrap();
        assert_eq!(back.histogram, bucket.histogram);
        assert_eq!((back.neighbour_edges, back.candidate_edges), (9, 5));
        assert_eq!(back.edges, bucket.edges);
        let short = &bucket.to_bytes()[..20];
        assert!(FragmentBucket::from_bytes(short, path).is_err());
    }
}
