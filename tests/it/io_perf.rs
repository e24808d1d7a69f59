//! Reading 10 million transcripts from parquet takes seconds (columnar
//! conversion, genes mapped through a table of distinct names).
//! Ignored by default (writes ~250 MB); run with
//! `cargo test --release --test it io_perf -- --ignored --nocapture`.

use std::sync::Arc;
use std::time::Instant;

use arrow::array::{ArrayRef, DictionaryArray, Float32Array, StringArray, UInt64Array, UInt8Array};
use arrow::datatypes::{Field, Int16Type, Schema};
use arrow::record_batch::RecordBatch;
use seggpu::io::{read_transcripts, InputArgs, Preset};

use crate::common::{one_nucleus_csv, XorShift};

const ROWS: usize = 10_000_000;
const CHUNK: usize = 1_000_000;

fn write(path: &std::path::Path, dictionary: bool) {
    let genes: Vec<String> = (0..500).map(|g| format!("GENE{g:03}")).collect();
    let mut writer = None;
    let mut rng = XorShift::new(1);
    for c in 0..ROWS / CHUNK {
        let mut g = Vec::with_capacity(CHUNK);
        let mut x = Vec::with_capacity(CHUNK);
        let mut y = Vec::with_capacity(CHUNK);
        let mut cell = Vec::with_capacity(CHUNK);
        let mut flag = Vec::with_capacity(CHUNK);
        for _ in 0..CHUNK {
            let r = rng.next_u64();
            g.push((r % 500) as usize);
            x.push((r >> 20) as f32 % 5000.0);
            y.push((r >> 40) as f32 % 5000.0);
            let nuclear = r.is_multiple_of(3);
            flag.push(nuclear as u8);
            cell.push(if nuclear {
                format!("cell{}", (r >> 8) % 50_000)
            } else {
                "UNASSIGNED".into()
            });
        }
        let gene: ArrayRef = if dictionary {
            Arc::new(DictionaryArray::<Int16Type>::new(
                g.iter().map(|&i| i as i16).collect(),
                Arc::new(StringArray::from(genes.clone())),
            ))
        } else {
            Arc::new(StringArray::from_iter_values(
                g.iter().map(|&i| genes[i].as_str()),
            ))
        };
        let cols: Vec<(&str, ArrayRef)> = vec![
            (
                "transcript_id",
                Arc::new(UInt64Array::from_iter_values(
                    (0..CHUNK as u64).map(|i| i + (c * CHUNK) as u64),
                )),
            ),
            ("cell_id", Arc::new(StringArray::from(cell))),
            ("overlaps_nucleus", Arc::new(UInt8Array::from(flag))),
            ("feature_name", gene),
            ("x_location", Arc::new(Float32Array::from(x))),
            ("y_location", Arc::new(Float32Array::from(y))),
            (
                "z_location",
                Arc::new(Float32Array::from(vec![1.0f32; CHUNK])),
            ),
            ("qv", Arc::new(Float32Array::from(vec![30.0f32; CHUNK]))),
        ];
        let schema = Arc::new(Schema::new(
            cols.iter()
                .map(|(n, a)| Field::new(*n, a.data_type().clone(), false))
                .collect::<Vec<_>>(),
        ));
        let batch =
            RecordBatch::try_new(schema.clone(), cols.into_iter().map(|(_, a)| a).collect())
                .unwrap();
        let w = writer.get_or_insert_with(|| {
            parquet::arrow::ArrowWriter::try_new(std::fs::File::create(path).unwrap(), schema, None)
                .unwrap()
        });
        w.write(&batch).unwrap();
    }
    writer.unwrap().close().unwrap();
}

#[test]
#[ignore]
fn io_perf_ten_million_transcripts() {
    let dir = tempfile::tempdir().unwrap();
    let bd = one_nucleus_csv(dir.path());
    for dictionary in [false, true] {
        let tx = dir.path().join(format!("tx{dictionary}.parquet"));
        write(&tx, dictionary);
        let spec = InputArgs {
            preset: Some(Preset::Xenium),
            transcripts: Some(tx),
            boundaries: Some(bd.clone()),
            ..InputArgs::default()
        }
        .resolve()
        .unwrap();
        let t0 = Instant::now();
        let t = read_transcripts(&spec).unwrap();
        let s = t0.elapsed().as_secs_f64();
        println!(
            "10M transcripts (genes {}): {s:.2} s, {} genes, {} nuclear",
            if dictionary {
                "dictionary"
            } else {
                "plain strings"
            },
            t.gene_names.len(),
            t.nuclear_cell
                .as_ref()
                .unwrap()
                .iter()
                .filter(|c| c.is_some())
                .count()
        );
        assert_eq!(t.x.len(), ROWS);
        assert!(s < 30.0, "{s} s");
    }
}
