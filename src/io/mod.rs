//! Reading vendor files (docs/contract.md §2–4): transcripts with their filters, and
//! nucleus polygons with their shape features.
//!
//! [`args::InputArgs`] (command-line flags) resolve into an
//! [`args::InputSpec`]; [`read_transcripts`] and [`read_nuclei`] read the
//! files it names. Tables may be parquet, CSV or gzip CSV (detected from the
//! magic bytes, whatever the file name).

pub mod args;
pub mod geometry;
mod heap;
mod membership;
mod nuclei;
mod nucleus_ids;
pub mod scratch;
pub mod table;
mod transcripts;

pub use args::{InputArgs, InputSpec, Preset};
pub use heap::{purge_freed_memory_at_once, release_free_memory};
pub use membership::{check_membership, MembershipReport, MembershipTally};
pub use nuclei::{read_nuclei, SpilledPolygons};
pub use nucleus_ids::{AlteredNuclei, NucleusIds};
#[cfg(feature = "testing")]
pub use transcripts::ID_RUN_ENV;
pub use transcripts::{read_transcripts, Chunk, IdKind, TranscriptLayout, TranscriptStream};

/// Why a transcript takes no part in segmentation (it still appears in the output).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FilterReason {
    /// Quality value below the threshold.
    Qv,
    /// Control probe / blank codeword (by gene-name prefix).
    Control,
    /// Gene not in the model's vocabulary (with `--unknown-genes skip`).
    UnknownGene,
    /// x, y or z not finite.
    BadCoordinates,
}

impl FilterReason {
    /// The value written to the `filter_reason` column.
    pub fn as_str(self) -> &'static str {
        match self {
            FilterReason::Qv => "qv",
            FilterReason::Control => "control",
            FilterReason::UnknownGene => "unknown_gene",
            FilterReason::BadCoordinates => "bad_coordinates",
        }
    }
}

/// Every row of the transcripts file, in file order. Coordinates are in µm
/// (pixels already scaled). Columns echoed unchanged into the output are kept
/// as Arrow arrays in `passthrough`.
#[derive(Debug, Clone)]
pub struct Transcripts {
    /// x in µm.
    pub x: Vec<f64>,
    /// y in µm.
    pub y: Vec<f64>,
    /// z in µm (0 when the file has no z).
    pub z: Vec<f64>,
    /// Gene name of every row, as an index into `gene_names`.
    pub gene: Vec<u32>,
    /// Distinct gene names of the file.
    pub gene_names: Vec<String>,
    /// Sort key of the transcript id (numeric ids as read; the row index when
    /// the file has none). Fragment ids use the smallest key of a fragment.
    pub id_key: Vec<TranscriptKey>,
    /// Nuclear membership from the file: `Some(cell id)` when the row is
    /// flagged nuclear (Xenium `overlaps_nucleus == 1`, CosMx `CellComp ==
    /// "Nuclear"`), `None` otherwise. `None` for the whole column (the outer
    /// option) when the file has no flag: membership then comes from polygons.
    pub nuclear_cell: Option<Vec<Option<String>>>,
    /// Filter decision per row (`None` = kept).
    pub filter: Vec<Option<FilterReason>>,
    /// Output columns as read: transcript_id, x, y, z, gene, qv (those present),
    /// named as in the output.
    pub passthrough: Vec<(String, arrow::array::ArrayRef)>,
    /// Columns used (role, name), for the run log and for messages.
    pub columns: Vec<(&'static str, String)>,
}

/// A transcript id usable as a sort key and written into fragment ids.
#[derive(Debug, Clone, PartialEq, PartialOrd)]
pub enum TranscriptKey {
    /// Unsigned integer ids (Xenium).
    U64(u64),
    /// Signed integer ids.
    I64(i64),
    /// Float ids (some exports), ordered numerically.
    F64(f64),
    /// String ids, ordered bytewise.
    Str(String),
}

impl std::fmt::Display for TranscriptKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TranscriptKey::U64(v) => write!(f, "{v}"),
            TranscriptKey::I64(v) => write!(f, "{v}"),
            TranscriptKey::F64(v) if v.fract() == 0.0 && v.abs() < 9.0e15 => {
                write!(f, "{}", *v as i64)
            }
            TranscriptKey::F64(v) => write!(f, "{v}"),
            TranscriptKey::Str(v) => f.write_str(v),
        }
    }
}

/// Nucleus polygons, sorted by id (bytewise), with docs/contract.md §4 features.
#[derive(Debug, Clone, Default)]
pub struct Nuclei {
    /// Nucleus (cell) ids, sorted ascending (bytewise); index = nucleus
    /// index. Packed in one buffer: see [`NucleusIds`].
    pub ids: NucleusIds,
    /// Exterior ring of every nucleus (closed, no repeated closing vertex duplicates).
    pub polygons: Vec<geo::Polygon<f64>>,
    /// Area-weighted centroid.
    pub centroid: Vec<[f64; 2]>,
    /// `[area, convexity, elongation, circularity]` per nucleus.
    pub features: Vec<[f32; 4]>,
    /// Nuclei dropped as invalid, with the reason (reported, not fatal).
    pub skipped: Vec<(String, String)>,
    /// Nuclei kept but altered while reading (id, what was done): a
    /// multipolygon reduced to its largest part, holes ignored, several
    /// polygons of one id, repeated or scattered vertex rows.
    pub altered: AlteredNuclei,
    /// Facts about the reading worth reporting (polygons read, multipolygons
    /// reduced to their largest part, duplicate ids, holes ignored).
    pub notes: Vec<String>,
    /// Columns used (role, name), for the run log.
    pub columns: Vec<(&'static str, String)>,
    /// Where the polygons are when they are not held (`polygons` is then
    /// empty): [`Nuclei::spill_polygons`].
    pub spilled: Option<SpilledPolygons>,
}
