//! `seggpu inspect` and `seggpu forward` as a user runs them.

use seggpu::tensorfile::TensorFile;

use crate::common::{self, assert_failure, assert_success, seggpu};

#[test]
fn inspect_prints_architecture_vocabulary_and_sha256() {
    let path = common::fixture_path("dev.model.safetensors");
    let out = seggpu().arg("inspect").arg(&path).output().unwrap();
    assert_success(&out);
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
        let out = common::forward_command(name, &out_path)
            .args(["--backend", "cpu"])
            .output()
            .unwrap();
        assert_success(&out);
        let fx = common::Fixture::load(name);
        let (shape, _) = TensorFile::open(&out_path).unwrap().f32("z_tx").unwrap();
        assert_eq!(shape, vec![fx.graph.n_tx(), fx.model.arch.z_dim()]);
        fx.check_forward_file(&format!("{name} cli"), &out_path);
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
    assert_failure(&out, "edge_tx_tx edge 0 has source 1000000");
    assert!(!out_path.exists());
}
