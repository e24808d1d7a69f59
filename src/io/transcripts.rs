//! Reading the transcripts table (docs/contract.md §2): coordinates in µm, gene
//! indices, ids, nuclear flags and filters, every row kept in file order.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use arrow::array::RecordBatch;
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdKind {
    /// Unsigned integers.
    U64,
    /// Signed integers.
    I64,
    /// Floats.
    F64,
    /// Text.
    Str,
}

/// The error of a null id at `row0 + i` (1-based in the message).
fn first_null(a: &dyn Array, row0: usize, ctx: Ctx) -> Result<()> {
    if a.null_count() > 0 {
        let i = (0..a.len()).find(|&i| a.is_null(i)).unwrap_or(0);
        bail!(
            "{ctx}: row {} has no transcript id (null); ids must be present on every row, \
             or pass --id-col none to use the row index",
            row0 + i + 1
        );
    }
    Ok(())
}

/// The value type of an id column (dictionaries decoded).
fn id_value_type(t: &DataType) -> DataType {
    match t {
        DataType::Dictionary(_, v) => v.as_ref().clone(),
        t => t.clone(),
    }
}

/// The kind of an id column stored as `t`, before CSV text is parsed.
fn stored_id_kind(t: &DataType, ctx: Ctx) -> Result<IdKind> {
    let value_type = id_value_type(t);
    Ok(if value_type.is_unsigned_integer() {
        IdKind::U64
    } else if value_type.is_signed_integer() {
        IdKind::I64
    } else if value_type.is_floating() {
        IdKind::F64
    } else if table::is_textual(&value_type) {
        IdKind::Str
    } else {
        bail!("{ctx}: expected transcript ids (integers, floats or text), found {t}");
    })
}

/// Which numeric kinds all of a CSV id column's text still fits, decided
/// chunk by chunk: the narrowest kind that every row fits wins.
#[derive(Debug, Clone, Copy)]
pub struct CsvIdKinds {
    u64: bool,
    i64: bool,
    f64: bool,
}

impl Default for CsvIdKinds {
    fn default() -> Self {
        CsvIdKinds {
            u64: true,
            i64: true,
            f64: true,
        }
    }
}

impl CsvIdKinds {
    fn see(&mut self, texts: &StringArray) {
        for s in texts.iter().flatten() {
            self.u64 = self.u64 && s.parse::<u64>().is_ok();
            self.i64 = self.i64 && s.parse::<i64>().is_ok();
            self.f64 = self.f64 && s.trim().parse::<f64>().is_ok_and(f64::is_finite);
        }
    }

    fn kind(&self) -> IdKind {
        if self.u64 {
            IdKind::U64
        } else if self.i64 {
            IdKind::I64
        } else if self.f64 {
            IdKind::F64
        } else {
            IdKind::Str
        }
    }
}

/// Builds the id keys and the `transcript_id` output column from the id
/// column's batches.
fn ids(
    arrays: &[ArrayRef],
    ctx: Ctx,
    csv: bool,
    n: usize,
) -> Result<(Vec<TranscriptKey>, ArrayRef)> {
    let t = arrays
        .first()
        .map(|a| a.data_type().clone())
        .unwrap_or(DataType::Utf8);
    let mut kind = stored_id_kind(&t, ctx)?;
    if csv && kind == IdKind::Str {
        // CSV has no types: numbers are parsed, the narrowest kind wins.
        let mut kinds = CsvIdKinds::default();
        let mut row0 = 0;
        for a in arrays {
            first_null(a.as_ref(), row0, ctx)?;
            kinds.see(&table::to_utf8(a.as_ref(), ctx)?);
            row0 += a.len();
        }
        kind = kinds.kind();
    }
    id_values(arrays, ctx, kind, 0, n)
}

/// The id keys and the `transcript_id` column of `arrays` (the rows from
/// `row0` on) read as `kind` (text parsed when the column is text).
fn id_values(
    arrays: &[ArrayRef],
    ctx: Ctx,
    kind: IdKind,
    row0: usize,
    n: usize,
) -> Result<(Vec<TranscriptKey>, ArrayRef)> {
    let t = arrays
        .first()
        .map(|a| a.data_type().clone())
        .unwrap_or(DataType::Utf8);
    let value_type = id_value_type(&t);
    let mut texts: Vec<StringArray> = Vec::new();
    if stored_id_kind(&t, ctx)? == IdKind::Str {
        let mut at = row0;
        for a in arrays {
            first_null(a.as_ref(), at, ctx)?;
            texts.push(table::to_utf8(a.as_ref(), ctx)?);
            at += a.len();
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
            let mut at = row0;
            for a in arrays {
                first_null(a.as_ref(), at, ctx)?;
                at += a.len();
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
                                at - a.len() + i + 1
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
    // One column holds one id type. Numbers compare by their bits (ids are
    // finite, checked when read; +0 and −0 are one id), strings bytewise.
    let numeric = |k: &TranscriptKey| match k {
        TranscriptKey::U64(v) => *v,
        TranscriptKey::I64(v) => *v as u64,
        TranscriptKey::F64(v) => (*v + 0.0).to_bits(),
        TranscriptKey::Str(_) => 0,
    };
    let repeated: Option<&TranscriptKey> = match keys.first() {
        None => None,
        Some(TranscriptKey::Str(_)) => first_repeat(
            keys.iter()
                .map(|k| match k {
                    TranscriptKey::Str(v) => v.as_str(),
                    _ => "",
                })
                .collect(),
        )
        .and_then(|s| {
            keys.iter()
                .find(|k| matches!(k, TranscriptKey::Str(v) if v == s))
        }),
        Some(_) => first_repeat(keys.iter().map(numeric).collect())
            .and_then(|bits| keys.iter().find(|k| numeric(k) == bits)),
    };
    if let Some(id) = repeated {
        let rows: Vec<String> = keys
            .iter()
            .enumerate()
            .filter(|(_, k)| *k == id)
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
    let layout = TranscriptLayout::open(spec)?;
    let path = layout.path.clone();
    let mut acc = Decoded {
        nuclear_cell: layout.membership.as_ref().map(|_| Vec::new()),
        ..Decoded::default()
    };
    let mut genes = GeneMap::default();
    let mut pass: [Vec<ArrayRef>; 4] = Default::default(); // x, y, z, qv
    let mut id_arrays: Vec<ArrayRef> = Vec::new();
    let mut rows = 0usize;
    for batch in layout.batches()? {
        let batch = batch?;
        layout.decode_into(&batch, spec, rows, &mut genes, &mut acc)?;
        layout.keep_passthrough(&batch, &mut pass, &mut id_arrays);
        rows += batch.num_rows();
    }
    if rows == 0 {
        bail!(
            "{}: no transcripts (the table has a header but no rows)",
            path.display()
        );
    }
    let Decoded {
        mut x,
        mut y,
        mut z,
        qv,
        mut gene,
        nuclear_cell,
    } = acc;

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

    layout.to_microns(spec, &mut x, &mut y, &mut z, rows);

    // Filters.
    let control: Vec<bool> = gene_names.iter().map(|g| is_control(spec, g)).collect();
    let filter: Vec<Option<FilterReason>> = (0..rows)
        .map(|i| layout.filter(spec, [x[i], y[i], z[i]], control[gene[i] as usize], &qv, i))
        .collect();

    // Ids and output columns.
    let (id_key, id_column) = match &layout.id_col {
        Some(name) => {
            let (keys, column) = ids(&id_arrays, Ctx::new(&path, name), layout.csv, rows)?;
            check_unique(&keys, Ctx::new(&path, name))?;
            (keys, column)
        }
        None => row_ids(0..rows),
    };
    let mut gb = StringBuilder::with_capacity(
        rows,
        gene.iter().map(|&g| gene_names[g as usize].len()).sum(),
    );
    for &g in &gene {
        gb.append_value(&gene_names[g as usize]);
    }
    let passthrough = layout.passthrough(spec, pass, &x, &y, Arc::new(gb.finish()), id_column)?;

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
        columns: layout.columns(),
    })
}

/// Whether `gene` is a control probe (starts with a control prefix).
fn is_control(spec: &InputSpec, gene: &str) -> bool {
    spec.control_prefixes
        .iter()
        .any(|p| gene.starts_with(p.as_str()))
}

/// Ids of a file without id column: the row indices of `rows`.
fn row_ids(rows: std::ops::Range<usize>) -> (Vec<TranscriptKey>, ArrayRef) {
    let v: Vec<u64> = rows.map(|r| r as u64).collect();
    let keys = v.iter().map(|&i| TranscriptKey::U64(i)).collect();
    (keys, Arc::new(UInt64Array::from(v)) as ArrayRef)
}

/// Values decoded from record batches, appended batch by batch (x and y
/// as stored, before the pixel size).
#[derive(Default)]
struct Decoded {
    x: Vec<f64>,
    y: Vec<f64>,
    z: Vec<f64>,
    qv: Vec<f64>,
    gene: Vec<u32>,
    nuclear_cell: Option<Vec<Option<String>>>,
}

/// Id keys held in memory by the id check before they go to partitions.
pub const ID_RUN: usize = 1 << 22;

/// Partition files of the id check beyond [`ID_RUN`] rows.
pub const ID_PARTITIONS: usize = 256;

/// Environment variable (builds with the `testing` feature only): id keys
/// held in memory instead of [`ID_RUN`].
pub const ID_RUN_ENV: &str = "SEGGPU_TEST_ID_RUN";

fn id_run() -> usize {
    crate::test_hooks::value(ID_RUN_ENV).map_or(ID_RUN, |n: usize| n.max(1))
}

/// An id as the check orders it: numbers by a `u64` whose order is theirs
/// (i64 with the sign bit flipped; f64 by its bits, +0 for −0), text bytewise.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum IdKey {
    Number(u64),
    Text(String),
}

/// Id keys with their rows, held in memory.
#[derive(Default)]
struct IdRun {
    numbers: Vec<(u64, u32)>,
    texts: Vec<(String, u32)>,
}

impl IdRun {
    fn push(&mut self, key: TranscriptKey, row: u32) {
        match key {
            TranscriptKey::U64(v) => self.numbers.push((v, row)),
            // Ordered as i64 (the sign bit flipped).
            TranscriptKey::I64(v) => self.numbers.push(((v as u64) ^ (1 << 63), row)),
            // Ids are finite (checked when read); +0 and −0 are one id.
            TranscriptKey::F64(v) => self.numbers.push(((v + 0.0).to_bits(), row)),
            TranscriptKey::Str(v) => self.texts.push((v, row)),
        }
    }

    fn len(&self) -> usize {
        self.numbers.len() + self.texts.len()
    }

    /// The smallest id held twice or more, with its rows ascending.
    fn first_repeat(mut self) -> Option<(IdKey, Vec<u32>)> {
        use rayon::prelude::*;
        fn first<T: Ord + Clone + Send>(v: &mut [(T, u32)]) -> Option<(T, Vec<u32>)> {
            v.par_sort_unstable();
            let at = v.windows(2).position(|w| w[0].0 == w[1].0)?;
            let id = v[at].0.clone();
            let rows = v[at..]
                .iter()
                .take_while(|(k, _)| *k == id)
                .map(|&(_, r)| r)
                .collect();
            Some((id, rows))
        }
        let number = first(&mut self.numbers).map(|(v, r)| (IdKey::Number(v), r));
        let text = first(&mut self.texts).map(|(v, r)| (IdKey::Text(v), r));
        number.or(text)
    }
}

/// The id check's partition files: every id goes to one by its hash, so
/// that a repeated id lies whole in one, which is checked alone.
struct IdPartitions {
    dir: std::path::PathBuf,
    files: Vec<std::io::BufWriter<std::fs::File>>,
}

impl IdPartitions {
    fn create(tmp_dir: &std::path::Path) -> Result<Self> {
        let dir = tmp_dir.join(format!(".seggpu-ids-{}", std::process::id()));
        let made = std::fs::create_dir_all(&dir).and_then(|()| {
            (0..ID_PARTITIONS)
                .map(|p| {
                    std::fs::File::create(dir.join(format!("p{p}.bin")))
                        .map(|f| std::io::BufWriter::with_capacity(1 << 15, f))
                })
                .collect::<std::io::Result<Vec<_>>>()
        });
        let files = match made {
            Ok(files) => files,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(anyhow::Error::from(e).context(format!(
                    "cannot write the id check's files under {} (--tmp-dir)",
                    dir.display()
                )));
            }
        };
        Ok(IdPartitions { dir, files })
    }

    fn partition(key: &IdKey) -> usize {
        use std::hash::{Hash, Hasher};
        let mut h = std::hash::DefaultHasher::new();
        key.hash(&mut h);
        (h.finish() % ID_PARTITIONS as u64) as usize
    }

    /// Moves the ids of `run` to their partitions.
    fn spill(&mut self, run: &mut IdRun) -> Result<()> {
        use std::io::Write;
        let full = |e: std::io::Error, dir: &std::path::Path| {
            anyhow::Error::from(e).context(format!(
                "cannot write the id check's files under {} (--tmp-dir); they need about 16 bytes per transcript",
                dir.display()
            ))
        };
        for (v, row) in run.numbers.drain(..) {
            let p = Self::partition(&IdKey::Number(v));
            let mut bytes = [0u8; 13];
            bytes[1..9].copy_from_slice(&v.to_le_bytes());
            bytes[9..].copy_from_slice(&row.to_le_bytes());
            self.files[p]
                .write_all(&bytes)
                .map_err(|e| full(e, &self.dir))?;
        }
        for (v, row) in run.texts.drain(..) {
            let key = IdKey::Text(v);
            let p = Self::partition(&key);
            let IdKey::Text(v) = key else {
                continue;
            };
            let file = &mut self.files[p];
            file.write_all(&[1])
                .and_then(|()| file.write_all(&(v.len() as u64).to_le_bytes()))
                .and_then(|()| file.write_all(v.as_bytes()))
                .and_then(|()| file.write_all(&row.to_le_bytes()))
                .map_err(|e| full(e, &self.dir))?;
        }
        run.numbers.shrink_to_fit();
        run.texts.shrink_to_fit();
        Ok(())
    }

    /// The smallest repeated id over every partition.
    fn first_repeat(&mut self) -> Result<Option<(IdKey, Vec<u32>)>> {
        use std::io::Write;
        let dir = self.dir.clone();
        for f in &mut self.files {
            f.flush().with_context(|| {
                format!(
                    "cannot write the id check's files under {} (--tmp-dir)",
                    dir.display()
                )
            })?;
        }
        let mut found: Option<(IdKey, Vec<u32>)> = None;
        for p in 0..ID_PARTITIONS {
            let path = self.dir.join(format!("p{p}.bin"));
            let bytes =
                std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
            let damaged = || anyhow::anyhow!("{} is damaged", path.display());
            let mut run = IdRun::default();
            let mut at = 0usize;
            let take = |at: &mut usize, n: usize| -> Result<&[u8]> {
                let b = bytes.get(*at..*at + n).ok_or_else(damaged)?;
                *at += n;
                Ok(b)
            };
            while at < bytes.len() {
                let tag = take(&mut at, 1)?[0];
                if tag == 0 {
                    let v = u64::from_le_bytes(take(&mut at, 8)?.try_into()?);
                    let row = u32::from_le_bytes(take(&mut at, 4)?.try_into()?);
                    run.numbers.push((v, row));
                } else {
                    let len = u64::from_le_bytes(take(&mut at, 8)?.try_into()?) as usize;
                    let v = std::str::from_utf8(take(&mut at, len)?)
                        .map_err(|_| damaged())?
                        .to_string();
                    let row = u32::from_le_bytes(take(&mut at, 4)?.try_into()?);
                    run.texts.push((v, row));
                }
            }
            drop(bytes);
            if let Some(repeat) = run.first_repeat() {
                if found.as_ref().is_none_or(|f| repeat.0 < f.0) {
                    found = Some(repeat);
                }
            }
        }
        Ok(found)
    }
}

impl Drop for IdPartitions {
    fn drop(&mut self) {
        self.files.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The columns of a transcripts file and their roles (docs/contract.md §2),
/// resolved once; the file is then read in record batches.
pub struct TranscriptLayout {
    table: Table,
    path: std::path::PathBuf,
    x_col: String,
    y_col: String,
    gene_col: String,
    z_col: Option<String>,
    id_col: Option<String>,
    qv_col: Option<String>,
    fov_col: Option<String>,
    membership: Option<(String, String)>,
    /// Columns read, each once, in a fixed order (x, y, gene first).
    wanted: Vec<(String, Want)>,
    z_i: Option<usize>,
    id_i: Option<usize>,
    qv_i: Option<usize>,
    nuc_i: Option<usize>,
    cell_i: Option<usize>,
    fov_i: Option<usize>,
    csv: bool,
}

impl TranscriptLayout {
    /// Opens the transcripts file of `spec` and finds its columns (an error
    /// names a missing or inconsistent column).
    pub fn open(spec: &InputSpec) -> Result<Self> {
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
        let csv = matches!(table.format(), Format::Csv { .. });
        Ok(TranscriptLayout {
            table,
            path,
            x_col,
            y_col,
            gene_col,
            z_col,
            id_col,
            qv_col,
            fov_col,
            membership,
            wanted,
            z_i,
            id_i,
            qv_i,
            nuc_i,
            cell_i,
            fov_i,
            csv,
        })
    }

    /// The file.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Whether the file has a nuclear flag with a cell id column.
    pub fn has_membership(&self) -> bool {
        self.membership.is_some()
    }

    /// Columns used (role, name), for the run log and for messages.
    pub fn columns(&self) -> Vec<(&'static str, String)> {
        let mut columns: Vec<(&'static str, String)> = vec![
            ("x", self.x_col.clone()),
            ("y", self.y_col.clone()),
            ("gene", self.gene_col.clone()),
        ];
        for (role, col) in [
            ("z", &self.z_col),
            ("transcript id", &self.id_col),
            ("quality", &self.qv_col),
            ("field of view", &self.fov_col),
        ] {
            if let Some(c) = col {
                columns.push((role, c.clone()));
            }
        }
        if let Some((n, c)) = &self.membership {
            columns.push(("nuclear flag", n.clone()));
            columns.push(("cell id", c.clone()));
        }
        columns
    }

    /// The record batches of every column read, in file order.
    fn batches(&self) -> Result<Box<dyn Iterator<Item = Result<RecordBatch>> + Send>> {
        let refs: Vec<(&str, Want)> = self.wanted.iter().map(|(n, w)| (n.as_str(), *w)).collect();
        self.table.batches(&refs)
    }

    /// Decodes the batch of rows `row0..` into `acc`.
    fn decode_into(
        &self,
        batch: &RecordBatch,
        spec: &InputSpec,
        row0: usize,
        genes: &mut GeneMap,
        acc: &mut Decoded,
    ) -> Result<()> {
        let path = &self.path;
        let n = batch.num_rows();
        let col = |i: usize| batch.column(i);
        table::push_f64(col(0).as_ref(), Ctx::new(path, &self.x_col), &mut acc.x)?;
        table::push_f64(col(1).as_ref(), Ctx::new(path, &self.y_col), &mut acc.y)?;
        genes.push(
            col(2).as_ref(),
            Ctx::new(path, &self.gene_col),
            row0,
            &mut acc.gene,
        )?;
        if let (Some(i), Some(name)) = (self.z_i, &self.z_col) {
            table::push_f64(col(i).as_ref(), Ctx::new(path, name), &mut acc.z)?;
        }
        if let (Some(i), Some(name)) = (self.qv_i, &self.qv_col) {
            // A missing quality value filters nothing (+inf passes).
            table::push_f64_fill(
                col(i).as_ref(),
                Ctx::new(path, name),
                f64::INFINITY,
                &mut acc.qv,
            )?;
        }
        if let (Some(out), Some(ni), Some(ci), Some((n_name, c_name))) = (
            acc.nuclear_cell.as_mut(),
            self.nuc_i,
            self.cell_i,
            &self.membership,
        ) {
            let flag = table::flag_mask(
                col(ni).as_ref(),
                &spec.nuclear_value,
                Ctx::new(path, n_name),
            )?;
            if flag.true_count() == 0 {
                out.extend(std::iter::repeat_n(None, n));
            } else {
                let unassigned: std::collections::HashSet<&str> =
                    spec.unassigned_cells.iter().map(|s| s.as_str()).collect();
                let cells = table::to_utf8(col(ci).as_ref(), Ctx::new(path, c_name))?;
                let fovs = match (self.fov_i, &self.fov_col) {
                    (Some(fi), Some(f_name)) => {
                        Some(table::to_utf8(col(fi).as_ref(), Ctx::new(path, f_name))?)
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
        Ok(())
    }

    /// Keeps the columns echoed into the output (x, y, z, qv; ids).
    fn keep_passthrough(
        &self,
        batch: &RecordBatch,
        pass: &mut [Vec<ArrayRef>; 4],
        id_arrays: &mut Vec<ArrayRef>,
    ) {
        let col = |i: usize| batch.column(i).clone();
        pass[0].push(col(0));
        pass[1].push(col(1));
        if let Some(i) = self.z_i {
            pass[2].push(col(i));
        }
        if let Some(i) = self.qv_i {
            pass[3].push(col(i));
        }
        if let Some(i) = self.id_i {
            id_arrays.push(col(i));
        }
    }

    /// x and y (pixels) and z (planes) to µm; z is 0 without a z column.
    fn to_microns(
        &self,
        spec: &InputSpec,
        x: &mut [f64],
        y: &mut [f64],
        z: &mut Vec<f64>,
        rows: usize,
    ) {
        if let Some(px) = spec.pixel_size {
            x.iter_mut().for_each(|v| *v *= px);
            y.iter_mut().for_each(|v| *v *= px);
        }
        if self.z_col.is_some() {
            if spec.z_scale != 1.0 {
                z.iter_mut().for_each(|v| *v *= spec.z_scale);
            }
        } else {
            *z = vec![0.0; rows];
        }
    }

    /// The filter of a row (first that applies): `bad_coordinates`,
    /// `control`, `qv`.
    fn filter(
        &self,
        spec: &InputSpec,
        pos: [f64; 3],
        control: bool,
        qv: &[f64],
        i: usize,
    ) -> Option<FilterReason> {
        if !(pos[0].is_finite() && pos[1].is_finite() && pos[2].is_finite()) {
            Some(FilterReason::BadCoordinates)
        } else if control {
            Some(FilterReason::Control)
        } else if self.qv_col.is_some() && (qv[i] < spec.qv_min || qv[i].is_nan()) {
            Some(FilterReason::Qv)
        } else {
            None
        }
    }

    /// The passthrough columns of the output for some rows: the id column,
    /// x, y, z as read (µm instead of pixels), gene, qv, then the pixel columns.
    fn passthrough(
        &self,
        spec: &InputSpec,
        pass: [Vec<ArrayRef>; 4],
        x: &[f64],
        y: &[f64],
        gene_column: ArrayRef,
        id_column: ArrayRef,
    ) -> Result<Vec<(String, ArrayRef)>> {
        let path = &self.path;
        let mut passthrough: Vec<(String, ArrayRef)> = vec![("transcript_id".into(), id_column)];
        let names = [
            Some(&self.x_col),
            Some(&self.y_col),
            self.z_col.as_ref(),
            self.qv_col.as_ref(),
        ];
        let [px, py, pz, pq] = pass;
        // Pixel coordinates (CosMx): `x` and `y` are written in µm like every
        // other position of the outputs; the pixel columns follow as read.
        let mut pixel_columns: Vec<(String, ArrayRef)> = Vec::new();
        for (out_name, arrays, src, microns) in [
            ("x", px, names[0], Some(x)),
            ("y", py, names[1], Some(y)),
            ("z", pz, names[2], None),
        ] {
            if let Some(src) = src {
                let ctx = Ctx::new(path, src);
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
        passthrough.push(("gene".into(), gene_column));
        if let Some(src) = names[3] {
            passthrough.push((
                "qv".into(),
                plain(concat(&pq, Ctx::new(path, src))?, Ctx::new(path, src))?,
            ));
        }
        passthrough.extend(pixel_columns);
        Ok(passthrough)
    }
}

/// One batch of rows decoded for the bucketed path (`--max-memory`).
pub struct Chunk {
    /// Input row of the first row (0-based).
    pub row0: usize,
    /// x in µm.
    pub x: Vec<f64>,
    /// y in µm.
    pub y: Vec<f64>,
    /// z in µm (0 without a z column).
    pub z: Vec<f64>,
    /// Gene of every row, as an index into [`TranscriptStream::gene_name`].
    pub gene: Vec<u32>,
    /// Filter of every row (before the unknown-gene policy).
    pub filter: Vec<Option<FilterReason>>,
    /// Cell id of the rows flagged nuclear (`None` for the column when the
    /// file has no flag), as in [`Transcripts::nuclear_cell`].
    pub nuclear_cell: Option<Vec<Option<String>>>,
    /// The columns as read, for the output columns.
    pub batch: RecordBatch,
}

/// The transcripts file read batch by batch, with the same per-row
/// decisions as [`read_transcripts`] (genes are numbered in order of first
/// appearance instead of sorted).
pub struct TranscriptStream<'a> {
    layout: &'a TranscriptLayout,
    spec: &'a InputSpec,
    batches: Box<dyn Iterator<Item = Result<RecordBatch>> + Send>,
    genes: GeneMap,
    control: Vec<bool>,
    rows: usize,
}

impl TranscriptStream<'_> {
    /// The next batch of rows, `None` after the last.
    pub fn next_chunk(&mut self) -> Result<Option<Chunk>> {
        let Some(batch) = self.batches.next() else {
            return Ok(None);
        };
        let batch = batch?;
        let layout = self.layout;
        let mut acc = Decoded {
            nuclear_cell: layout.membership.as_ref().map(|_| Vec::new()),
            ..Decoded::default()
        };
        layout.decode_into(&batch, self.spec, self.rows, &mut self.genes, &mut acc)?;
        let n = batch.num_rows();
        layout.to_microns(self.spec, &mut acc.x, &mut acc.y, &mut acc.z, n);
        for name in &self.genes.names[self.control.len()..] {
            self.control.push(is_control(self.spec, name));
        }
        let filter = (0..n)
            .map(|i| {
                layout.filter(
                    self.spec,
                    [acc.x[i], acc.y[i], acc.z[i]],
                    self.control[acc.gene[i] as usize],
                    &acc.qv,
                    i,
                )
            })
            .collect();
        let chunk = Chunk {
            row0: self.rows,
            x: acc.x,
            y: acc.y,
            z: acc.z,
            gene: acc.gene,
            filter,
            nuclear_cell: acc.nuclear_cell,
            batch,
        };
        self.rows += n;
        Ok(Some(chunk))
    }

    /// Name of gene `g` of a chunk.
    pub fn gene_name(&self, g: u32) -> &str {
        &self.genes.names[g as usize]
    }

    /// Genes seen so far (gene indices are below this).
    pub fn genes(&self) -> usize {
        self.genes.names.len()
    }

    /// Rows read so far.
    pub fn rows(&self) -> usize {
        self.rows
    }
}

impl TranscriptLayout {
    /// Reads the file batch by batch, the next batches decoded on a thread
    /// of their own ([`super::table::read_ahead`]).
    pub fn stream<'a>(&'a self, spec: &'a InputSpec) -> Result<TranscriptStream<'a>> {
        Ok(TranscriptStream {
            layout: self,
            spec,
            batches: Box::new(super::table::read_ahead(self.batches()?)?),
            genes: GeneMap::default(),
            control: Vec::new(),
            rows: 0,
        })
    }

    /// The error of a file with a header and no rows.
    pub fn no_rows_error(&self) -> anyhow::Error {
        anyhow::anyhow!(
            "{}: no transcripts (the table has a header but no rows)",
            self.path.display()
        )
    }

    /// The id column alone, batch by batch (read ahead on a thread).
    fn id_batches(&self) -> Result<Option<(Ctx<'_>, impl Iterator<Item = Result<ArrayRef>>)>> {
        let Some(name) = &self.id_col else {
            return Ok(None);
        };
        let batches =
            super::table::read_ahead(self.table.batches(&[(name.as_str(), Want::Text)])?)?;
        Ok(Some((
            Ctx::new(&self.path, name),
            batches.map(|b| b.map(|b| b.column(0).clone())),
        )))
    }

    /// Reads the id column alone (twice for CSV text: the kind every row
    /// fits first) and checks that no id appears twice; the same errors as
    /// [`read_transcripts`]. A compact key per row (16 bytes for numbers)
    /// is held up to [`ID_RUN`] rows; beyond, the keys go to
    /// [`ID_PARTITIONS`] files by their hash in a folder under `tmp_dir`
    /// (removed after), and each is sorted and checked alone. Returns the
    /// kind of the ids, `None` without an id column (the row index is the
    /// id).
    pub fn check_ids(&self, tmp_dir: &std::path::Path) -> Result<Option<IdKind>> {
        let Some((ctx, mut batches)) = self.id_batches()? else {
            return Ok(None);
        };
        let Some(first) = batches.next().transpose()? else {
            return Ok(Some(IdKind::Str));
        };
        let mut kind = stored_id_kind(first.data_type(), ctx)?;
        if self.csv && kind == IdKind::Str {
            let mut kinds = CsvIdKinds::default();
            let mut row0 = 0;
            for a in std::iter::once(Ok(first.clone())).chain(batches) {
                let a = a?;
                first_null(a.as_ref(), row0, ctx)?;
                kinds.see(&table::to_utf8(a.as_ref(), ctx)?);
                row0 += a.len();
            }
            kind = kinds.kind();
        }
        let (ctx, batches) = self
            .id_batches()?
            .context("internal: the id column went away")?;
        let mut run = IdRun::default();
        let mut parts: Option<IdPartitions> = None;
        let mut row0 = 0usize;
        for a in batches {
            let a = a?;
            let n = a.len();
            let (keys, _) = id_values(&[a], ctx, kind, row0, n)?;
            for (i, k) in keys.into_iter().enumerate() {
                run.push(k, (row0 + i) as u32);
            }
            row0 += n;
            if run.len() >= id_run() {
                let p = match &mut parts {
                    Some(p) => p,
                    None => parts.insert(IdPartitions::create(tmp_dir)?),
                };
                p.spill(&mut run)?;
            }
        }
        let found = match &mut parts {
            None => run.first_repeat(),
            Some(p) => {
                p.spill(&mut run)?;
                p.first_repeat()?
            }
        };
        drop(parts);
        if let Some((id, rows)) = found {
            let rows: Vec<String> = rows.iter().take(3).map(|r| (r + 1).to_string()).collect();
            let id = match (id, kind) {
                (IdKey::Text(v), _) => TranscriptKey::Str(v),
                (IdKey::Number(v), IdKind::U64) => TranscriptKey::U64(v),
                (IdKey::Number(v), IdKind::I64) => TranscriptKey::I64((v ^ (1 << 63)) as i64),
                (IdKey::Number(v), _) => TranscriptKey::F64(f64::from_bits(v)),
            };
            bail!(
                "{ctx}: transcript id {id} appears more than once (rows {}); ids must be unique, \
                 as fragment ids are made from them (pass --id-col none to number the rows instead)",
                rows.join(", ")
            );
        }
        Ok(Some(kind))
    }

    /// The id keys of `rows` (ascending input rows), read as `kind`.
    pub fn keys_of_rows(&self, kind: Option<IdKind>, rows: &[usize]) -> Result<Vec<TranscriptKey>> {
        let mut keys = Vec::with_capacity(rows.len());
        self.for_each_key_of_rows(kind, rows.iter().map(|&r| Ok((r, ()))), |(), key| {
            keys.push(key)
        })?;
        Ok(keys)
    }

    /// Hands `f` the id key (read as `kind`; `None`: the row index) of every
    /// row of `rows` (ascending input rows, each with a tag), reading the id
    /// column once, batch by batch.
    pub fn for_each_key_of_rows<T>(
        &self,
        kind: Option<IdKind>,
        rows: impl Iterator<Item = Result<(usize, T)>>,
        mut f: impl FnMut(T, TranscriptKey),
    ) -> Result<()> {
        let (Some(kind), Some((ctx, batches))) = (kind, self.id_batches()?) else {
            for row in rows {
                let (r, tag) = row?;
                f(tag, TranscriptKey::U64(r as u64));
            }
            return Ok(());
        };
        let mut rows = rows;
        let mut pending = rows.next().transpose()?;
        let mut row0 = 0usize;
        for a in batches {
            let Some((first, _)) = &pending else {
                break;
            };
            let a = a?;
            let n = a.len();
            let end = row0 + n;
            if *first < end {
                let (batch_keys, _) = id_values(&[a], ctx, kind, row0, n)?;
                while let Some((r, tag)) = pending.take() {
                    if r >= end {
                        pending = Some((r, tag));
                        break;
                    }
                    anyhow::ensure!(r >= row0, "internal: rows asked for out of order");
                    f(tag, batch_keys[r - row0].clone());
                    pending = rows.next().transpose()?;
                }
            }
            row0 = end;
        }
        anyhow::ensure!(
            pending.is_none(),
            "{ctx}: the file holds fewer rows than when it was first read"
        );
        Ok(())
    }

    /// The passthrough output columns (as [`Transcripts::passthrough`]) of
    /// consecutive batches holding rows `row0..`, with x, y in µm and the
    /// gene names of those rows; ids read as `kind` (`None`: row index).
    #[allow(clippy::too_many_arguments)]
    pub fn output_columns(
        &self,
        spec: &InputSpec,
        batches: &[RecordBatch],
        row0: usize,
        x: &[f64],
        y: &[f64],
        gene_column: ArrayRef,
        kind: Option<IdKind>,
    ) -> Result<Vec<(String, ArrayRef)>> {
        let mut pass: [Vec<ArrayRef>; 4] = Default::default();
        let mut id_arrays = Vec::new();
        for b in batches {
            self.keep_passthrough(b, &mut pass, &mut id_arrays);
        }
        let n = x.len();
        let id_column = match (&self.id_col, kind) {
            (Some(name), Some(kind)) => {
                id_values(&id_arrays, Ctx::new(&self.path, name), kind, row0, n)?.1
            }
            _ => row_ids(row0..row0 + n).1,
        };
        self.passthrough(spec, pass, x, y, gene_column, id_column)
    }
}
