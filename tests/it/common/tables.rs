//! Parquet tables the tests write as input and read back as output.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, RecordBatchReader};
use arrow::datatypes::{DataType, Field, Schema, UInt64Type};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;

/// Writes `batch` as one Parquet file.
pub fn write_batch(path: &Path, batch: &RecordBatch) {
    let file = std::fs::File::create(path).unwrap();
    let mut writer = ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    writer.write(batch).unwrap();
    writer.close().unwrap();
}

/// Writes named columns (all nullable) as one Parquet file.
pub fn write_parquet(path: &Path, columns: Vec<(&str, ArrayRef)>) {
    let fields: Vec<Field> = columns
        .iter()
        .map(|(n, a)| Field::new(*n, a.data_type().clone(), true))
        .collect();
    let batch = RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns.into_iter().map(|(_, a)| a).collect(),
    )
    .unwrap();
    write_batch(path, &batch);
}

/// Reads a whole Parquet file into one batch.
pub fn read_parquet(path: &Path) -> RecordBatch {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let schema = reader.schema();
    let batches: Vec<RecordBatch> = reader.map(Result::unwrap).collect();
    arrow::compute::concat_batches(&schema, &batches).unwrap()
}

fn column<'a>(batch: &'a RecordBatch, name: &str) -> &'a ArrayRef {
    batch
        .column_by_name(name)
        .unwrap_or_else(|| panic!("no column {name}"))
}

/// A column as text, whatever its type; a null is an error.
pub fn strings(batch: &RecordBatch, name: &str) -> Vec<String> {
    let text = arrow::compute::cast(column(batch, name), &DataType::Utf8).unwrap();
    text.as_string::<i32>()
        .iter()
        .enumerate()
        .map(|(row, v)| {
            v.unwrap_or_else(|| panic!("{name}: null in row {row}"))
                .to_owned()
        })
        .collect()
}

/// The `transcript_id` column (UInt64).
pub fn transcript_ids(batch: &RecordBatch) -> Vec<u64> {
    primitives::<UInt64Type>(batch, "transcript_id")
}

/// The values of a column of the primitive type `T`.
pub fn primitives<T: arrow::datatypes::ArrowPrimitiveType>(
    batch: &RecordBatch,
    name: &str,
) -> Vec<T::Native> {
    let array = column(batch, name).as_primitive::<T>();
    assert_eq!(array.null_count(), 0, "{name}: nulls");
    array.values().to_vec()
}
