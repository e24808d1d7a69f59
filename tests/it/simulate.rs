//! `seggpu simulate`: file layout, Xenium column types, determinism and the
//! geometry and noise the simulator promises.

use arrow::array::RecordBatchReader;
use std::collections::HashMap;
use std::path::Path;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float32Type, UInt32Type, UInt64Type, UInt8Type};
use geo::{Contains, LineString, Point, Polygon};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use seggpu::simulate::{self, SimulateOptions};

const CELLS: usize = 400;

fn options(seed: u64) -> SimulateOptions {
    SimulateOptions {
        cells: CELLS,
        seed,
        // Several row groups, to exercise batching.
        row_group_size: 20_000,
        ..Default::default()
    }
}

/// Reads a whole Parquet file into one batch.
fn read(path: &Path) -> RecordBatch {
    let file = std::fs::File::open(path).expect("open parquet");
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .expect("parquet metadata")
        .build()
        .expect("reader");
    let schema = reader.schema();
    let batches: Vec<RecordBatch> = reader.map(|b| b.expect("batch")).collect();
    arrow::compute::concat_batches(&schema, &batches).expect("concat")
}

fn columns(batch: &RecordBatch) -> Vec<(String, DataType)> {
    batch
        .schema()
        .fields()
        .iter()
        .map(|f| (f.name().clone(), f.data_type().clone()))
        .collect()
}

fn strings(batch: &RecordBatch, name: &str) -> Vec<String> {
    let col = batch.column_by_name(name).expect("column");
    col.as_string::<i32>()
        .iter()
        .map(|v| v.expect("no nulls").to_owned())
        .collect()
}

fn f32s(batch: &RecordBatch, name: &str) -> Vec<f32> {
    let col = batch.column_by_name(name).expect("column");
    col.as_primitive::<Float32Type>().values().to_vec()
}

struct Sim {
    _dir: tempfile::TempDir,
    summary: simulate::SimulationSummary,
    tx: RecordBatch,
    truth: RecordBatch,
    nuclei: RecordBatch,
    cells: RecordBatch,
}

fn run(seed: u64) -> Sim {
    let dir = tempfile::tempdir().expect("tempdir");
    let summary = simulate::simulate(dir.path(), &options(seed)).expect("simulate");
    let tx = read(&dir.path().join(simulate::TRANSCRIPTS_FILE));
    let truth = read(&dir.path().join(simulate::GROUND_TRUTH_FILE));
    let nuclei = read(&dir.path().join(simulate::NUCLEI_FILE));
    let cells = read(&dir.path().join(simulate::GROUND_TRUTH_CELLS_FILE));
    Sim {
        _dir: dir,
        summary,
        tx,
        truth,
        nuclei,
        cells,
    }
}

fn named(cols: &[(&str, DataType)]) -> Vec<(String, DataType)> {
    cols.iter()
        .map(|(n, t)| ((*n).to_owned(), t.clone()))
        .collect()
}

#[test]
fn xenium_columns_and_types() {
    let sim = run(3);
    assert_eq!(
        columns(&sim.tx),
        named(&[
            ("transcript_id", DataType::UInt64),
            ("cell_id", DataType::Utf8),
            ("overlaps_nucleus", DataType::UInt8),
            ("feature_name", DataType::Utf8),
            ("x_location", DataType::Float32),
            ("y_location", DataType::Float32),
            ("z_location", DataType::Float32),
            ("qv", DataType::Float32),
        ])
    );
    assert_eq!(
        columns(&sim.nuclei),
        named(&[
            ("cell_id", DataType::Utf8),
            ("vertex_x", DataType::Float32),
            ("vertex_y", DataType::Float32),
        ])
    );
    assert_eq!(
        columns(&sim.truth),
        named(&[
            ("transcript_id", DataType::UInt64),
            ("true_cell_id", DataType::Utf8),
            ("true_cell_type", DataType::Utf8),
        ])
    );
    assert_eq!(
        columns(&sim.cells),
        named(&[
            ("cell_id", DataType::Utf8),
            ("cell_type", DataType::Utf8),
            ("center_x", DataType::Float32),
            ("center_y", DataType::Float32),
            ("radius", DataType::Float32),
            ("nucleus_radius", DataType::Float32),
            ("n_transcripts", DataType::UInt32),
        ])
    );
    assert_eq!(sim.tx.num_rows(), sim.summary.transcripts);
    assert_eq!(sim.nuclei.num_rows(), sim.summary.nucleus_vertices);
    assert_eq!(sim.cells.num_rows(), CELLS);
    for batch in [&sim.tx, &sim.truth, &sim.nuclei, &sim.cells] {
        for col in batch.columns() {
            assert_eq!(col.null_count(), 0);
        }
    }
}

#[test]
fn ground_truth_matches_transcripts_row_for_row() {
    let sim = run(4);
    assert_eq!(sim.truth.num_rows(), sim.tx.num_rows());
    let ids = |b: &RecordBatch| -> Vec<u64> {
        b.column_by_name("transcript_id")
            .expect("column")
            .as_primitive::<UInt64Type>()
            .values()
            .to_vec()
    };
    let tx_ids = ids(&sim.tx);
    assert_eq!(tx_ids, ids(&sim.truth));
    let mut sorted = tx_ids.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), tx_ids.len(), "transcript ids are unique");

    // A transcript generated by a cell lies in that cell (Xenium's cell_id).
    let cell = strings(&sim.tx, "cell_id");
    let true_cell = strings(&sim.truth, "true_cell_id");
    let true_type = strings(&sim.truth, "true_cell_type");
    let genes = strings(&sim.tx, "feature_name");
    let controls = simulate::control_probes();
    for i in 0..cell.len() {
        if true_cell[i] == simulate::BACKGROUND {
            let control = controls.contains(&genes[i]);
            assert_eq!(true_type[i], if control { "control" } else { "background" });
        } else {
            assert_eq!(cell[i], true_cell[i], "row {i}");
        }
    }
    // Per-cell counts add up.
    let counts = sim
        .cells
        .column_by_name("n_transcripts")
        .expect("column")
        .as_primitive::<UInt32Type>()
        .values()
        .iter()
        .map(|&n| n as usize)
        .sum::<usize>();
    assert_eq!(counts, sim.summary.cell_transcripts);
    assert_eq!(
        true_cell
            .iter()
            .filter(|c| *c != simulate::BACKGROUND)
            .count(),
        sim.summary.cell_transcripts
    );
}

#[test]
fn deterministic_in_the_seed() {
    let a = tempfile::tempdir().expect("tempdir");
    let b = tempfile::tempdir().expect("tempdir");
    let c = tempfile::tempdir().expect("tempdir");
    simulate::simulate(a.path(), &options(11)).expect("simulate a");
    simulate::simulate(b.path(), &options(11)).expect("simulate b");
    simulate::simulate(c.path(), &options(12)).expect("simulate c");
    for name in [
        simulate::TRANSCRIPTS_FILE,
        simulate::NUCLEI_FILE,
        simulate::GROUND_TRUTH_FILE,
        simulate::GROUND_TRUTH_CELLS_FILE,
    ] {
        let fa = std::fs::read(a.path().join(name)).expect("read a");
        let fb = std::fs::read(b.path().join(name)).expect("read b");
        let fc = std::fs::read(c.path().join(name)).expect("read c");
        assert!(
            fa == fb,
            "{name} differs between two runs with the same seed"
        );
        assert!(fa != fc, "{name} is the same for different seeds");
    }
    // Only the four files, no temporary leftovers.
    let mut names: Vec<String> = std::fs::read_dir(a.path())
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "ground_truth.parquet",
            "ground_truth_cells.parquet",
            "nucleus_boundaries.parquet",
            "transcripts.parquet"
        ]
    );
}

/// Nucleus rings by cell id, checking Xenium's layout on the way: rows of a
/// cell contiguous, cells in id order, every ring closed.
fn nucleus_rings(sim: &Sim) -> Vec<(String, Vec<[f32; 2]>)> {
    let ids = strings(&sim.nuclei, "cell_id");
    let vx = f32s(&sim.nuclei, "vertex_x");
    let vy = f32s(&sim.nuclei, "vertex_y");
    let mut rings: Vec<(String, Vec<[f32; 2]>)> = Vec::new();
    for i in 0..ids.len() {
        match rings.last_mut() {
            Some((id, ring)) if *id == ids[i] => ring.push([vx[i], vy[i]]),
            _ => rings.push((ids[i].clone(), vec![[vx[i], vy[i]]])),
        }
    }
    let mut seen: Vec<&String> = rings.iter().map(|r| &r.0).collect();
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "cells sorted, contiguous"
    );
    seen.dedup();
    assert_eq!(seen.len(), CELLS);
    for (id, ring) in &rings {
        assert_eq!(ring.first(), ring.last(), "{id}: ring not closed");
        assert!(
            (17..=41).contains(&ring.len()),
            "{id}: {} rows (16–40 vertices + closing)",
            ring.len()
        );
    }
    rings
}

#[test]
fn nuclei_lie_inside_their_cells() {
    let sim = run(5);
    let rings = nucleus_rings(&sim);
    let ids = strings(&sim.cells, "cell_id");
    let cx = f32s(&sim.cells, "center_x");
    let cy = f32s(&sim.cells, "center_y");
    let radius = f32s(&sim.cells, "radius");
    let nucleus_radius = f32s(&sim.cells, "nucleus_radius");
    assert_eq!(ids, rings.iter().map(|r| r.0.clone()).collect::<Vec<_>>());
    for (k, (id, ring)) in rings.iter().enumerate() {
        assert!(nucleus_radius[k] < radius[k], "{id}");
        assert!(
            (5.0..=11.0).contains(&radius[k]),
            "{id}: radius {}",
            radius[k]
        );
        for v in ring {
            let d = (v[0] - cx[k]).hypot(v[1] - cy[k]);
            assert!(d <= nucleus_radius[k], "{id}: vertex at {d} µm");
            assert!(d <= radius[k], "{id}: vertex at {d} µm beyond the cell");
            // Closer to its own centre than to any other (own Voronoi region).
            for o in 0..ids.len() {
                if o != k {
                    let other = (v[0] - cx[o]).hypot(v[1] - cy[o]);
                    assert!(other > d, "{id}: vertex nearer cell {}", ids[o]);
                }
            }
        }
        let polygon = Polygon::new(
            LineString::from(
                ring.iter()
                    .map(|v| (f64::from(v[0]), f64::from(v[1])))
                    .collect::<Vec<_>>(),
            ),
            vec![],
        );
        assert!(
            polygon.contains(&Point::new(f64::from(cx[k]), f64::from(cy[k]))),
            "{id}: the nucleus does not cover the cell centre"
        );
    }
}

#[test]
fn nuclear_flag_matches_the_polygons() {
    let sim = run(6);
    let polygons: HashMap<String, Polygon<f64>> = nucleus_rings(&sim)
        .into_iter()
        .map(|(id, ring)| {
            let coords: Vec<(f64, f64)> = ring
                .iter()
                .map(|v| (f64::from(v[0]), f64::from(v[1])))
                .collect();
            (id, Polygon::new(LineString::from(coords), vec![]))
        })
        .collect();
    let cell = strings(&sim.tx, "cell_id");
    let x = f32s(&sim.tx, "x_location");
    let y = f32s(&sim.tx, "y_location");
    let z = f32s(&sim.tx, "z_location");
    let flag = sim
        .tx
        .column_by_name("overlaps_nucleus")
        .expect("column")
        .as_primitive::<UInt8Type>()
        .values()
        .to_vec();
    let (mut nuclear, mut checked) = (0, 0);
    // Every nuclear row, and every 7th row otherwise.
    for i in 0..cell.len() {
        assert!((0.0..=10.0).contains(&z[i]), "z {}", z[i]);
        assert!(flag[i] <= 1);
        if flag[i] == 0 && i % 7 != 0 {
            continue;
        }
        checked += 1;
        let p = Point::new(f64::from(x[i]), f64::from(y[i]));
        if flag[i] == 1 {
            nuclear += 1;
            let poly = polygons
                .get(&cell[i])
                .unwrap_or_else(|| panic!("row {i}: nuclear with cell_id {}", cell[i]));
            assert!(poly.contains(&p), "row {i}: flagged nuclear, outside");
        } else {
            for (id, poly) in &polygons {
                assert!(
                    !poly.contains(&p),
                    "row {i}: inside nucleus {id}, not flagged"
                );
            }
        }
    }
    assert_eq!(nuclear, sim.summary.nuclear);
    assert!(checked > 5000);
    // Transcripts spread over the whole cell: a good share is cytoplasmic.
    let fraction = nuclear as f64 / sim.summary.cell_transcripts as f64;
    assert!(
        (0.2..0.6).contains(&fraction),
        "nuclear fraction {fraction}"
    );
}

#[test]
fn noise_fractions_as_configured() {
    let sim = run(7);
    let n = sim.tx.num_rows() as f64;
    let qv = f32s(&sim.tx, "qv");
    let genes = strings(&sim.tx, "feature_name");
    let true_cell = strings(&sim.truth, "true_cell_id");
    let panel = simulate::gene_panel();
    let controls = simulate::control_probes();
    let low = qv.iter().filter(|&&q| q < 20.0).count() as f64 / n;
    assert!(qv.iter().all(|&q| (0.0..=40.0).contains(&q)));
    let control = genes.iter().filter(|g| controls.contains(g)).count() as f64 / n;
    let noise = true_cell
        .iter()
        .filter(|c| *c == simulate::BACKGROUND)
        .count() as f64
        / n;
    assert!((0.04..0.06).contains(&low), "qv<20 fraction {low}");
    assert!(
        (0.006..0.014).contains(&control),
        "control fraction {control}"
    );
    assert!(
        (0.05..0.07).contains(&noise),
        "noise fraction {noise} (background + control)"
    );
    let per_cell = n / CELLS as f64;
    assert!(
        (130.0..170.0).contains(&per_cell),
        "{per_cell} transcripts per cell"
    );
    for g in &genes {
        assert!(
            panel.binary_search(g).is_ok() || controls.contains(g),
            "unknown gene {g}"
        );
    }
    assert_eq!(
        sim.summary.low_quality,
        qv.iter().filter(|&&q| q < 20.0).count()
    );
}

#[test]
fn gene_panel_is_sorted_and_control_free() {
    let panel = simulate::gene_panel();
    assert_eq!(panel.len(), 300);
    assert!(panel.windows(2).all(|w| w[0] < w[1]));
    let prefixes = [
        "NegControlProbe_",
        "antisense_",
        "NegControlCodeword",
        "BLANK_",
        "DeprecatedCodeword_",
        "UnassignedCodeword_",
        "Intergenic_",
    ];
    assert!(panel
        .iter()
        .all(|g| prefixes.iter().all(|p| !g.starts_with(p))));
    for c in simulate::control_probes() {
        assert!(prefixes.iter().any(|p| c.starts_with(p)), "{c}");
    }
    assert_eq!(simulate::xenium_cell_id(0), "aaaaaaaa-1");
    assert_eq!(simulate::xenium_cell_id(0x1f), "aaaaaabp-1");
}

#[test]
fn clear_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("a_file");
    std::fs::write(&file, b"x").expect("write");
    let err = simulate::simulate(&file.join("out"), &options(1)).expect_err("under a file");
    assert!(
        format!("{err:#}").contains("cannot create output directory"),
        "{err:#}"
    );
    let zero = SimulateOptions {
        cells: 0,
        ..Default::default()
    };
    let err = simulate::simulate(&dir.path().join("z"), &zero).expect_err("zero cells");
    assert!(format!("{err:#}").contains("--cells"), "{err:#}");
}
