//! The bucketed path of `segment` (`--max-memory`, docs/streaming.md): the
//! kept transcripts are spilled as compact records into spatial buckets on
//! disk (blocks of whole tiles), and the score and fragment stages visit
//! one bucket at a time with the records of its neighbours within the
//! exact margin, so that every result equals the in-memory path's. Finished
//! buckets are kept as files, so that `--resume` reuses them after a kill.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::assign;
use super::budget::{self, TileChoice, BUCKET_SHARE, TILE_SHARE};
use super::fragments::{self, FragmentSummary, Fragments};
use super::prepare::{self, Prepared};
use super::progress::Progress;
use super::report;
use super::report::Assignment;
use super::score_tiles::{self, Overlap, OwnedBest, ScoreClock, TileScores, TileSource};
use super::{SegmentParams, Segmentation, Summary, UnknownGenes};
use crate::backend::{Backend, FragmentSlots};
use crate::io::table::READ_AHEAD;
use crate::io::{
    FilterReason, IdKind, InputSpec, MembershipReport, MembershipTally, Nuclei, TranscriptLayout,
    Transcripts,
};
use crate::kernels::edge_similarity::HISTOGRAM_BINS;
use crate::model::Model;
use crate::output::aggregate::{CellAggregator, PerCellFacts, PerCellOutputs, WrittenRow};
use crate::output::{TableFormat, TableSink, WRITE_AHEAD};
use crate::tiles::{self, Cell, TileGrid};
use arrow::array::RecordBatch;

/// Environment variable (builds with the `testing` feature only): abort the
/// process after this many finished bucket steps, as a kill would.
pub const ABORT_AFTER_ENV: &str = "SEGGPU_TEST_ABORT_AFTER_BUCKETS";

/// Bytes of one spilled record: kept index, x, y, z, token, nucleus.
const RECORD_BYTES: usize = 4 + 3 * 8 + 4 + 4;

/// How the bucketed path runs.
#[derive(Debug, Clone)]
pub struct StreamSettings {
    /// Memory budget in bytes (`--max-memory`, or the default for a large input).
    pub max_memory: u64,
    /// Where the budget comes from (`--max-memory` or the default), for the log.
    pub max_memory_source: String,
    /// `--tile-size` when given; otherwise the budget picks the tile size.
    pub tile_size: Option<f64>,
    /// `--overlap`: whether a bucket's next tile is built while the backend scores the current one.
    pub overlap: score_tiles::OverlapMode,
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
    /// `--max-memory`, or how the default budget was made.
    pub max_memory_source: String,
    /// The tile size in use and why.
    #[serde(flatten)]
    pub tile: TileChoice,
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
    /// Bucket steps (score and fragment) whose records were loaded on a
    /// thread while the bucket before was worked on.
    pub buckets_loaded_ahead: usize,
    /// Transcripts gathered by the tiles (core and margin) per kept
    /// transcript scored: the recompute factor of the tiles.
    pub recompute_factor: f64,
    /// Records loaded by the score stage per record owned: the
    /// recompute factor of the buckets.
    pub bucket_load_factor: f64,
    /// Most input rows decoded and held at once: the batch being worked
    /// on and those the reader thread decodes ahead, the rows waiting to be
    /// written and the batches the writer thread encodes (the path that
    /// reads and writes in batches; absent where the input rows are held
    /// whole).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub largest_rows_held: Option<usize>,
    /// Most items held at once by one in-memory structure of the path that
    /// reads and writes in batches: a reader or written batch, the records
    /// of a bucket, the scores of a sorted group, the fragment nodes, the
    /// ids of a partition of the id check. Bounded by the budget, not by
    /// the input (absent where the input rows are held whole).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub largest_items_held: Option<usize>,
    /// Wall and CPU seconds of each phase of the path, in the order first
    /// met (a phase met once per bucket is summed over the buckets).
    pub phases: Vec<PhaseTime>,
    /// Resident memory at the end of each phase (Linux; empty elsewhere).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rss_by_phase: Vec<PhaseMemory>,
}

/// Wall and CPU seconds of one phase of the bucketed path (the log's
/// `streaming.phases`): CPU seconds over wall seconds is how many cores the
/// phase kept busy; the driving thread's share says how much of it ran on
/// one thread.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseTime {
    /// What the phase does.
    pub phase: &'static str,
    /// Wall seconds.
    pub seconds: f64,
    /// CPU seconds of the process, user and system (Linux; absent elsewhere).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_seconds: Option<f64>,
    /// CPU seconds of the thread that drives the phase (Linux; absent elsewhere).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub driver_cpu_seconds: Option<f64>,
}

/// The start of a phase: wall clock and CPU seconds (process, calling thread).
struct PhaseStart {
    wall: Instant,
    cpu: Option<(f64, f64)>,
}

impl PhaseStart {
    fn now() -> Self {
        PhaseStart {
            wall: Instant::now(),
            cpu: cpu_seconds(),
        }
    }

    /// Wall seconds since the start, with the CPU seconds of the process
    /// and of the calling thread.
    fn elapsed(&self) -> PhaseSample {
        PhaseSample {
            seconds: self.wall.elapsed().as_secs_f64(),
            cpu: self
                .cpu
                .zip(cpu_seconds())
                .map(|((p0, t0), (p1, t1))| (p1 - p0, t1 - t0)),
        }
    }

    /// Wall seconds since the start, with the calling thread's CPU seconds
    /// for both: the phase of a thread beside the driving one, whose
    /// process CPU is counted in the phase it overlaps.
    fn elapsed_on_thread(&self) -> PhaseSample {
        let sample = self.elapsed();
        PhaseSample {
            cpu: sample.cpu.map(|(_, thread)| (thread, thread)),
            ..sample
        }
    }
}

/// Wall seconds of one pass of a phase, with its CPU seconds (process,
/// driving thread) where known.
struct PhaseSample {
    seconds: f64,
    cpu: Option<(f64, f64)>,
}

/// CPU seconds (user and system) used so far by this process and by the
/// calling thread (Linux; `None` elsewhere).
fn cpu_seconds() -> Option<(f64, f64)> {
    // Fields after the command's closing parenthesis: state is field 3,
    // utime and stime fields 14 and 15, in clock ticks (USER_HZ, 100).
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    let user: f64 = fields.next()?.parse().ok()?;
    let system: f64 = fields.next()?.parse().ok()?;
    // The thread's time on a CPU, in nanoseconds.
    let thread = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let thread_ns: f64 = thread.split_whitespace().next()?.parse().ok()?;
    Some(((user + system) / 100.0, thread_ns * 1e-9))
}

/// Resident memory of the process at the end of a phase, for the log.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseMemory {
    /// The phase just ended.
    pub phase: &'static str,
    /// Resident memory then (`VmRSS`), bytes.
    pub rss_bytes: u64,
    /// Peak resident memory so far (`VmHWM`), bytes.
    pub peak_rss_bytes: u64,
}

impl PhaseMemory {
    /// The memory now, at the end of `phase` (`None` where not known).
    pub fn now(phase: &'static str) -> Option<Self> {
        Some(PhaseMemory {
            phase,
            rss_bytes: status_bytes("VmRSS:")?,
            peak_rss_bytes: peak_rss_bytes()?,
        })
    }
}

/// After `stage` finished bucket `b`: hands what the allocator holds
/// unused back to the system and logs (at debug level) the resident
/// memory.
fn bucket_done(stage: &str, b: usize) {
    crate::io::release_free_memory();
    if !log::log_enabled!(log::Level::Debug) {
        return;
    }
    let mb = |v: Option<u64>| v.map_or("?".to_string(), |v| format!("{:.1}", v as f64 / 1e6));
    log::debug!(
        "{stage} bucket {b}: resident {} MB (peak {} MB)",
        mb(status_bytes("VmRSS:")),
        mb(peak_rss_bytes()),
    );
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
                "cannot write spill file {} (--tmp-dir {}); the bucketed path needs free space there for about 80 bytes per transcript",
                path.display(),
                self.path.parent().unwrap_or(&self.path).display()
            )
        })
    }

    fn read(&self, path: &Path) -> Result<Vec<u8>> {
        self.read_with_spare(path, 0)
    }

    /// The whole file at `path`, in a buffer with room for `spare` more
    /// bytes (a bucket's margin is merged into its records in place).
    fn read_with_spare(&self, path: &Path, spare: usize) -> Result<Vec<u8>> {
        use std::io::Read;
        let cannot = || format!("cannot read spill file {}", path.display());
        let mut file = std::fs::File::open(path).with_context(cannot)?;
        let len = usize::try_from(file.metadata().with_context(cannot)?.len())?;
        let mut bytes = Vec::with_capacity(len + spare);
        file.read_to_end(&mut bytes).with_context(cannot)?;
        Ok(bytes)
    }
}

impl Drop for SpillDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A bucket's records as loaded: its own and those of its margin, sorted
/// by kept index, with whether each is owned by the bucket. The records
/// stay in their spilled form ([`RECORD_BYTES`] each) until the bucket is
/// visited ([`Columns`]): a bucket loaded ahead is held beside the one
/// being worked on, and its bytes take less than the records decoded.
struct Loaded {
    bytes: Vec<u8>,
    own: Vec<bool>,
    /// The bucket owning each record of the margin (those not `own`), in
    /// their order in `bytes`.
    sources: Vec<u32>,
}

impl Loaded {
    /// Records loaded.
    fn len(&self) -> usize {
        self.own.len()
    }

    /// The kept index of record `i`.
    fn kept(&self, i: usize) -> u32 {
        record_kept(&self.bytes[i * RECORD_BYTES..])
    }
}

/// The kept index of the spilled record at the start of `b`.
fn record_kept(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// The columns the stages work on, decoded from a bucket's records when it
/// is visited, in the records' order.
struct Columns {
    /// (x, y) of every record.
    flat: Vec<[f64; 2]>,
    /// Position of every record.
    pos: Vec<[f64; 3]>,
    /// Model token of every record.
    tokens: Vec<u32>,
    /// Nucleus every record belongs to (−1 for none).
    member: Vec<i32>,
    /// Kept index of every record.
    kept: Vec<u32>,
}

impl Columns {
    /// Decodes `bytes` (whole records) on the rayon pool.
    fn decode(bytes: &[u8]) -> Self {
        use rayon::prelude::*;
        let n = bytes.len() / RECORD_BYTES;
        // Zeroed allocations: their pages are first touched when written.
        let mut c = Columns {
            flat: vec![[0.0; 2]; n],
            pos: vec![[0.0; 3]; n],
            tokens: vec![0; n],
            member: vec![0; n],
            kept: vec![0; n],
        };
        (
            c.flat.par_iter_mut(),
            c.pos.par_iter_mut(),
            c.tokens.par_iter_mut(),
            c.member.par_iter_mut(),
            c.kept.par_iter_mut(),
        )
            .into_par_iter()
            .zip(bytes.par_chunks_exact(RECORD_BYTES))
            .for_each(|((flat, pos, token, member, kept), chunk)| {
                let r = Record::read(chunk);
                *flat = [r.pos[0], r.pos[1]];
                *pos = r.pos;
                *token = r.token;
                *member = r.member;
                *kept = r.kept;
            });
        c
    }
}

/// What the fragment stage works on, decoded from a bucket's records when
/// it is visited, in the records' order.
struct FragmentColumns {
    /// Position of every record.
    pos: Vec<[f64; 3]>,
    /// Model token of every record.
    tokens: Vec<u32>,
    /// Kept index of every record.
    kept: Vec<u32>,
    /// Whether the bucket owns each record.
    own: Vec<bool>,
    /// Whether a nucleus claims each record ([`claimed`]).
    assigned: Vec<bool>,
}

impl FragmentColumns {
    /// Decodes `loaded` on the rayon pool, with its records' claimed flags.
    fn decode(loaded: Loaded, assigned: Vec<bool>) -> Self {
        use rayon::prelude::*;
        let n = loaded.len();
        let mut pos = vec![[0.0; 3]; n];
        let mut tokens = vec![0; n];
        let mut kept = vec![0; n];
        (
            pos.par_iter_mut(),
            tokens.par_iter_mut(),
            kept.par_iter_mut(),
        )
            .into_par_iter()
            .zip(loaded.bytes.par_chunks_exact(RECORD_BYTES))
            .for_each(|((pos, token, kept), chunk)| {
                let r = Record::read(chunk);
                *pos = r.pos;
                *token = r.token;
                *kept = r.kept;
            });
        FragmentColumns {
            pos,
            tokens,
            kept,
            own: loaded.own,
            assigned,
        }
    }
}

/// Bytes of a margin entry: the record and the bucket that owns it.
const MARGIN_BYTES: usize = RECORD_BYTES + 4;

/// Where each record also goes besides its own bucket's file: the margin
/// file of every other bucket whose region extended by the spill reach
/// ([`spill_reach`]) holds it, so that a bucket is loaded from two files
/// (its own and its margin) instead of every neighbour's whole file.
struct Margins {
    /// Per owning bucket: the other buckets near it and their extended
    /// bounds.
    targets: Vec<Vec<(usize, [f64; 4])>>,
}

impl Margins {
    fn new(plan: &BucketPlan, grid: &TileGrid, reach: f64) -> Self {
        let bounds: Vec<[f64; 4]> = (0..plan.cells.len())
            .map(|b| plan.reach(grid, b, reach))
            .collect();
        // `near` is symmetric: `b` is near `o` exactly when `o` is near `b`.
        let targets = (0..plan.cells.len())
            .map(|o| {
                plan.near(grid, o, reach)
                    .into_iter()
                    .filter(|&b| b != o)
                    .map(|b| (b, bounds[b]))
                    .collect()
            })
            .collect();
        Margins { targets }
    }

    /// The buckets other than its owner `owner` whose margin holds `p`.
    fn of(&self, owner: usize, p: [f64; 2]) -> impl Iterator<Item = usize> + '_ {
        self.targets[owner]
            .iter()
            .filter(move |(_, bounds)| inside(bounds, p))
            .map(|&(b, _)| b)
    }
}

/// Whether `p` lies within `bounds` `[x0, y0, x1, y1]` (lower sides
/// included, upper excluded, as tiles' regions).
fn inside(bounds: &[f64; 4], [x, y]: [f64; 2]) -> bool {
    x >= bounds[0] && y >= bounds[1] && x < bounds[2] && y < bounds[3]
}

/// How far around a bucket its margin file reaches: the score stage's
/// margin and, with fragments, the fragment neighbours' reach.
fn spill_reach(margin: f64, params: &SegmentParams) -> f64 {
    match params.fragments {
        Some(_) => margin.max(fragment_reach(params.graph.dist_tx)),
        None => margin,
    }
}

/// How far the fragment stage loads around a bucket: fragment neighbours
/// lie within `dist_tx` (inclusive, in 3-D, so also in x–y); the slack only
/// loads a few more records, which cannot change them.
fn fragment_reach(dist_tx: Option<f64>) -> f64 {
    dist_tx.map_or(f64::INFINITY, |d| d + 1e-6 * (1.0 + d))
}

/// Records of bucket `own` and those of its margin file within `bounds`
/// (at most the spill reach), sorted by kept index, in their spilled form;
/// with whether each is owned by the bucket. Both files are in kept order
/// already, so the margin's records (a few per cent) are merged into the
/// bucket's own from the back, in place: the bucket's file is read
/// straight into a buffer that holds both, no second copy of it is held
/// and nothing is sorted. The margin file is read in blocks.
fn load(spill: &SpillDir, own: usize, bounds: [f64; 4]) -> Result<Loaded> {
    let margin = load_margin(spill, own, bounds)?;
    load_with_margin(spill, own, margin)
}

/// The records of bucket `own`'s margin file inside `bounds`, in kept
/// order, with the bucket owning each: a few per cent of a bucket.
struct Margin {
    bytes: Vec<u8>,
    sources: Vec<u32>,
}

/// Reads bucket `own`'s margin file in blocks, keeping the records inside
/// `bounds` ([`load`]).
fn load_margin(spill: &SpillDir, own: usize, bounds: [f64; 4]) -> Result<Margin> {
    let mut margin = Margin {
        bytes: Vec::new(),
        sources: Vec::new(),
    };
    each_block(
        &spill.file("margins", own),
        MARGIN_BYTES,
        LOAD_BLOCK,
        |block| {
            for c in block.chunks_exact(MARGIN_BYTES) {
                let r = Record::read(c);
                if inside(&bounds, [r.pos[0], r.pos[1]]) {
                    margin.bytes.extend_from_slice(&c[..RECORD_BYTES]);
                    margin
                        .sources
                        .push(u32::from_le_bytes([c[36], c[37], c[38], c[39]]));
                }
            }
            Ok(())
        },
    )?;
    Ok(margin)
}

/// Bucket `own`'s records with `margin` merged in ([`load`]).
fn load_with_margin(spill: &SpillDir, own: usize, margin: Margin) -> Result<Loaded> {
    let path = spill.file("records", own);
    let bytes = spill.read_with_spare(&path, margin.bytes.len())?;
    if bytes.len() % RECORD_BYTES != 0 {
        bail!("spill file {} is damaged", path.display());
    }
    Ok(merge_from_back(bytes, &margin.bytes, margin.sources))
}

/// Reads the file at `path` into nothing (`std::io::copy` to a sink, one
/// small buffer): its pages are then in the system's page cache, which is
/// not this process's memory, and reading it again costs a copy rather
/// than a wait on the disk.
fn warm(path: &Path) -> Result<()> {
    std::fs::File::open(path)
        .and_then(|mut file| std::io::copy(&mut file, &mut std::io::sink()))
        .with_context(|| format!("cannot read spill file {}", path.display()))?;
    Ok(())
}

/// Records read at once from a margin file.
const LOAD_BLOCK: usize = 1 << 16;

/// Merges the records of `margin` into those of `bytes` (both whole
/// spilled records, ascending by kept index, which is unique), writing
/// from the back so that every record moves at most once and only
/// `margin` is held twice; a record taken from `bytes` is owned.
fn merge_from_back(mut bytes: Vec<u8>, margin: &[u8], sources: Vec<u32>) -> Loaded {
    const R: usize = RECORD_BYTES;
    let mut i = bytes.len() / R;
    let mut j = margin.len() / R;
    let total = i + j;
    bytes.reserve_exact(margin.len());
    bytes.extend_from_slice(margin);
    let mut own = vec![true; total];
    for k in (0..total).rev() {
        if j == 0 {
            // The rest of the bucket's own records is already in place (i == k + 1).
            break;
        }
        if i > 0 && record_kept(&bytes[(i - 1) * R..]) > record_kept(&margin[(j - 1) * R..]) {
            bytes.copy_within((i - 1) * R..i * R, k * R);
            i -= 1;
        } else {
            bytes[k * R..(k + 1) * R].copy_from_slice(&margin[(j - 1) * R..j * R]);
            own[k] = false;
            j -= 1;
        }
    }
    Loaded {
        bytes,
        own,
        sources,
    }
}

/// Visits the buckets `todo` in order. `ahead` starts loading a bucket on a
/// thread of its own while `visit` works on the bucket before it; `finish`
/// completes the load on the driving thread when the bucket's turn comes,
/// before the next bucket's `ahead` starts, so that what `ahead` holds and
/// what `finish` makes of it are not held together beside a bucket being
/// loaded. What `ahead` holds is held beside the bucket being worked on:
/// the score stage keeps it small (the margin, and the bucket's file
/// warmed in the page cache), the fragment stage loads the whole bucket
/// (the budget's bucket share counts a bucket loaded ahead,
/// [`budget::bucket_side`]). `visit` also gets the wall and CPU seconds the
/// driving thread waited for `ahead` and took to `finish` and, for a bucket
/// started ahead, those of the loading thread. Nothing is written while
/// loading, so a run killed with a bucket loaded ahead has recorded only
/// the buckets `visit` finished.
fn visit_loaded_ahead<A: Send, D>(
    todo: &[usize],
    ahead: impl Fn(usize) -> Result<A> + Sync,
    mut finish: impl FnMut(usize, A) -> Result<D>,
    mut visit: impl FnMut(usize, D, Loading) -> Result<()>,
) -> Result<()> {
    std::thread::scope(|scope| {
        let ahead_of = &ahead;
        let mut started = None;
        for (at, &b) in todo.iter().enumerate() {
            let wait = PhaseStart::now();
            let (begun, ahead_seconds) = match started.take() {
                Some(handle) => {
                    let (begun, seconds) = std::thread::ScopedJoinHandle::join(handle)
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                    (begun, Some(seconds))
                }
                None => (ahead_of(b), None),
            };
            let begun = begun?;
            let waited = wait.elapsed();
            let start = PhaseStart::now();
            let finished = finish(b, begun)?;
            let finishing = start.elapsed();
            if let Some(&next) = todo.get(at + 1) {
                started = Some(scope.spawn(move || {
                    let start = PhaseStart::now();
                    let begun = ahead_of(next);
                    (begun, start.elapsed_on_thread())
                }));
            }
            visit(
                b,
                finished,
                Loading {
                    waited,
                    finishing,
                    ahead: ahead_seconds,
                },
            )?;
        }
        Ok(())
    })
}

/// What loading a bucket cost ([`visit_loaded_ahead`]).
struct Loading {
    /// The driving thread's wait: wall, process CPU and its own CPU seconds.
    waited: PhaseSample,
    /// Finishing the load on the driving thread (and the pool): reading and
    /// merging the score stage's records, decoding the columns.
    finishing: PhaseSample,
    /// The loading thread's work when the bucket was loaded ahead.
    ahead: Option<PhaseSample>,
}

/// Aborts after `steps` finished bucket steps when the test hook asks for it.
fn test_abort(steps: usize) {
    if crate::test_hooks::value(ABORT_AFTER_ENV).is_some_and(|n: usize| steps >= n) {
        std::process::abort();
    }
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
    let tile = budget::tile_size(
        settings.tile_size,
        params.tile_size,
        &budget::extremes(&prepared.flat),
        prepared.margin,
        settings.max_memory,
        |densities| {
            prepared.flat.iter().for_each(|&p| densities.add(p));
            Ok(())
        },
    )?;
    if tile.tile_size != params.tile_size {
        prepared.grid = prepare::tile_grid(&prepared.flat, tile.tile_size, prepared.margin)?;
    }
    let params = &SegmentParams {
        tile_size: tile.tile_size,
        ..params.clone()
    };
    let grid = prepared.grid.clone();
    let side = match settings.bucket_tiles {
        Some(side) => side.max(1),
        None => budget::bucket_side(
            &grid,
            prepared.margin,
            budget::fullest_tile(&grid, &prepared.flat),
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
    score_stage(
        &spill,
        &plan,
        &grid,
        settings.overlap.resolve(backend),
        prepared.margin,
        nuclei,
        model,
        params,
        backend,
        progress,
        reuse,
        &mut work,
    )?;
    let mut scores = dense_scores(&spill, &plan, n_kept)?;
    scores.graph_seconds = work.clock.graph;
    scores.model_seconds = work.clock.model;
    seconds.push(("graphs", work.clock.graph));
    seconds.push(("model+score", work.clock.model));

    let clock = Instant::now();
    let assigned = assign::run(&scores, params.score_cut);
    let fragments = match fragment_stage(
        &spill,
        &plan,
        &grid,
        assigned.cut,
        model,
        params,
        backend,
        reuse,
        &mut work,
    )? {
        None => None,
        Some((mut components, counts, min_transcripts)) => {
            let candidates: Vec<u32> = (0..n_kept as u32)
                .filter(|&i| !assigned.assigned[i as usize])
                .collect();
            // The smallest kept index of a component orders components as the
            // smallest candidate index does (the backend's labels).
            let labels: Vec<u32> = candidates.iter().map(|&c| components.find(c)).collect();
            drop(components);
            let (fragment_of, ids) = fragments::name_components(
                &labels,
                &candidates,
                &prepared.kept,
                &transcripts.id_key,
                min_transcripts,
            );
            let summary = counts.summary(
                candidates.len(),
                ids.len(),
                fragment_of.iter().filter(|f| f.is_some()).count(),
            );
            Some(Fragments {
                fragment_of,
                ids,
                summary,
            })
        }
    };
    seconds.push(("assign+fragments", clock.elapsed().as_secs_f64()));

    let facts = work.facts(
        settings,
        &tile,
        &spill,
        side,
        plan.cells.len(),
        spilled_bytes,
        n_kept,
    );
    drop(spill);
    let mut result = report::run(report::Stages::new(
        &mut transcripts,
        nuclei,
        &prepared,
        &scores,
        &assigned,
        fragments,
        params,
        backend,
    ));
    result.stage_seconds = seconds;
    Ok((result, transcripts, facts))
}

/// The fragment stage bucket by bucket when fragments are on: the
/// components of the candidates (kept transcripts below `score_cut`), the
/// counts of the log, and the smallest fragment.
#[allow(clippy::too_many_arguments)]
fn fragment_stage(
    spill: &SpillDir,
    plan: &BucketPlan,
    grid: &TileGrid,
    score_cut: f32,
    model: &Model,
    params: &SegmentParams,
    backend: &mut dyn Backend,
    reuse: bool,
    work: &mut Work,
) -> Result<Option<(Components, FragmentCounts, usize)>> {
    let Some(settings) = params.fragments else {
        return Ok(None);
    };
    let fragment_params = fragments::FragmentParams {
        k_tx: params.graph.k_tx,
        dist_tx: params.graph.dist_tx,
        cut: settings.cut.unwrap_or(score_cut),
        min_transcripts: settings.min_transcripts,
    };
    let (components, counts) = bucketed_fragments(
        spill,
        plan,
        grid,
        score_cut,
        model,
        &fragment_params,
        backend,
        reuse,
        work,
    )?;
    Ok(Some((components, counts, settings.min_transcripts)))
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
    /// Buckets loaded on a thread while the one before was worked on.
    loaded_ahead: usize,
    /// Most input rows decoded and held at once (the bounded path).
    rows_held: usize,
    /// Most items held at once by one structure (the bounded path).
    items_held: usize,
    /// Seconds per phase, in the order first met.
    phases: Vec<PhaseTime>,
}

impl Work {
    /// Notes what loading a bucket cost: the driving thread's wait under
    /// `waited`, its finishing of the load under `finishing`, the loading
    /// thread's work under `ahead` when the bucket was started ahead.
    fn note_loading(&mut self, [waited, finishing, ahead]: [&'static str; 3], loading: Loading) {
        self.add_phase(waited, loading.waited);
        self.add_phase(finishing, loading.finishing);
        if let Some(sample) = loading.ahead {
            self.loaded_ahead += 1;
            self.add_phase(ahead, sample);
        }
    }

    fn step(&mut self) {
        self.steps += 1;
        test_abort(self.steps);
    }

    /// Notes a structure of `n` items held at once.
    fn held(&mut self, n: usize) {
        self.items_held = self.items_held.max(n);
    }

    /// Adds the time since `start` to `phase` (summed when met again).
    fn phase(&mut self, phase: &'static str, start: &PhaseStart) {
        self.add_phase(phase, start.elapsed());
    }

    /// Adds `sample` to `phase` (summed when met again).
    fn add_phase(&mut self, phase: &'static str, sample: PhaseSample) {
        let PhaseSample { seconds, cpu } = sample;
        let at = match self.phases.iter().position(|p| p.phase == phase) {
            Some(at) => at,
            None => {
                self.phases.push(PhaseTime {
                    phase,
                    seconds: 0.0,
                    cpu_seconds: cpu.map(|_| 0.0),
                    driver_cpu_seconds: cpu.map(|_| 0.0),
                });
                self.phases.len() - 1
            }
        };
        let p = &mut self.phases[at];
        p.seconds += seconds;
        if let (Some(total), Some(driver), Some((c, d))) =
            (&mut p.cpu_seconds, &mut p.driver_cpu_seconds, cpu)
        {
            *total += c;
            *driver += d;
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn facts(
        &self,
        settings: &StreamSettings,
        tile: &TileChoice,
        spill: &SpillDir,
        side: u64,
        buckets: usize,
        spilled_bytes: u64,
        n_kept: usize,
    ) -> StreamFacts {
        StreamFacts {
            max_memory: settings.max_memory,
            max_memory_source: settings.max_memory_source.clone(),
            tile: tile.clone(),
            spill_dir: spill.path.display().to_string(),
            bucket_tiles: side,
            buckets,
            bucket_steps_reused: self.reused,
            spilled_bytes,
            largest_bucket_records: self.largest,
            buckets_loaded_ahead: self.loaded_ahead,
            largest_rows_held: (self.rows_held > 0).then_some(self.rows_held),
            largest_items_held: None,
            phases: self.phases.clone(),
            rss_by_phase: Vec::new(),
            recompute_factor: ratio(self.clock.gathered, n_kept as u64),
            bucket_load_factor: ratio(self.loaded, n_kept as u64),
        }
    }
}

/// The score stage bucket by bucket: every bucket's tiles from its records
/// and those of its neighbours within `margin`; the best match of every
/// owned kept transcript with a candidate goes to the bucket's score file,
/// by kept index.
#[allow(clippy::too_many_arguments)]
fn score_stage(
    spill: &SpillDir,
    plan: &BucketPlan,
    grid: &TileGrid,
    overlap: Overlap,
    margin: f64,
    nuclei: &Nuclei,
    model: &Model,
    params: &SegmentParams,
    backend: &mut dyn Backend,
    progress: &Progress,
    reuse: bool,
    work: &mut Work,
) -> Result<()> {
    use rayon::prelude::*;
    let bd_members = tiles::bucket(grid, &nuclei.centroid);
    let bar = progress.bar("buckets", plan.cells.len() as u64);
    let mut todo = Vec::new();
    for b in 0..plan.cells.len() {
        if reuse && spill.file("scores", b).exists() {
            work.reused += 1;
            bar.inc(1);
            work.step();
        } else {
            todo.push(b);
        }
    }
    // Only the margin is held ahead (the bucket's own records, most of it,
    // wait in the page cache): the next bucket is not held in memory beside
    // the tiles of this one.
    let ahead = |b: usize| {
        let margin = load_margin(spill, b, plan.reach(grid, b, margin))?;
        warm(&spill.file("records", b))?;
        Ok(margin)
    };
    let finish =
        |b: usize, margin: Margin| Ok(Columns::decode(&load_with_margin(spill, b, margin)?.bytes));
    visit_loaded_ahead(&todo, ahead, finish, |b, columns, loading| {
        bar.inc(1);
        let n = columns.kept.len();
        work.loaded += n as u64;
        work.largest = work.largest.max(n);
        work.held(n);
        work.note_loading(["score_load", "score_columns", "score_load_ahead"], loading);
        let start = PhaseStart::now();
        let mut found = score_bucket(
            &columns,
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
        drop(columns);
        work.phase("score_tiles", &start);
        let start = PhaseStart::now();
        // Kept indices are unique: the order does not depend on the threads.
        found.par_sort_unstable_by_key(|f| f.0);
        let mut bytes = Vec::with_capacity(found.len() * SCORE_BYTES);
        for &(k, s, n) in &found {
            bytes.extend_from_slice(&k.to_le_bytes());
            bytes.extend_from_slice(&s.to_le_bytes());
            bytes.extend_from_slice(&n.to_le_bytes());
        }
        spill.write(&spill.file("scores", b), &bytes)?;
        drop((found, bytes));
        work.phase("score_write", &start);
        work.step();
        bucket_done("score", b);
        Ok(())
    })?;
    bar.finish_and_clear();
    Ok(())
}

/// Bytes of a score entry: kept index, best score, best nucleus.
const SCORE_BYTES: usize = 12;

/// The score file of bucket `b`: (kept index, score, nucleus) of its owned
/// kept transcripts with a candidate, ascending by kept index.
fn read_scores(spill: &SpillDir, b: usize) -> Result<Vec<(u32, f32, i32)>> {
    let path = spill.file("scores", b);
    let bytes = spill.read(&path)?;
    if bytes.len() % SCORE_BYTES != 0 {
        bail!("spill file {} is damaged", path.display());
    }
    Ok(bytes.chunks_exact(SCORE_BYTES).map(score_entry).collect())
}

/// The score entry at the start of `c`: (kept index, best score, best
/// nucleus), as `score_stage` writes it.
fn score_entry(c: &[u8]) -> (u32, f32, i32) {
    let w = |at: usize| [c[at], c[at + 1], c[at + 2], c[at + 3]];
    (
        u32::from_le_bytes(w(0)),
        f32::from_le_bytes(w(4)),
        i32::from_le_bytes(w(8)),
    )
}

/// Every kept transcript's best match from the score files (the path that
/// holds the rows).
fn dense_scores(spill: &SpillDir, plan: &BucketPlan, n_kept: usize) -> Result<TileScores> {
    let mut scores = TileScores {
        best_score: vec![f32::NAN; n_kept],
        best_index: vec![-1; n_kept],
        graph_seconds: 0.0,
        model_seconds: 0.0,
    };
    for b in 0..plan.cells.len() {
        for (k, s, n) in read_scores(spill, b)? {
            let slot = k as usize;
            anyhow::ensure!(
                slot < n_kept,
                "spill file {} is damaged",
                spill.file("scores", b).display()
            );
            scores.best_score[slot] = s;
            scores.best_index[slot] = n;
        }
    }
    Ok(scores)
}

fn ratio_f(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
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
    for kind in ["records", "margins", "scores", "fragments", "results"] {
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
    // The layout of the spill files (score files sorted by kept index).
    key.update(b"spill files 2");
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
    let mut key = start_key(params, model, plan.side, prepared.grid.size)?;
    let record = |i: usize| Record {
        kept: i as u32,
        pos: prepared.pos[i],
        token: prepared.tokens[i],
        member: prepared.member[i],
    };
    let mut bytes = Vec::new();
    let mut total = 0u64;
    for b in 0..plan.cells.len() {
        bytes.clear();
        for &i in &order[starts[b]..starts[b + 1]] {
            record(i as usize).write(&mut bytes);
        }
        key.update(&bytes);
        total += bytes.len() as u64;
        spill.write(&spill.file("records", b), &bytes)?;
    }
    // Each bucket's margin, in kept order.
    let margins = Margins::new(plan, &prepared.grid, spill_reach(prepared.margin, params));
    let mut margin_of: Vec<Vec<u32>> = vec![Vec::new(); plan.cells.len()];
    for (i, &b) in bucket_of.iter().enumerate() {
        for m in margins.of(b as usize, prepared.flat[i]) {
            margin_of[m].push(i as u32);
        }
    }
    for (b, kept) in margin_of.iter().enumerate() {
        bytes.clear();
        for &i in kept {
            record(i as usize).write(&mut bytes);
            bytes.extend_from_slice(&bucket_of[i as usize].to_le_bytes());
        }
        total += bytes.len() as u64;
        spill.write(&spill.file("margins", b), &bytes)?;
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
    columns: &Columns,
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
    let members = tiles::bucket(grid, &columns.flat);
    let source = TileSource {
        grid,
        members: &members,
        flat: &columns.flat,
        pos: &columns.pos,
        tokens: &columns.tokens,
        member: &columns.member,
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
        // What the tile freed and the threads' caches still hold goes back
        // before the next tile, not at the end of the bucket.
        crate::io::release_free_memory();
        Ok(())
    })?;
    Ok(found
        .into_iter()
        .map(|(local, s, n)| (columns.kept[local as usize], s, n))
        .collect())
}

/// Union–find over the kept transcripts that end a kept fragment edge
/// (the others are their own component), whose roots are the smallest
/// member. A root is never a key of `parent`.
#[derive(Default)]
struct Components {
    parent: HashMap<u32, u32>,
}

impl Components {
    fn find(&mut self, mut a: u32) -> u32 {
        loop {
            let Some(&up) = self.parent.get(&a) else {
                return a;
            };
            match self.parent.get(&up) {
                Some(&top) => {
                    self.parent.insert(a, top);
                    a = top;
                }
                None => return up,
            }
        }
    }

    fn union(&mut self, a: u32, b: u32) {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra != rb {
            let (lo, hi) = if ra < rb { (ra, rb) } else { (rb, ra) };
            self.parent.insert(hi, lo);
        }
    }

    /// Members of every component of more than one transcript, by root.
    fn sizes(&mut self) -> HashMap<u32, usize> {
        let nodes: Vec<u32> = self.parent.keys().copied().collect();
        let mut size: HashMap<u32, usize> = HashMap::new();
        for node in nodes {
            // The root itself is not a key: it starts the count.
            *size.entry(self.find(node)).or_insert(1) += 1;
        }
        size
    }
}

/// The counts of the fragment stage both flows share.
struct FragmentCounts {
    neighbour_edges: u64,
    candidate_edges: u64,
    median: Option<f32>,
    threshold: f32,
    kept_edges: usize,
}

impl FragmentCounts {
    fn summary(
        &self,
        candidates: usize,
        fragments: usize,
        fragment_transcripts: usize,
    ) -> FragmentSummary {
        FragmentSummary {
            candidates,
            neighbour_edges: self.neighbour_edges as usize,
            candidate_edges: self.candidate_edges as usize,
            median_similarity: self.median,
            threshold: self.threshold,
            kept_edges: self.kept_edges,
            fragments,
            fragment_transcripts,
        }
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
    score_cut: f32,
    model: &Model,
    params: &fragments::FragmentParams,
    backend: &mut dyn Backend,
    reuse: bool,
    work: &mut Work,
) -> Result<(Components, FragmentCounts)> {
    let dim = model.arch.emb;
    let unit = fragments::normalised_embeddings(&model.tx_embedding, dim);
    let k = params.k_tx;
    let reach = fragment_reach(params.dist_tx);
    let mut histogram = vec![0u32; HISTOGRAM_BINS];
    let (mut neighbour_edges, mut candidate_edges) = (0u64, 0u64);
    let mut add = |bucket: &FragmentBucket| {
        for &(bin, count) in &bucket.histogram {
            histogram[bin as usize] += count;
        }
        neighbour_edges += bucket.neighbour_edges;
        candidate_edges += bucket.candidate_edges;
    };
    let mut todo = Vec::new();
    for b in 0..plan.cells.len() {
        let path = spill.file("fragments", b);
        if reuse && path.exists() {
            work.reused += 1;
            add(&FragmentBucket::from_bytes(&spill.read(&path)?, &path)?);
            work.step();
        } else {
            todo.push(b);
        }
    }
    // A bucket's records and which of them a nucleus claims.
    let load_bucket = |b: usize| -> Result<(Loaded, Vec<bool>)> {
        let loaded = load(spill, b, plan.reach(grid, b, reach))?;
        let assigned = claimed(spill, b, score_cut, &loaded)?;
        Ok((loaded, assigned))
    };
    let decode =
        |_, (loaded, assigned): (Loaded, Vec<bool>)| Ok(FragmentColumns::decode(loaded, assigned));
    visit_loaded_ahead(&todo, load_bucket, decode, |b, columns, loading| {
        let FragmentColumns {
            pos,
            tokens,
            kept,
            own,
            assigned,
        } = columns;
        work.held(kept.len());
        work.note_loading(
            ["fragment_load", "fragment_columns", "fragment_load_ahead"],
            loading,
        );
        let start = PhaseStart::now();
        let mut neighbors = fragments::fragment_neighbours(&pos, k, params.dist_tx);
        drop(pos);
        // Only the bucket's own transcripts count here; the others are
        // counted by their own buckets.
        for (row, &mine) in neighbors.chunks_mut(k.max(1)).zip(&own) {
            if !mine {
                row.fill(-1);
            }
        }
        work.phase("fragment_neighbours", &start);
        let start = PhaseStart::now();
        let scored = backend.fragment_similarity(FragmentSlots {
            neighbors: &neighbors,
            k,
            tokens: &tokens,
            unit: &unit,
            dim,
        })?;
        work.phase("fragment_similarity", &start);
        let start = PhaseStart::now();
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
            let (a, b) = (e / k, j as usize);
            if assigned[a] || assigned[b] {
                continue;
            }
            bucket.candidate_edges += 1;
            // The threshold is at least the cut, so lower edges never count.
            if s >= params.cut {
                bucket.edges.push((kept[a], kept[b], s));
            }
        }
        spill.write(&spill.file("fragments", b), &bucket.to_bytes())?;
        work.phase("fragment_edges", &start);
        add(&bucket);
        drop((kept, tokens, neighbors, scored, bucket, assigned));
        work.step();
        bucket_done("fragment", b);
        Ok(())
    })?;
    let median = fragments::histogram_median(&histogram);
    let threshold = median.map_or(params.cut, |m| m.max(params.cut));

    let start = PhaseStart::now();
    let mut components = Components::default();
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
        work.held(components.parent.len());
    }
    work.phase("fragment_components", &start);
    let counts = FragmentCounts {
        neighbour_edges,
        candidate_edges,
        median,
        threshold,
        kept_edges,
    };
    Ok((components, counts))
}

/// Whether each record of bucket `b` as loaded joins its best nucleus at
/// `score_cut`, from the score file of the bucket that owns it. Every score
/// file and the records from each bucket are ascending by kept index, so
/// each file is searched forward from the last entry found (galloping):
/// the bucket's own file is walked once, a neighbour's is only probed for
/// the few records of the margin it owns.
fn claimed(spill: &SpillDir, b: usize, score_cut: f32, loaded: &Loaded) -> Result<Vec<bool>> {
    let mut claimed = vec![false; loaded.len()];
    let mut by_source: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    let mut sources = loaded.sources.iter();
    for (i, &mine) in loaded.own.iter().enumerate() {
        if !mine {
            let &source = sources.next().ok_or_else(|| {
                anyhow::anyhow!("internal: a margin record of bucket {b} without its source")
            })?;
            by_source.entry(source).or_default().push(i);
        }
    }
    let mut mark = |source: usize, at: &mut dyn Iterator<Item = usize>| -> Result<()> {
        let path = spill.file("scores", source);
        let bytes = spill.read(&path)?;
        if bytes.len() % SCORE_BYTES != 0 {
            bail!("spill file {} is damaged", path.display());
        }
        let entry = |e: usize| score_entry(&bytes[e * SCORE_BYTES..]);
        let key = |e: usize| entry(e).0;
        let n = bytes.len() / SCORE_BYTES;
        let mut from = 0usize;
        for i in at {
            let kept = loaded.kept(i);
            // Gallop: the first entry at or after `from` whose key is not
            // below `kept` lies in [lo, hi).
            let (mut lo, mut hi, mut step) = (from, from, 1usize);
            while hi < n && key(hi) < kept {
                lo = hi + 1;
                hi = lo + step;
                step *= 2;
            }
            let mut hi = hi.min(n);
            while lo < hi {
                let mid = lo + (hi - lo) / 2;
                if key(mid) < kept {
                    lo = mid + 1;
                } else {
                    hi = mid;
                }
            }
            from = lo;
            if lo < n && key(lo) == kept {
                let (_, score, nucleus) = entry(lo);
                claimed[i] = nucleus >= 0 && score >= score_cut;
            }
        }
        Ok(())
    };
    mark(
        b,
        &mut loaded
            .own
            .iter()
            .enumerate()
            .filter(|(_, &mine)| mine)
            .map(|(i, _)| i),
    )?;
    for (source, at) in by_source {
        mark(source as usize, &mut at.into_iter())?;
    }
    Ok(claimed)
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
pub const WRITE_ROWS_ENV: &str = "SEGGPU_TEST_WRITE_ROWS";

fn write_rows() -> usize {
    crate::test_hooks::value(WRITE_ROWS_ENV)
        .map_or(WRITE_ROWS, |n: usize| n.max(1024) / 1024 * 1024)
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
        "cannot write spill file {} (--tmp-dir {}); the bucketed path needs free space there for about 80 bytes per transcript",
        path.display(),
        tmp_dir.display()
    )
}

/// The records of a spill file, read in blocks.
fn each_record(path: &Path, mut f: impl FnMut(Record) -> Result<()>) -> Result<()> {
    each_block(path, RECORD_BYTES, 4096, |block| {
        for chunk in block.chunks_exact(RECORD_BYTES) {
            f(Record::read(chunk))?;
        }
        Ok(())
    })
}

/// Records decoded at once by the passes over `kept.bin`.
const PASS_BLOCK: usize = 1 << 16;

/// The records of a spill file, block by block, each block's decoded on
/// the rayon pool (in file order) with its bytes as read.
fn each_decoded(path: &Path, mut f: impl FnMut(&[Record], &[u8]) -> Result<()>) -> Result<()> {
    use rayon::prelude::*;
    let mut records = Vec::with_capacity(PASS_BLOCK);
    each_block(path, RECORD_BYTES, PASS_BLOCK, |block| {
        records.clear();
        records.par_extend(block.par_chunks_exact(RECORD_BYTES).map(Record::read));
        f(&records, block)
    })
}

/// The bytes of a spill file of entries of `entry` bytes, `entries` at a time.
fn each_block(
    path: &Path,
    entry: usize,
    entries: usize,
    mut f: impl FnMut(&[u8]) -> Result<()>,
) -> Result<()> {
    use std::io::Read;
    let file = std::fs::File::open(path)
        .with_context(|| format!("cannot read spill file {}", path.display()))?;
    let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
    let mut block = vec![0u8; entry * entries];
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
        if filled % entry != 0 {
            bail!("spill file {} is damaged", path.display());
        }
        f(&block[..filled])?;
        if filled < block.len() {
            return Ok(());
        }
    }
}

/// The kept transcripts as pass 1 leaves them: every one a record in
/// `kept.bin`, in input order, and its input row in `rows.bin`.
struct Kept {
    /// Rows read.
    rows_read: usize,
    /// Kept transcripts.
    n_kept: usize,
    /// Rows filtered out, by reason.
    filtered: std::collections::BTreeMap<&'static str, usize>,
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
    rows_path: &Path,
    work: &mut Work,
) -> Result<Kept> {
    use rayon::prelude::*;
    let index = model.gene_index();
    let by_id: HashMap<&str, i32> = nuclei
        .ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id, i as i32))
        .collect();
    // Built at the first row that needs point-in-polygon, so that a file
    // whose flags give the membership never holds the polygons.
    let mut locator: Option<prepare::NucleusLocator> = None;
    let mut tally = MembershipTally::new(nuclei);
    let mut stream = layout.stream(spec)?;
    let mut token_of: Vec<Option<u32>> = Vec::new();
    let mut missing_seen: Vec<bool> = Vec::new();
    let mut missing: Vec<String> = Vec::new();
    let mut filtered: std::collections::BTreeMap<&'static str, usize> = Default::default();
    let mut n_kept = 0usize;
    let mut rows_out = SpillWriter::create(spill, rows_path.to_path_buf())?;
    let mut row_bytes = Vec::new();
    let mut radius = prepare::polygon_radius(nuclei);
    let mut lo = [[f64::INFINITY; 2]; 2];
    let mut hi = [[f64::NEG_INFINITY; 2]; 2];
    let mut out = SpillWriter::create(spill, path.to_path_buf())?;
    let mut bytes = Vec::new();
    let mut largest_batch = 0usize;
    while let Some(chunk) = stream.next_chunk()? {
        let n = chunk.x.len();
        largest_batch = largest_batch.max(n);
        work.rows_held = work.rows_held.max((1 + READ_AHEAD) * largest_batch);
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
            None => {
                let locator = match &locator {
                    Some(locator) => locator,
                    None => locator.insert(prepare::NucleusLocator::new(nuclei)?),
                };
                kept_here
                    .par_iter()
                    .map(|&i| locator.locate([chunk.x[i], chunk.y[i]]))
                    .collect()
            }
        };
        bytes.clear();
        row_bytes.clear();
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
                kept: n_kept as u32,
                pos,
                token: token_of[chunk.gene[i] as usize].unwrap_or(0),
                member: m,
            }
            .write(&mut bytes);
            row_bytes.extend_from_slice(&((chunk.row0 + i) as u32).to_le_bytes());
            n_kept += 1;
        }
        out.write(&bytes)?;
        rows_out.write(&row_bytes)?;
        for reason in chunk_filter.iter().flatten() {
            *filtered.entry(reason.as_str()).or_default() += 1;
        }
    }
    out.finish()?;
    rows_out.finish()?;
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
    if n_kept == 0 {
        bail!("no transcript is left after filtering ({n_rows} rows read); check --qv-min, the control prefixes and the gene vocabulary");
    }
    if layout.has_membership() && membership.source == "point_in_polygon" {
        // The flag column never marks a row: membership by the polygons.
        let locator = match locator {
            Some(locator) => locator,
            None => prepare::NucleusLocator::new(nuclei)?,
        };
        radius = relocate(spill, path, nuclei, &locator)?;
    }
    Ok(Kept {
        rows_read: n_rows,
        n_kept,
        filtered,
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
    let mut memory = Vec::new();
    let mut work = Work::default();
    let clock = Instant::now();
    let (spill, previous) = open_spill(settings)?;
    let kept_path = spill.path.join("kept.bin");
    let rows_path = spill.path.join("rows.bin");
    let start = PhaseStart::now();
    let kept = read_pass(
        layout, spec, nuclei, model, params, &spill, &kept_path, &rows_path, &mut work,
    )?;
    // Point-in-polygon read every polygon back (the locator, dropped now):
    // their pages go back to the system rather than stay resident.
    crate::io::release_free_memory();
    work.phase("read", &start);
    let n_kept = kept.n_kept;
    let exact_margin = tiles::exact_margin(
        model.arch.layers(),
        params.graph.dist_tx.unwrap_or(f64::INFINITY),
        params.graph.dist_bd,
        kept.largest_radius,
    );
    let margin = params.margin.unwrap_or(exact_margin);
    let start = PhaseStart::now();
    let tile = budget::tile_size(
        settings.tile_size,
        params.tile_size,
        &kept.extremes,
        margin,
        settings.max_memory,
        |densities| {
            each_decoded(&kept_path, |records, _| {
                records
                    .iter()
                    .for_each(|r| densities.add([r.pos[0], r.pos[1]]));
                Ok(())
            })
        },
    )?;
    let params = &SegmentParams {
        tile_size: tile.tile_size,
        ..params.clone()
    };
    // The extent first, then one point of every occupied core: the grid of
    // the in-memory path.
    let extent = prepare::tile_grid(&kept.extremes, params.tile_size, margin)?;
    let mut per_tile: HashMap<Cell, (u64, [f64; 2])> = HashMap::new();
    let mut owners = Vec::with_capacity(PASS_BLOCK);
    each_decoded(&kept_path, |records, _| {
        use rayon::prelude::*;
        owners.clear();
        owners.par_extend(
            records
                .par_iter()
                .map(|r| extent.owner([r.pos[0], r.pos[1]])),
        );
        for (r, &tile) in records.iter().zip(&owners) {
            per_tile.entry(tile).or_insert((0, [r.pos[0], r.pos[1]])).0 += 1;
        }
        Ok(())
    })?;
    let fullest = per_tile.values().map(|v| v.0).max().unwrap_or(1);
    let mut points = kept.extremes.clone();
    points.extend(per_tile.values().map(|v| v.1));
    drop(per_tile);
    let grid = prepare::tile_grid(&points, params.tile_size, margin)?;
    let side = match settings.bucket_tiles {
        Some(side) => side.max(1),
        None => budget::bucket_side(&grid, margin, fullest, settings.max_memory)?,
    };
    let plan = BucketPlan::new(&grid, side);
    work.phase("tile_size_and_grid", &start);

    // Records by bucket, each file in kept order; a bounded number of
    // files open at once.
    let start = PhaseStart::now();
    let mut key = start_key(params, model, plan.side, grid.size)?;
    let mut spilled_bytes = 0u64;
    let margins = Margins::new(&plan, &grid, spill_reach(margin, params));
    let buckets: Vec<usize> = (0..plan.cells.len()).collect();
    // Each bucket of a sweep has two files open: its records and its margin.
    let per_sweep = (open_spill_files() / 2).max(1);
    let mut owners = Vec::with_capacity(PASS_BLOCK);
    for (sweep, group) in buckets.chunks(per_sweep).enumerate() {
        let open = |kind: &str| {
            group
                .iter()
                .map(|&b| SpillWriter::create(&spill, spill.file(kind, b)))
                .collect::<Result<Vec<_>>>()
        };
        let mut writers = open("records")?;
        let mut margin_writers = open("margins")?;
        let in_sweep = |b: usize| (group[0]..group[0] + group.len()).contains(&b);
        each_decoded(&kept_path, |records, block| {
            use rayon::prelude::*;
            if sweep == 0 {
                key.update(block);
            }
            owners.clear();
            owners.par_extend(
                records
                    .par_iter()
                    .map(|r| plan.index_of(grid.owner([r.pos[0], r.pos[1]]))),
            );
            for ((r, &b), bytes) in records
                .iter()
                .zip(&owners)
                .zip(block.chunks_exact(RECORD_BYTES))
            {
                if in_sweep(b) {
                    spilled_bytes += RECORD_BYTES as u64;
                    writers[b - group[0]].write(bytes)?;
                }
                for m in margins.of(b, [r.pos[0], r.pos[1]]) {
                    if in_sweep(m) {
                        spilled_bytes += MARGIN_BYTES as u64;
                        let w = &mut margin_writers[m - group[0]];
                        w.write(bytes)?;
                        w.write(&(b as u32).to_le_bytes())?;
                    }
                }
            }
            Ok(())
        })?;
        for w in writers.into_iter().chain(margin_writers) {
            w.finish()?;
        }
    }
    std::fs::remove_file(&kept_path)
        .with_context(|| format!("cannot remove spill file {}", kept_path.display()))?;
    let reuse = settle_key(&spill, key, previous, settings)?;
    work.phase("bucket_files", &start);
    seconds.push(("read+spill", clock.elapsed().as_secs_f64()));
    memory.extend(PhaseMemory::now("read+spill"));

    // The passes above freed their buffers: the first bucket starts from
    // the live heap alone, as every later one does (`bucket_done`).
    crate::io::release_free_memory();
    let overlap = settings.overlap.resolve(backend);
    score_stage(
        &spill, &plan, &grid, overlap, margin, nuclei, model, params, backend, progress, reuse,
        &mut work,
    )?;
    seconds.push(("graphs", work.clock.graph));
    seconds.push(("model+score", work.clock.model));
    memory.extend(PhaseMemory::now("score"));

    let clock = Instant::now();
    let start = PhaseStart::now();
    let stats = score_statistics(&spill, &plan, &mut work)?;
    let cut = assign::cut_of(&stats, params.score_cut);
    work.phase("score_statistics", &start);
    crate::io::release_free_memory();
    let mut fragment_stage = fragment_stage(
        &spill, &plan, &grid, cut, model, params, backend, reuse, &mut work,
    )?;
    let start = PhaseStart::now();
    let settled = settle_results(&spill, &plan, cut, fragment_stage.as_mut(), &mut work)?;
    work.phase("settle", &start);
    // The records are rewritten by every run (--resume included): free their
    // disk before the tables are written.
    for kind in ["records", "margins"] {
        let records = spill.path.join(kind);
        std::fs::remove_dir_all(&records)
            .with_context(|| format!("cannot remove spill folder {}", records.display()))?;
    }
    let start = PhaseStart::now();
    let (slots, fragment_ids) = match fragment_stage {
        Some(_) => name_fragments(layout, id_kind, &spill, &plan, &rows_path, &mut work)?,
        None => (HashMap::new(), Vec::new()),
    };
    work.phase("fragment_names", &start);
    let fragment_summary = fragment_stage.map(|(_, counts, _)| {
        counts.summary(
            settled.candidates,
            fragment_ids.len(),
            settled.fragment_transcripts,
        )
    });
    seconds.push(("assign+fragments", clock.elapsed().as_secs_f64()));
    memory.extend(PhaseMemory::now("assign+fragments"));

    let clock = Instant::now();
    let n_nuclei = nuclei.ids.len();
    let mut cell_ids: Vec<&str> = nuclei.ids.iter().collect();
    cell_ids.extend(fragment_ids.iter().map(String::as_str));
    let index = model.gene_index();
    let start = PhaseStart::now();
    // --xenium-ranger numbers the output cells in the pass: their sizes first.
    let transcripts_per_cell = outputs
        .per_cell
        .as_ref()
        .is_some_and(|o| o.xenium_ranger.is_some())
        .then(|| transcripts_per_cell(&spill, &plan, cell_ids.len(), n_nuclei, &slots))
        .transpose()?;
    let results = merged_results(&spill, &plan)?;
    let written = write_pass(
        layout,
        id_kind,
        spec,
        &|gene: &str| index.contains_key(gene),
        kept.rows_read,
        results.settled(n_nuclei, &slots),
        &cell_ids,
        n_nuclei,
        outputs,
        transcripts_per_cell.as_deref(),
        &mut work,
    )?;
    work.phase("write_pass", &start);
    let facts_spill = work.facts(
        settings,
        &tile,
        &spill,
        side,
        plan.cells.len(),
        spilled_bytes,
        n_kept,
    );
    drop(spill);
    let cells = report::cell_rows(
        nuclei,
        &fragment_ids,
        &written.sums[..n_nuclei],
        &written.sums[n_nuclei..],
    );
    if let Some(path) = &outputs.cells {
        crate::output::write_cells(path, &cells, outputs.format)?;
    }
    memory.extend(PhaseMemory::now("transcripts+cells"));
    let per_cell = match written.per_cell {
        Some(aggregator) => {
            let facts = aggregator.finish(cells, nuclei, written.gene_names)?;
            seconds.push(("polygons", facts.polygon_seconds));
            memory.extend(PhaseMemory::now("per-cell outputs"));
            Some(facts)
        }
        None => None,
    };
    seconds.push(("write", clock.elapsed().as_secs_f64()));

    let summary = Summary {
        counts: report::Counts {
            read: kept.rows_read,
            filtered: kept.filtered,
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
    facts.largest_items_held = Some(work.items_held.max(work.rows_held));
    for p in &facts.phases {
        match (p.cpu_seconds, p.driver_cpu_seconds) {
            (Some(cpu), Some(driver)) => log::info!(
                "streaming phase {}: {:.2} s wall, {:.2} s CPU ({:.2} cores busy, {:.2} s on the driving thread)",
                p.phase,
                p.seconds,
                cpu,
                ratio_f(cpu, p.seconds),
                driver
            ),
            _ => log::info!("streaming phase {}: {:.2} s wall", p.phase, p.seconds),
        }
    }
    facts.rss_by_phase = memory;
    Ok(FileRun {
        summary,
        stage_seconds: seconds,
        membership: kept.membership,
        facts,
        per_cell,
    })
}

/// Spill files written or merged at once.
const OPEN_SPILL_FILES: usize = 256;

/// Environment variable (builds with the `testing` feature only): spill
/// files written or merged at once instead of [`OPEN_SPILL_FILES`].
pub const OPEN_FILES_ENV: &str = "SEGGPU_TEST_OPEN_FILES";

fn open_spill_files() -> usize {
    crate::test_hooks::value(OPEN_FILES_ENV).map_or(OPEN_SPILL_FILES, |n: usize| n.max(2))
}

/// Scores gathered at once while the statistics walk them in order.
const SORT_GROUP: usize = 1 << 24;

/// Environment variable (builds with the `testing` feature only): scores
/// gathered at once instead of [`SORT_GROUP`].
pub const SORT_GROUP_ENV: &str = "SEGGPU_TEST_SORT_GROUP";

fn sort_group() -> usize {
    crate::test_hooks::value(SORT_GROUP_ENV).map_or(SORT_GROUP, |n: usize| n.max(1))
}

/// A key of `s` whose unsigned order is [`f32::total_cmp`]'s.
fn score_key(s: f32) -> u32 {
    let b = s.to_bits() as i32;
    ((b ^ ((((b >> 31) as u32) >> 1) as i32)) as u32) ^ (1 << 31)
}

/// The score of a [`score_key`].
fn key_score(k: u32) -> f32 {
    let b = (k ^ (1 << 31)) as i32;
    f32::from_bits((b ^ ((((b >> 31) as u32) >> 1) as i32)) as u32)
}

/// The [`score_key`] of every finite best score, bucket by bucket.
fn each_score_key(spill: &SpillDir, plan: &BucketPlan, mut f: impl FnMut(u32)) -> Result<()> {
    for b in 0..plan.cells.len() {
        for (_, s, _) in read_scores(spill, b)? {
            if s.is_finite() {
                f(score_key(s));
            }
        }
    }
    Ok(())
}

/// The statistics of the best scores and the knee of `--score-cut auto`,
/// the same as [`assign::statistics`] over all of them, without holding
/// them: a histogram of the upper 16 bits of their keys, then the scores
/// in ascending order group by group (at most [`sort_group`] at once; a
/// larger bin by the exact count of each of its values), written to a
/// spill file for the second walk.
fn score_statistics(
    spill: &SpillDir,
    plan: &BucketPlan,
    work: &mut Work,
) -> Result<assign::ScoreStats> {
    let mut histogram = vec![0usize; 1 << 16];
    let (mut n, mut lo, mut hi) = (0usize, u32::MAX, 0u32);
    each_score_key(spill, plan, |key| {
        histogram[(key >> 16) as usize] += 1;
        n += 1;
        lo = lo.min(key);
        hi = hi.max(key);
    })?;
    let sorted_path = spill.path.join("sorted.bin");
    let group = sort_group();
    let mut walked = false;
    let stats = assign::statistics_of_sorted(n, key_score(lo), key_score(hi), |see| {
        if walked {
            return each_sorted(&sorted_path, see);
        }
        walked = true;
        let mut out = SpillWriter::create(spill, sorted_path.clone())?;
        walk_sorted(spill, plan, &histogram, group, work, &mut |s| {
            see(s);
            out.write(&s.to_le_bytes())
        })?;
        out.finish()
    })?;
    if walked {
        std::fs::remove_file(&sorted_path)
            .with_context(|| format!("cannot remove spill file {}", sorted_path.display()))?;
    }
    Ok(stats)
}

/// A run of histogram bins whose scores are walked together.
enum SortGroup {
    /// Consecutive bins of at most [`sort_group`] scores: gathered and sorted.
    Sorted,
    /// One bin of more: counted value by value (a bin holds 2^16 values).
    Counted(usize),
}

/// Hands every finite best score to `see` in ascending order: one pass
/// over the score files sends each key to the file of its sort group
/// (bounded by the open files at once), then each group is read alone.
fn walk_sorted(
    spill: &SpillDir,
    plan: &BucketPlan,
    histogram: &[usize],
    group: usize,
    work: &mut Work,
    see: &mut dyn FnMut(f32) -> Result<()>,
) -> Result<()> {
    let mut groups = Vec::new();
    let mut group_of = vec![u32::MAX; histogram.len()];
    let mut bin = 0usize;
    while bin < histogram.len() {
        if histogram[bin] > group {
            group_of[bin] = groups.len() as u32;
            groups.push(SortGroup::Counted(bin));
            bin += 1;
            continue;
        }
        let first = bin;
        let mut total = 0usize;
        while bin < histogram.len() && total + histogram[bin] <= group {
            total += histogram[bin];
            bin += 1;
        }
        if total > 0 {
            group_of[first..bin].fill(groups.len() as u32);
            groups.push(SortGroup::Sorted);
        }
    }
    let dir = spill.path.join("sorted");
    std::fs::create_dir_all(&dir)
        .with_context(|| spill_error(&dir, spill.path.parent().unwrap_or(&spill.path)))?;
    let file = |g: usize| dir.join(format!("g{g}.bin"));
    let ids: Vec<usize> = (0..groups.len()).collect();
    for sweep in ids.chunks(open_spill_files()) {
        let mut writers = sweep
            .iter()
            .map(|&g| SpillWriter::create(spill, file(g)))
            .collect::<Result<Vec<_>>>()?;
        let mut failed = Ok(());
        each_score_key(spill, plan, |key| {
            let g = group_of[(key >> 16) as usize] as usize;
            if failed.is_ok() && (sweep[0]..sweep[0] + sweep.len()).contains(&g) {
                failed = writers[g - sweep[0]].write(&key.to_le_bytes());
            }
        })?;
        failed?;
        for w in writers {
            w.finish()?;
        }
    }
    for (g, kind) in groups.iter().enumerate() {
        let path = file(g);
        match kind {
            SortGroup::Counted(bin) => {
                let mut counts = vec![0usize; 1 << 16];
                each_word(&path, &mut |w| {
                    counts[(u32::from_le_bytes(w) & 0xffff) as usize] += 1
                })?;
                for (low, &c) in counts.iter().enumerate() {
                    let s = key_score(((*bin as u32) << 16) | low as u32);
                    for _ in 0..c {
                        see(s)?;
                    }
                }
            }
            SortGroup::Sorted => {
                let len = std::fs::metadata(&path)
                    .with_context(|| format!("cannot read spill file {}", path.display()))?
                    .len();
                let mut keys: Vec<u32> = Vec::with_capacity((len / 4) as usize);
                each_word(&path, &mut |w| keys.push(u32::from_le_bytes(w)))?;
                work.held(keys.len());
                keys.sort_unstable();
                for k in keys {
                    see(key_score(k))?;
                }
            }
        }
        std::fs::remove_file(&path)
            .with_context(|| format!("cannot remove spill file {}", path.display()))?;
    }
    Ok(())
}

/// The scores of a spill file of `f32`s, in order.
fn each_sorted(path: &Path, see: &mut dyn FnMut(f32)) -> Result<()> {
    each_word(path, &mut |w| see(f32::from_le_bytes(w)))
}

/// The 4-byte words of a spill file, in order.
fn each_word(path: &Path, see: &mut dyn FnMut([u8; 4])) -> Result<()> {
    use std::io::Read;
    let file = std::fs::File::open(path)
        .with_context(|| format!("cannot read spill file {}", path.display()))?;
    let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
    let mut block = vec![0u8; 1 << 16];
    let mut filled = 0usize;
    loop {
        let n = reader
            .read(&mut block[filled..])
            .with_context(|| format!("cannot read spill file {}", path.display()))?;
        filled += n;
        let whole = filled / 4 * 4;
        for c in block[..whole].chunks_exact(4) {
            see([c[0], c[1], c[2], c[3]]);
        }
        block.copy_within(whole..filled, 0);
        filled -= whole;
        if n == 0 {
            if filled != 0 {
                bail!("spill file {} is damaged", path.display());
            }
            return Ok(());
        }
    }
}

/// Root of a kept transcript in no fragment.
const NO_ROOT: u32 = u32::MAX;

/// Bytes of a settled result: kept index, score, nucleus, fragment root.
const RESULT_BYTES: usize = 16;

/// What the score and fragment stages settled for one kept transcript.
#[derive(Clone, Copy)]
struct Settled {
    kept: u32,
    /// Best score (NaN without a candidate nucleus).
    score: f32,
    /// Nucleus it joins, or −1.
    nucleus: i32,
    /// Smallest kept index of its fragment's component, or [`NO_ROOT`].
    root: u32,
}

impl Settled {
    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.kept.to_le_bytes());
        out.extend_from_slice(&self.score.to_le_bytes());
        out.extend_from_slice(&self.nucleus.to_le_bytes());
        out.extend_from_slice(&self.root.to_le_bytes());
    }

    fn read(b: &[u8; RESULT_BYTES]) -> Self {
        let w = |at: usize| [b[at], b[at + 1], b[at + 2], b[at + 3]];
        Settled {
            kept: u32::from_le_bytes(w(0)),
            score: f32::from_le_bytes(w(4)),
            nucleus: i32::from_le_bytes(w(8)),
            root: u32::from_le_bytes(w(12)),
        }
    }
}

/// Counts of [`settle_results`] for the log.
struct SettledCounts {
    candidates: usize,
    fragment_transcripts: usize,
}

/// Writes every bucket's settled results (`results/`), by kept index: the
/// score, the nucleus joined at `cut`, and for the others the root of their
/// component when it is large enough to be a fragment.
fn settle_results(
    spill: &SpillDir,
    plan: &BucketPlan,
    cut: f32,
    fragments: Option<&mut (Components, FragmentCounts, usize)>,
    work: &mut Work,
) -> Result<SettledCounts> {
    let mut fragments = fragments.map(|(components, _, min_transcripts)| {
        let sizes = components.sizes();
        (components, sizes, *min_transcripts)
    });
    if let Some((_, sizes, _)) = &fragments {
        work.held(sizes.len());
    }
    let mut counts = SettledCounts {
        candidates: 0,
        fragment_transcripts: 0,
    };
    let mut bytes = Vec::with_capacity(RESULT_BYTES);
    for b in 0..plan.cells.len() {
        let scores = read_scores(spill, b)?;
        work.held(scores.len());
        let path = spill.file("results", b);
        let mut out = SpillWriter::create(spill, path.clone())?;
        let mut at = 0usize;
        each_record(&spill.file("records", b), |r| {
            let k = r.kept;
            let (score, nucleus) = match scores.get(at) {
                Some(&(sk, s, n)) if sk == k => {
                    at += 1;
                    (s, n)
                }
                _ => (f32::NAN, -1),
            };
            let assigned = nucleus >= 0 && score >= cut;
            let mut root = NO_ROOT;
            if !assigned {
                counts.candidates += 1;
                if let Some((components, sizes, min_transcripts)) = &mut fragments {
                    let r = components.find(k);
                    if sizes.get(&r).copied().unwrap_or(1) >= *min_transcripts {
                        root = r;
                        counts.fragment_transcripts += 1;
                    }
                }
            }
            bytes.clear();
            Settled {
                kept: k,
                score: if nucleus >= 0 { score } else { f32::NAN },
                nucleus: if assigned { nucleus } else { -1 },
                root,
            }
            .write(&mut bytes);
            out.write(&bytes)
        })?;
        anyhow::ensure!(
            at == scores.len(),
            "spill file {} is damaged",
            spill.file("scores", b).display()
        );
        out.finish()?;
    }
    Ok(counts)
}

/// The settled results of every bucket merged by kept index.
struct Merged {
    sources: Vec<(PathBuf, std::io::BufReader<std::fs::File>)>,
    heads: std::collections::BinaryHeap<std::cmp::Reverse<(u32, usize)>>,
    next: Vec<Option<Settled>>,
    /// The kept index expected next, when every one must come (the last merge).
    dense: Option<u32>,
}

impl Merged {
    fn open(paths: &[PathBuf], dense: bool) -> Result<Self> {
        let mut merged = Merged {
            sources: Vec::with_capacity(paths.len()),
            heads: Default::default(),
            next: Vec::with_capacity(paths.len()),
            dense: dense.then_some(0),
        };
        for (i, path) in paths.iter().enumerate() {
            let file = std::fs::File::open(path)
                .with_context(|| format!("cannot read spill file {}", path.display()))?;
            merged.sources.push((
                path.clone(),
                std::io::BufReader::with_capacity(1 << 16, file),
            ));
            merged.next.push(None);
            merged.refill(i)?;
        }
        Ok(merged)
    }

    fn refill(&mut self, i: usize) -> Result<()> {
        use std::io::{BufRead, Read};
        let (path, reader) = &mut self.sources[i];
        let read = |e: std::io::Error| {
            anyhow::Error::from(e).context(format!("cannot read spill file {}", path.display()))
        };
        if reader.fill_buf().map_err(read)?.is_empty() {
            return Ok(());
        }
        let mut b = [0u8; RESULT_BYTES];
        reader.read_exact(&mut b).map_err(read)?;
        let entry = Settled::read(&b);
        self.heads.push(std::cmp::Reverse((entry.kept, i)));
        self.next[i] = Some(entry);
        Ok(())
    }

    fn next_entry(&mut self) -> Result<Option<Settled>> {
        let Some(std::cmp::Reverse((_, i))) = self.heads.pop() else {
            return Ok(None);
        };
        let entry = self.next[i]
            .take()
            .context("internal: a merged spill file lost its entry")?;
        if let Some(expected) = &mut self.dense {
            anyhow::ensure!(
                entry.kept == *expected,
                "spill file {} is damaged",
                self.sources[i].0.display()
            );
            *expected += 1;
        }
        self.refill(i)?;
        Ok(Some(entry))
    }

    /// The (cell, score) of every kept transcript in input order: its
    /// nucleus, else its fragment (`slots`, after the nuclei), else none.
    fn settled<'a>(
        mut self,
        n_nuclei: usize,
        slots: &'a HashMap<u32, u32>,
    ) -> impl Iterator<Item = Result<(u32, f32)>> + 'a {
        std::iter::from_fn(move || self.next_entry().transpose()).map(move |entry| {
            let e = entry?;
            Ok((e.cell(n_nuclei, slots)?, e.score))
        })
    }
}

impl Settled {
    /// Its cell: its nucleus, else its fragment (`slots`, after the
    /// nuclei), else none.
    fn cell(&self, n_nuclei: usize, slots: &HashMap<u32, u32>) -> Result<u32> {
        Ok(if self.nucleus >= 0 {
            self.nucleus as u32
        } else if self.root != NO_ROOT {
            let slot = slots
                .get(&self.root)
                .context("internal: a fragment without a name")?;
            (n_nuclei + *slot as usize) as u32
        } else {
            Segmentation::NO_CELL
        })
    }
}

/// The transcripts of each of the `n_cells` cells (nuclei, then fragments
/// by `slots`), counted over every bucket's settled results.
fn transcripts_per_cell(
    spill: &SpillDir,
    plan: &BucketPlan,
    n_cells: usize,
    n_nuclei: usize,
    slots: &HashMap<u32, u32>,
) -> Result<Vec<u64>> {
    use std::io::{BufRead, Read};
    let mut counts = vec![0u64; n_cells];
    let mut b = [0u8; RESULT_BYTES];
    for bucket in 0..plan.cells.len() {
        let path = spill.file("results", bucket);
        let cannot = || format!("cannot read spill file {}", path.display());
        let file = std::fs::File::open(&path).with_context(cannot)?;
        let mut reader = std::io::BufReader::with_capacity(1 << 16, file);
        while !reader.fill_buf().with_context(cannot)?.is_empty() {
            reader.read_exact(&mut b).with_context(cannot)?;
            let cell = Settled::read(&b).cell(n_nuclei, slots)?;
            if let Some(n) = counts.get_mut(cell as usize) {
                *n += 1;
            }
        }
    }
    Ok(counts)
}

/// The settled results of every bucket merged by kept index (through
/// intermediate files when there are more buckets than files open at once).
fn merged_results(spill: &SpillDir, plan: &BucketPlan) -> Result<Merged> {
    let mut paths: Vec<PathBuf> = (0..plan.cells.len())
        .map(|b| spill.file("results", b))
        .collect();
    let mut round = 0;
    let open = open_spill_files();
    while paths.len() > open {
        let mut next = Vec::new();
        for (i, group) in paths.chunks(open).enumerate() {
            let path = spill.path.join("results").join(format!("m{round}-{i}.bin"));
            let mut out = SpillWriter::create(spill, path.clone())?;
            let mut merged = Merged::open(group, false)?;
            let mut bytes = Vec::with_capacity(RESULT_BYTES);
            while let Some(entry) = merged.next_entry()? {
                bytes.clear();
                entry.write(&mut bytes);
                out.write(&bytes)?;
            }
            out.finish()?;
            next.push(path);
        }
        paths = next;
        round += 1;
    }
    Merged::open(&paths, true)
}

/// Names the fragments as [`fragments::name_components`] does: the
/// smallest transcript id of every component large enough, read with the
/// rows of its members (`rows_path`, by kept index) in one pass over the id
/// column; returns the slot of every root and the ids, in that id's order.
fn name_fragments(
    layout: &TranscriptLayout,
    id_kind: Option<IdKind>,
    spill: &SpillDir,
    plan: &BucketPlan,
    rows_path: &Path,
    work: &mut Work,
) -> Result<(HashMap<u32, u32>, Vec<String>)> {
    use std::io::Read;
    let mut merged = merged_results(spill, plan)?;
    let file = std::fs::File::open(rows_path)
        .with_context(|| format!("cannot read spill file {}", rows_path.display()))?;
    let mut rows = std::io::BufReader::with_capacity(1 << 16, file);
    let members = std::iter::from_fn(|| loop {
        let entry = match merged.next_entry() {
            Ok(Some(entry)) => entry,
            Ok(None) => return None,
            Err(e) => return Some(Err(e)),
        };
        let mut b = [0u8; 4];
        if let Err(e) = rows.read_exact(&mut b) {
            return Some(Err(anyhow::Error::from(e)
                .context(format!("cannot read spill file {}", rows_path.display()))));
        }
        if entry.root != NO_ROOT {
            return Some(Ok((u32::from_le_bytes(b) as usize, entry.root)));
        }
    });
    let mut smallest: HashMap<u32, crate::io::TranscriptKey> = HashMap::new();
    layout.for_each_key_of_rows(id_kind, members, |root, key| match smallest.entry(root) {
        std::collections::hash_map::Entry::Vacant(v) => {
            v.insert(key);
        }
        std::collections::hash_map::Entry::Occupied(mut o) => {
            if key < *o.get() {
                o.insert(key);
            }
        }
    })?;
    work.held(smallest.len());
    let mut roots: Vec<(u32, crate::io::TranscriptKey)> = smallest.into_iter().collect();
    roots.sort_by(|a, b| {
        a.1.partial_cmp(&b.1)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(a.0.cmp(&b.0))
    });
    let slots = roots
        .iter()
        .enumerate()
        .map(|(s, (root, _))| (*root, s as u32))
        .collect();
    let ids = roots
        .iter()
        .map(|(_, key)| format!("fragment-{key}"))
        .collect();
    Ok((slots, ids))
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
    known_gene: &dyn Fn(&str) -> bool,
    rows_read: usize,
    mut results: impl Iterator<Item = Result<(u32, f32)>>,
    cell_ids: &[&str],
    n_nuclei: usize,
    outputs: &FileOutputs,
    transcripts_per_cell: Option<&[u64]>,
    work: &mut Work,
) -> Result<Written> {
    let mut sums = vec![(0u64, 0.0f64, 0.0f64); cell_ids.len()];
    let mut counts = [0usize; 3];
    let mut stream = layout.stream(spec)?;
    let mut sink: Option<(TableSink, arrow::datatypes::SchemaRef)> = None;
    let mut pending = Pending::default();
    // Whether each gene of the stream's table is the model's: a row with
    // another gene was filtered as unknown (pass 1 stops otherwise).
    let mut known: Vec<bool> = Vec::new();
    let batch_rows = write_rows();
    let mut largest_batch = 0usize;
    let mut per_cell = outputs
        .per_cell
        .as_ref()
        .map(|o| CellAggregator::new(o, cell_ids.len()))
        .transpose()?;
    if let (Some(aggregator), Some(counts)) = (per_cell.as_mut(), transcripts_per_cell) {
        aggregator.start_assignment(counts)?;
    }
    let write = outputs.transcripts.is_some()
        || per_cell
            .as_ref()
            .is_some_and(|a| a.writes_points() || a.writes_assignment());
    // Tables written batch by batch, each by a writer thread.
    let sinks = usize::from(outputs.transcripts.is_some())
        + usize::from(per_cell.as_ref().is_some_and(CellAggregator::writes_points));
    while let Some(chunk) = stream.next_chunk()? {
        let n = chunk.x.len();
        anyhow::ensure!(
            chunk.row0 + n <= rows_read,
            "{}: the file holds more rows than when it was first read",
            layout.path().display()
        );
        largest_batch = largest_batch.max(n);
        // Batches the reader decodes ahead, those the writers encode.
        let writing = WRITE_AHEAD * batch_rows * sinks;
        work.rows_held = work
            .rows_held
            .max((1 + READ_AHEAD) * largest_batch + pending.x.len() + writing);
        while known.len() < stream.genes() {
            known.push(known_gene(stream.gene_name(known.len() as u32)));
        }
        let mut at = 0;
        while at < n {
            let take = if write {
                (batch_rows - pending.x.len()).min(n - at)
            } else {
                n - at
            };
            for i in at..at + take {
                let filter = chunk.filter[i].or_else(|| {
                    (!known[chunk.gene[i] as usize]).then_some(FilterReason::UnknownGene)
                });
                let (cell, score, assignment) = match filter {
                    Some(_) => (Segmentation::NO_CELL, f32::NAN, Assignment::Filtered),
                    None => {
                        let (cell, score) = results.next().with_context(|| {
                            format!(
                                "{}: the file holds more transcripts to keep than when it was first read",
                                layout.path().display()
                            )
                        })??;
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
                        (cell, score, assignment)
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
                    pending.filter.push(filter);
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
        stream.rows() == rows_read && results.next().is_none(),
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
    if let Some(aggregator) = per_cell {
        aggregator.write_assignment(&columns, &p.cell)?;
        if aggregator.writes_points() {
            let names: Vec<String> = (0..stream.genes() as u32)
                .map(|g| stream.gene_name(g).to_string())
                .collect();
            aggregator.write_points(&columns, &p.gene, &names)?;
        }
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
    fn the_margin_is_merged_into_a_bucket_in_kept_order() {
        let record = |kept: u32| Record {
            kept,
            pos: [f64::from(kept), 0.0, 0.0],
            token: kept + 1,
            member: -1,
        };
        let cases: [(&[u32], &[u32]); 5] = [
            (&[2, 5, 9], &[0, 1, 7, 10]),
            (&[4, 6], &[]),
            (&[], &[3, 8]),
            (&[1, 2, 3], &[10, 11]),
            (&[10, 11], &[1, 2, 3]),
        ];
        for (own, margin) in cases {
            let loaded = merge_from_back(
                records_bytes(own.iter().map(|&k| record(k))),
                &records_bytes(margin.iter().map(|&k| record(k))),
                margin.iter().map(|&k| k + 100).collect(),
            );
            let mut expected: Vec<(u32, bool)> = own
                .iter()
                .map(|&k| (k, true))
                .chain(margin.iter().map(|&k| (k, false)))
                .collect();
            expected.sort();
            let records: Vec<Record> = loaded
                .bytes
                .chunks_exact(RECORD_BYTES)
                .map(Record::read)
                .collect();
            let got: Vec<(u32, bool)> = records
                .iter()
                .zip(&loaded.own)
                .map(|(r, &o)| (r.kept, o))
                .collect();
            assert_eq!(got, expected, "own {own:?}, margin {margin:?}");
            for (i, r) in records.iter().enumerate() {
                assert_eq!(r.token, r.kept + 1, "a record moves whole");
                assert_eq!(r.pos[0], f64::from(r.kept), "a record moves whole");
                assert_eq!(loaded.kept(i), r.kept);
            }
            let sources: Vec<u32> = records
                .iter()
                .zip(&loaded.own)
                .filter(|(_, &o)| !o)
                .map(|(r, _)| r.kept + 100)
                .collect();
            assert_eq!(
                loaded.sources, sources,
                "the margin's sources in their order"
            );
        }
    }

    /// `records` in their spilled form.
    fn records_bytes(records: impl Iterator<Item = Record>) -> Vec<u8> {
        let mut bytes = Vec::new();
        for r in records {
            r.write(&mut bytes);
        }
        bytes
    }

    #[test]
    fn a_loaded_bucket_decodes_into_its_records_columns() {
        let records: Vec<Record> = (0..70_000u32)
            .map(|k| Record {
                kept: k * 3 + 1,
                pos: [f64::from(k) * 0.5, -f64::from(k), f64::from(k % 7)],
                token: k % 13,
                member: i32::try_from(k % 5).unwrap() - 1,
            })
            .collect();
        let bytes = records_bytes(records.iter().copied());
        let columns = Columns::decode(&bytes);
        let own = vec![true; records.len()];
        let assigned: Vec<bool> = (0..records.len()).map(|i| i % 3 == 0).collect();
        let fragment = FragmentColumns::decode(
            Loaded {
                bytes,
                own: own.clone(),
                sources: Vec::new(),
            },
            assigned.clone(),
        );
        for (i, r) in records.iter().enumerate() {
            assert_eq!(columns.flat[i], [r.pos[0], r.pos[1]]);
            assert_eq!(columns.pos[i], r.pos);
            assert_eq!(columns.tokens[i], r.token);
            assert_eq!(columns.member[i], r.member);
            assert_eq!(columns.kept[i], r.kept);
            assert_eq!(fragment.pos[i], r.pos);
            assert_eq!(fragment.tokens[i], r.token);
            assert_eq!(fragment.kept[i], r.kept);
        }
        assert_eq!(columns.kept.len(), records.len());
        assert_eq!(fragment.own, own);
        assert_eq!(fragment.assigned, assigned);
    }

    /// Points spread over a 1 mm square, a few outside it.
    fn scattered(n: usize) -> Vec<[f64; 2]> {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        (0..n)
            .map(|_| [next() * 1100.0 - 50.0, next() * 1100.0 - 50.0])
            .collect()
    }

    #[test]
    fn a_margin_file_holds_what_a_bucket_took_from_its_neighbours() {
        let points = scattered(4000);
        let grid = prepare::tile_grid(&points, 60.0, 25.0).unwrap();
        for (side, reach) in [(2, 25.0), (1, 25.0), (3, 130.0), (2, 0.0)] {
            let plan = BucketPlan::new(&grid, side);
            let margins = Margins::new(&plan, &grid, reach);
            for &p in &points {
                let owner = plan.index_of(grid.owner(p));
                // The rule of a bucket loading its neighbours' whole files.
                let mut expected: Vec<usize> = (0..plan.cells.len())
                    .filter(|&b| {
                        b != owner
                            && plan.near(&grid, b, reach).contains(&owner)
                            && inside(&plan.reach(&grid, b, reach), p)
                    })
                    .collect();
                expected.sort_unstable();
                let mut got: Vec<usize> = margins.of(owner, p).collect();
                got.sort_unstable();
                assert_eq!(got, expected, "side {side}, reach {reach}, point {p:?}");
            }
        }
    }

    #[test]
    fn claimed_flags_come_from_the_owning_buckets_score_files() {
        let dir = tempfile::tempdir().unwrap();
        let spill = SpillDir {
            path: dir.path().join("spill"),
        };
        std::fs::create_dir_all(spill.path.join("scores")).unwrap();
        // Three buckets own the kept indices k % 3; a score entry for most,
        // claimed when its nucleus is set and its score at least the cut.
        let cut = 0.5f32;
        let entry = |k: u32| -> Option<(f32, i32)> {
            (k % 7 != 3).then(|| {
                (
                    (k % 10) as f32 / 10.0,
                    if k.is_multiple_of(5) { -1 } else { 2 },
                )
            })
        };
        for b in 0..3u32 {
            let mut bytes = Vec::new();
            for k in (0..3000u32).filter(|k| k % 3 == b) {
                if let Some((s, n)) = entry(k) {
                    bytes.extend_from_slice(&k.to_le_bytes());
                    bytes.extend_from_slice(&s.to_le_bytes());
                    bytes.extend_from_slice(&n.to_le_bytes());
                }
            }
            spill
                .write(&spill.file("scores", b as usize), &bytes)
                .unwrap();
        }
        let record = |kept: u32| Record {
            kept,
            pos: [0.0; 3],
            token: 0,
            member: -1,
        };
        // Bucket 1 with all its own records and a sparse margin of the others.
        let own = records_bytes((0..3000).filter(|k| k % 3 == 1).map(record));
        let margin: Vec<u32> = (0..3000).filter(|k| k % 3 != 1 && k % 11 < 2).collect();
        let loaded = merge_from_back(
            own,
            &records_bytes(margin.iter().map(|&k| record(k))),
            margin.iter().map(|&k| k % 3).collect(),
        );
        let got = claimed(&spill, 1, cut, &loaded).unwrap();
        let expected: Vec<bool> = (0..loaded.len())
            .map(|i| entry(loaded.kept(i)).is_some_and(|(s, n)| n >= 0 && s >= cut))
            .collect();
        assert!(expected.iter().any(|&c| c) && expected.iter().any(|&c| !c));
        assert_eq!(got, expected);
    }

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
        let mut c = Components::default();
        c.union(4, 2);
        c.union(5, 4);
        c.union(1, 3);
        c.union(3, 1);
        let labels: Vec<u32> = (0..6).map(|i| c.find(i)).collect();
        assert_eq!(labels, vec![0, 1, 2, 1, 2, 2]);
        // Only the nodes of an edge are held; a root counts itself.
        assert_eq!(c.parent.len(), 3);
        let sizes = c.sizes();
        assert_eq!(sizes.len(), 2);
        assert_eq!((sizes[&2], sizes[&1]), (3, 2));
    }

    #[test]
    fn score_keys_order_as_total_cmp_and_read_back() {
        let mut scores = vec![
            -f32::MAX,
            -1.5,
            -0.0,
            0.0,
            f32::MIN_POSITIVE,
            0.25,
            0.5,
            1.0,
            f32::MAX,
        ];
        scores.sort_by(f32::total_cmp);
        for w in scores.windows(2) {
            assert!(score_key(w[0]) < score_key(w[1]), "{} {}", w[0], w[1]);
        }
        for s in scores {
            assert_eq!(key_score(score_key(s)).to_bits(), s.to_bits());
        }
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
