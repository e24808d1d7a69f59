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
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use arrow::array::{Array, ArrayRef, BooleanArray, StringArray, StringBuilder, UInt64Array};

use super::cells::{CellMembers, OutputCells, NOT_OUTPUT};
use crate::io::args::Preset;
use crate::io::Transcripts;
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
    let Some((_, column)) = transcripts
        .columns
        .iter()
        .find(|(role, _)| *role == "transcript id")
    else {
        bail!(
            "{FLAG}: {} has no transcript id column (looked for transcript_id; --id-col names \
             another): Xenium Ranger looks transcripts up by their Xenium transcript_id",
            file.display()
        );
    };
    let ids = id_column(transcripts)?;
    if !ids.data_type().is_integer() {
        bail!(
            "{FLAG}: {} column {column} holds {} ids; Xenium transcript ids are integers",
            file.display(),
            ids.data_type()
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
pub enum Bundle<'a> {
    /// The Xenium output folder the transcripts came from.
    Folder(&'a Path),
    /// The simulated `--demo` input: Xenium-shaped, but no bundle to import into.
    Demo,
    /// A SpatialData export: the bundle it came from is not known here.
    Unknown,
}

/// Writes the folder `dir` (created here; `final_dir` is where it will be
/// after commit, for the command in `README.txt`).
pub fn write(
    dir: &Path,
    final_dir: &Path,
    bundle: Bundle,
    result: &Segmentation,
    transcripts: &Transcripts,
    cells: &OutputCells,
    members: &CellMembers,
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    write_assignment(&dir.join(ASSIGNMENT_FILE), result, transcripts, cells)?;
    write_polygons(&dir.join(POLYGONS_FILE), cells)?;
    write_id_map(&dir.join(ID_MAP_FILE), result, cells)?;
    let low = cells_without_q20(transcripts, cells, members)?;
    if low > 0 {
        log::warn!(
            "{FLAG}: {low} of {} cells have no transcript of qv >= {Q20} (the run's --qv-min is \
             below it); Xenium Ranger's import fails on such cells (10x Genomics knowledge base, \
             proseg issue #66)",
            cells.len()
        );
    }
    let readme = dir.join(README_FILE);
    std::fs::write(&readme, readme_text(final_dir, &bundle, cells.len()))
        .with_context(|| format!("cannot write {}", readme.display()))?;
    Ok(())
}

/// The quality Xenium Ranger wants at least one transcript of in every cell.
const Q20: f64 = 20.0;

/// Output cells none of whose transcripts has qv ≥ 20 (0 without a qv column).
fn cells_without_q20(
    transcripts: &Transcripts,
    cells: &OutputCells,
    members: &CellMembers,
) -> Result<usize> {
    let Some((_, qv)) = transcripts.passthrough.iter().find(|(n, _)| n == "qv") else {
        return Ok(0);
    };
    let qv = arrow::compute::cast(qv, &arrow::datatypes::DataType::Float64)?;
    let qv = qv
        .as_any()
        .downcast_ref::<arrow::array::Float64Array>()
        .context("internal: qv cast to float64")?;
    Ok((0..cells.len())
        .filter(|&i| {
            !members
                .members(i)
                .iter()
                .any(|&r| qv.is_valid(r as usize) && qv.value(r as usize) >= Q20)
        })
        .count())
}

/// `transcript_id,cell,is_noise` and the `x`, `y`, `z` the file has: one
/// row per input row, in input order.
fn write_assignment(
    path: &Path,
    result: &Segmentation,
    transcripts: &Transcripts,
    cells: &OutputCells,
) -> Result<()> {
    let mut position = vec![NOT_OUTPUT; result.cell_ids.len()];
    for (i, &c) in cells.index.iter().enumerate() {
        position[c] = i as u32;
    }
    let mut cell = StringBuilder::with_capacity(result.len(), 10 * result.len());
    let mut noise = Vec::with_capacity(result.len());
    for &c in &result.cell {
        let p = if c == Segmentation::NO_CELL {
            NOT_OUTPUT
        } else {
            position[c as usize]
        };
        if p == NOT_OUTPUT {
            cell.append_null();
            noise.push(true);
        } else {
            cell.append_value(format!("cell-{}", cell_number(p as usize)));
            noise.push(false);
        }
    }
    let mut columns: Vec<(String, ArrayRef)> = vec![
        ("transcript_id".into(), id_column(transcripts)?.clone()),
        ("cell".into(), Arc::new(cell.finish())),
        ("is_noise".into(), Arc::new(BooleanArray::from(noise))),
    ];
    for name in ["x", "y", "z"] {
        if let Some((_, a)) = transcripts.passthrough.iter().find(|(n, _)| n == name) {
            columns.push((name.into(), a.clone()));
        }
    }
    super::write_csv(path, columns)
}

/// A GeometryCollection with one Polygon per output cell and its integer
/// `cell` member.
fn write_polygons(path: &Path, cells: &OutputCells) -> Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut w = BufWriter::new(file);
    let cannot = || format!("cannot write {}", path.display());
    w.write_all(b"{\"type\":\"GeometryCollection\",\"geometries\":[\n")
        .with_context(cannot)?;
    for (i, p) in cells.polygons.iter().enumerate() {
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
    w.write_all(b"\n]}\n").with_context(cannot)?;
    w.flush().with_context(cannot)?;
    Ok(())
}

/// `cell,segger_cell_id,kind,n_transcripts`: one row per output cell.
fn write_id_map(path: &Path, result: &Segmentation, cells: &OutputCells) -> Result<()> {
    let rows = || cells.index.iter().map(|&c| &result.cells[c]);
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
