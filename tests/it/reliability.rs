//! Bad input that used to pass silently, hang or leave partial outputs:
//! repeated transcript ids, scattered vertex rows, cell ids that match the
//! nuclei only after normalising and ones that never match, transcripts far
//! from the rest, concurrent and interrupted runs, a full disk.

use std::path::{Path, PathBuf};
use std::process::Output;

use seggpu::io::{check_membership, read_nuclei, read_transcripts, Preset};
use seggpu::model::BdFeatureMode;

#[cfg(unix)]
use crate::common::seggpu_with_file_limit;
use crate::common::{assert_success, demo_model, input_spec, seggpu, simulated_xenium, write_file};

#[test]
fn a_repeated_transcript_id_is_an_error_naming_it_and_its_rows() {
    let dir = tempfile::tempdir().unwrap();
    let tx = write_file(
        dir.path(),
        "t.csv",
        "transcript_id,x_location,y_location,feature_name\n7,1,1,A\n9,2,2,A\n7,3,3,A\n",
    );
    let bd = crate::common::one_nucleus_csv(dir.path());
    let spec = input_spec(Preset::Xenium, &tx, &bd);
    let e = format!("{:#}", read_transcripts(&spec).unwrap_err());
    for part in ["transcript_id", "id 7 appears more than once", "rows 1, 3"] {
        assert!(e.contains(part), "{part}: {e}");
    }
}

#[test]
fn vertex_rows_of_a_nucleus_need_not_be_contiguous() {
    let dir = tempfile::tempdir().unwrap();
    let tx = crate::common::one_transcript_csv(dir.path());
    let bd = write_file(
        dir.path(),
        "nuclei.csv",
        "cell_id,vertex_x,vertex_y\na,0,0\nb,10,0\na,2,0\nb,12,0\na,2,2\nb,12,2\na,0,2\n",
    );
    let spec = input_spec(Preset::Xenium, &tx, &bd);
    let n = read_nuclei(&spec, BdFeatureMode::Props).unwrap();
    assert_eq!(n.ids, ["a", "b"]);
    assert!(n.skipped.is_empty(), "{:?}", n.skipped);
    assert_eq!(n.features[0][0], 4.0, "a is the 2 × 2 square");
    assert_eq!(n.features[1][0], 2.0, "b is a triangle of area 2");
    assert_eq!(n.altered.len(), 2, "{:?}", n.altered);
}

#[test]
fn cell_ids_match_as_numbers_and_never_matching_ids_are_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let bd = write_file(
        dir.path(),
        "polygons.csv",
        "fov,cellID,x_global_px,y_global_px\n1,12,0,0\n1,12,4,0\n1,12,4,4\n1,12,0,4\n",
    );
    // `12.0` (a float export) and `nuclear` in lower case still match.
    let tx = write_file(
        dir.path(),
        "tx.csv",
        "fov,cell_ID,CellComp,x_global_px,y_global_px,target\n\
         1,12.0,nuclear,1,1,A\n1,12,Nuclear,2,2,A\n1,0,None,9,9,A\n1,13,Nuclear,3,3,A\n",
    );
    let spec = input_spec(Preset::Cosmx, &tx, &bd);
    let mut t = read_transcripts(&spec).unwrap();
    let n = read_nuclei(&spec, BdFeatureMode::Props).unwrap();
    assert_eq!(n.ids, ["1_12"]);
    let report = check_membership(&mut t, &n, &spec).unwrap();
    assert_eq!((report.flagged, report.unmatched), (3, 1));
    assert_eq!(report.unmatched_examples, ["1_13"]);

    let tx = write_file(
        dir.path(),
        "tx2.csv",
        "fov,cell_ID,CellComp,x_global_px,y_global_px,target\n2,5,Nuclear,1,1,A\n",
    );
    let spec = input_spec(Preset::Cosmx, &tx, &bd);
    let mut t = read_transcripts(&spec).unwrap();
    let e = format!("{:#}", check_membership(&mut t, &n, &spec).unwrap_err());
    for part in ["`cell_ID`", "`cellID`", "`2_5`", "`1_12`"] {
        assert!(e.contains(part), "{part}: {e}");
    }

    // A flag column that never says nuclear: point-in-polygon instead.
    let tx = write_file(
        dir.path(),
        "tx3.csv",
        "fov,cell_ID,CellComp,x_global_px,y_global_px,target\n1,12,Cytoplasm,1,1,A\n",
    );
    let spec = input_spec(Preset::Cosmx, &tx, &bd);
    let mut t = read_transcripts(&spec).unwrap();
    let report = check_membership(&mut t, &n, &spec).unwrap();
    assert_eq!(report.source, "point_in_polygon");
    assert!(t.nuclear_cell.is_none());
}

/// The three outputs of `seggpu segment`.
const OUTPUTS: [&str; 3] = [
    "segger_transcripts.parquet",
    "cells.parquet",
    "segmentation_log.json",
];

/// `seggpu segment` of a simulated Xenium folder on the CPU, quietly.
fn segment(input: &Path, model: &Path, out: &Path, extra: &[&str]) -> Output {
    seggpu()
        .args(["segment", "--preset", "xenium", "--transcripts"])
        .arg(input.join("transcripts.parquet"))
        .arg("--boundaries")
        .arg(input.join("nucleus_boundaries.parquet"))
        .arg("--model")
        .arg(model)
        .arg("--out")
        .arg(out)
        .args(["--backend", "cpu", "--quiet"])
        .args(extra)
        .output()
        .expect("run seggpu")
}

/// The entries of folder `dir`, sorted (empty when it does not exist).
fn entries(dir: &Path) -> Vec<String> {
    let Ok(read) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = read
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Copies the simulated `transcripts.parquet` of `input` into `dir` with
/// two more rows, copies of a kept non-nuclear row moved to (1e8, y) and
/// (1e8, 1e8) µm; returns the new folder.
fn with_far_transcripts(input: &Path, dir: &Path, kept_row: usize) -> PathBuf {
    use arrow::array::{ArrayRef, Float32Array, RecordBatch, UInt64Array};
    use arrow::compute::concat_batches;
    use std::sync::Arc;

    use crate::common::tables::{read_parquet, transcript_ids, write_batch};

    let batch = read_parquet(&input.join("transcripts.parquet"));
    let n = batch.num_rows();
    let row = batch.slice(kept_row, 1);
    let grown = concat_batches(&batch.schema(), [&batch, &row, &row]).unwrap();
    let mut columns: Vec<ArrayRef> = grown.columns().to_vec();
    let schema = grown.schema();
    let index = |name: &str| schema.index_of(name).unwrap();
    let next = transcript_ids(&batch).into_iter().max().unwrap() + 1;
    let mut ids = transcript_ids(&grown);
    ids[n] = next;
    ids[n + 1] = next + 1;
    columns[index("transcript_id")] = Arc::new(UInt64Array::from(ids));
    for (name, far) in [("x_location", [1e8, 1e8]), ("y_location", [f32::NAN, 1e8])] {
        let mut values: Vec<f32> =
            crate::common::tables::primitives::<arrow::datatypes::Float32Type>(&grown, name);
        for (k, v) in far.into_iter().enumerate() {
            if !v.is_nan() {
                values[n + k] = v;
            }
        }
        columns[index(name)] = Arc::new(Float32Array::from(values));
    }
    let out = dir.join("far");
    std::fs::create_dir_all(&out).unwrap();
    write_batch(
        &out.join("transcripts.parquet"),
        &RecordBatch::try_new(schema.clone(), columns).unwrap(),
    );
    std::fs::copy(
        input.join("nucleus_boundaries.parquet"),
        out.join("nucleus_boundaries.parquet"),
    )
    .unwrap();
    out
}

#[test]
fn transcripts_far_from_the_rest_add_a_tile_each_and_change_no_result() {
    use crate::common::tables::{read_parquet, strings};

    let tmp = tempfile::tempdir().unwrap();
    let input = simulated_xenium(tmp.path(), "input", 20);
    let base_out = tmp.path().join("base");
    assert_success(&segment(
        &input,
        &demo_model(),
        &base_out,
        &["--tile-size", "20"],
    ));
    let base = read_parquet(&base_out.join(OUTPUTS[0]));
    let assignment = strings(&base, "assignment");
    let overlaps = strings(
        &read_parquet(&input.join("transcripts.parquet")),
        "overlaps_nucleus",
    );
    let kept_row = (0..base.num_rows())
        .find(|&r| assignment[r] == "unassigned" && overlaps[r] == "0")
        .expect("the simulated sample has an unassigned non-nuclear transcript");

    // Along x alone the dense grid had 5·10^6 mostly empty tiles; along x
    // and y 2.5·10^13, which stopped the run.
    let far = with_far_transcripts(&input, tmp.path(), kept_row);
    let far_out = tmp.path().join("far_out");
    assert_success(&segment(
        &far,
        &demo_model(),
        &far_out,
        &["--tile-size", "20"],
    ));
    let result = read_parquet(&far_out.join(OUTPUTS[0]));
    let n = base.num_rows();
    assert_eq!(result.num_rows(), n + 2);
    // As text, nulls (no score) included.
    let texts = |batch: &arrow::array::RecordBatch, name: &str| {
        let column = batch.column_by_name(name).unwrap();
        let text = arrow::compute::cast(column, &arrow::datatypes::DataType::Utf8).unwrap();
        use arrow::array::AsArray;
        text.as_string::<i32>()
            .iter()
            .map(|v| v.map(str::to_owned))
            .collect::<Vec<_>>()
    };
    for column in ["segger_cell_id", "assignment", "score"] {
        let (before, after) = (texts(&base, column), texts(&result.slice(0, n), column));
        let differ = (0..n).filter(|&r| before[r] != after[r]).count();
        assert_eq!(differ, 0, "{column}: {differ} rows differ");
    }
    assert_eq!(
        strings(&result.slice(n, 2), "assignment"),
        ["unassigned", "unassigned"]
    );
    let tiles = |out: &Path| {
        let log: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join(OUTPUTS[2])).unwrap()).unwrap();
        log["result"]["tiles"]["count"]
            .as_u64()
            .unwrap_or_else(|| panic!("no result.tiles.count in {log}"))
    };
    let base_tiles = tiles(&base_out);
    assert!(
        base_tiles > 4,
        "the sample should span several tiles: {base_tiles}"
    );
    assert_eq!(tiles(&far_out), base_tiles + 2);
}

/// A `seggpu segment` run that waits after taking its output folder: its
/// `--model` is a FIFO nobody writes to, so reading the model blocks. The
/// process is killed when this is dropped (a failing test leaves none).
#[cfg(unix)]
struct BlockedRun {
    child: std::process::Child,
    out: PathBuf,
}

#[cfg(unix)]
impl BlockedRun {
    /// Starts the run into `out` and returns once it holds the folder (its
    /// staging folder exists).
    fn start(input: &Path, out: &Path, tmp: &Path) -> Self {
        let fifo = tmp.join("model.fifo");
        if !fifo.exists() {
            let made = std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .expect("run mkfifo");
            assert!(made.success(), "mkfifo {}", fifo.display());
        }
        let child = seggpu()
            .args(["segment", "--xenium"])
            .arg(input)
            .arg("--model")
            .arg(&fifo)
            .arg("--out")
            .arg(out)
            .args(["--backend", "cpu", "--quiet"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start seggpu");
        let mut run = Self {
            child,
            out: out.to_path_buf(),
        };
        // Not a timing assertion: a generous bound so that a run that never
        // gets there fails the test instead of hanging it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        while !run.staging().exists() {
            if let Some(status) = run.child.try_wait().unwrap() {
                let mut stderr = String::new();
                use std::io::Read;
                run.child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut stderr)
                    .unwrap();
                panic!("the blocked run ended early ({status}): {stderr}");
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{} never appeared",
                run.staging().display()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        run
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// This run's staging folder.
    fn staging(&self) -> PathBuf {
        self.out.join(format!(".seggpu-partial-{}", self.pid()))
    }

    /// Sends `signal` (`TERM`, `KILL`) and returns the exit status.
    fn signal(mut self, signal: &str) -> std::process::ExitStatus {
        let sent = std::process::Command::new("kill")
            .args([format!("-{signal}"), self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success());
        self.child.wait().unwrap()
    }
}

#[cfg(unix)]
impl Drop for BlockedRun {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(unix)]
#[test]
fn a_second_run_into_the_same_folder_is_refused_and_sigterm_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let input = simulated_xenium(tmp.path(), "input", 10);
    let out = tmp.path().join("out");
    let first = BlockedRun::start(&input, &out, tmp.path());

    let second = segment(&input, &demo_model(), &out, &[]);
    let stderr = String::from_utf8_lossy(&second.stderr);
    println!("{stderr}");
    assert_eq!(second.status.code(), Some(1), "{stderr}");
    for part in [
        "is in use by another seggpu run",
        &format!("(process {})", first.pid()),
        &out.display().to_string(),
    ] {
        assert!(stderr.contains(part), "{part}: {stderr}");
    }
    for name in OUTPUTS {
        assert!(!out.join(name).exists(), "{name}");
    }

    // SIGTERM: exit status 130, the staging folder removed at once, and the
    // folder the run created removed with it.
    let staging = first.staging();
    let status = first.signal("TERM");
    assert_eq!(status.code(), Some(130), "{status}");
    assert!(!staging.exists(), "{} left behind", staging.display());
    assert!(
        entries(&out).is_empty(),
        "left in the output folder: {:?}",
        entries(&out)
    );
}

#[cfg(unix)]
#[test]
fn staging_of_a_killed_run_is_removed_by_the_next_run() {
    let tmp = tempfile::tempdir().unwrap();
    let input = simulated_xenium(tmp.path(), "input", 10);
    let out = tmp.path().join("out");
    let killed = BlockedRun::start(&input, &out, tmp.path());
    let staging = killed.staging();
    // SIGKILL cannot be caught: the staging folder stays behind.
    let status = killed.signal("KILL");
    assert_eq!(status.code(), None, "{status}");
    assert!(staging.exists());

    assert_success(&segment(&input, &demo_model(), &out, &[]));
    assert!(!staging.exists(), "{} left behind", staging.display());
    // Every output of a default run, and the lock.
    let mut expected: Vec<String> = [
        "segger_transcripts.parquet",
        "cells.parquet",
        "segmentation_log.json",
        "segmentation_report.html",
        "cell_boundaries.parquet",
        "cell_boundaries.geojson",
        "cells.h5ad",
        "cells.anndata.zarr",
        "segmentation.zarr",
        ".seggpu.lock",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    expected.sort();
    assert_eq!(entries(&out), expected);
}

#[cfg(unix)]
#[test]
fn a_write_that_fails_for_lack_of_space_names_the_file_and_leaves_nothing() {
    use seggpu::output::{self, CellRow, OutputDir};

    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let mut dir = OutputDir::create(&out).unwrap();
    let staged = dir.staged(output::CELLS_FILE).unwrap();
    // Every write to /dev/full fails with ENOSPC, as on a full disk.
    std::os::unix::fs::symlink("/dev/full", &staged).unwrap();
    let rows: Vec<CellRow> = (0..1000)
        .map(|i| CellRow {
            id: format!("cell{i}"),
            kind: "cell",
            n_transcripts: 3,
            centroid_x: Some(1.0),
            centroid_y: Some(2.0),
            nucleus_area: Some(4.0),
        })
        .collect();
    let e = output::write_cells(&staged, &rows, output::TableFormat::Parquet)
        .expect_err("a write to /dev/full fails");
    // As the command line prints it: the OS error once.
    let e = seggpu::cli::error_text(&e);
    println!("{e}");
    assert!(e.contains(output::CELLS_FILE), "{e}");
    assert_eq!(e.matches("No space left on device").count(), 1, "{e}");
    drop(dir);
    assert!(!out.exists(), "left: {:?}", entries(&out));
}

#[cfg(unix)]
#[test]
fn a_run_whose_outputs_cannot_be_written_fails_naming_the_file_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let input = simulated_xenium(tmp.path(), "input", 10);
    let out = tmp.path().join("out");
    let run = seggpu_with_file_limit(16)
        .args(["segment", "--xenium"])
        .arg(&input)
        .arg("--model")
        .arg(demo_model())
        .arg("--out")
        .arg(&out)
        .args(["--backend", "cpu", "--quiet"])
        .output()
        .expect("run seggpu under a file size limit");
    let stderr = String::from_utf8_lossy(&run.stderr);
    println!("{stderr}");
    assert_eq!(run.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("File too large"), "{stderr}");
    assert!(
        OUTPUTS.iter().any(|name| stderr.contains(name)),
        "the error should name the output: {stderr}"
    );
    assert!(!out.exists(), "left: {:?}", entries(&out));
}
