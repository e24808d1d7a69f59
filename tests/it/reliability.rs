//! Bad input that used to pass silently: repeated transcript ids, scattered
//! vertex rows, cell ids that match the nuclei only after normalising, and
//! ones that never match.

use seggpu::io::{check_membership, read_nuclei, read_transcripts, InputArgs, Preset};
use seggpu::model::BdFeatureMode;

use crate::common::write_file;

fn cosmx(tx: &std::path::Path, bd: &std::path::Path) -> InputArgs {
    InputArgs {
        preset: Some(Preset::Cosmx),
        transcripts: Some(tx.to_path_buf()),
        boundaries: Some(bd.to_path_buf()),
        pixel_size: Some(1.0),
        ..InputArgs::default()
    }
}

#[test]
fn a_repeated_transcript_id_is_an_error_naming_it_and_its_rows() {
    let dir = tempfile::tempdir().unwrap();
    let tx = write_file(
        dir.path(),
        "t.csv",
        "transcript_id,x_location,y_location,feature_name\n7,1,1,A\n9,2,2,A\n7,3,3,A\n",
    );
    let bd = crate::common::one_nucleus_csv(dir.path());
    let spec = InputArgs {
        preset: Some(Preset::Xenium),
        transcripts: Some(tx),
        boundaries: Some(bd),
        ..InputArgs::default()
    }
    .resolve()
    .unwrap();
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
    let spec = InputArgs {
        preset: Some(Preset::Xenium),
        transcripts: Some(tx),
        boundaries: Some(bd),
        ..InputArgs::default()
    }
    .resolve()
    .unwrap();
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
    let spec = cosmx(&tx, &bd).resolve().unwrap();
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
    let spec = cosmx(&tx, &bd).resolve().unwrap();
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
    let spec = cosmx(&tx, &bd).resolve().unwrap();
    let mut t = read_transcripts(&spec).unwrap();
    let report = check_membership(&mut t, &n, &spec).unwrap();
    assert_eq!(report.source, "point_in_polygon");
    assert!(t.nuclear_cell.is_none());
}
