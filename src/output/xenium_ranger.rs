//! Files for `xeniumranger import-segmentation` (`--xenium-ranger`,
//! docs/contract.md §11): the folder `xenium_ranger/` with
//! `transcript_assignment.csv`, `viz_polygons.geojson`, `cell_id_map.csv` and
//! `README.txt` (the command to run).
//!
//! The layout is the one Xenium Ranger reads as "Baysor" transcript
//! assignments and the one proseg's `proseg-to-baysor` writes (Baysor's
//! `GeometryCollectionLegacy`), where users' imports went wrong (proseg
//! issues #38, #55, #66, #86, #126; Baysor #148, #153, #165), hence:
//! - every input row is a CSV row under its own Xenium `transcript_id`
//!   (filtered rows too, as noise): ids Xenium Ranger does not find in the
//!   bundle stop the import, so ids are never invented (proseg #86);
//! - `cell` is `cell-<N>` (text) in the CSV and the integer `N` in the
//!   GeoJSON, N ≥ 1 so that no tool reads 0 as "no cell";
//! - the GeoJSON is a `GeometryCollection` of `Polygon`s, each with its
//!   integer `cell` member, the layout Baysor documents for Xenium Ranger
//!   (mixed layouts and id types failed: proseg #55, Baysor #148);
//! - the CSV's cells and the polygons are the same set, the output cells
//!   ([`OutputCells`]): a cell without polygon or a polygon without
//!   transcripts stops the import (proseg #38, Baysor #165);
//! - polygons are single valid rings of at least 4 coordinates (Baysor #153).

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use arrow::array::{
    Array, ArrayRef, BooleanArray, Float64Array, StringArray, StringBuilder, UInt64Array,
};
use arrow::datatypes::DataType;
use arrow::record_batch::RecordBatch;

use super::cells::{OutputCells, NOT_OUTPUT};
use super::{CellRow, ROW_GROUP};
use crate::io::args::Preset;
use crate::io::{IdKind, TranscriptLayout, Transcripts};
use crate::pipeline::Segmentation;

/// The folder, inside the output folder.
pub const DIR: &str = "xenium_ranger";
/// `--transcript-assignment`.
pub const ASSIGNMENT_FILE: &str = "transcript_assignment.csv";
/// `--viz-polygons`.
pub const POLYGONS_FILE: &str = "viz_polygons.geojson";
/// `cell-<N>` → seggpu's cell id.
pub const ID_MAP_FILE: &str = "cell_id_map.csv";
/// The command to run.
pub const README_FILE: &str = "README.txt";

/// The flag, for messages.
const FLAG: &str = "--xenium-ranger";

/// Refuses presets whose transcripts have no Xenium ids (checked before
/// reading, so a wrong input fails at once).
pub fn check_preset(preset: Preset) -> Result<()> {
    match preset {
        Preset::Xenium | Preset::Spatialdata => Ok(()),
        other => bail!(
            "{FLAG} writes files for Xenium Ranger, which looks transcripts up by their Xenium \
             transcript_id; this input is --preset {} (no Xenium ids). Use it with a Xenium \
             output (--xenium DIR or --preset xenium) or a SpatialData export of one \
             (--preset spatialdata with a transcript_id column)",
            other.as_str()
        ),
    }
}

/// Refuses a transcripts file without integer transcript ids (the row index
/// seggpu uses otherwise is no id Xenium Ranger knows).
pub fn check_ids(transcripts: &Transcripts, file: &Path) -> Result<()> {
    let column = transcripts
        .columns
        .iter()
        .find(|(role, _)| *role == "transcript id")
        .map(|(_, column)| column.as_str());
    let ids = match column {
        Some(_) => Some(id_column(transcripts)?.data_type().clone()),
        None => None,
    };
    check_id_type(file, column.zip(ids))
}

/// [`check_ids`] for the flow that reads in batches: the id column of
/// `layout` and the kind of ids its id pass found (which also checked that
/// every id is present and unique).
pub fn check_layout_ids(layout: &TranscriptLayout, kind: Option<IdKind>) -> Result<()> {
    let column = layout
        .columns()
        .into_iter()
        .find(|(role, _)| *role == "transcript id")
        .map(|(_, column)| column);
    // The type the ids of that kind are written as (numbers as read).
    let ids = kind.map(|kind| match kind {
        IdKind::U64 => DataType::UInt64,
        IdKind::I64 => DataType::Int64,
        IdKind::F64 => DataType::Float64,
        IdKind::Str => DataType::Utf8,
    });
    check_id_type(layout.path(), column.as_deref().zip(ids))
}

/// The check of both flows: an id column (name, type of its ids) of integers.
fn check_id_type(file: &Path, ids: Option<(&str, DataType)>) -> Result<()> {
    let Some((column, ids)) = ids else {
        bail!(
            "{FLAG}: {} has no transcript id column (looked for transcript_id; --id-col names \
             another): Xenium Ranger looks transcripts up by their Xenium transcript_id",
            file.display()
        );
    };
    if !ids.is_integer() {
        bail!(
            "{FLAG}: {} column {column} holds {ids} ids; Xenium transcript ids are integers",
            file.display()
        );
    }
    Ok(())
}

fn id_column(transcripts: &Transcripts) -> Result<&ArrayRef> {
    transcripts
        .passthrough
        .iter()
        .find(|(name, _)| name == "transcript_id")
        .map(|(_, a)| a)
        .context("internal: the transcripts have no transcript_id column")
}

/// The `<N>` of output cell `i` (1-based).
pub fn cell_number(i: usize) -> usize {
    i + 1
}

/// What `README.txt` says about the bundle.
#[derive(Clone)]
pub enum Bundle {
    /// The Xenium output folder the transcripts came from.
    Folder(PathBuf),
    /// The simulated `--demo` input: Xenium-shaped, but no bundle to import into.
    Demo,
    /// A SpatialData export: the bundle it came from is not known here.
    Unknown,
}

/// Where the folder is written and what its `README.txt` names.
#[derive(Clone)]
pub struct Folder {
    /// Staged path of the folder (created by the writer).
    pub dir: PathBuf,
    /// Where it will be after commit, for the command in `README.txt`.
    pub final_dir: PathBuf,
    /// The bundle to import into.
    pub bundle: Bundle,
}

/// Writes the folder from the in-memory path's results.
pub fn write(
    folder: &Folder,
    result: &Segmentation,
    transcripts: &Transcripts,
    cells: &OutputCells,
) -> Result<()> {
    let mut assignment = AssignmentWriter::create(
        folder,
        OutputCells::positions(result.cell_ids.len(), &cells.index),
    )?;
    let rows = result.len();
    let mut start = 0;
    loop {
        let end = (start + ROW_GROUP).min(rows);
        let columns: Vec<(String, ArrayRef)> = transcripts
            .passthrough
            .iter()
            .map(|(name, a)| (name.clone(), a.slice(start, end - start)))
            .collect();
        assignment.write(&columns, &result.cell[start..end])?;
        start = end;
        if start >= rows {
            break;
        }
    }
    let low = assignment.finish()?;
    finish(folder, &result.cells, cells, low)
}

/// `transcript_assignment.csv` written batch by batch (both flows), with
/// what the q20 check needs: per output cell, whether one of its
/// transcripts has qv ≥ 20.
pub struct AssignmentWriter {
    path: PathBuf,
    writer: arrow::csv::Writer<BufWriter<std::fs::File>>,
    /// Place among the output cells of every cell (or [`NOT_OUTPUT`]).
    position: Vec<u32>,
    /// Per output cell: whether a transcript of qv ≥ 20 was seen.
    q20: Vec<bool>,
    /// Whether the rows have a qv column.
    has_qv: bool,
}

impl AssignmentWriter {
    /// Creates the folder and the file; `position` is
    /// [`OutputCells::positions`] of the run's cells.
    pub fn create(folder: &Folder, position: Vec<u32>) -> Result<Self> {
        std::fs::create_dir_all(&folder.dir)
            .with_context(|| format!("cannot create {}", folder.dir.display()))?;
        let path = folder.dir.join(ASSIGNMENT_FILE);
        let file = std::fs::File::create(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        let n_output = position.iter().filter(|&&p| p != NOT_OUTPUT).count();
        Ok(AssignmentWriter {
            path,
            writer: arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(BufWriter::new(file)),
            position,
            q20: vec![false; n_output],
            has_qv: false,
        })
    }

    /// The next input rows: their passthrough columns (as
    /// [`Transcripts::passthrough`]) and cells (indices into the run's
    /// cells, [`Segmentation::NO_CELL`] for none). Writes
    /// `transcript_id,cell,is_noise` and the `x`, `y`, `z` the rows have.
    pub fn write(&mut self, columns: &[(String, ArrayRef)], cell: &[u32]) -> Result<()> {
        let column = |name: &str| columns.iter().find(|(n, _)| n == name).map(|(_, a)| a);
        let output_cell = |c: u32| match c {
            Segmentation::NO_CELL => None,
            c => Some(self.position[c as usize]).filter(|&p| p != NOT_OUTPUT),
        };
        let mut cells = StringBuilder::with_capacity(cell.len(), 10 * cell.len());
        let mut noise = Vec::with_capacity(cell.len());
        for &c in cell {
            match output_cell(c) {
                Some(p) => {
                    cells.append_value(format!("cell-{}", cell_number(p as usize)));
                    noise.push(false);
                }
                None => {
                    cells.append_null();
                    noise.push(true);
                }
            }
        }
        let ids = column("transcript_id")
            .context("internal: the transcripts have no transcript_id column")?;
        let mut out: Vec<(String, ArrayRef)> = vec![
            ("transcript_id".into(), ids.clone()),
            ("cell".into(), Arc::new(cells.finish())),
            ("is_noise".into(), Arc::new(BooleanArray::from(noise))),
        ];
        for name in ["x", "y", "z"] {
            if let Some(a) = column(name) {
                out.push((name.into(), a.clone()));
            }
        }
        if let Some(qv) = column("qv") {
            self.has_qv = true;
            let qv = arrow::compute::cast(qv, &DataType::Float64)?;
            let qv = qv
                .as_any()
                .downcast_ref::<Float64Array>()
                .context("internal: qv cast to float64")?;
            for (r, &c) in cell.iter().enumerate() {
                if let Some(p) = output_cell(c) {
                    if qv.is_valid(r) && qv.value(r) >= Q20 {
                        self.q20[p as usize] = true;
                    }
                }
            }
        }
        let schema = super::schema_of(&out);
        let batch = RecordBatch::try_new(schema, out.into_iter().map(|(_, a)| a).collect())
            .with_context(|| format!("cannot assemble a batch of {}", self.path.display()))?;
        self.writer
            .write(&batch)
            .with_context(|| format!("cannot write {}", self.path.display()))
    }

    /// Whether the rows were numbered as the output cells `cells` of `n`
    /// cells.
    pub fn numbers(&self, n: usize, cells: &OutputCells) -> bool {
        self.position.len() == n
            && self.q20.len() == cells.len()
            && cells
                .index
                .iter()
                .enumerate()
                .all(|(i, &c)| self.position[c] == i as u32)
    }

    /// Finishes the file; returns the output cells none of whose
    /// transcripts has qv ≥ 20 (0 without a qv column).
    pub fn finish(self) -> Result<usize> {
        self.writer
            .into_inner()
            .into_inner()
            .map_err(|e| e.into_error())
            .with_context(|| format!("cannot finish {}", self.path.display()))?;
        Ok(if self.has_qv {
            self.q20.iter().filter(|&&seen| !seen).count()
        } else {
            0
        })
    }
}

/// Writes the rest of the folder once `transcript_assignment.csv` is
/// written: the polygons and the id map of the output cells `cells` (rows
/// `rows` of `cells.parquet`), `README.txt`, and the warning about the `low`
/// cells without a q20 transcript.
pub fn finish(folder: &Folder, rows: &[CellRow], cells: &OutputCells, low: usize) -> Result<()> {
    let dir = &folder.dir;
    write_polygons(&dir.join(POLYGONS_FILE), cells)?;
    write_id_map(&dir.join(ID_MAP_FILE), rows, cells)?;
    if low > 0 {
        log::warn!(
            "{FLAG}: {low} of {} cells have no transcript of qv >= {Q20} (the run's --qv-min is \
             below it); Xenium Ranger's import fails on such cells (10x Genomics knowledge base, \
             proseg issue #66)",
            cells.len()
        );
    }
    let readme = dir.join(README_FILE);
    std::fs::write(
        &readme,
        readme_text(&folder.final_dir, &folder.bundle, cells.len()),
    )
    .with_context(|| format!("cannot write {}", readme.display()))?;
    Ok(())
}

/// The quality Xenium Ranger wants at least one transcript of in every cell.
const Q20: f64 = 20.0;

/// A GeometryCollection with one Polygon per output cell and its integer
/// `cell` member.
fn write_polygons(path: &Path, cells: &OutputCells) -> Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut w = BufWriter::new(file);
    let cannot = || format!("cannot write {}", path.display());
    w.write_all(b"{\"type\":\"GeometryCollection\",\"geometries\":[\n")
        .with_context(cannot)?;
    cells.each_block(|first, polygons| {
        for (k, p) in polygons.iter().enumerate() {
            let i = first + k;
            let ring: Vec<[f64; 2]> = p.polygon.exterior().coords().map(|c| [c.x, c.y]).collect();
            let geometry = serde_json::json!({
                "type": "Polygon",
                "coordinates": [ring],
                "cell": cell_number(i),
            });
            if i > 0 {
                w.write_all(b",\n").with_context(cannot)?;
            }
            serde_json::to_writer(&mut w, &geometry).with_context(cannot)?;
        }
        Ok(())
    })?;
    w.write_all(b"\n]}\n").with_context(cannot)?;
    w.flush().with_context(cannot)?;
    Ok(())
}

/// `cell,segger_cell_id,kind,n_transcripts`: one row per output cell.
fn write_id_map(path: &Path, rows: &[CellRow], cells: &OutputCells) -> Result<()> {
    let rows = || cells.index.iter().map(|&c| &rows[c]);
    let columns: Vec<(String, ArrayRef)> = vec![
        (
            "cell".into(),
            Arc::new(StringArray::from_iter_values(
                (0..cells.len()).map(|i| format!("cell-{}", cell_number(i))),
            )),
        ),
        (
            "segger_cell_id".into(),
            Arc::new(StringArray::from_iter_values(rows().map(|r| r.id.as_str()))),
        ),
        (
            "kind".into(),
            Arc::new(StringArray::from_iter_values(rows().map(|r| r.kind))),
        ),
        (
            "n_transcripts".into(),
            Arc::new(UInt64Array::from_iter_values(
                rows().map(|r| r.n_transcripts),
            )),
        ),
    ];
    super::write_csv(path, columns)
}

/// `path` for a POSIX shell: as it is when it needs no quoting, else in
/// single quotes.
fn shell_quote(path: &Path) -> String {
    let s = path.display().to_string();
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+:,=@".contains(c));
    if plain {
        s
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

fn readme_text(final_dir: &Path, bundle: &Bundle, n_cells: usize) -> String {
    let dir = std::path::absolute(final_dir).unwrap_or_else(|_| final_dir.to_path_buf());
    let (bundle_arg, bundle_note) = match bundle {
        Bundle::Folder(path) => (
            // A bare file name's parent is the empty path: the current folder.
            shell_quote(
                &std::path::absolute(path.join(".")).unwrap_or_else(|_| path.to_path_buf()),
            ),
            "the Xenium output folder this run read",
        ),
        Bundle::Demo => (
            "XENIUM_BUNDLE".to_string(),
            "this run's input is the simulated --demo sample: it has no Xenium bundle to \
             import into (no images, no experiment.xenium), so these files only show the format",
        ),
        Bundle::Unknown => (
            "XENIUM_BUNDLE".to_string(),
            "replace it with the Xenium output folder the SpatialData export came from (its \
             transcripts.parquet holds the same transcript_id values)",
        ),
    };
    format!(
        "Cell segmentation by seggpu {version}, for Xenium Explorer: import it into the \
         Xenium output folder with Xenium Ranger (10x Genomics):\n\
         \n\
         xeniumranger import-segmentation --id seggpu_import \\\n  \
         --xenium-bundle {bundle_arg} \\\n  \
         --transcript-assignment {assignment} \\\n  \
         --viz-polygons {polygons} \\\n  \
         --units microns\n\
         \n\
         --xenium-bundle: {bundle_note}.\n\
         \n\
         Files ({n_cells} cells):\n\
         - {ASSIGNMENT_FILE}: transcript_id, cell, is_noise, then the input's x, y, z (µm); one \
         row per transcript of the input; cell is cell-<N>, empty for transcripts in no cell (unassigned, \
         filtered, or in a cell below min_transcripts), where is_noise is true.\n\
         - {POLYGONS_FILE}: a GeoJSON GeometryCollection, one Polygon (µm) per cell with its \
         integer cell number N in the member \"cell\".\n\
         - {ID_MAP_FILE}: cell-<N> -> seggpu's cell id (nucleus id or fragment id, as in \
         cells.parquet and segger_transcripts.parquet), kind, n_transcripts. Xenium Ranger's \
         own cell_id_map.csv maps cell-<N> to the cell ids of the new bundle.\n",
        version = env!("CARGO_PKG_VERSION"),
        assignment = shell_quote(&dir.join(ASSIGNMENT_FILE)),
        polygons = shell_quote(&dir.join(POLYGONS_FILE)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_quoted_for_the_shell_only_when_needed() {
        assert_eq!(shell_quote(Path::new("/data/run_1/out")), "/data/run_1/out");
        assert_eq!(shell_quote(Path::new("/data/my run")), "'/data/my run'");
        assert_eq!(shell_quote(Path::new("/data/it's")), r"'/data/it'\''s'");
    }

    /// Rows of cells 0, none, 2 and 1, where cell 1 is no output cell:
    /// written in one batch or two, the same text, numbered among the output
    /// cells; the q20 check sees only output cells' rows.
    #[test]
    fn assignment_rows_are_numbered_among_the_output_cells_in_any_batches() {
        use arrow::array::{Float32Array, UInt64Array};
        let columns: Vec<(String, ArrayRef)> = vec![
            (
                "transcript_id".into(),
                Arc::new(UInt64Array::from(vec![10, 11, 12, 13])),
            ),
            (
                "x".into(),
                Arc::new(Float64Array::from(vec![1.5, 2.5, 3.25, 4.5])),
            ),
            (
                "y".into(),
                Arc::new(Float64Array::from(vec![0.5, 0.25, 7.5, 8.5])),
            ),
            (
                "qv".into(),
                Arc::new(Float32Array::from(vec![25.0, 30.0, 10.0, 40.0])),
            ),
        ];
        let cell = [0, Segmentation::NO_CELL, 2, 1];
        let expected = "transcript_id,cell,is_noise,x,y\n\
                        10,cell-1,false,1.5,0.5\n\
                        11,,true,2.5,0.25\n\
                        12,cell-2,false,3.25,7.5\n\
                        13,,true,4.5,8.5\n";
        let tmp = tempfile::tempdir().unwrap();
        for split in [4, 1, 3] {
            let folder = Folder {
                dir: tmp.path().join(format!("split{split}")),
                final_dir: tmp.path().join("final"),
                bundle: Bundle::Unknown,
            };
            let mut writer = AssignmentWriter::create(&folder, vec![0, NOT_OUTPUT, 1]).unwrap();
            for (start, end) in [(0, split), (split, 4)] {
                let part: Vec<(String, ArrayRef)> = columns
                    .iter()
                    .map(|(n, a)| (n.clone(), a.slice(start, end - start)))
                    .collect();
                writer.write(&part, &cell[start..end]).unwrap();
            }
            // Output cell 1 (cell 2) has only a qv 10 row.
            assert_eq!(writer.finish().unwrap(), 1, "split at {split}");
            let text = std::fs::read_to_string(folder.dir.join(ASSIGNMENT_FILE)).unwrap();
            assert_eq!(text, expected, "split at {split}");
        }
    }

    #[test]
    fn only_xenium_shaped_presets_are_accepted() {
        assert!(check_preset(Preset::Xenium).is_ok());
        assert!(check_preset(Preset::Spatialdata).is_ok());
        for p in [Preset::Merscope, Preset::Cosmx] {
            let e = check_preset(p).unwrap_err().to_string();
            assert!(e.contains(FLAG) && e.contains(p.as_str()), "{e}");
        }
    }
}
