//! `seggpu devices` and `seggpu forward --backend gpu|auto` as a user runs them.

use std::path::Path;
use std::process::Output;

use seggpu::backend::gpu::test_support::backend_or_skip;
use seggpu::backend::gpu::GpuOptions;
use seggpu::tensorfile::TensorFile;

use crate::common::{self, all_close, assert_failure, assert_success, seggpu, Tolerance};

fn forward(name: &str, out: &Path, extra: &[&str]) -> Output {
    common::forward_command(name, out)
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn devices_lists_adapters_with_limits_and_features() {
    let out = seggpu().arg("devices").output().unwrap();
    assert_success(&out);
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
        let stderr = assert_success(&out);
        assert!(stderr.contains("on gpu: "), "{stderr}");
        common::Fixture::load(name).check_forward_file(&format!("{name} cli gpu"), &out_path);
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
    assert_failure(&out, "no GPU adapter name contains `no-such-gpu-zzz`");
    assert!(!out_path.exists());
}

#[test]
fn auto_runs_and_warns_at_most_once() {
    let dir = tempfile::tempdir().unwrap();
    let auto_path = dir.path().join("auto.safetensors");
    let out = forward("dev", &auto_path, &["--backend", "auto"]);
    let stderr = assert_success(&out);
    println!("{stderr}");
    assert!(stderr.matches("warning").count() <= 1, "{stderr}");
    let fx = common::Fixture::load("dev");
    let (_, z_tx) = TensorFile::open(&auto_path).unwrap().f32("z_tx").unwrap();
    all_close(
        "dev cli auto z_tx",
        &z_tx,
        &fx.f32("expected.z_tx"),
        Tolerance::F32,
    );
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
    assert_success(&forward("dev", &f32_path, &["--backend", "gpu"]));
    // Only the child process sees the variable: tests share this process.
    let out = common::forward_command("dev", &off_path)
        .env("SEGGPU_F16", "off")
        .args(["--backend", "gpu", "--precision", "f16"])
        .output()
        .unwrap();
    let stderr = assert_success(&out);
    println!("{stderr}");
    assert!(stderr.contains("SEGGPU_F16=off"), "{stderr}");
    let a = TensorFile::open(&f32_path).unwrap().f32("z_tx").unwrap().1;
    let b = TensorFile::open(&off_path).unwrap().f32("z_tx").unwrap().1;
    assert_eq!(a, b);
}
