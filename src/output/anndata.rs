//! The AnnData of a run: cells × genes counts (CSR) of the output cells
//! ([`OutputCells`]), written with the anndata on-disk encoding into a zarr
//! group (`cells.anndata.zarr`, and `tables/table` of `segmentation.zarr`).
//!
//! - `X`: float32 counts (exact below 2^24 per entry), rows sorted by gene.
//! - `obs` (index: cell id): `kind` (categorical cell/fragment),
//!   `n_transcripts`, `centroid_x`, `centroid_y`, `nucleus_area` (NaN for
//!   fragments), `cell_area` (the polygon's area, µm²), `region`
//!   (categorical, `cell_boundaries`) and `cell_id` (the instance key of the
//!   SpatialData table).
//! - `var` (index: gene, in the order of the input file): `n_assigned`
//!   (the column sums of X), `n_unassigned` (kept transcripts of the gene
//!   not counted in X), `n_filtered`.
//! - `obsm["spatial"]`: centroid x, y (µm).
//! - `uns["seggpu"]`: version, model sha256, parameters and command line
//!   (JSON text), min_transcripts.

use anyhow::Result;
use serde_json::{json, Value};

use super::cells::{CellMembers, OutputCells};
use super::zarr::{Column, ColumnFile, ColumnWriter, Sink, ZarrType};
use super::CellRow;
use crate::io::Transcripts;
use crate::pipeline::Segmentation;

/// The region (shapes element) the table annotates.
pub const REGION: &str = "cell_boundaries";
/// Categories of `obs.kind`, in code order.
pub const KINDS: [&str; 2] = ["cell", "fragment"];

/// Everything the AnnData holds, in memory.
pub struct AnnData {
    /// obs index: cell ids.
    pub obs_names: Vec<String>,
    /// Code of `kind` (index into [`KINDS`]).
    pub kind: Vec<i8>,
    /// Transcripts of each cell (= the row sums of X).
    pub n_transcripts: Vec<i64>,
    /// Mean x of the transcripts, µm.
    pub centroid_x: Vec<f64>,
    /// Mean y of the transcripts, µm.
    pub centroid_y: Vec<f64>,
    /// Nucleus polygon area, µm² (NaN for fragments).
    pub nucleus_area: Vec<f64>,
    /// Cell polygon area, µm².
    pub cell_area: Vec<f64>,
    /// var index: gene names.
    pub var_names: Vec<String>,
    /// Per gene: transcripts counted in X.
    pub n_assigned: Vec<i64>,
    /// Per gene: kept transcripts not counted in X.
    pub n_unassigned: Vec<i64>,
    /// Per gene: filtered transcripts.
    pub n_filtered: Vec<i64>,
    /// X.
    pub x: Csr,
    /// `uns["seggpu"]`: (key, text value).
    pub uns: Vec<(String, String)>,
}

/// X as CSR, held or spilled to files (a whole slide's counts need not
/// fit in memory).
pub enum Csr {
    /// Held.
    Memory {
        /// Row pointers.
        indptr: Vec<i64>,
        /// Column indices (ascending within a row).
        indices: Vec<i32>,
        /// Values.
        data: Vec<f32>,
    },
    /// Spilled, as written by [`CellCounts::spilled`].
    Files {
        /// Row pointers.
        indptr: ColumnFile,
        /// Column indices (ascending within a row).
        indices: ColumnFile,
        /// Values.
        data: ColumnFile,
    },
}

impl Csr {
    fn indptr(&self) -> Column<'_, i64> {
        match self {
            Csr::Memory { indptr, .. } => Column::Memory(indptr),
            Csr::Files { indptr, .. } => Column::File(indptr),
        }
    }
    fn indices(&self) -> Column<'_, i32> {
        match self {
            Csr::Memory { indices, .. } => Column::Memory(indices),
            Csr::Files { indices, .. } => Column::File(indices),
        }
    }
    fn data(&self) -> Column<'_, f32> {
        match self {
            Csr::Memory { data, .. } => Column::Memory(data),
            Csr::Files { data, .. } => Column::File(data),
        }
    }
}

/// Where [`CellCounts`] puts the CSR arrays.
enum CsrStore {
    Memory {
        indptr: Vec<i64>,
        indices: Vec<i32>,
        data: Vec<f32>,
    },
    Files {
        indptr: ColumnWriter<i64>,
        indices: ColumnWriter<i32>,
        data: ColumnWriter<f32>,
    },
}

/// The cells × genes counts of the output cells as CSR, built a cell at a time.
pub struct CellCounts {
    store: CsrStore,
    entries: i64,
    n_assigned: Vec<i64>,
}

impl CellCounts {
    /// No cell yet, `n_genes` columns, held in memory.
    pub fn new(n_genes: usize) -> Self {
        CellCounts {
            store: CsrStore::Memory {
                indptr: vec![0],
                indices: Vec::new(),
                data: Vec::new(),
            },
            entries: 0,
            n_assigned: vec![0; n_genes],
        }
    }

    /// No cell yet, `n_genes` columns, written to files in `dir` as the
    /// cells come.
    pub fn spilled(n_genes: usize, dir: &std::path::Path) -> Result<Self> {
        let mut indptr = ColumnWriter::create(&dir.join("x-indptr.bin"))?;
        indptr.push(0)?;
        Ok(CellCounts {
            store: CsrStore::Files {
                indptr,
                indices: ColumnWriter::create(&dir.join("x-indices.bin"))?,
                data: ColumnWriter::create(&dir.join("x-data.bin"))?,
            },
            entries: 0,
            n_assigned: vec![0; n_genes],
        })
    }

    /// Appends the next output cell: its `(gene, count)` pairs, genes ascending.
    pub fn push_cell(&mut self, genes: impl Iterator<Item = (u32, u64)>) -> Result<()> {
        for (g, count) in genes {
            match &mut self.store {
                CsrStore::Memory { indices, data, .. } => {
                    indices.push(g as i32);
                    data.push(count as f32);
                }
                CsrStore::Files { indices, data, .. } => {
                    indices.push(g as i32)?;
                    data.push(count as f32)?;
                }
            }
            self.entries += 1;
            self.n_assigned[g as usize] += count as i64;
        }
        match &mut self.store {
            CsrStore::Memory { indptr, .. } => indptr.push(self.entries),
            CsrStore::Files { indptr, .. } => indptr.push(self.entries)?,
        }
        Ok(())
    }

    /// X, and per gene the counts in it.
    fn finish(self) -> Result<(Csr, Vec<i64>)> {
        let x = match self.store {
            CsrStore::Memory {
                indptr,
                indices,
                data,
            } => Csr::Memory {
                indptr,
                indices,
                data,
            },
            CsrStore::Files {
                indptr,
                indices,
                data,
            } => Csr::Files {
                indptr: indptr.finish()?,
                indices: indices.finish()?,
                data: data.finish()?,
            },
        };
        Ok((x, self.n_assigned))
    }
}

impl AnnData {
    /// The AnnData of a run held in memory.
    pub fn build(
        result: &Segmentation,
        transcripts: &Transcripts,
        cells: &OutputCells,
        members: &CellMembers,
        uns: Vec<(String, String)>,
    ) -> Result<Self> {
        let n_genes = transcripts.gene_names.len();
        let mut counts = CellCounts::new(n_genes);
        let mut genes: Vec<u32> = Vec::new();
        for i in 0..cells.len() {
            genes.clear();
            genes.extend(
                members
                    .members(i)
                    .iter()
                    .map(|&r| transcripts.gene[r as usize]),
            );
            genes.sort_unstable();
            counts.push_cell(
                genes
                    .chunk_by(|a, b| a == b)
                    .map(|run| (run[0], run.len() as u64)),
            )?;
        }
        let mut n_kept = vec![0i64; n_genes];
        let mut n_filtered = vec![0i64; n_genes];
        for (r, f) in result.filter_reason.iter().enumerate() {
            let g = transcripts.gene[r] as usize;
            if f.is_some() {
                n_filtered[g] += 1;
            } else {
                n_kept[g] += 1;
            }
        }
        Self::assemble(
            &result.cells,
            cells,
            transcripts.gene_names.clone(),
            counts,
            n_kept,
            n_filtered,
            uns,
        )
    }

    /// The AnnData from the rows of `cells.parquet`, the output cells, the
    /// genes (sorted) with their kept and filtered transcripts, and the
    /// counts of the output cells.
    pub fn assemble(
        rows: &[CellRow],
        cells: &OutputCells,
        var_names: Vec<String>,
        counts: CellCounts,
        n_kept: Vec<i64>,
        n_filtered: Vec<i64>,
        uns: Vec<(String, String)>,
    ) -> Result<Self> {
        let (x, n_assigned) = counts.finish()?;
        let n_unassigned = n_kept.iter().zip(&n_assigned).map(|(k, a)| k - a).collect();
        let rows = || cells.index.iter().map(|&c| &rows[c]);
        Ok(AnnData {
            obs_names: rows().map(|c| c.id.clone()).collect(),
            kind: rows().map(|c| i8::from(c.kind != KINDS[0])).collect(),
            n_transcripts: rows().map(|c| c.n_transcripts as i64).collect(),
            centroid_x: rows().map(|c| c.centroid_x.unwrap_or(f64::NAN)).collect(),
            centroid_y: rows().map(|c| c.centroid_y.unwrap_or(f64::NAN)).collect(),
            nucleus_area: rows()
                .map(|c| c.nucleus_area.map_or(f64::NAN, f64::from))
                .collect(),
            cell_area: (0..cells.len()).map(|i| cells.area(i)).collect(),
            var_names,
            n_assigned,
            n_unassigned,
            n_filtered,
            x,
            uns,
        })
    }

    /// Number of cells.
    pub fn n_obs(&self) -> usize {
        self.obs_names.len()
    }

    /// Writes the AnnData into group `root` of a zarr store or an h5ad file
    /// (`""` for the root);
    /// `table_attrs` are added to the group's attributes (SpatialData's).
    pub fn write_to<S: Sink>(&self, store: &mut S, root: &str, table_attrs: Value) -> Result<()> {
        let node = |name: &str| format!("{root}/{name}");
        let mut attrs = json!({"encoding-type": "anndata", "encoding-version": "0.1.0"});
        if let (Some(a), Value::Object(extra)) = (attrs.as_object_mut(), table_attrs) {
            a.extend(extra);
        }
        if !root.is_empty() {
            store.group(root, attrs)?;
        } else {
            store.group("/", attrs)?;
        }
        let n_obs = self.n_obs();
        let n_vars = self.var_names.len();

        store.group(
            &node("X"),
            json!({"encoding-type": "csr_matrix", "encoding-version": "0.1.0", "shape": [n_obs, n_vars]}),
        )?;
        store.column(&node("X/data"), &self.x.data(), json!({}))?;
        store.column(&node("X/indices"), &self.x.indices(), json!({}))?;
        store.column(&node("X/indptr"), &self.x.indptr(), json!({}))?;

        let obs = node("obs");
        let columns = [
            "kind",
            "n_transcripts",
            "centroid_x",
            "centroid_y",
            "nucleus_area",
            "cell_area",
            "region",
            "cell_id",
        ];
        store.group(&obs, dataframe_attrs(&columns))?;
        write_1d(
            store,
            &format!("{obs}/_index"),
            &self.obs_names,
            Some("string-array"),
        )?;
        write_categorical(store, &format!("{obs}/kind"), &KINDS, &self.kind)?;
        store.column(
            &format!("{obs}/n_transcripts"),
            &Column::Memory(&self.n_transcripts),
            array_attrs("array"),
        )?;
        store.column(
            &format!("{obs}/centroid_x"),
            &Column::Memory(&self.centroid_x),
            array_attrs("array"),
        )?;
        store.column(
            &format!("{obs}/centroid_y"),
            &Column::Memory(&self.centroid_y),
            array_attrs("array"),
        )?;
        store.column(
            &format!("{obs}/nucleus_area"),
            &Column::Memory(&self.nucleus_area),
            array_attrs("array"),
        )?;
        store.column(
            &format!("{obs}/cell_area"),
            &Column::Memory(&self.cell_area),
            array_attrs("array"),
        )?;
        write_categorical(
            store,
            &format!("{obs}/region"),
            &[REGION],
            &vec![0i8; n_obs],
        )?;
        write_1d(
            store,
            &format!("{obs}/cell_id"),
            &self.obs_names,
            Some("string-array"),
        )?;

        let var = node("var");
        store.group(
            &var,
            dataframe_attrs(&["n_assigned", "n_unassigned", "n_filtered"]),
        )?;
        write_1d(
            store,
            &format!("{var}/_index"),
            &self.var_names,
            Some("string-array"),
        )?;
        write_1d(
            store,
            &format!("{var}/n_assigned"),
            &self.n_assigned,
            Some("array"),
        )?;
        write_1d(
            store,
            &format!("{var}/n_unassigned"),
            &self.n_unassigned,
            Some("array"),
        )?;
        write_1d(
            store,
            &format!("{var}/n_filtered"),
            &self.n_filtered,
            Some("array"),
        )?;

        let dict = json!({"encoding-type": "dict", "encoding-version": "0.1.0"});
        store.group(&node("obsm"), dict.clone())?;
        let spatial: Vec<f64> = (0..n_obs)
            .flat_map(|i| [self.centroid_x[i], self.centroid_y[i]])
            .collect();
        store.array(
            &node("obsm/spatial"),
            &[n_obs as u64, 2],
            &spatial,
            array_attrs("array"),
        )?;
        for empty in ["layers", "obsp", "varm", "varp"] {
            store.group(&node(empty), dict.clone())?;
        }
        store.group(&node("uns"), dict.clone())?;
        store.group(&node("uns/seggpu"), dict)?;
        for (key, value) in &self.uns {
            store.array(
                &node(&format!("uns/seggpu/{key}")),
                &[],
                std::slice::from_ref(value),
                array_attrs("string"),
            )?;
        }
        Ok(())
    }
}

/// `uns/spatialdata_attrs` of a SpatialData table annotating [`REGION`]
/// by `obs.cell_id`.
pub fn write_spatialdata_attrs<S: Sink>(store: &mut S, root: &str) -> Result<()> {
    let node = format!("{root}/uns/spatialdata_attrs");
    store.group(
        &node,
        json!({"encoding-type": "dict", "encoding-version": "0.1.0"}),
    )?;
    for (key, value) in [
        ("region", REGION),
        ("region_key", "region"),
        ("instance_key", "cell_id"),
    ] {
        store.array(
            &format!("{node}/{key}"),
            &[],
            &[value.to_string()],
            array_attrs("string"),
        )?;
    }
    Ok(())
}

fn array_attrs(encoding: &str) -> Value {
    json!({"encoding-type": encoding, "encoding-version": "0.2.0"})
}

fn dataframe_attrs(columns: &[&str]) -> Value {
    json!({
        "encoding-type": "dataframe",
        "encoding-version": "0.2.0",
        "_index": "_index",
        "column-order": columns,
    })
}

fn write_1d<T: ZarrType, S: Sink>(
    store: &mut S,
    node: &str,
    data: &[T],
    encoding: Option<&str>,
) -> Result<()> {
    let attrs = encoding.map_or_else(|| json!({}), array_attrs);
    store.array(node, &[data.len() as u64], data, attrs)
}

fn write_categorical<S: Sink>(
    store: &mut S,
    node: &str,
    categories: &[&str],
    codes: &[i8],
) -> Result<()> {
    store.group(
        node,
        json!({"encoding-type": "categorical", "encoding-version": "0.2.0", "ordered": false}),
    )?;
    let categories: Vec<String> = categories.iter().map(|c| c.to_string()).collect();
    write_1d(
        store,
        &format!("{node}/categories"),
        &categories,
        Some("string-array"),
    )?;
    store.column(
        &format!("{node}/codes"),
        &Column::Memory(codes),
        array_attrs("array"),
    )
}
