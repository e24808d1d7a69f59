//! Reading real vendor files from `tests/data/` (see its README): the
//! SpatialData Xenium crop, the MERSCOPE mini crop and the schema samples.
//! A missing file fails its test.

use arrow::array::{Array, AsArray};
use arrow::datatypes::DataType;
use geo::{BoundingRect, Contains};
use seggpu::io::{read_nuclei, read_transcripts, FilterReason, InputArgs, Preset, TranscriptKey};
use seggpu::model::BdFeatureMode;

use crate::common::{assert_close, data_path};

/// Smallest and largest value.
fn extent(values: &[f64]) -> (f64, f64) {
    values
        .iter()
        .fold((f64::MAX, f64::MIN), |a, &v| (a.0.min(v), a.1.max(v)))
}

fn names(t: &seggpu::io::Transcripts) -> Vec<&str> {
    t.passthrough.iter().map(|(n, _)| n.as_str()).collect()
}

fn count(t: &seggpu::io::Transcripts, r: FilterReason) -> usize {
    t.filter.iter().filter(|f| **f == Some(r)).count()
}

#[test]
fn io_spatialdata_points_and_geoparquet_nuclei() {
    // No --preset: detected from the columns (x, y → spatialdata).
    let args = InputArgs {
        transcripts: Some(data_path("xenium_breast_spatialdata/points.parquet")),
        boundaries: Some(data_path(
            "xenium_breast_spatialdata/sd_nucleus_boundaries.parquet",
        )),
        ..InputArgs::default()
    };
    let spec = args.resolve().unwrap();
    assert_eq!(spec.preset, Preset::Spatialdata);
    let t = read_transcripts(&spec).unwrap();
    let n = t.x.len();
    assert_eq!(n, 23_691);
    assert_eq!(t.gene_names.len(), 354, "distinct genes used");
    assert!(t.gene_names.windows(2).all(|w| w[0] < w[1]), "sorted");
    assert_eq!(names(&t), ["transcript_id", "x", "y", "z", "gene", "qv"]);
    assert_eq!(t.passthrough[0].1.data_type(), &DataType::UInt64);
    assert_eq!(t.passthrough[1].1.data_type(), &DataType::Float32);
    assert_eq!(t.passthrough[4].1.data_type(), &DataType::Utf8);
    let genes = t.passthrough[4].1.as_string::<i32>();
    for row in [0, 1, n / 2, n - 1] {
        assert_eq!(genes.value(row), t.gene_names[t.gene[row] as usize]);
    }
    assert!(matches!(t.id_key[0], TranscriptKey::U64(281612415808177)));
    let ((xmin, xmax), (ymin, ymax)) = (extent(&t.x), extent(&t.y));
    assert!(xmin >= 1519.0 && xmax <= 1712.0, "x {xmin}..{xmax}");
    assert!(ymin >= 2749.0 && ymax <= 2913.0, "y {ymin}..{ymax}");
    let flags = t.nuclear_cell.as_ref().expect("overlaps_nucleus + cell_id");
    let nuclear = flags.iter().filter(|f| f.is_some()).count();
    let (qv, control, bad) = (
        count(&t, FilterReason::Qv),
        count(&t, FilterReason::Control),
        count(&t, FilterReason::BadCoordinates),
    );
    println!(
        "spatialdata: {n} rows, {nuclear} nuclear, filtered qv {qv}, control {control}, bad {bad}"
    );
    assert!(nuclear > 1000 && nuclear < n);
    assert!(qv > 0 && control > 0);
    assert_eq!(bad, 0);
    // Control rows are exactly the rows of control genes.
    for (row, f) in t.filter.iter().enumerate() {
        let g = &t.gene_names[t.gene[row] as usize];
        let is_control = seggpu::io::args::XENIUM_CONTROLS
            .iter()
            .any(|p| g.starts_with(p));
        assert_eq!(is_control, *f == Some(FilterReason::Control), "{g}");
    }

    let nuclei = read_nuclei(&spec, BdFeatureMode::Props).unwrap();
    println!(
        "spatialdata nuclei: {} kept, {} skipped {:?}; notes {:?}",
        nuclei.ids.len(),
        nuclei.skipped.len(),
        nuclei.skipped,
        nuclei.notes
    );
    assert_eq!(nuclei.ids.len() + nuclei.skipped.len(), 132);
    assert_eq!(nuclei.ids.len(), 132);
    assert!(nuclei
        .ids
        .iter()
        .zip(nuclei.ids.iter().skip(1))
        .all(|(a, b)| a < b));
    assert!(nuclei.ids.iter().any(|i| i == "4613"));
    for (p, (c, f)) in nuclei
        .polygons
        .iter()
        .zip(nuclei.centroid.iter().zip(&nuclei.features))
    {
        assert!(f[0] > 1.0 && f[0] < 500.0, "area {}", f[0]);
        assert!(f[1] >= 1.0 - 1e-5, "convexity {}", f[1]);
        assert!(f[2] > 0.0 && f[2] <= 1.0 + 1e-5, "elongation {}", f[2]);
        assert!(
            f[3] > 0.5 && f[3] <= std::f32::consts::PI + 1e-3,
            "circularity {}",
            f[3]
        );
        let r = p.bounding_rect().unwrap();
        assert!(c[0] > r.min().x && c[0] < r.max().x && c[1] > r.min().y && c[1] < r.max().y);
    }
    // The nuclear flag's cell ids name these nuclei.
    let ids: std::collections::HashSet<&str> = nuclei.ids.iter().collect();
    let matched = flags
        .iter()
        .flatten()
        .filter(|c| ids.contains(c.as_str()))
        .count();
    println!("nuclear transcripts whose cell id is a nucleus: {matched} of {nuclear}");
    assert!(matched * 10 >= nuclear * 9);

    let zeros = read_nuclei(&spec, BdFeatureMode::Zeros).unwrap();
    assert!(zeros.features.iter().all(|f| *f == [0.0; 4]));
    assert_eq!(zeros.centroid, nuclei.centroid);
}

#[test]
fn io_merscope_mini_gzip_csv_and_vertex_table() {
    let args = InputArgs {
        transcripts: Some(data_path("merscope_mouse_brain_mini/vizgen_transcripts.gz")),
        boundaries: Some(data_path("merscope_mouse_brain_mini/z0_polygons.gz")),
        boundary_y_scale: -1.0,
        ..InputArgs::default()
    };
    let spec = args.resolve().unwrap();
    assert_eq!(spec.preset, Preset::Merscope);
    let t = read_transcripts(&spec).unwrap();
    let n = t.x.len();
    assert_eq!(n, 80_343);
    // No id column: the row index, also as a UInt64 transcript_id.
    assert_eq!(names(&t), ["transcript_id", "x", "y", "z", "gene"]);
    let ids = t.passthrough[0]
        .1
        .as_primitive::<arrow::datatypes::UInt64Type>();
    assert_eq!((ids.value(0), ids.value(n - 1)), (0, n as u64 - 1));
    assert!(matches!(t.id_key[n - 1], TranscriptKey::U64(v) if v == n as u64 - 1));
    assert!(t.nuclear_cell.is_none(), "no flag: point-in-polygon");
    assert_close("first x", t.x[0], 6400.037, 1e-9);
    assert_close("first y", t.y[0], 4966.6514, 1e-9);
    assert!(t.z.iter().all(|&z| z == 0.0 || z == 1.0));
    let blanks = count(&t, FilterReason::Control);
    println!(
        "merscope: {n} rows, {} genes, {blanks} blank codewords",
        t.gene_names.len()
    );
    assert_eq!(count(&t, FilterReason::Qv), 0);

    let nuclei = read_nuclei(&spec, BdFeatureMode::Props).unwrap();
    println!(
        "merscope polygons: {} kept, {} skipped {:?}; notes {:?}",
        nuclei.ids.len(),
        nuclei.skipped.len(),
        nuclei.skipped.iter().take(5).collect::<Vec<_>>(),
        nuclei.notes
    );
    assert_eq!(nuclei.ids.len() + nuclei.skipped.len(), 498);
    assert!(nuclei
        .ids
        .iter()
        .any(|i| i == "40951783403982682273285375368232495429"));
    // After y × -1 the polygons lie over the transcripts.
    let ((txmin, txmax), (tymin, tymax)) = (extent(&t.x), extent(&t.y));
    let inside_extent = nuclei
        .centroid
        .iter()
        .filter(|c| c[0] >= txmin && c[0] <= txmax && c[1] >= tymin && c[1] <= tymax)
        .count();
    println!(
        "{inside_extent} of {} polygon centroids inside the transcripts' extent",
        nuclei.ids.len()
    );
    assert!(inside_extent * 10 >= nuclei.ids.len() * 9);
    let sample: Vec<usize> = (0..n).step_by(97).collect();
    let in_cell = sample
        .iter()
        .filter(|&&i| {
            let p = geo::Point::new(t.x[i], t.y[i]);
            nuclei.polygons.iter().any(|poly| poly.contains(&p))
        })
        .count();
    println!(
        "{in_cell} of {} sampled transcripts inside a polygon",
        sample.len()
    );
    assert!(
        in_cell * 4 >= sample.len(),
        "cell polygons should hold many transcripts"
    );

    // Without the flip they do not.
    let flipped = InputArgs {
        boundary_y_scale: 1.0,
        ..args.clone()
    };
    let raw = read_nuclei(&flipped.resolve().unwrap(), BdFeatureMode::Props).unwrap();
    assert!(raw.centroid.iter().all(|c| c[1] < 0.0));
}

#[test]
fn io_schema_sample_xenium_float_ids_int_cells() {
    let args = InputArgs {
        preset: Some(Preset::Xenium),
        transcripts: Some(data_path("schema_samples/Xenium_small_transcripts.parquet")),
        boundaries: Some(data_path(
            "schema_samples/Xenium_small_nucleus_boundaries.parquet",
        )),
        ..InputArgs::default()
    };
    let spec = args.resolve().unwrap();
    let t = read_transcripts(&spec).unwrap();
    assert_eq!(t.x.len(), 3);
    assert_eq!(t.passthrough[0].1.data_type(), &DataType::Float64);
    assert!(matches!(t.id_key[0], TranscriptKey::F64(v) if v == 281496451678609.0));
    assert_eq!(t.id_key[0].to_string(), "281496451678609");
    assert_eq!(t.gene_names, ["ACTG2"]);
    // overlaps_nucleus (int32) is 0 on all three rows.
    assert_eq!(t.nuclear_cell.as_ref().unwrap(), &vec![None, None, None]);
    // qv 19.85, 19.89, 40 with qv ≥ 20.
    assert_eq!(
        t.filter,
        [Some(FilterReason::Qv), Some(FilterReason::Qv), None]
    );

    let nuclei = read_nuclei(&spec, BdFeatureMode::Props).unwrap();
    println!(
        "xenium schema nuclei: {:?}, skipped {:?}, notes {:?}",
        nuclei.ids, nuclei.skipped, nuclei.notes
    );
    assert!(!nuclei.ids.is_empty());
    assert!(
        nuclei.ids.iter().all(|i| i.parse::<i32>().is_ok()),
        "int32 ids as text"
    );
    assert!(nuclei
        .ids
        .iter()
        .zip(nuclei.ids.iter().skip(1))
        .all(|(a, b)| a < b));
    for f in &nuclei.features {
        assert!(f[0] > 5.0 && f[0] < 200.0);
    }

    // A Xenium folder layout is not what these files are named like.
    let err = InputArgs {
        xenium: Some(data_path("schema_samples")),
        ..InputArgs::default()
    }
    .resolve()
    .unwrap_err();
    assert!(
        format!("{err:#}").contains("transcripts.parquet"),
        "{err:#}"
    );
}

#[test]
fn io_schema_sample_cosmx_pixels_to_microns() {
    let args = InputArgs {
        transcripts: Some(data_path(
            "schema_samples/CosMx_small_lung_p9s1_tx_file.parquet",
        )),
        // No CosMx polygons among the samples: any existing file will do
        // for resolve; the transcripts are what this test reads.
        boundaries: Some(data_path(
            "schema_samples/Xenium_small_nucleus_boundaries.parquet",
        )),
        ..InputArgs::default()
    };
    let spec = args.resolve().unwrap();
    assert_eq!(spec.preset, Preset::Cosmx);
    assert_eq!(spec.pixel_size, Some(0.12028));
    let t = read_transcripts(&spec).unwrap();
    assert_eq!(t.x.len(), 1);
    assert_close("x in µm", t.x[0], 8175.60255555556 * 0.12028, 1e-9);
    assert_close("y in µm", t.y[0], 147675.543790556 * 0.12028, 1e-6);
    assert_eq!(t.z[0], 5.0, "z is the slice index");
    assert_eq!(t.gene_names, ["ACE2"]);
    // CellComp = Cytoplasm: not nuclear.
    assert_eq!(t.nuclear_cell.as_ref().unwrap(), &vec![None]);
    assert_eq!(
        names(&t),
        [
            "transcript_id",
            "x",
            "y",
            "z",
            "gene",
            "x_global_px",
            "y_global_px"
        ]
    );
    // x, y in µm like every output position; the pixel columns and z as
    // read: pixels, int32 z.
    let x = t.passthrough[1]
        .1
        .as_primitive::<arrow::datatypes::Float64Type>();
    assert_close(
        "x column in µm",
        x.value(0),
        8175.60255555556 * 0.12028,
        1e-9,
    );
    let x_px = t.passthrough[5]
        .1
        .as_primitive::<arrow::datatypes::Float64Type>();
    assert_eq!(x_px.value(0), 8175.60255555556);
    assert_eq!(t.passthrough[3].1.data_type(), &DataType::Int32);

    // --pixel-size and --z-scale.
    let spec = InputArgs {
        pixel_size: Some(0.18),
        z_scale: 0.8,
        ..args
    }
    .resolve()
    .unwrap();
    let t = read_transcripts(&spec).unwrap();
    assert_close(
        "x at --pixel-size 0.18",
        t.x[0],
        8175.60255555556 * 0.18,
        1e-9,
    );
    assert_close("z at --z-scale 0.8", t.z[0], 4.0, 1e-12);
}
