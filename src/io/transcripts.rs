//! Reading the transcripts table (docs/contract.md §2): coordinates in µm, gene
//! indices, ids, nuclear flags and filters, every row kept in file order.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use arrow::array::{
    Array, ArrayRef, AsArray, Float64Array, Int64Array, StringArray, StringBuilder, UInt64Array,
};
use arrow::datatypes::{DataType, Float64Type, Int64Type, UInt64Type};

use super::args::InputSpec;
use super::table::{self, cell_key, Ctx, Format, Table, Want};
use super::{FilterReason, TranscriptKey, Transcripts};

/// Distinct gene names, indexed in order of first appearance.
#[derive(Default)]
struct GeneMap {
    index: HashMap<Box<str>, u32>,
    names: Vec<String>,
}

impl GeneMap {
    fn id(&mut self, name: &str) -> u32 {
        if let Some(&i) = self.index.get(name) {
            return i;
        }
        let i = self.names.len() as u32;
        self.index.insert(name.into(), i);
        self.names.push(name.to_string());
        i
    }

    /// Appends the gene index of every row of a gene column. Dictionary
    /// columns map each dictionary value once; string columns hash each
    /// row's text without allocating.
    fn push(&mut self, array: &dyn Array, ctx: Ctx, row0: usize, out: &mut Vec<u32>) -> Result<()> {
        let null_err = |i: usize| {
            anyhow::anyhow!(
                "{ctx}: row {} has no gene name (null); every transcript needs one",
                row0 + i + 1
            )
        };
        if let Some(dict) = array.as_any_dictionary_opt() {
            // Values are mapped when first used, so unused dictionary
            // entries (a whole panel) do not become genes of the file.
            let values = table::to_utf8(dict.values().as_ref(), ctx)?;
            if values.is_empty() {
                if array.is_empty() {
                    return Ok(());
                }
                return Err(null_err(0));
            }
            let mut table: Vec<Option<u32>> = vec![None; values.len()];
            for (i, k) in dict.normalized_keys().into_iter().enumerate() {
                if array.is_null(i) || values.is_null(k) {
                    return Err(null_err(i));
                }
                let g = match table[k] {
                    Some(g) => g,
                    None => {
                        let g = self.id(values.value(k));
                        table[k] = Some(g);
                        g
                    }
                };
                out.push(g);
            }
            return Ok(());
        }
        match array.data_type() {
            DataType::Utf8 => self.push_strs(array.as_string::<i32>().iter(), &null_err, out),
            DataType::LargeUtf8 => self.push_strs(array.as_string::<i64>().iter(), &null_err, out),
            DataType::Utf8View => self.push_strs(array.as_string_view().iter(), &null_err, out),
            t if table::is_textual(t) => {
                let s = table::to_utf8(array, ctx)?;
                self.push_strs(s.iter(), &null_err, out)
            }
            t => bail!("{ctx}: expected gene names (text), found {t}"),
        }
    }

    fn push_strs<'a>(
        &mut self,
        values: impl Iterator<Item = Option<&'a str>>,
        null_err: &dyn Fn(usize) -> anyhow::Error,
        out: &mut Vec<u32>,
    ) -> Result<()> {
        let mut last: Option<(&str, u32)> = None;
        for (i, v) in values.enumerate() {
            let v = v.ok_or_else(|| null_err(i))?;
            let g = match last {
                Some((s, g)) if s == v => g,
                _ => self.id(v),
            };
            last = Some((v, g));
            out.push(g);
        }
        Ok(())
    }
}

/// The kind of id column, decided from its type (CSV text is parsed).
enum IdKind {
    U64,
    I64,
    F64,
    Str,
}

/// Builds the id keys and the `transcript_id` output column from the id
/// column's batches.
fn ids(
    arrays: &[ArrayRef],
    ctx: Ctx,
    csv: bool,
    n: usize,
) -> Result<(Vec<TranscriptKey>, ArrayRef)> {
    let first_null = |a: &dyn Array, row0: usize| -> Result<()> {
        if a.null_count() > 0 {
            let i = (0..a.len()).find(|&i| a.is_null(i)).unwrap_or(0);
            bail!(
                "{ctx}: row {} has no transcript id (null); ids must be present on every row, \
                 or pass --id-col none to use the row index",
                row0 + i + 1
            );
        }
        Ok(())
    };
    // Dictionary-encoded ids are decoded; text ids become strings.
    let t = arrays
        .first()
        .map(|a| a.data_type().clone())
        .unwrap_or(DataType::Utf8);
    let value_type = match &t {
        DataType::Dictionary(_, v) => v.as_ref().clone(),
        t => t.clone(),
    };
    let mut kind = if value_type.is_unsigned_integer() {
        IdKind::U64
    } else if value_type.is_signed_integer() {
        IdKind::I64
    } else if value_type.is_floating() {
        IdKind::F64
    } else if table::is_textual(&value_type) {
        IdKind::Str
    } else {
        bail!("{ctx}: expected transcript ids (integers, floats or text), found {t}");
    };
    let mut texts: Vec<StringArray> = Vec::new();
    if matches!(kind, IdKind::Str) {
        let mut row0 = 0;
        for a in arrays {
            first_null(a.as_ref(), row0)?;
            texts.push(table::to_utf8(a.as_ref(), ctx)?);
            row0 += a.len();
        }
        if csv {
            // CSV has no types: numbers are parsed, the narrowest kind wins.
            let all = |f: &dyn Fn(&str) -> bool| texts.iter().all(|s| s.iter().flatten().all(f));
            if all(&|s| s.parse::<u64>().is_ok()) {
                kind = IdKind::U64;
            } else if all(&|s| s.parse::<i64>().is_ok()) {
                kind = IdKind::I64;
            } else if all(&|s| s.trim().parse::<f64>().is_ok_and(f64::is_finite)) {
                kind = IdKind::F64;
            }
        }
    }
    let mut keys = Vec::with_capacity(n);
    let column: ArrayRef = match kind {
        IdKind::Str => {
            let mut b = StringBuilder::new();
            for s in &texts {
                for v in s.iter().flatten() {
                    keys.push(TranscriptKey::Str(v.to_string()));
                    b.append_value(v);
                }
            }
            Arc::new(b.finish())
        }
        _ if !texts.is_empty() => {
            // Parsed CSV text.
            match kind {
                IdKind::U64 => {
                    let v: Vec<u64> = texts
                        .iter()
                        .flat_map(|s| s.iter().flatten().map(|v| v.parse().unwrap_or(0)))
                        .collect();
                    keys.extend(v.iter().map(|&v| TranscriptKey::U64(v)));
                    Arc::new(UInt64Array::from(v))
                }
                IdKind::I64 => {
                    let v: Vec<i64> = texts
                        .iter()
                        .flat_map(|s| s.iter().flatten().map(|v| v.parse().unwrap_or(0)))
                        .collect();
                    keys.extend(v.iter().map(|&v| TranscriptKey::I64(v)));
                    Arc::new(Int64Array::from(v))
                }
                _ => {
                    let v: Vec<f64> = texts
                        .iter()
                        .flat_map(|s| {
                            s.iter()
                                .flatten()
                                .map(|v| v.trim().parse().unwrap_or(f64::NAN))
                        })
                        .collect();
                    keys.extend(v.iter().map(|&v| TranscriptKey::F64(v)));
                    Arc::new(Float64Array::from(v))
                }
            }
        }
        _ => {
            // Numbers as read (dictionaries decoded to their value type).
            let mut decoded: Vec<ArrayRef> = Vec::with_capacity(arrays.len());
            let mut row0 = 0;
            for a in arrays {
                first_null(a.as_ref(), row0)?;
                row0 += a.len();
                let a = if matches!(a.data_type(), DataType::Dictionary(_, _)) {
                    arrow::compute::cast(a, &value_type)
                        .with_context(|| format!("{ctx}: cannot decode dictionary ids"))?
                } else {
                    a.clone()
                };
                let target = match kind {
                    IdKind::U64 => DataType::UInt64,
                    IdKind::I64 => DataType::Int64,
                    _ => DataType::Float64,
                };
                let wide = arrow::compute::cast(&a, &target)
                    .with_context(|| format!("{ctx}: cannot read ids as {target}"))?;
                match kind {
                    IdKind::U64 => keys.extend(
                        wide.as_primitive::<UInt64Type>()
                            .values()
                            .iter()
                            .map(|&v| TranscriptKey::U64(v)),
                    ),
                    IdKind::I64 => keys.extend(
                        wide.as_primitive::<Int64Type>()
                            .values()
                            .iter()
                            .map(|&v| TranscriptKey::I64(v)),
                    ),
                    _ => {
                        let f = wide.as_primitive::<Float64Type>().values();
                        if let Some(i) = f.iter().position(|v| !v.is_finite()) {
                            bail!(
                                "{ctx}: row {} has a transcript id that is not a finite number",
                                row0 - a.len() + i + 1
                            );
                        }
                        keys.extend(f.iter().map(|&v| TranscriptKey::F64(v)))
                    }
                }
                decoded.push(a);
            }
            concat(&decoded, ctx)?
        }
    };
    Ok((keys, column))
}

/// Checks that no transcript id appears twice: fragment ids are built from
/// transcript ids (docs/contract.md §9), so duplicates would give two
/// fragments one id.
fn check_unique(keys: &[TranscriptKey], ctx: Ctx) -> Result<()> {
    use rayon::prelude::*;
    fn first_repeat<T: Ord + Copy + Send>(mut v: Vec<T>) -> Option<T> {
        v.par_sort_unstable();
        v.windows(2).find(|w| w[0] == w[1]).map(|w| w[0])
    }
    let repeated: Option<TranscriptKey> = match keys.first() {
        None => None,
        Some(TranscriptKey::U64(_)) => first_repeat(
            keys.iter()
                .map(|k| match k {
                    TranscriptKey::U64(v) => *v,
                    _ => 0,
                })
                .collect(),
        )
        .map(TranscriptKey::U64),
        Some(TranscriptKey::I64(_)) => first_repeat(
            keys.iter()
                .map(|k| match k {
                    TranscriptKey::I64(v) => *v,
                    _ => 0,
                })
                .collect(),
        )
        .map(TranscriptKey::I64),
        Some(TranscriptKey::F64(_)) => first_repeat(
            keys.iter()
                .map(|k| match k {
                    // Ids are finite (checked when read); +0 and −0 are one id.
                    TranscriptKey::F64(v) => (*v + 0.0).to_bits(),
                    _ => 0,
                })
                .collect(),
        )
        .map(|b| TranscriptKey::F64(f64::from_bits(b))),
        Some(TranscriptKey::Str(_)) => first_repeat(
            keys.iter()
                .map(|k| match k {
                    TranscriptKey::Str(v) => v.as_str(),
                    _ => "",
                })
                .collect(),
        )
        .map(|s| TranscriptKey::Str(s.to_string())),
    };
    if let Some(id) = repeated {
        let rows: Vec<String> = keys
            .iter()
            .enumerate()
            .filter(|(_, k)| **k == id)
            .take(3)
            .map(|(i, _)| (i + 1).to_string())
            .collect();
        bail!(
            "{ctx}: transcript id {id} appears more than once (rows {}); ids must be unique, \
             as fragment ids are made from them (pass --id-col none to number the rows instead)",
            rows.join(", ")
        );
    }
    Ok(())
}

fn concat(arrays: &[ArrayRef], ctx: Ctx) -> Result<ArrayRef> {
    let refs: Vec<&dyn Array> = arrays.iter().map(|a| a.as_ref()).collect();
    arrow::compute::concat(&refs)
        .with_context(|| format!("{ctx}: cannot join the column's batches"))
}

/// Decodes dictionary-encoded passthrough columns to their value type.
fn plain(a: ArrayRef, ctx: Ctx) -> Result<ArrayRef> {
    match a.data_type() {
        DataType::Dictionary(_, v) => {
            let v = v.as_ref().clone();
            arrow::compute::cast(&a, &v).with_context(|| format!("{ctx}: cannot decode dictionary"))
        }
        _ => Ok(a),
    }
}

/// Reads every row of the transcripts file (docs/contract.md §2).
///
/// - Ids unique (a repeated id is an error naming it and its rows).
/// - x, y (and z) in µm: multiplied by the pixel size when set (CosMx; the
///   output columns `x`, `y` are then in µm too, and the pixel columns
///   follow under their own names), z by
///   `z_scale` (CosMx and MERSCOPE z are plane indices, kept as such by
///   default). Without a z column z is 0.
/// - Genes as indices into the sorted distinct names of the file.
/// - Ids as read (u64, i64, f64 or text); the row index (0-based) when the
///   file has no id column, also written as a UInt64 `transcript_id`.
/// - Nuclear membership from the flag and cell columns when both exist:
///   a row is nuclear when the flag equals the nuclear value and its cell
///   id is not empty, null or one of the "unassigned" values. Per-FOV
///   integer cell ids become `<fov>_<cell>` when a FOV column is in use.
/// - Filters (first that applies): `bad_coordinates` (x, y or z null or not
///   finite), `control` (gene name starts with a control prefix), `qv`
///   (quality present and not ≥ qv_min). No row is dropped.
pub fn read_transcripts(spec: &InputSpec) -> Result<Transcripts> {
    let table = Table::open(&spec.transcripts)?;
    let path = table.path().to_path_buf();
    let cols = &spec.columns;
    let need = |found: Option<String>, what: &str| -> Result<String> {
        found.with_context(|| format!("{}: no {what} column", path.display()))
    };
    let x_col = need(table.find(&cols.x, "x coordinate")?, "x coordinate")?;
    let y_col = need(table.find(&cols.y, "y coordinate")?, "y coordinate")?;
    let gene_col = need(table.find(&cols.gene, "gene name")?, "gene name")?;
    let z_col = table.find(&cols.z, "z coordinate")?;
    let id_col = table.find(&cols.id, "transcript id")?;
    let qv_col = table.find(&cols.qv, "quality (qv)")?;
    let nuclear_col = table.find(&cols.nuclear, "nuclear flag")?;
    let cell_col = table.find(&cols.cell, "cell id")?;
    let membership = match (nuclear_col, cell_col) {
        (Some(n), Some(c)) => Some((n, c)),
        (Some(n), None) if cols.nuclear.required => bail!(
            "{}: the nuclear flag column `{n}` needs a cell id column ({}); the file has columns: {}",
            path.display(),
            cols.cell.candidates.join(" or "),
            table.names().join(", ")
        ),
        (None, Some(c)) if cols.cell.required => bail!(
            "{}: --cell-col `{c}` needs a nuclear flag column ({}); the file has columns: {}",
            path.display(),
            cols.nuclear.candidates.join(" or "),
            table.names().join(", ")
        ),
        _ => None,
    };
    let fov_col = match membership {
        Some(_) => table.find(&cols.fov, "field of view")?,
        None => None,
    };

    // Columns to read, each once, in a fixed order; `slot` gives positions.
    let mut wanted: Vec<(String, Want)> = vec![
        (x_col.clone(), Want::Number),
        (y_col.clone(), Want::Number),
        (gene_col.clone(), Want::Text),
    ];
    let mut slot = |name: Option<&String>, want: Want| -> Option<usize> {
        let name = name?;
        if let Some(i) = wanted.iter().position(|(n, _)| n == name) {
            return Some(i);
        }
        wanted.push((name.clone(), want));
        Some(wanted.len() - 1)
    };
    let z_i = slot(z_col.as_ref(), Want::Number);
    let id_i = slot(id_col.as_ref(), Want::Text);
    let qv_i = slot(qv_col.as_ref(), Want::Number);
    let nuc_i = slot(membership.as_ref().map(|m| &m.0), Want::Text);
    let cell_i = slot(membership.as_ref().map(|m| &m.1), Want::Text);
    let fov_i = slot(fov_col.as_ref(), Want::Text);
    let wanted_refs: Vec<(&str, Want)> = wanted.iter().map(|(n, w)| (n.as_str(), *w)).collect();
    let csv = matches!(table.format(), Format::Csv { .. });

    let mut x = Vec::new();
    let mut y = Vec::new();
    let mut z = Vec::new();
    let mut qv = Vec::new();
    let mut gene = Vec::new();
    let mut genes = GeneMap::default();
    let mut nuclear_cell: Option<Vec<Option<String>>> = membership.as_ref().map(|_| Vec::new());
    let mut pass: [Vec<ArrayRef>; 4] = Default::default(); // x, y, z, qv
    let mut id_arrays: Vec<ArrayRef> = Vec::new();
    let unassigned: std::collections::HashSet<&str> =
        spec.unassigned_cells.iter().map(|s| s.as_str()).collect();
    let mut rows = 0usize;
    for batch in table.batches(&wanted_refs)? {
        let batch = batch?;
        let n = batch.num_rows();
        let col = |i: usize| batch.column(i);
        table::push_f64(col(0).as_ref(), Ctx::new(&path, &x_col), &mut x)?;
        table::push_f64(col(1).as_ref(), Ctx::new(&path, &y_col), &mut y)?;
        genes.push(col(2).as_ref(), Ctx::new(&path, &gene_col), rows, &mut gene)?;
        pass[0].push(col(0).clone());
        pass[1].push(col(1).clone());
        if let (Some(i), Some(name)) = (z_i, &z_col) {
            table::push_f64(col(i).as_ref(), Ctx::new(&path, name), &mut z)?;
            pass[2].push(col(i).clone());
        }
        if let (Some(i), Some(name)) = (qv_i, &qv_col) {
            // A missing quality value filters nothing (+inf passes).
            table::push_f64_fill(
                col(i).as_ref(),
                Ctx::new(&path, name),
                f64::INFINITY,
                &mut qv,
            )?;
            pass[3].push(col(i).clone());
        }
        if let Some(i) = id_i {
            id_arrays.push(col(i).clone());
        }
        if let (Some(out), Some(ni), Some(ci), Some((n_name, c_name))) =
            (nuclear_cell.as_mut(), nuc_i, cell_i, &membership)
        {
            let flag = table::flag_mask(
                col(ni).as_ref(),
                &spec.nuclear_value,
                Ctx::new(&path, n_name),
            )?;
            if flag.true_count() == 0 {
                out.extend(std::iter::repeat_n(None, n));
            } else {
                let cells = table::to_utf8(col(ci).as_ref(), Ctx::new(&path, c_name))?;
                let fovs = match (fov_i, &fov_col) {
                    (Some(fi), Some(f_name)) => {
                        Some(table::to_utf8(col(fi).as_ref(), Ctx::new(&path, f_name))?)
                    }
                    _ => None,
                };
                for i in 0..n {
                    let cell = if flag.value(i) && !cells.is_null(i) {
                        let c = table::canonical_id(cells.value(i).trim());
                        if unassigned.contains(c.as_ref()) {
                            None
                        } else {
                            Some(cell_key(&c, fovs.as_ref(), i))
                        }
                    } else {
                        None
                    };
                    out.push(cell);
                }
            }
        }
        rows += n;
    }
    if rows == 0 {
        bail!(
            "{}: no transcripts (the table has a header but no rows)",
            path.display()
        );
    }

    // Genes: sorted names, indices remapped.
    let mut order: Vec<u32> = (0..genes.names.len() as u32).collect();
    order.sort_by(|&a, &b| genes.names[a as usize].cmp(&genes.names[b as usize]));
    let mut remap = vec![0u32; order.len()];
    for (new, &old) in order.iter().enumerate() {
        remap[old as usize] = new as u32;
    }
    let gene_names: Vec<String> = order
        .iter()
        .map(|&o| std::mem::take(&mut genes.names[o as usize]))
        .collect();
    for g in &mut gene {
        *g = remap[*g as usize];
    }

    // Units.
    if let Some(px) = spec.pixel_size {
        x.iter_mut().for_each(|v| *v *= px);
        y.iter_mut().for_each(|v| *v *= px);
    }
    if z_col.is_some() {
        if spec.z_scale != 1.0 {
            z.iter_mut().for_each(|v| *v *= spec.z_scale);
        }
    } else {
        z = vec![0.0; rows];
    }

    // Filters.
    let control: Vec<bool> = gene_names
        .iter()
        .map(|g| {
            spec.control_prefixes
                .iter()
                .any(|p| g.starts_with(p.as_str()))
        })
        .collect();
    let filter: Vec<Option<FilterReason>> = (0..rows)
        .map(|i| {
            if !(x[i].is_finite() && y[i].is_finite() && z[i].is_finite()) {
                Some(FilterReason::BadCoordinates)
            } else if control[gene[i] as usize] {
                Some(FilterReason::Control)
            } else if qv_col.is_some() && (qv[i] < spec.qv_min || qv[i].is_nan()) {
                Some(FilterReason::Qv)
            } else {
                None
            }
        })
        .collect();

    // Ids and output columns.
    let (id_key, id_column) = match &id_col {
        Some(name) => {
            let (keys, column) = ids(&id_arrays, Ctx::new(&path, name), csv, rows)?;
            check_unique(&keys, Ctx::new(&path, name))?;
            (keys, column)
        }
        None => {
            let v: Vec<u64> = (0..rows as u64).collect();
            let keys = v.iter().map(|&i| TranscriptKey::U64(i)).collect();
            (keys, Arc::new(UInt64Array::from(v)) as ArrayRef)
        }
    };
    let mut passthrough: Vec<(String, ArrayRef)> = vec![("transcript_id".into(), id_column)];
    let names = [Some(&x_col), Some(&y_col), z_col.as_ref(), qv_col.as_ref()];
    let [px, py, pz, pq] = pass;
    // Pixel coordinates (CosMx): `x` and `y` are written in µm like every
    // other position of the outputs; the pixel columns follow as read.
    let mut pixel_columns: Vec<(String, ArrayRef)> = Vec::new();
    for (out_name, arrays, src, microns) in [
        ("x", px, names[0], Some(&x)),
        ("y", py, names[1], Some(&y)),
        ("z", pz, names[2], None),
    ] {
        if let Some(src) = src {
            let ctx = Ctx::new(&path, src);
            let raw = plain(concat(&arrays, ctx)?, ctx)?;
            match (spec.pixel_size, microns) {
                (Some(_), Some(um)) => {
                    let scaled: Float64Array = um
                        .iter()
                        .enumerate()
                        .map(|(i, &v)| raw.is_valid(i).then_some(v))
                        .collect();
                    passthrough.push((out_name.into(), Arc::new(scaled)));
                    pixel_columns.push((src.clone(), raw));
                }
                _ => passthrough.push((out_name.into(), raw)),
            }
        }
    }
    let mut gb = StringBuilder::with_capacity(
        rows,
        gene.iter().map(|&g| gene_names[g as usize].len()).sum(),
    );
    for &g in &gene {
        gb.append_value(&gene_names[g as usize]);
    }
    passthrough.push(("gene".into(), Arc::new(gb.finish())));
    if let Some(src) = names[3] {
        passthrough.push((
            "qv".into(),
            plain(concat(&pq, Ctx::new(&path, src))?, Ctx::new(&path, src))?,
        ));
    }
    passthrough.extend(pixel_columns);

    let mut columns: Vec<(&'static str, String)> = vec![
        ("x", x_col.clone()),
        ("y", y_col.clone()),
        ("gene", gene_col.clone()),
    ];
    for (role, col) in [
        ("z", &z_col),
        ("transcript id", &id_col),
        ("quality", &qv_col),
        ("field of view", &fov_col),
    ] {
        if let Some(c) = col {
            columns.push((role, c.clone()));
        }
    }
    if let Some((n, c)) = &membership {
        columns.push(("nuclear flag", n.clone()));
        columns.push(("cell id", c.clone()));
    }

    Ok(Transcripts {
        x,
        y,
        z,
        gene,
        gene_names,
        id_key,
        nuclear_cell,
        filter,
        passthrough,
        columns,
    })
}
