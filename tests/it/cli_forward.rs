//! `seggpu inspect` and `seggpu forward` as a user runs them.

use std::process::Command;

use seggpu::tensorfile::TensorFile;

use crate::common;

fn seggpu() -> Command {
    Command::new(env!("CARGO_BIN_EXE_seggpu"))
}

#[test]
fn inspect_prints_architecture_vocabulary_and_sha256() {
    let path = common::fixture_path("dev.model.safetensors");
    let out = seggpu().arg("inspect").arg(&path).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    println!("{text}");
    let sha = seggpu::model::hex_sha256(&std::fs::read(&path).unwrap());
    assert!(text.contains(&sha));
    assert!(text.contains(
        "vocab 40 · embedding 16 · heads 3 · hidden 32 per head · 3 mid layers · out 32 per head"
    ));
    assert!(text.contains("dtype:        F32"));
    let small = seggpu()
        .arg("inspect")
        .arg(common::fixture_path("small.model.safetensors"))
        .output()
        .unwrap();
    let text = String::from_utf8(small.stdout).unwrap();
    assert!(text.contains("dtype:        F16"), "{text}");
    assert!(text.contains("1 mid layers"), "{text}");
}

#[test]
fn forward_writes_embeddings_and_best_nuclei() {
    let dir = tempfile::tempdir().unwrap();
    for name in common::FIXTURES {
        let out_path = dir.path().join(format!("{name}.out.safetensors"));
        let status = seggpu()
            .args(["forward", "--backend", "cpu", "--graph"])
            .arg(common::fixture_path(&format!("{name}.graph.safetensors")))
            .arg("--model")
            .arg(common::fixture_path(&format!("{name}.model.safetensors")))
            .arg("--out")
            .arg(&out_path)
            .status()
            .unwrap();
        assert!(status.success());
        let fx = common::Fixture::load(name);
        let out = TensorFile::open(&out_path).unwrap();
        let (shape, z_tx) = out.f32("z_tx").unwrap();
        assert_eq!(shape, vec![fx.graph.n_tx(), fx.model.arch.z_dim()]);
        let (_, expected) = fx.f32("expected.z_tx");
        let rtol = if fx.half_weights() { 1e-2 } else { 1e-4 };
        common::check(
            &format!("{name} cli z_tx"),
            &z_tx,
            &expected,
            shape[1],
            1e-5,
            rtol,
        );
        let (_, best_score) = out.f32("best_score").unwrap();
        let (_, expected) = fx.f32("expected.best_score");
        common::check(
            &format!("{name} cli best_score"),
            &best_score,
            &expected,
            1,
            1e-5,
            rtol,
        );
        assert_eq!(
            out.i64("best_index").unwrap().1,
            fx.i64("expected.best_index")
        );
    }
}

#[test]
fn forward_rejects_an_out_of_range_edge_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let graph = TensorFile::open(&common::fixture_path("small.graph.safetensors")).unwrap();
    let mut tensors = Vec::new();
    for name in ["tx_token", "edge_tx_bd"] {
        let (shape, v) = graph.i64(name).unwrap();
        tensors.push((
            name.to_owned(),
            seggpu::tensorfile::OwnedTensor::i64(shape, &v),
        ));
    }
    let (shape, bd_x) = graph.f32("bd_x").unwrap();
    tensors.push((
        "bd_x".into(),
        seggpu::tensorfile::OwnedTensor::f32(shape, &bd_x),
    ));
    let (shape, mut edges) = graph.i64("edge_tx_tx").unwrap();
    edges[0] = 1_000_000;
    tensors.push((
        "edge_tx_tx".into(),
        seggpu::tensorfile::OwnedTensor::i64(shape, &edges),
    ));
    let bad = dir.path().join("bad.graph.safetensors");
    std::fs::write(&bad, seggpu::tensorfile::serialize(&tensors, None).unwrap()).unwrap();
    let out_path = dir.path().join("out.safetensors");
    let out = seggpu()
        .args(["forward", "--backend", "cpu", "--graph"])
        .arg(&bad)
        .arg("--model")
        .arg(common::fixture_path("small.model.safetensors"))
        .arg("--out")
        .arg(&out_path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    println!("{err}");
    assert!(
        err.contains("edge_tx_tx edge 0 has source 1000000"),
        "{err}"
    );
    assert!(!out_path.exists());
}
