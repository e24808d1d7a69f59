//! Tables on disk (parquet, CSV, gzip CSV) read as streams of Arrow record
//! batches of the columns asked for, and conversions of Arrow columns of
//! any of the dtypes vendors use into plain values.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, RecordBatch, StringArray, StringBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;

use super::args::ColumnChoice;

/// Rows per record batch.
const BATCH_ROWS: usize = 64 * 1024;

/// Environment variable (builds with the `testing` feature only): rows per
/// record batch instead of 64 Ki, so that small files are read in several
/// batches.
pub const BATCH_ROWS_ENV: &str = "SEGGPU_TEST_BATCH_ROWS";

fn batch_rows() -> usize {
    crate::test_hooks::value(BATCH_ROWS_ENV).map_or(BATCH_ROWS, |n: usize| n.max(1))
}

/// Batches a [`read_ahead`] reader decodes beyond the one its consumer
/// holds: one waiting in the channel, one being decoded.
pub const READ_AHEAD: usize = 2;

/// Runs `batches` on a thread of its own, so that decoding the next batch
/// (parquet decompression and decoding, CSV parsing) overlaps the
/// consumer's work on the current one. The batches come in the same order;
/// at most [`READ_AHEAD`] are decoded ahead (a bounded channel). After an
/// error the thread stops; a consumer that stops early stops it at its next
/// batch.
pub fn read_ahead<T: Send + 'static>(
    batches: Box<dyn Iterator<Item = Result<T>> + Send>,
) -> Result<ReadAhead<T>> {
    let (send, receive) = std::sync::mpsc::sync_channel(READ_AHEAD - 1);
    let thread = std::thread::Builder::new()
        .name("seggpu-reader".into())
        .spawn(move || {
            for batch in batches {
                let failed = batch.is_err();
                if send.send(batch).is_err() || failed {
                    return;
                }
            }
        })
        .context("cannot start the reader thread")?;
    Ok(ReadAhead {
        receive,
        thread: Some(thread),
    })
}

/// The batches of [`read_ahead`], in order.
pub struct ReadAhead<T> {
    receive: std::sync::mpsc::Receiver<Result<T>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl<T> Iterator for ReadAhead<T> {
    type Item = Result<T>;

    fn next(&mut self) -> Option<Result<T>> {
        match self.receive.recv() {
            Ok(batch) => Some(batch),
            // The thread ended: after the last batch, or by a panic, which
            // must not pass for the end of the file.
            Err(_) => self.thread.take().and_then(|t| {
                t.join()
                    .err()
                    .map(|_| Err(anyhow::anyhow!("internal: the reader thread panicked")))
            }),
        }
    }
}

/// How a table is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Apache Parquet.
    Parquet,
    /// Delimited text, possibly gzip-compressed.
    Csv {
        /// gzip-compressed (detected from the magic bytes).
        gzip: bool,
        /// Field delimiter (`,` or tab).
        delimiter: u8,
    },
}

/// What a CSV column is parsed as (parquet columns keep their own types).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// Float64.
    Number,
    /// Utf8, interpreted by the reader.
    Text,
}

/// An opened table: its format and column names.
#[derive(Debug)]
pub struct Table {
    path: PathBuf,
    format: Format,
    names: Vec<String>,
    /// Arrow schema of a parquet file (None for CSV: every column is text
    /// until asked for).
    parquet_schema: Option<SchemaRef>,
}

fn open_file(path: &Path) -> Result<File> {
    File::open(path).with_context(|| format!("cannot open {}", path.display()))
}

/// Detects the format from the magic bytes, then the extension.
fn detect(path: &Path) -> Result<Format> {
    let mut head = [0u8; 4];
    let mut f = open_file(path)?;
    let mut n = 0;
    while n < head.len() {
        let k = f
            .read(&mut head[n..])
            .with_context(|| format!("cannot read {}", path.display()))?;
        if k == 0 {
            break;
        }
        n += k;
    }
    let name = path
        .file_name()
        .map(|s| s.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    if n == 0 {
        bail!("{} is empty (0 bytes)", path.display());
    }
    if n >= 4 && &head == b"PAR1" {
        return Ok(Format::Parquet);
    }
    let gzip = n >= 2 && head[0] == 0x1f && head[1] == 0x8b;
    if !gzip && (name.ends_with(".parquet") || name.ends_with(".pq")) {
        bail!(
            "{} is named like a parquet file but does not start with the parquet magic bytes PAR1",
            path.display()
        );
    }
    if !gzip && name.ends_with(".gz") {
        bail!(
            "{} is named like a gzip file but is not gzip-compressed",
            path.display()
        );
    }
    let delimiter = if name.trim_end_matches(".gz").ends_with(".tsv") {
        b'\t'
    } else {
        b','
    };
    Ok(Format::Csv { gzip, delimiter })
}

/// A buffered reader of the (decompressed) text of a CSV file.
fn csv_text(path: &Path, gzip: bool) -> Result<Box<dyn BufRead + Send>> {
    let f = open_file(path)?;
    Ok(if gzip {
        Box::new(BufReader::with_capacity(
            1 << 20,
            flate2::read::MultiGzDecoder::new(BufReader::with_capacity(1 << 20, f)),
        ))
    } else {
        Box::new(BufReader::with_capacity(1 << 20, f))
    })
}

thread_local! {
    /// Whether this thread is inside [`guarded`] (its panics are not printed).
    static DECODING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f`, a call into the parquet crate, turning a panic into an error
/// naming the file: the crate asserts on some damaged pages (a dictionary
/// page missing, …) instead of returning an error. Such a panic is not
/// printed; every other panic still is.
fn guarded<T>(path: &Path, f: impl FnOnce() -> Result<T>) -> Result<T> {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !DECODING.with(std::cell::Cell::get) {
                previous(info)
            }
        }));
    });
    DECODING.with(|d| d.set(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    DECODING.with(|d| d.set(false));
    result.unwrap_or_else(|payload| {
        let what = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        bail!(
            "{}: damaged parquet data (the parquet reader stopped: {what})",
            path.display()
        )
    })
}

/// Opens a parquet file and checks the column chunk ranges of its footer:
/// the parquet crate asserts (panics) on a negative offset or size, so a
/// damaged footer must be refused here with an error naming the file.
fn parquet_builder(path: &Path) -> Result<ParquetRecordBatchReaderBuilder<File>> {
    let file = open_file(path)?;
    let len = file
        .metadata()
        .with_context(|| format!("cannot read {}", path.display()))?
        .len();
    let builder = guarded(path, || {
        ParquetRecordBatchReaderBuilder::try_new(file)
            .with_context(|| format!("{}: not a readable parquet file", path.display()))
    })?;
    for (r, group) in builder.metadata().row_groups().iter().enumerate() {
        for (c, chunk) in group.columns().iter().enumerate() {
            let start = chunk
                .dictionary_page_offset()
                .unwrap_or(chunk.data_page_offset());
            let size = chunk.compressed_size();
            let inside = u64::try_from(start)
                .ok()
                .zip(u64::try_from(size).ok())
                .and_then(|(start, size)| start.checked_add(size))
                .is_some_and(|end| end <= len);
            if !inside {
                bail!(
                    "{}: not a readable parquet file (row group {r}, column {c}: data at offset {start}, {size} bytes, outside the file's {len} bytes)",
                    path.display()
                );
            }
        }
    }
    Ok(builder)
}

/// Bytes of text sampled to estimate the rows of a CSV file.
const ROW_SAMPLE_BYTES: u64 = 1 << 20;

/// A reader that counts the bytes read through it.
struct Counted<R> {
    inner: R,
    bytes: u64,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }
}

/// The data rows of the table at `path`, cheaply: exact for parquet (its
/// footer) and for CSV text shorter than 1 MiB, else estimated from the
/// lines of the first MiB of text and the file bytes that text took.
pub fn estimated_rows(path: &Path) -> Result<u64> {
    let Format::Csv { gzip, .. } = detect(path)? else {
        let builder = parquet_builder(path)?;
        return Ok(builder.metadata().file_metadata().num_rows().max(0) as u64);
    };
    let file = open_file(path)?;
    let len = file
        .metadata()
        .with_context(|| format!("cannot read {}", path.display()))?
        .len();
    let mut text = Vec::new();
    let consumed = if gzip {
        let mut decoder = flate2::bufread::MultiGzDecoder::new(BufReader::new(Counted {
            inner: file,
            bytes: 0,
        }));
        (&mut decoder)
            .take(ROW_SAMPLE_BYTES)
            .read_to_end(&mut text)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let buffered = decoder.get_ref();
        buffered.get_ref().bytes - buffered.buffer().len() as u64
    } else {
        file.take(ROW_SAMPLE_BYTES)
            .read_to_end(&mut text)
            .with_context(|| format!("cannot read {}", path.display()))?;
        text.len() as u64
    };
    let lines = text.iter().filter(|&&b| b == b'\n').count() as u64
        + u64::from(text.last().is_some_and(|&b| b != b'\n'));
    let rows = lines.saturating_sub(1);
    if (text.len() as u64) < ROW_SAMPLE_BYTES || consumed == 0 {
        return Ok(rows);
    }
    Ok((rows as f64 * len as f64 / consumed as f64) as u64)
}

impl Table {
    /// Opens a table and reads its column names.
    pub fn open(path: &Path) -> Result<Table> {
        let mut format = detect(path)?;
        match format {
            Format::Parquet => {
                let builder = parquet_builder(path)?;
                let schema = builder.schema().clone();
                Ok(Table {
                    path: path.to_path_buf(),
                    format,
                    names: schema.fields().iter().map(|f| f.name().clone()).collect(),
                    parquet_schema: Some(schema),
                })
            }
            Format::Csv { gzip, delimiter } => {
                let mut text = csv_text(path, gzip)?;
                let mut line = String::new();
                text.read_line(&mut line).with_context(|| {
                    format!(
                        "{}: cannot read the header line (not text{})",
                        path.display(),
                        if gzip { " after gunzip" } else { "" }
                    )
                })?;
                let line = line.trim_end_matches(['\n', '\r']);
                if line.trim().is_empty() {
                    bail!("{}: no header line (empty table)", path.display());
                }
                // A tab-separated file named .csv: use tabs when the header
                // has tabs and no commas.
                let delimiter = if delimiter == b',' && line.contains('\t') && !line.contains(',') {
                    b'\t'
                } else {
                    delimiter
                };
                format = Format::Csv { gzip, delimiter };
                let (schema, _) = arrow::csv::reader::Format::default()
                    .with_header(true)
                    .with_delimiter(delimiter)
                    .infer_schema(line.as_bytes(), Some(0))
                    .with_context(|| format!("{}: cannot parse the header line", path.display()))?;
                Ok(Table {
                    path: path.to_path_buf(),
                    format,
                    names: schema.fields().iter().map(|f| f.name().clone()).collect(),
                    parquet_schema: None,
                })
            }
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The storage format.
    pub fn format(&self) -> Format {
        self.format
    }

    /// Column names in file order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Arrow type of a parquet column (None for CSV).
    pub fn data_type(&self, name: &str) -> Option<DataType> {
        self.parquet_schema
            .as_ref()?
            .field_with_name(name)
            .ok()
            .map(|f| f.data_type().clone())
    }

    /// The first candidate name present in the table. `what` describes the
    /// column for the error when a required column is missing.
    pub fn find(&self, choice: &ColumnChoice, what: &str) -> Result<Option<String>> {
        for c in &choice.candidates {
            if self.names.iter().any(|n| n == c) {
                return Ok(Some(c.clone()));
            }
        }
        if choice.required {
            bail!(
                "{}: no {what} column {} (the file has columns: {})",
                self.path.display(),
                choice
                    .candidates
                    .iter()
                    .map(|c| format!("`{c}`"))
                    .collect::<Vec<_>>()
                    .join(" or "),
                self.names.join(", ")
            );
        }
        Ok(None)
    }

    /// Streams record batches holding exactly `columns` (in that order).
    /// CSV columns are parsed as the given [`Want`]; parquet columns keep
    /// their stored type.
    pub fn batches(
        &self,
        columns: &[(&str, Want)],
    ) -> Result<Box<dyn Iterator<Item = Result<RecordBatch>> + Send>> {
        let mut index = Vec::with_capacity(columns.len());
        for (name, _) in columns {
            let i = self
                .names
                .iter()
                .position(|n| n == name)
                .with_context(|| format!("{}: no column `{name}`", self.path.display()))?;
            index.push(i);
        }
        let names: Vec<String> = columns.iter().map(|(n, _)| n.to_string()).collect();
        let path = self.path.clone();
        let inner: Box<dyn Iterator<Item = Result<RecordBatch>> + Send> = match self.format {
            Format::Parquet => {
                let builder = parquet_builder(&path)?;
                let mut roots = index.clone();
                roots.sort_unstable();
                roots.dedup();
                let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
                let mut reader = guarded(&path, || {
                    builder
                        .with_projection(mask)
                        .with_batch_size(batch_rows())
                        .build()
                        .with_context(|| format!("{}: cannot read parquet", path.display()))
                })?;
                let p = path.clone();
                // After a panic the reader is not used again.
                let mut failed = false;
                Box::new(std::iter::from_fn(move || {
                    if failed {
                        return None;
                    }
                    match guarded(&p, || Ok(reader.next())) {
                        Ok(batch) => batch.map(|b| {
                            b.with_context(|| {
                                format!("{}: cannot decode parquet data", p.display())
                            })
                        }),
                        Err(e) => {
                            failed = true;
                            Some(Err(e))
                        }
                    }
                }))
            }
            Format::Csv { gzip, delimiter } => {
                // Every column is text unless asked for as a number: the
                // reader then parses only what is needed, and ids keep their
                // digits (no inference, no overflow of huge integers).
                let mut fields: Vec<Field> = self
                    .names
                    .iter()
                    .map(|n| Field::new(n, DataType::Utf8, true))
                    .collect();
                for ((_, want), &i) in columns.iter().zip(&index) {
                    if *want == Want::Number {
                        fields[i] = Field::new(&self.names[i], DataType::Float64, true);
                    }
                }
                let mut projection = index.clone();
                projection.sort_unstable();
                projection.dedup();
                let reader = arrow::csv::ReaderBuilder::new(Arc::new(Schema::new(fields)))
                    .with_header(true)
                    .with_delimiter(delimiter)
                    .with_projection(projection)
                    .with_batch_size(batch_rows())
                    .build(csv_text(&self.path, gzip)?)
                    .with_context(|| format!("{}: cannot read CSV", path.display()))?;
                let p = path.clone();
                let all_names = self.names.clone();
                Box::new(reader.map(move |b| {
                    b.map_err(|e| {
                        // Arrow names the column by its index: add its name.
                        let msg = e.to_string();
                        let column = msg
                            .split_once("for column ")
                            .and_then(|(_, rest)| {
                                let digits: String =
                                    rest.chars().take_while(|c| c.is_ascii_digit()).collect();
                                digits.parse::<usize>().ok()
                            })
                            .and_then(|i| all_names.get(i));
                        match column {
                            Some(c) => anyhow::anyhow!(
                                "{}, column `{c}`: expected numbers: {msg}",
                                p.display()
                            ),
                            None => anyhow::anyhow!(
                                "{}: cannot parse CSV (a row with the wrong number of fields?): \
                                 {msg}",
                                p.display()
                            ),
                        }
                    })
                }))
            }
        };
        Ok(Box::new(inner.map(move |batch| {
            let batch = batch?;
            let arrays: Vec<ArrayRef> = names
                .iter()
                .map(|n| {
                    batch.column_by_name(n).cloned().with_context(|| {
                        format!("{}: column `{n}` missing from a batch", path.display())
                    })
                })
                .collect::<Result<_>>()?;
            let fields: Vec<Field> = names
                .iter()
                .zip(&arrays)
                .map(|(n, a)| Field::new(n, a.data_type().clone(), true))
                .collect();
            RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)
                .with_context(|| format!("{}: cannot assemble a batch", path.display()))
        })))
    }
}

/// Where a value came from, for error messages.
#[derive(Debug, Clone, Copy)]
pub struct Ctx<'a> {
    /// The file.
    pub path: &'a Path,
    /// The column.
    pub column: &'a str,
}

impl<'a> Ctx<'a> {
    /// A file and column.
    pub fn new(path: &'a Path, column: &'a str) -> Ctx<'a> {
        Ctx { path, column }
    }
}

impl std::fmt::Display for Ctx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}, column `{}`", self.path.display(), self.column)
    }
}

/// Whether a type is a number arrow can cast to Float64.
fn is_numeric(t: &DataType) -> bool {
    t.is_numeric() || matches!(t, DataType::Boolean)
}

/// Numbers of a numeric (or boolean) column as f64; nulls become NaN.
pub fn push_f64(array: &dyn Array, ctx: Ctx, out: &mut Vec<f64>) -> Result<()> {
    push_f64_fill(array, ctx, f64::NAN, out)
}

/// Numbers of a numeric (or boolean) column as f64; nulls become `fill`.
pub fn push_f64_fill(array: &dyn Array, ctx: Ctx, fill: f64, out: &mut Vec<f64>) -> Result<()> {
    let t = array.data_type();
    let array: ArrayRef = match t {
        DataType::Float64 => arrow::array::make_array(array.to_data()),
        t if is_numeric(t) => arrow::compute::cast(
            &arrow::array::make_array(array.to_data()),
            &DataType::Float64,
        )
        .with_context(|| format!("{ctx}: cannot convert {t} to numbers"))?,
        DataType::Dictionary(_, v) if is_numeric(v) => arrow::compute::cast(
            &arrow::array::make_array(array.to_data()),
            &DataType::Float64,
        )
        .with_context(|| format!("{ctx}: cannot convert {t} to numbers"))?,
        other => bail!("{ctx}: expected numbers (float or integer), found {other}"),
    };
    let values = array.as_primitive::<arrow::datatypes::Float64Type>();
    if values.null_count() == 0 {
        out.extend_from_slice(values.values());
    } else {
        out.extend(values.iter().map(|v| v.unwrap_or(fill)));
    }
    Ok(())
}

/// Formats a float id: integral values without decimals.
pub fn float_id(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 9.0e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// Whether a column of this type can be read as text (strings, binary,
/// dictionaries of those, integers, floats, booleans).
pub fn is_textual(t: &DataType) -> bool {
    match t {
        DataType::Utf8
        | DataType::LargeUtf8
        | DataType::Utf8View
        | DataType::Binary
        | DataType::LargeBinary
        | DataType::BinaryView
        | DataType::Boolean => true,
        DataType::Dictionary(_, v) => is_textual(v),
        t => t.is_integer() || t.is_floating(),
    }
}

/// Any column of strings, binary (UTF-8), dictionaries, integers or floats
/// as a Utf8 array: integers and integral floats without decimals.
pub fn to_utf8(array: &dyn Array, ctx: Ctx) -> Result<StringArray> {
    let t = array.data_type().clone();
    let array_ref = arrow::array::make_array(array.to_data());
    let strings: ArrayRef = match &t {
        DataType::Utf8 => array_ref,
        DataType::LargeUtf8 | DataType::Utf8View => {
            arrow::compute::cast(&array_ref, &DataType::Utf8)
                .with_context(|| format!("{ctx}: cannot read {t} as text"))?
        }
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => {
            arrow::compute::cast_with_options(
                &array_ref,
                &DataType::Utf8,
                &arrow::compute::CastOptions {
                    safe: false,
                    ..Default::default()
                },
            )
            .with_context(|| format!("{ctx}: binary values that are not UTF-8 text"))?
        }
        DataType::Dictionary(_, _) => {
            let dict = array
                .as_any_dictionary_opt()
                .with_context(|| format!("{ctx}: unreadable dictionary column"))?;
            let values = to_utf8(dict.values().as_ref(), ctx)?;
            let keys = if values.is_empty() {
                vec![0; array.len()]
            } else {
                dict.normalized_keys()
            };
            let mut b = StringBuilder::with_capacity(array.len(), array.len() * 8);
            for (i, &k) in keys.iter().enumerate() {
                if array.is_null(i) || values.is_null(k) {
                    b.append_null();
                } else {
                    b.append_value(values.value(k));
                }
            }
            Arc::new(b.finish())
        }
        DataType::Float16 | DataType::Float32 | DataType::Float64 => {
            let mut f = Vec::with_capacity(array.len());
            push_f64(array, ctx, &mut f)?;
            let mut b = StringBuilder::with_capacity(array.len(), array.len() * 8);
            for (i, v) in f.iter().enumerate() {
                if array.is_null(i) {
                    b.append_null();
                } else {
                    b.append_value(float_id(*v));
                }
            }
            Arc::new(b.finish())
        }
        t if t.is_integer() || *t == DataType::Boolean => {
            arrow::compute::cast(&array_ref, &DataType::Utf8)
                .with_context(|| format!("{ctx}: cannot read {t} as text"))?
        }
        other => bail!("{ctx}: expected text, integers or floats, found {other}"),
    };
    strings
        .as_string_opt::<i32>()
        .cloned()
        .with_context(|| format!("{ctx}: cannot read {t} as text"))
}

/// Reads a flag column: `true` where the value equals `value` (numerically
/// for numeric columns; `1`/`true` for booleans; text compared exactly, or
/// numerically when `value` is a number). Nulls are `false`.
pub fn flag_mask(array: &dyn Array, value: &str, ctx: Ctx) -> Result<BooleanArray> {
    let t = array.data_type();
    let number = value.trim().parse::<f64>().ok();
    let truthy = matches!(
        value.trim().to_ascii_lowercase().as_str(),
        "1" | "true" | "yes"
    );
    if *t == DataType::Boolean {
        let b = array.as_boolean();
        return Ok(b
            .iter()
            .map(|v| Some(v.map(|v| v == truthy).unwrap_or(false)))
            .collect());
    }
    if is_numeric(t) {
        let Some(target) = number else {
            bail!("{ctx}: the nuclear flag column is numeric ({t}) but the nuclear value `{value}` is not a number");
        };
        let mut f = Vec::with_capacity(array.len());
        push_f64(array, ctx, &mut f)?;
        return Ok(f.iter().map(|&v| Some(v == target)).collect());
    }
    let s = to_utf8(array, ctx)?;
    Ok(s.iter()
        .map(|v| {
            Some(match v {
                None => false,
                Some(v) if v == value => true,
                // CosMx writes `Nuclear`; some exports `nuclear` or `NUCLEAR`.
                Some(v) if v.trim().eq_ignore_ascii_case(value.trim()) => true,
                Some(v) => {
                    let v = v.trim();
                    match number {
                        Some(target) => {
                            v.parse::<f64>().ok() == Some(target)
                                || (truthy && v.eq_ignore_ascii_case("true"))
                        }
                        None => false,
                    }
                }
            })
        })
        .collect())
}

/// An id written as a whole number with a fraction or exponent (`12.0`,
/// `1.2e1`, as CSV exports of float columns write integer ids) as the
/// integer (`12`); any other text unchanged. Applied to cell and nucleus
/// ids alike, so a float column in one file matches an integer one in the
/// other.
pub fn canonical_id(id: &str) -> std::borrow::Cow<'_, str> {
    let looks_float = id.bytes().any(|b| matches!(b, b'.' | b'e' | b'E'))
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'-' | b'+'));
    match id.parse::<f64>() {
        Ok(v) if looks_float && v.fract() == 0.0 && v.abs() < 9.0e15 => {
            std::borrow::Cow::Owned(format!("{}", v as i64))
        }
        _ => std::borrow::Cow::Borrowed(id),
    }
}

/// The id of a cell as both files name it: the id as text (whole numbers
/// written as floats read as integers, [`canonical_id`]), or `<fov>_<id>`
/// when a FOV column is in use and the id is a per-FOV integer (CosMx
/// `cell_ID` / `cellID`).
pub fn cell_key(id: &str, fovs: Option<&StringArray>, row: usize) -> String {
    let id = canonical_id(id.trim());
    match fovs {
        Some(f) if !f.is_null(row) && !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()) => {
            format!("{}_{id}", canonical_id(f.value(row).trim()))
        }
        _ => id.into_owned(),
    }
}
