//! `seggpu devices` and `seggpu forward --backend gpu|auto` as a user runs them.

use std::process::Command;

use seggpu::backend::gpu::test_support::backend_or_skip;
use seggpu::backend::gpu::GpuOptions;
use seggpu::tensorfile::TensorFile;

use crate::common;

fn seggpu() -> Command {
    Command::new(env!("CARGO_BIN_EXE_seggpu"))
}

fn forward(name: &str, out: &std::path::Path, extra: &[&str]) -> std::process::Output {
    seggpu()
        .arg("forward")
        .args(extra)
        .arg("--graph")
        .arg(common::fixture_path(&format!("{name}.graph.safetensors")))
        .arg("--model")
        .arg(common::fixture_path(&format!("{name}.model.safetensors")))
        .arg("--out")
        .arg(out)
        .output()
        .unwrap()
}

#[test]
fn devices_lists_adapters_with_limits_and_features() {
    let out = seggpu().arg("devices").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    println!("{text}");
    let Some(gpu) = backend_or_skip("devices_lists_adapters", GpuOptions::default()) else {
        assert!(text.contains("no GPU adapter"), "{text}");
        return;
    };
    let a = gpu.adapter();
    assert!(text.contains(&a.name), "{text}");
    assert!(text.contains(&a.backend), "{text}");
    assert!(text.contains("max_storage_buffer_binding_size"), "{text}");
    assert!(text.contains("SHADER_F16"), "{text}");
}

#[test]
fn forward_on_the_gpu_matches_pyg() {
    if backend_or_skip("forward_on_the_gpu_matches_pyg", GpuOptions::default()).is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for name in common::FIXTURES {
        let out_path = dir.path().join(format!("{name}.gpu.safetensors"));
        let out = forward(name, &out_path, &["--backend", "gpu"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        assert!(stderr.contains("on gpu: "), "{stderr}");
        let fx = common::Fixture::load(name);
        let result = TensorFile::open(&out_path).unwrap();
        let (shape, z_tx) = result.f32("z_tx").unwrap();
        let (_, expected) = fx.f32("expected.z_tx");
        let rtol = if fx.half_weights() { 1e-2 } else { 1e-4 };
        common::check(
            &format!("{name} cli gpu z_tx"),
            &z_tx,
            &expected,
            shape[1],
            1e-5,
            rtol,
        );
        let (_, best_score) = result.f32("best_score").unwrap();
        let (_, expected) = fx.f32("expected.best_score");
        common::check(
            &format!("{name} cli gpu best_score"),
            &best_score,
            &expected,
            1,
            1e-5,
            rtol,
        );
        assert_eq!(
            result.i64("best_index").unwrap().1,
            fx.i64("expected.best_index")
        );
    }
}

#[test]
fn an_unknown_adapter_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("out.safetensors");
    let out = forward(
        "small",
        &out_path,
        &["--backend", "gpu", "--adapter", "no-such-gpu-zzz"],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stderr}");
    assert!(
        stderr.contains("no GPU adapter name contains `no-such-gpu-zzz`"),
        "{stderr}"
    );
    assert!(!out_path.exists());
}

#[test]
fn auto_runs_and_warns_at_most_once() {
    let dir = tempfile::tempdir().unwrap();
    let auto_path = dir.path().join("auto.safetensors");
    let out = forward("dev", &auto_path, &["--backend", "auto"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stderr}");
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.matches("warning").count() <= 1, "{stderr}");
    let fx = common::Fixture::load("dev");
    let (_, z_tx) = TensorFile::open(&auto_path).unwrap().f32("z_tx").unwrap();
    let (_, expected) = fx.f32("expected.z_tx");
    common::check("dev cli auto z_tx", &z_tx, &expected, 96, 1e-5, 1e-4);
}

#[test]
fn f16_off_in_the_environment_keeps_f32() {
    if backend_or_skip(
        "f16_off_in_the_environment_keeps_f32",
        GpuOptions::default(),
    )
    .is_none()
    {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let f32_path = dir.path().join("f32.safetensors");
    let off_path = dir.path().join("off.safetensors");
    let out = forward("dev", &f32_path, &["--backend", "gpu"]);
    assert!(out.status.success());
    let out = seggpu()
        .env("SEGGPU_F16", "off")
        .arg("forward")
        .args(["--backend", "gpu", "--precision", "f16", "--graph"])
        .arg(common::fixture_path("dev.graph.safetensors"))
        .arg("--model")
        .arg(common::fixture_path("dev.model.safetensors"))
        .arg("--out")
        .arg(&off_path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stderr}");
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("SEGGPU_F16=off"), "{stderr}");
    let a = TensorFile::open(&f32_path).unwrap().f32("z_tx").unwrap().1;
    let b = TensorFile::open(&off_path).unwrap().f32("z_tx").unwrap().1;
    assert_eq!(a, b);
}
