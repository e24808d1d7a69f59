//! Reading nucleus polygons (docs/contract.md §4) from vertex tables or WKB/WKT
//! geometry tables, with their centroids and shape features.

use std::borrow::Cow;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use arrow::array::{Array, AsArray};
use arrow::datatypes::DataType;
use geo::{Coord, LineString, Polygon};
use indexmap::IndexMap;
use rayon::prelude::*;

use super::args::{ColumnChoice, InputSpec};
use super::geometry::{self, Part};
use super::scratch::ScratchDir;
use super::table::{self, cell_key, Ctx, Table, Want};
use super::{Nuclei, NucleusIds};
use crate::model::BdFeatureMode;

/// Counts of things worth a note in the run log, and the nuclei altered
/// while reading (id, what was done).
#[derive(Default)]
struct Tally {
    null_ids: usize,
    multipolygons: usize,
    holes: usize,
    repeated: usize,
    scattered: usize,
    altered: Vec<(String, &'static str)>,
}

/// One polygon as read: id and exterior ring, or why it is unusable.
type Candidate = (String, std::result::Result<Vec<[f64; 2]>, String>);

/// Parses one geometry value (WKB bytes or WKT / hex-WKB text) into the
/// exterior ring of its polygon (the largest part of a multipolygon).
fn ring_of(
    id: &str,
    parsed: Result<Vec<Part>>,
    tally: &mut Tally,
) -> std::result::Result<Vec<[f64; 2]>, String> {
    let mut parts = parsed.map_err(|e| format!("unreadable geometry: {e:#}"))?;
    if parts.is_empty() {
        return Err("empty geometry".into());
    }
    if parts.len() > 1 {
        tally.multipolygons += 1;
        tally
            .altered
            .push((id.to_string(), "multipolygon: kept its largest part"));
    }
    let mut best = 0;
    let mut best_area = -1.0;
    for (i, p) in parts.iter().enumerate() {
        let a = geometry::ring_area(&p.exterior);
        if a > best_area {
            best_area = a;
            best = i;
        }
    }
    let part = parts.swap_remove(best);
    if part.holes > 0 {
        tally.holes += 1;
        tally.altered.push((
            id.to_string(),
            "holes ignored: only the exterior ring is used",
        ));
    }
    Ok(part.exterior)
}

/// Text geometries: hex-encoded WKB when the text is all hex digits
/// (WKT always holds a type name, which is not hex), else WKT.
fn parse_text_geometry(s: &str) -> Result<Vec<Part>> {
    match geometry::decode_hex(s) {
        Some(bytes) => geometry::parse_wkb(&bytes),
        None => geometry::parse_wkt(s),
    }
}

/// Reads the rows of a geometry table into candidates.
fn read_geometry_table(
    table: &Table,
    id_col: &str,
    geom_col: &str,
    fov_col: Option<&str>,
    tally: &mut Tally,
) -> Result<Vec<Candidate>> {
    let path = table.path();
    if let Some(t) = table.data_type(geom_col) {
        let ok = matches!(
            t,
            DataType::Binary
                | DataType::LargeBinary
                | DataType::BinaryView
                | DataType::Utf8
                | DataType::LargeUtf8
                | DataType::Utf8View
        ) || matches!(&t, DataType::Dictionary(_, v) if table::is_textual(v));
        if !ok {
            bail!(
                "{}: expected WKB (binary) or WKT (text) geometries, found {t} (GeoArrow native \
                 encodings are not supported: write the geometries as WKB)",
                Ctx::new(path, geom_col)
            );
        }
    }
    let mut cols = vec![(id_col, Want::Text), (geom_col, Want::Text)];
    if let Some(f) = fov_col {
        cols.push((f, Want::Text));
    }
    let mut out = Vec::new();
    for batch in table.batches(&cols)? {
        let batch = batch?;
        let ids = table::to_utf8(batch.column(0).as_ref(), Ctx::new(path, id_col))?;
        let fovs = match fov_col {
            Some(f) => Some(table::to_utf8(batch.column(2).as_ref(), Ctx::new(path, f))?),
            None => None,
        };
        let g = batch.column(1);
        let gctx = Ctx::new(path, geom_col);
        let texts = match g.data_type() {
            DataType::Binary | DataType::LargeBinary | DataType::BinaryView => None,
            _ => Some(table::to_utf8(g.as_ref(), gctx)?),
        };
        for i in 0..batch.num_rows() {
            if ids.is_null(i) || ids.value(i).trim().is_empty() {
                tally.null_ids += 1;
                continue;
            }
            let id = cell_key(ids.value(i).trim(), fovs.as_ref(), i);
            if g.is_null(i) {
                out.push((id, Err("null geometry".to_string())));
                continue;
            }
            let parsed = match (&texts, g.data_type()) {
                (Some(t), _) => parse_text_geometry(t.value(i)),
                (None, DataType::Binary) => geometry::parse_wkb(g.as_binary::<i32>().value(i)),
                (None, DataType::LargeBinary) => geometry::parse_wkb(g.as_binary::<i64>().value(i)),
                (None, _) => geometry::parse_wkb(g.as_binary_view().value(i)),
            };
            let ring = ring_of(&id, parsed, tally);
            out.push((id, ring));
        }
    }
    Ok(out)
}

/// Reads a vertex table (one row per vertex) into candidates. Rows are
/// grouped by id, in the file's order within an id, so the rows of one
/// nucleus need not be contiguous. Within an id, a ring ends where it
/// returns to its first vertex: several closed rings of one id (e.g. one
/// per z-plane) are several candidates, and rings repeated vertex for
/// vertex count once.
fn read_vertex_table(
    table: &Table,
    id_col: &str,
    x_col: &str,
    y_col: &str,
    fov_col: Option<&str>,
    tally: &mut Tally,
) -> Result<Vec<Candidate>> {
    let path = table.path();
    let mut cols = vec![
        (id_col, Want::Text),
        (x_col, Want::Number),
        (y_col, Want::Number),
    ];
    if let Some(f) = fov_col {
        cols.push((f, Want::Text));
    }
    // One entry per id, in first-seen order: its vertices and whether its
    // rows were scattered; the id string is held once.
    let mut by_id: IndexMap<String, (Vec<[f64; 2]>, bool)> = IndexMap::new();
    // The previous row's raw id and fov, so a run of rows of one nucleus
    // costs no key building or hashing.
    let mut last: Option<(String, Option<String>, usize)> = None;
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    for batch in table.batches(&cols)? {
        let batch = batch?;
        let ids = table::to_utf8(batch.column(0).as_ref(), Ctx::new(path, id_col))?;
        xs.clear();
        ys.clear();
        table::push_f64(batch.column(1).as_ref(), Ctx::new(path, x_col), &mut xs)?;
        table::push_f64(batch.column(2).as_ref(), Ctx::new(path, y_col), &mut ys)?;
        let fovs = match fov_col {
            Some(f) => Some(table::to_utf8(batch.column(3).as_ref(), Ctx::new(path, f))?),
            None => None,
        };
        let fov_at = |r: usize| {
            fovs.as_ref()
                .and_then(|f| (!f.is_null(r)).then(|| f.value(r)))
        };
        let mut i = 0;
        while i < batch.num_rows() {
            if ids.is_null(i) || ids.value(i).trim().is_empty() {
                tally.null_ids += 1;
                i += 1;
                continue;
            }
            let raw = ids.value(i).trim();
            let fov = fov_at(i);
            // The run of rows of this nucleus, so its vertices are added
            // with one exact reservation rather than grown by doubling.
            let mut end = i + 1;
            while end < batch.num_rows()
                && !ids.is_null(end)
                && ids.value(end).trim() == raw
                && fov_at(end) == fov
            {
                end += 1;
            }
            let k = match &last {
                Some((r, f, k)) if r == raw && f.as_deref() == fov => *k,
                _ => {
                    let key = cell_key(raw, fovs.as_ref(), i);
                    let k = match by_id.get_full_mut(&key) {
                        Some((k, _, (_, scattered))) => {
                            *scattered = true;
                            k
                        }
                        None => by_id.insert_full(key, (Vec::new(), false)).0,
                    };
                    last = Some((raw.to_string(), fov.map(str::to_string), k));
                    k
                }
            };
            if let Some((_, (v, _))) = by_id.get_index_mut(k) {
                v.reserve_exact(end - i);
                v.extend((i..end).map(|r| [xs[r], ys[r]]));
            }
            i = end;
        }
    }
    let mut out: Vec<Candidate> = Vec::with_capacity(by_id.len());
    for (id, (v, scattered)) in by_id {
        if scattered {
            tally.scattered += 1;
            tally.altered.push((
                id.clone(),
                "rows not contiguous: grouped by id in file order",
            ));
        }
        let rings = closed_ring_ranges(&v);
        if let [only] = rings.as_slice() {
            // The usual case: the ring is all of the id's vertices, moved as is.
            debug_assert_eq!(*only, 0..v.len());
            out.push((id, Ok(v)));
            continue;
        }
        let mut distinct: Vec<std::ops::Range<usize>> = Vec::with_capacity(rings.len());
        for ring in rings {
            if distinct.iter().any(|d| v[d.clone()] == v[ring.clone()]) {
                tally.repeated += 1;
                tally
                    .altered
                    .push((id.clone(), "rows of one polygon repeated: read once"));
            } else {
                distinct.push(ring);
            }
        }
        out.extend(
            distinct
                .into_iter()
                .map(|ring| (id.clone(), Ok(v[ring].to_vec()))),
        );
    }
    Ok(out)
}

/// Splits the vertices of one id into rings, as index ranges: a ring ends
/// at the first vertex (after at least 3 others) equal to its starting one;
/// what follows the last such closure is one more (open) ring. Vertices
/// without any closure are one ring.
fn closed_ring_ranges(v: &[[f64; 2]]) -> Vec<std::ops::Range<usize>> {
    let mut rings = Vec::new();
    let mut start = 0;
    for j in 0..v.len() {
        if j >= start + 3 && v[j] == v[start] {
            rings.push(start..j + 1);
            start = j + 1;
        }
    }
    if start < v.len() || rings.is_empty() {
        rings.push(start..v.len());
    }
    rings
}

/// Reads the nucleus polygons of the boundaries file (docs/contract.md §4).
///
/// The file is a geometry table when it has a geometry column (WKB as
/// binary or hex text, or WKT text; Polygon, MultiPolygon — the largest
/// part is kept — or a collection of polygons), else a vertex table whose
/// rows with one id form a polygon (in file order,
/// contiguous or not; closed rings of one id are separate polygons). Coordinates are multiplied
/// by the pixel size (when set), then by the boundary scales, then the
/// offsets are added. Only the exterior ring is used; it is cleaned
/// (repeated vertices dropped, closed); a nucleus with fewer than 3
/// distinct vertices or zero area goes to `skipped`. An id with several
/// polygons (e.g. one per z-plane) keeps its largest valid one. Nuclei are
/// sorted by id (bytewise); features follow `mode`.
pub fn read_nuclei(spec: &InputSpec, mode: BdFeatureMode) -> Result<Nuclei> {
    let table = Table::open(&spec.boundaries)?;
    let path = table.path().to_path_buf();
    let b = &spec.boundary_columns;
    let id_choice = ColumnChoice {
        required: true,
        ..b.id.clone()
    };
    let id_col = table
        .find(&id_choice, "nucleus id")?
        .with_context(|| format!("{}: no nucleus id column", path.display()))?;
    let geom_col = table.find(&b.geometry, "geometry")?;
    let fov_col = table.find(&b.fov, "field of view")?;
    let mut tally = Tally::default();
    let mut vertex_cols: Vec<(&'static str, String)> = Vec::new();
    let candidates = match &geom_col {
        Some(g) => read_geometry_table(&table, &id_col, g, fov_col.as_deref(), &mut tally)?,
        None => {
            let require = |c: &ColumnChoice| ColumnChoice {
                required: true,
                ..c.clone()
            };
            let neither = || {
                format!(
                    "{}: no geometry column ({}), so it must be a vertex table",
                    path.display(),
                    b.geometry
                        .candidates
                        .iter()
                        .map(|c| format!("`{c}`"))
                        .collect::<Vec<_>>()
                        .join(" or ")
                )
            };
            let x = table
                .find(&require(&b.vertex_x), "vertex x")
                .with_context(neither)?
                .with_context(|| format!("{}: no vertex x column", path.display()))?;
            let y = table
                .find(&require(&b.vertex_y), "vertex y")
                .with_context(neither)?
                .with_context(|| format!("{}: no vertex y column", path.display()))?;
            let candidates =
                read_vertex_table(&table, &id_col, &x, &y, fov_col.as_deref(), &mut tally)?;
            vertex_cols = vec![("vertex x", x), ("vertex y", y)];
            candidates
        }
    };
    if candidates.is_empty() {
        bail!(
            "{}: no polygons (the table has no rows with a nucleus id): boundaries without one \
             valid polygon",
            path.display()
        );
    }
    let polygons_read = candidates.len();

    // Coordinates into µm and the transcripts' frame.
    let px = spec.pixel_size.unwrap_or(1.0);
    let [sx, sy] = spec.boundary_scale;
    let [ox, oy] = spec.boundary_offset;
    let mut candidates = candidates;
    if px != 1.0 || sx != 1.0 || sy != 1.0 || ox != 0.0 || oy != 0.0 {
        candidates.par_iter_mut().for_each(|(_, ring)| {
            if let Ok(ring) = ring {
                for v in ring.iter_mut() {
                    *v = [v[0] * px * sx + ox, v[1] * px * sy + oy];
                }
            }
        });
    }

    // Group by id (sorted bytewise), validate, keep the largest valid polygon.
    candidates.par_sort_by(|a, b| a.0.cmp(&b.0));
    let mut duplicated = 0;
    for group in candidates.chunk_by(|a, b| a.0 == b.0) {
        if group.len() > 1 {
            duplicated += 1;
            tally.altered.push((
                group[0].0.clone(),
                "several polygons: kept the largest valid one",
            ));
        }
    }
    // Each group's id and rings are moved out of `candidates` into the
    // result, so the vertices are never held twice.
    type Chosen = (String, std::result::Result<geo::Polygon<f64>, String>);
    let chosen: Vec<Chosen> = candidates
        .par_chunk_by_mut(|a, b| a.0 == b.0)
        .map(|group| {
            let mut best: Option<(geo::Polygon<f64>, f64)> = None;
            let mut reason = None;
            for (_, ring) in group.iter_mut() {
                match std::mem::replace(ring, Ok(Vec::new())).and_then(geometry::clean_ring) {
                    Ok((poly, area)) => {
                        if best.as_ref().is_none_or(|b| area > b.1) {
                            best = Some((poly, area));
                        }
                    }
                    Err(r) => {
                        reason.get_or_insert(r);
                    }
                }
            }
            let polygon = best
                .map(|(poly, _)| poly)
                .ok_or_else(|| reason.unwrap_or_else(|| "no polygon".into()));
            (std::mem::take(&mut group[0].0), polygon)
        })
        .collect();
    drop(candidates);

    let (kept, id_bytes) = chosen
        .iter()
        .filter(|(_, c)| c.is_ok())
        .fold((0, 0), |(n, b), (id, _)| (n + 1, b + id.len()));
    let mut nuclei = Nuclei {
        ids: NucleusIds::with_capacity(kept, id_bytes),
        polygons: Vec::with_capacity(kept),
        ..Nuclei::default()
    };
    for (id, c) in chosen {
        match c {
            Ok(poly) => {
                nuclei.ids.push(id);
                nuclei.polygons.push(poly);
            }
            Err(reason) => nuclei.skipped.push((id, reason)),
        }
    }
    if nuclei.ids.is_empty() {
        let examples: Vec<String> = nuclei
            .skipped
            .iter()
            .take(3)
            .map(|(id, r)| format!("{id}: {r}"))
            .collect();
        bail!(
            "{}: boundaries without one valid polygon ({} nuclei read, all skipped; e.g. {})",
            path.display(),
            nuclei.skipped.len(),
            examples.join("; ")
        );
    }
    let computed: Vec<([f64; 2], [f32; 4])> = nuclei
        .polygons
        .par_iter()
        .map(|p| {
            let f = match mode {
                BdFeatureMode::Props => geometry::shape_features(p).map(|v| v as f32),
                BdFeatureMode::Zeros => [0.0; 4],
            };
            (geometry::centroid(p), f)
        })
        .collect();
    (nuclei.centroid, nuclei.features) = computed.into_iter().unzip();

    let n = &mut nuclei.notes;
    n.push(format!(
        "{}: {} polygons read ({}), {} nuclei kept, {} skipped",
        path.display(),
        polygons_read,
        match &geom_col {
            Some(g) => format!("geometry column `{g}`"),
            None => "vertex table".to_string(),
        },
        nuclei.ids.len(),
        nuclei.skipped.len()
    ));
    if tally.multipolygons > 0 {
        n.push(format!(
            "{} multipolygons: kept the largest part of each",
            tally.multipolygons
        ));
    }
    if tally.holes > 0 {
        n.push(format!(
            "{} polygons have holes: only exterior rings are used",
            tally.holes
        ));
    }
    if duplicated > 0 {
        n.push(format!(
            "{duplicated} nucleus ids have several polygons (e.g. one per z-plane): kept the \
             largest valid one of each"
        ));
    }
    if tally.scattered > 0 {
        n.push(format!(
            "{} nuclei have vertex rows that are not contiguous: grouped by id, in file order",
            tally.scattered
        ));
    }
    if tally.repeated > 0 {
        n.push(format!(
            "{} polygons repeat an earlier ring of their nucleus vertex for vertex: read once",
            tally.repeated
        ));
    }
    if tally.null_ids > 0 {
        n.push(format!(
            "{} {} without a nucleus id ignored",
            tally.null_ids,
            if geom_col.is_some() {
                "polygons"
            } else {
                "vertex rows"
            }
        ));
    }
    tally.altered.sort();
    tally.altered.dedup();
    // Moved into one buffer, so the ids allocated while reading are freed.
    nuclei.altered = tally.altered.into_iter().collect();
    nuclei.columns = vec![("nucleus id", id_col.clone())];
    match &geom_col {
        Some(g) => nuclei.columns.push(("geometry", g.clone())),
        None => nuclei.columns.extend(vertex_cols),
    }
    if let Some(f) = &fov_col {
        nuclei.columns.push(("field of view", f.clone()));
    }
    Ok(nuclei)
}

/// Bytes of a spilled vertex: x, y (f64, little-endian).
const VERTEX_BYTES: usize = 16;

/// Prefix of the folder under `--tmp-dir` holding the spilled polygons.
const SPILL_PREFIX: &str = ".seggpu-nuclei-";

/// The nuclei's exterior rings in a file under `--tmp-dir`
/// ([`Nuclei::spill_polygons`]), read back by range of nuclei, with what a
/// run needs of every polygon without its vertices: its area and the
/// largest distance from its centroid to a vertex. The vertices are stored
/// as read (f64), so the polygons read back are the ones spilled, bit for bit.
#[derive(Debug, Clone)]
pub struct SpilledPolygons {
    // Removed with the last clone.
    folder: Arc<ScratchDir>,
    path: PathBuf,
    /// Index of the first vertex of each nucleus's ring, then the total.
    starts: Vec<u64>,
    /// Each nucleus's polygon area (as `cells.parquet` records it).
    areas: Vec<f32>,
    /// Largest distance from a nucleus centroid to its vertices.
    radius: f64,
}

impl Nuclei {
    /// Moves the polygons' vertices to a file in `<tmp_dir>/.seggpu-nuclei-<hash
    /// of out>/` (removed when the last clone of these nuclei is dropped, or by
    /// the next run into `out` after a killed one), so that what stays in
    /// memory per nucleus is its id, centroid, features, area and the place
    /// of its vertices in the file. The polygons are read back with
    /// [`Nuclei::polygons_in`].
    pub fn spill_polygons(&mut self, tmp_dir: &Path, out: &Path) -> Result<()> {
        if self.spilled.is_some() {
            return Ok(());
        }
        let radius = self.polygon_radius();
        let folder = ScratchDir::create(SPILL_PREFIX, tmp_dir, out)?;
        let path = folder.dir.join("polygons.bin");
        let file = std::fs::File::create(&path).with_context(|| folder.error(&path, "create"))?;
        let mut writer = BufWriter::new(file);
        let mut starts = Vec::with_capacity(self.polygons.len() + 1);
        let mut areas = Vec::with_capacity(self.polygons.len());
        let mut at = 0u64;
        for polygon in &self.polygons {
            starts.push(at);
            areas.push(polygon_area(polygon));
            for c in polygon.exterior().coords() {
                writer
                    .write_all(&c.x.to_le_bytes())
                    .and_then(|()| writer.write_all(&c.y.to_le_bytes()))
                    .with_context(|| folder.error(&path, "write"))?;
                at += 1;
            }
        }
        starts.push(at);
        writer
            .into_inner()
            .map_err(|e| e.into_error())
            .and_then(|f| f.sync_all())
            .with_context(|| folder.error(&path, "write"))?;
        self.polygons = Vec::new();
        super::release_free_memory();
        self.spilled = Some(SpilledPolygons {
            folder: Arc::new(folder),
            path,
            starts,
            areas,
            radius,
        });
        Ok(())
    }

    /// The polygons of nuclei `range`: borrowed when held, else read back
    /// from the spilled file (one read of the range's vertices).
    pub fn polygons_in(&self, range: Range<usize>) -> Result<Cow<'_, [Polygon<f64>]>> {
        let Some(spilled) = &self.spilled else {
            return Ok(Cow::Borrowed(&self.polygons[range]));
        };
        if range.is_empty() {
            return Ok(Cow::Owned(Vec::new()));
        }
        let (first, end) = (spilled.starts[range.start], spilled.starts[range.end]);
        let error = || spilled.folder.error(&spilled.path, "read");
        let mut file = std::fs::File::open(&spilled.path).with_context(error)?;
        file.seek(SeekFrom::Start(first * VERTEX_BYTES as u64))
            .with_context(error)?;
        let mut bytes = vec![0u8; ((end - first) as usize) * VERTEX_BYTES];
        file.read_exact(&mut bytes).with_context(error)?;
        let word = |at: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&bytes[at..at + 8]);
            f64::from_le_bytes(w)
        };
        let polygons = range
            .map(|n| {
                let ring: Vec<Coord<f64>> = (spilled.starts[n]..spilled.starts[n + 1])
                    .map(|v| {
                        let at = ((v - first) as usize) * VERTEX_BYTES;
                        Coord {
                            x: word(at),
                            y: word(at + 8),
                        }
                    })
                    .collect();
                Polygon::new(LineString::new(ring), Vec::new())
            })
            .collect();
        Ok(Cow::Owned(polygons))
    }

    /// The area of nucleus `n`'s polygon, as `cells.parquet` records it.
    pub fn nucleus_area(&self, n: usize) -> f32 {
        match &self.spilled {
            Some(spilled) => spilled.areas[n],
            None => polygon_area(&self.polygons[n]),
        }
    }

    /// Largest distance from a nucleus centroid to its polygon's vertices.
    pub fn polygon_radius(&self) -> f64 {
        if let Some(spilled) = &self.spilled {
            return spilled.radius;
        }
        let mut r: f64 = 0.0;
        for (poly, c) in self.polygons.iter().zip(&self.centroid) {
            for v in poly.exterior().coords() {
                r = r.max(((v.x - c[0]).powi(2) + (v.y - c[1]).powi(2)).sqrt());
            }
        }
        r
    }
}

/// A polygon's area as `cells.parquet` records it.
fn polygon_area(p: &Polygon<f64>) -> f32 {
    use geo::Area;
    p.unsigned_area() as f32
}

#[cfg(test)]
mod tests {
    use super::closed_ring_ranges;
    use crate::io::Nuclei;

    #[test]
    fn spilled_polygons_read_back_bit_for_bit() {
        let ring =
            |v: &[[f64; 2]]| geo::Polygon::new(v.iter().map(|&[x, y]| (x, y)).collect(), vec![]);
        let polygons = vec![
            ring(&[[0.1, 0.2], [10.3, 0.0], [10.0, 7.7], [0.1, 0.2]]),
            ring(&[
                [-1e-300, 3.0],
                [5.0, 1.0 / 3.0],
                [2.0, 9.0],
                [1.5, 12.25],
                [-1e-300, 3.0],
            ]),
            ring(&[[1e9, 1e9], [1e9 + 1.0, 1e9], [1e9, 1e9 + 0.5], [1e9, 1e9]]),
        ];
        let mut nuclei = Nuclei {
            ids: ["a", "b", "c"].into_iter().collect(),
            polygons: polygons.clone(),
            centroid: polygons.iter().map(crate::io::geometry::centroid).collect(),
            features: vec![[0.0; 4]; 3],
            ..Nuclei::default()
        };
        let areas: Vec<f32> = (0..3).map(|n| nuclei.nucleus_area(n)).collect();
        let radius = nuclei.polygon_radius();
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        nuclei.spill_polygons(tmp.path(), &out).unwrap();
        assert!(nuclei.polygons.is_empty(), "the vertices left memory");
        assert_eq!(
            nuclei.polygons_in(0..3).unwrap().as_ref(),
            polygons.as_slice()
        );
        assert_eq!(nuclei.polygons_in(1..3).unwrap().as_ref(), &polygons[1..]);
        assert_eq!(nuclei.polygons_in(2..2).unwrap().len(), 0);
        for (n, area) in areas.iter().enumerate() {
            assert_eq!(nuclei.nucleus_area(n).to_bits(), area.to_bits());
        }
        assert_eq!(nuclei.polygon_radius().to_bits(), radius.to_bits());
        let folders = || std::fs::read_dir(tmp.path()).unwrap().count();
        assert_eq!(folders(), 1, "one spill folder");
        let copy = nuclei.clone();
        drop(nuclei);
        assert_eq!(
            copy.polygons_in(0..1).unwrap()[0],
            polygons[0],
            "a clone keeps the file"
        );
        drop(copy);
        assert_eq!(
            folders(),
            0,
            "the spill folder is removed with the last clone"
        );
    }

    #[test]
    fn ring_ranges_split_at_closures() {
        let (a, b, c, d) = ([0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]);
        // One closed ring: all vertices.
        assert_eq!(closed_ring_ranges(&[a, b, c, a]), vec![0..4]);
        // Open ring: all vertices.
        assert_eq!(closed_ring_ranges(&[a, b, c, d]), vec![0..4]);
        // A return to the start before 3 other vertices does not close.
        assert_eq!(closed_ring_ranges(&[a, b, a, c, a]), vec![0..5]);
        // Two closed rings, the second repeating the first.
        assert_eq!(
            closed_ring_ranges(&[a, b, c, a, a, b, c, a]),
            vec![0..4, 4..8]
        );
        // A closed ring then an open tail.
        assert_eq!(
            closed_ring_ranges(&[a, b, c, d, a, b, c, d]),
            vec![0..5, 5..8]
        );
        assert_eq!(closed_ring_ranges(&[]), vec![0..0]);
    }
}
