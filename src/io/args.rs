//! Input flags of `seggpu segment` and their resolution into an
//! [`InputSpec`]: concrete files, column names and options (docs/contract.md §2).
//!
//! Every column has a list of candidate names taken from the preset; the
//! first name present in the file is used. A name given on the command line
//! replaces the list and becomes required (a missing column is then an
//! error). The value `none` turns an optional column off (`--z-col none`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::table;

/// Default µm per pixel of CosMx global pixel coordinates.
pub const COSMX_PIXEL_SIZE: f64 = 0.12028;

/// Default quality threshold (Xenium Q-score).
pub const QV_MIN: f64 = 20.0;

/// Control-probe prefixes of 10x Xenium panels (also the spatialdata preset).
pub const XENIUM_CONTROLS: &[&str] = &[
    "NegControlProbe_",
    "antisense_",
    "NegControlCodeword",
    "BLANK_",
    "DeprecatedCodeword_",
    "UnassignedCodeword_",
    "Intergenic_",
];

/// Blank-codeword prefixes of Vizgen MERSCOPE panels.
pub const MERSCOPE_CONTROLS: &[&str] = &["Blank-", "BLANK"];

/// Negative-probe, system-control and false-code prefixes of NanoString
/// CosMx panels (`FalseCode` targets are barcodes of no probe, NanoString's
/// false-positive controls).
pub const COSMX_CONTROLS: &[&str] = &["NegPrb", "SystemControl", "Negative", "FalseCode"];

/// Vendor layout of the input files (docs/contract.md §2 table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Preset {
    /// 10x Xenium output: transcripts.parquet, nucleus_boundaries.parquet.
    Xenium,
    /// Vizgen MERSCOPE: detected_transcripts.csv, cell boundary polygons.
    Merscope,
    /// NanoString CosMx: *_tx_file.csv in pixels, polygon vertex table.
    Cosmx,
    /// SpatialData export: points parquet and GeoParquet nucleus shapes.
    Spatialdata,
}

impl Preset {
    /// Lower-case name, as on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Preset::Xenium => "xenium",
            Preset::Merscope => "merscope",
            Preset::Cosmx => "cosmx",
            Preset::Spatialdata => "spatialdata",
        }
    }

    /// Guesses the preset from the column names of a transcripts file.
    pub fn detect(columns: &[String]) -> Option<Preset> {
        let has = |c: &str| columns.iter().any(|n| n == c);
        if has("x_location") {
            Some(Preset::Xenium)
        } else if has("global_x") {
            Some(Preset::Merscope)
        } else if has("x_global_px") {
            Some(Preset::Cosmx)
        } else if has("x") && has("y") {
            Some(Preset::Spatialdata)
        } else {
            None
        }
    }
}

/// Input flags of `seggpu segment` (flattened into its arguments).
#[derive(clap::Args, Debug, Clone)]
pub struct InputArgs {
    /// Xenium output folder: reads DIR/transcripts.parquet and
    /// DIR/nucleus_boundaries.parquet (or their .csv.gz versions). Implies
    /// --preset xenium unless a preset is given.
    #[arg(long, value_name = "DIR")]
    pub xenium: Option<PathBuf>,
    /// Column names and defaults of a vendor layout. Without it the preset is
    /// guessed from the transcripts file's columns (x_location → xenium,
    /// global_x → merscope, x_global_px → cosmx, x → spatialdata).
    #[arg(long, value_enum)]
    pub preset: Option<Preset>,
    /// Transcripts table: parquet, CSV, or gzip-compressed CSV (any name).
    #[arg(long, value_name = "FILE")]
    pub transcripts: Option<PathBuf>,
    /// Nucleus polygons: a vertex table (one row per vertex, grouped by cell)
    /// or a table with a WKB/WKT geometry column (GeoParquet); parquet, CSV
    /// or gzip CSV.
    #[arg(long, value_name = "FILE")]
    pub boundaries: Option<PathBuf>,
    /// Transcript x column [preset: x_location, global_x, x_global_px, x].
    #[arg(long, value_name = "NAME")]
    pub x_col: Option<String>,
    /// Transcript y column [preset: y_location, global_y, y_global_px, y].
    #[arg(long, value_name = "NAME")]
    pub y_col: Option<String>,
    /// Transcript z column, `none` for 2-D data (z = 0) [preset: z_location,
    /// global_z, z, z].
    #[arg(long, value_name = "NAME")]
    pub z_col: Option<String>,
    /// Gene name column [preset: feature_name, gene, target, feature_name].
    #[arg(long, value_name = "NAME")]
    pub gene_col: Option<String>,
    /// Transcript id column, `none` for the row index [preset: transcript_id;
    /// merscope and cosmx: row index].
    #[arg(long, value_name = "NAME")]
    pub id_col: Option<String>,
    /// Cell id column of the nuclear flag, `none` to ignore the flag
    /// [preset: cell_id; cosmx: cell_ID, cell].
    #[arg(long, value_name = "NAME")]
    pub cell_col: Option<String>,
    /// Nuclear flag column, `none` to place transcripts by point-in-polygon
    /// [preset: overlaps_nucleus; cosmx: CellComp; merscope: none].
    #[arg(long, value_name = "NAME")]
    pub nuclear_col: Option<String>,
    /// Value of the nuclear flag column that means "in the nucleus"
    /// [preset: 1; cosmx: Nuclear].
    #[arg(long, value_name = "VALUE")]
    pub nuclear_value: Option<String>,
    /// Quality column, `none` for no quality filter [preset: qv].
    #[arg(long, value_name = "NAME")]
    pub qv_col: Option<String>,
    /// Field-of-view column: per-FOV integer cell ids become `<fov>_<cell>`
    /// in both files, `none` to use cell ids as they are [cosmx: fov].
    #[arg(long, value_name = "NAME")]
    pub fov_col: Option<String>,
    /// Vertex x column of a boundaries vertex table [preset: vertex_x;
    /// merscope: x, global_x; cosmx: x_global_px].
    #[arg(long, value_name = "NAME")]
    pub vertex_x_col: Option<String>,
    /// Vertex y column of a boundaries vertex table [preset: vertex_y;
    /// merscope: y, global_y; cosmx: y_global_px].
    #[arg(long, value_name = "NAME")]
    pub vertex_y_col: Option<String>,
    /// Nucleus id column of the boundaries file [preset: cell_id; merscope:
    /// EntityID, poly_ID; cosmx: cellID, cell_ID, cell].
    #[arg(long, value_name = "NAME")]
    pub boundary_id_col: Option<String>,
    /// WKB/WKT geometry column of the boundaries file; when present the file
    /// is read as polygons, else as a vertex table [preset: geometry, Geometry].
    #[arg(long, value_name = "NAME")]
    pub geometry_col: Option<String>,
    /// Transcripts with a quality value below this are filtered (`qv`).
    #[arg(long, default_value_t = QV_MIN, value_name = "QV")]
    pub qv_min: f64,
    /// Gene-name prefix of control probes, filtered as `control`; repeat the
    /// flag for several. Added to the preset's list (see --control-prefix-only).
    #[arg(long = "control-prefix", value_name = "PREFIX")]
    pub control_prefix: Vec<String>,
    /// Use only the --control-prefix values, not the preset's list.
    #[arg(long, requires = "control_prefix")]
    pub control_prefix_only: bool,
    /// Keep control probes (no `control` filter).
    #[arg(long, conflicts_with = "control_prefix")]
    pub no_control_filter: bool,
    /// Coordinates are pixels of this many µm: x, y of transcripts and
    /// polygons are multiplied by it [cosmx: 0.12028; others: µm already].
    #[arg(long, value_name = "UM_PER_PX")]
    pub pixel_size: Option<f64>,
    /// Multiply transcript z by this (e.g. a z-slice step in µm; CosMx and
    /// MERSCOPE z are plane indices and are kept as such by default).
    #[arg(long, default_value_t = 1.0, value_name = "FACTOR")]
    pub z_scale: f64,
    /// Multiply polygon x (after pixel scaling) by this.
    #[arg(
        long,
        default_value_t = 1.0,
        value_name = "FACTOR",
        allow_negative_numbers = true
    )]
    pub boundary_x_scale: f64,
    /// Multiply polygon y (after pixel scaling) by this, e.g. -1 for polygons
    /// whose y is negated relative to the transcripts.
    #[arg(
        long,
        default_value_t = 1.0,
        value_name = "FACTOR",
        allow_negative_numbers = true
    )]
    pub boundary_y_scale: f64,
    /// Add this to polygon x (µm, after scaling).
    #[arg(
        long,
        default_value_t = 0.0,
        value_name = "UM",
        allow_negative_numbers = true
    )]
    pub boundary_offset_x: f64,
    /// Add this to polygon y (µm, after scaling).
    #[arg(
        long,
        default_value_t = 0.0,
        value_name = "UM",
        allow_negative_numbers = true
    )]
    pub boundary_offset_y: f64,
}

impl Default for InputArgs {
    /// No files and the command line's defaults.
    fn default() -> Self {
        InputArgs {
            xenium: None,
            preset: None,
            transcripts: None,
            boundaries: None,
            x_col: None,
            y_col: None,
            z_col: None,
            gene_col: None,
            id_col: None,
            cell_col: None,
            nuclear_col: None,
            nuclear_value: None,
            qv_col: None,
            fov_col: None,
            vertex_x_col: None,
            vertex_y_col: None,
            boundary_id_col: None,
            geometry_col: None,
            qv_min: QV_MIN,
            control_prefix: Vec::new(),
            control_prefix_only: false,
            no_control_filter: false,
            pixel_size: None,
            z_scale: 1.0,
            boundary_x_scale: 1.0,
            boundary_y_scale: 1.0,
            boundary_offset_x: 0.0,
            boundary_offset_y: 0.0,
        }
    }
}

/// Candidate names of one column.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ColumnChoice {
    /// Names to try, in order; empty when the column is turned off.
    pub candidates: Vec<String>,
    /// Whether a file without any of the names is an error.
    pub required: bool,
}

impl ColumnChoice {
    fn preset(names: &[&str]) -> ColumnChoice {
        ColumnChoice {
            candidates: names.iter().map(|s| s.to_string()).collect(),
            required: false,
        }
    }

    fn required(names: &[&str]) -> ColumnChoice {
        ColumnChoice {
            required: true,
            ..ColumnChoice::preset(names)
        }
    }

    /// A column chosen on the command line replaces the preset's names and is
    /// required; `none` turns it off.
    fn with_override(self, flag: &Option<String>) -> ColumnChoice {
        match flag.as_deref() {
            None => self,
            Some(v) if v.eq_ignore_ascii_case("none") => ColumnChoice::default(),
            Some(v) => ColumnChoice {
                candidates: vec![v.to_string()],
                required: true,
            },
        }
    }

    /// Whether the column is turned off.
    pub fn is_off(&self) -> bool {
        self.candidates.is_empty()
    }
}

/// Columns of the transcripts table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TranscriptColumns {
    /// x coordinate.
    pub x: ColumnChoice,
    /// y coordinate.
    pub y: ColumnChoice,
    /// z coordinate (0 when absent).
    pub z: ColumnChoice,
    /// Gene name.
    pub gene: ColumnChoice,
    /// Transcript id (row index when absent).
    pub id: ColumnChoice,
    /// Cell id that goes with the nuclear flag.
    pub cell: ColumnChoice,
    /// Nuclear flag.
    pub nuclear: ColumnChoice,
    /// Quality value.
    pub qv: ColumnChoice,
    /// Field of view (CosMx per-FOV cell ids).
    pub fov: ColumnChoice,
}

/// Columns of the boundaries table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundaryColumns {
    /// Nucleus id.
    pub id: ColumnChoice,
    /// WKB/WKT geometry (a geometry table when found).
    pub geometry: ColumnChoice,
    /// Vertex x of a vertex table.
    pub vertex_x: ColumnChoice,
    /// Vertex y of a vertex table.
    pub vertex_y: ColumnChoice,
    /// Field of view (CosMx per-FOV cell ids).
    pub fov: ColumnChoice,
}

/// Resolved input: files, columns and options.
#[derive(Debug, Clone)]
pub struct InputSpec {
    /// Vendor layout in use (given or detected).
    pub preset: Preset,
    /// Transcripts file.
    pub transcripts: PathBuf,
    /// Nucleus boundaries file.
    pub boundaries: PathBuf,
    /// Transcript columns.
    pub columns: TranscriptColumns,
    /// Boundary columns.
    pub boundary_columns: BoundaryColumns,
    /// Value of the nuclear flag column meaning "nuclear".
    pub nuclear_value: String,
    /// Cell id values meaning "no cell" (compared with the id as text).
    pub unassigned_cells: Vec<String>,
    /// Quality threshold (rows with qv < qv_min are filtered).
    pub qv_min: f64,
    /// Control-probe gene-name prefixes (empty: no control filter).
    pub control_prefixes: Vec<String>,
    /// µm per pixel when coordinates are pixels (transcripts and polygons).
    pub pixel_size: Option<f64>,
    /// Factor applied to transcript z.
    pub z_scale: f64,
    /// Factors applied to polygon x and y after pixel scaling.
    pub boundary_scale: [f64; 2],
    /// Offsets added to polygon x and y after scaling.
    pub boundary_offset: [f64; 2],
}

impl InputSpec {
    /// The input files and the options that change what is read, for the
    /// run log: preset, files, pixel size (µm per pixel, `none` for µm
    /// already), control prefixes, quality threshold and nuclear value.
    pub fn files(&self) -> BTreeMap<&'static str, String> {
        BTreeMap::from([
            ("preset", self.preset.as_str().to_string()),
            ("transcripts", self.transcripts.display().to_string()),
            ("boundaries", self.boundaries.display().to_string()),
            (
                "pixel_size_um",
                self.pixel_size
                    .map_or_else(|| "none".to_string(), |p| p.to_string()),
            ),
            ("control_prefixes", self.control_prefixes.join(", ")),
            ("qv_min", self.qv_min.to_string()),
            ("nuclear_value", self.nuclear_value.clone()),
        ])
    }

    /// The defaults of a preset for the given files.
    pub fn for_preset(preset: Preset, transcripts: PathBuf, boundaries: PathBuf) -> InputSpec {
        let c = ColumnChoice::preset;
        let r = ColumnChoice::required;
        let (columns, boundary_columns) = match preset {
            Preset::Xenium => (
                TranscriptColumns {
                    x: r(&["x_location"]),
                    y: r(&["y_location"]),
                    z: c(&["z_location"]),
                    gene: r(&["feature_name"]),
                    id: c(&["transcript_id"]),
                    cell: c(&["cell_id"]),
                    nuclear: c(&["overlaps_nucleus"]),
                    qv: c(&["qv"]),
                    fov: ColumnChoice::default(),
                },
                BoundaryColumns {
                    id: c(&["cell_id"]),
                    geometry: c(&["geometry", "Geometry"]),
                    vertex_x: c(&["vertex_x"]),
                    vertex_y: c(&["vertex_y"]),
                    fov: ColumnChoice::default(),
                },
            ),
            Preset::Merscope => (
                TranscriptColumns {
                    x: r(&["global_x"]),
                    y: r(&["global_y"]),
                    z: c(&["global_z"]),
                    gene: r(&["gene"]),
                    // MERSCOPE's transcript_id names the gene's Ensembl
                    // transcript (not unique per row): use the row index.
                    id: ColumnChoice::default(),
                    cell: ColumnChoice::default(),
                    nuclear: ColumnChoice::default(),
                    qv: c(&["qv"]),
                    fov: ColumnChoice::default(),
                },
                BoundaryColumns {
                    id: c(&["EntityID", "poly_ID", "cell_id", "cell"]),
                    geometry: c(&["Geometry", "geometry"]),
                    vertex_x: c(&["x", "global_x", "vertex_x"]),
                    vertex_y: c(&["y", "global_y", "vertex_y"]),
                    fov: ColumnChoice::default(),
                },
            ),
            Preset::Cosmx => (
                TranscriptColumns {
                    x: r(&["x_global_px"]),
                    y: r(&["y_global_px"]),
                    z: c(&["z"]),
                    gene: r(&["target"]),
                    id: c(&["transcript_id"]),
                    cell: c(&["cell_ID", "cell"]),
                    nuclear: c(&["CellComp"]),
                    qv: c(&["qv"]),
                    fov: c(&["fov"]),
                },
                BoundaryColumns {
                    id: c(&["cellID", "cell_ID", "cell"]),
                    geometry: c(&["geometry", "Geometry"]),
                    vertex_x: c(&["x_global_px", "vertex_x"]),
                    vertex_y: c(&["y_global_px", "vertex_y"]),
                    fov: c(&["fov"]),
                },
            ),
            Preset::Spatialdata => (
                TranscriptColumns {
                    x: r(&["x"]),
                    y: r(&["y"]),
                    z: c(&["z"]),
                    gene: r(&["feature_name", "gene"]),
                    id: c(&["transcript_id"]),
                    cell: c(&["cell_id"]),
                    nuclear: c(&["overlaps_nucleus"]),
                    qv: c(&["qv"]),
                    fov: ColumnChoice::default(),
                },
                BoundaryColumns {
                    id: c(&["cell_id", "__index_level_0__"]),
                    geometry: c(&["geometry", "Geometry"]),
                    vertex_x: c(&["vertex_x", "x"]),
                    vertex_y: c(&["vertex_y", "y"]),
                    fov: ColumnChoice::default(),
                },
            ),
        };
        let (controls, nuclear_value, pixel_size) = match preset {
            Preset::Xenium | Preset::Spatialdata => (XENIUM_CONTROLS, "1", None),
            Preset::Merscope => (MERSCOPE_CONTROLS, "1", None),
            Preset::Cosmx => (COSMX_CONTROLS, "Nuclear", Some(COSMX_PIXEL_SIZE)),
        };
        let mut unassigned_cells: Vec<String> = ["", "UNASSIGNED", "-1"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        if preset == Preset::Cosmx {
            // CosMx cell_ID 0 is background / no cell.
            unassigned_cells.push("0".into());
        }
        InputSpec {
            preset,
            transcripts,
            boundaries,
            columns,
            boundary_columns,
            nuclear_value: nuclear_value.into(),
            unassigned_cells,
            qv_min: QV_MIN,
            control_prefixes: controls.iter().map(|s| s.to_string()).collect(),
            pixel_size,
            z_scale: 1.0,
            boundary_scale: [1.0, 1.0],
            boundary_offset: [0.0, 0.0],
        }
    }
}

/// The first existing file among `names` in `dir`.
fn find_in(dir: &Path, names: &[&str], what: &str) -> Result<PathBuf> {
    for name in names {
        let p = dir.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!(
        "Xenium folder {}: no {what} file (looked for {})",
        dir.display(),
        names.join(", ")
    )
}

impl InputArgs {
    /// Turns the flags and the preset into files, columns and options.
    pub fn resolve(&self) -> Result<InputSpec> {
        if let Some(dir) = &self.xenium {
            if !dir.is_dir() {
                bail!("--xenium {}: not a folder", dir.display());
            }
        }
        let transcripts = match (&self.transcripts, &self.xenium) {
            (Some(t), _) => t.clone(),
            (None, Some(dir)) => find_in(
                dir,
                &[
                    "transcripts.parquet",
                    "transcripts.csv.gz",
                    "transcripts.csv",
                ],
                "transcripts",
            )?,
            (None, None) => bail!(
                "no input: give --xenium DIR (a Xenium output folder) or --transcripts FILE \
                 with --boundaries FILE"
            ),
        };
        let boundaries = match (&self.boundaries, &self.xenium) {
            (Some(b), _) => b.clone(),
            (None, Some(dir)) => find_in(
                dir,
                &[
                    "nucleus_boundaries.parquet",
                    "nucleus_boundaries.csv.gz",
                    "nucleus_boundaries.csv",
                ],
                "nucleus boundaries",
            )?,
            (None, None) => bail!(
                "--transcripts {} needs --boundaries FILE (nucleus polygons)",
                transcripts.display()
            ),
        };
        for (flag, path) in [
            ("--transcripts", &transcripts),
            ("--boundaries", &boundaries),
        ] {
            if !path.is_file() {
                bail!("{flag} {}: no such file", path.display());
            }
        }
        let preset = match (self.preset, &self.xenium) {
            (Some(p), _) => p,
            (None, Some(_)) => Preset::Xenium,
            (None, None) => {
                let columns = table::Table::open(&transcripts)?.names().to_vec();
                Preset::detect(&columns).with_context(|| {
                    format!(
                        "{}: cannot tell the vendor layout from its columns ({}); give --preset \
                         xenium|merscope|cosmx|spatialdata",
                        transcripts.display(),
                        columns.join(", ")
                    )
                })?
            }
        };
        let mut spec = InputSpec::for_preset(preset, transcripts, boundaries);
        let c = &mut spec.columns;
        c.x = c.x.clone().with_override(&self.x_col);
        c.y = c.y.clone().with_override(&self.y_col);
        c.z = c.z.clone().with_override(&self.z_col);
        c.gene = c.gene.clone().with_override(&self.gene_col);
        c.id = c.id.clone().with_override(&self.id_col);
        c.cell = c.cell.clone().with_override(&self.cell_col);
        c.nuclear = c.nuclear.clone().with_override(&self.nuclear_col);
        c.qv = c.qv.clone().with_override(&self.qv_col);
        c.fov = c.fov.clone().with_override(&self.fov_col);
        for (flag, col) in [
            ("--x-col", &c.x),
            ("--y-col", &c.y),
            ("--gene-col", &c.gene),
        ] {
            if col.is_off() {
                bail!("{flag} cannot be `none`: every transcript needs it");
            }
        }
        let b = &mut spec.boundary_columns;
        b.id = b.id.clone().with_override(&self.boundary_id_col);
        b.geometry = b.geometry.clone().with_override(&self.geometry_col);
        b.vertex_x = b.vertex_x.clone().with_override(&self.vertex_x_col);
        b.vertex_y = b.vertex_y.clone().with_override(&self.vertex_y_col);
        b.fov = b.fov.clone().with_override(&self.fov_col);
        if b.id.is_off() {
            bail!("--boundary-id-col cannot be `none`: nuclei need ids");
        }
        if let Some(v) = &self.nuclear_value {
            spec.nuclear_value = v.clone();
        }
        if !self.qv_min.is_finite() {
            bail!("--qv-min must be a finite number, not {}", self.qv_min);
        }
        spec.qv_min = self.qv_min;
        if self.no_control_filter {
            spec.control_prefixes.clear();
        } else if !self.control_prefix.is_empty() {
            if self.control_prefix.iter().any(|p| p.is_empty()) {
                bail!("--control-prefix '' would filter every gene; use --no-control-filter to keep controls");
            }
            if self.control_prefix_only {
                spec.control_prefixes.clear();
            }
            for p in &self.control_prefix {
                if !spec.control_prefixes.contains(p) {
                    spec.control_prefixes.push(p.clone());
                }
            }
        }
        if let Some(px) = self.pixel_size {
            if !(px.is_finite() && px > 0.0) {
                bail!("--pixel-size must be a positive number of µm per pixel, not {px}");
            }
            spec.pixel_size = Some(px);
        }
        for (flag, v) in [
            ("--z-scale", self.z_scale),
            ("--boundary-x-scale", self.boundary_x_scale),
            ("--boundary-y-scale", self.boundary_y_scale),
        ] {
            if !(v.is_finite() && v != 0.0) {
                bail!("{flag} must be a finite, non-zero number, not {v}");
            }
        }
        for (flag, v) in [
            ("--boundary-offset-x", self.boundary_offset_x),
            ("--boundary-offset-y", self.boundary_offset_y),
        ] {
            if !v.is_finite() {
                bail!("{flag} must be a finite number, not {v}");
            }
        }
        spec.z_scale = self.z_scale;
        spec.boundary_scale = [self.boundary_x_scale, self.boundary_y_scale];
        spec.boundary_offset = [self.boundary_offset_x, self.boundary_offset_y];
        Ok(spec)
    }
}
