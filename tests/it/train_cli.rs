//! `seggpu train` and `seggpu segment --train` end to end: the weights file
//! and its metadata, byte-identical reruns, the training log, and one clear
//! error per kind of bad input (exit ≠ 0, nothing under the final names).

use std::path::{Path, PathBuf};
use std::process::Output;

use seggpu::backend::cpu::CpuBackend;
use seggpu::backend::Backend;
use seggpu::defaults;
use seggpu::io::args::InputArgs;
use seggpu::io::{check_membership, read_nuclei, read_transcripts};
use seggpu::model::Model;
use seggpu::pipeline::prepare;
use seggpu::tensorfile::TensorFile;
use seggpu::train::data::TrainingData;
use seggpu::train::validate::{validate, Validation};

use crate::common::{
    assert_failure, assert_success, demo_model, seggpu, segment_quick_train, write_file,
    QUICK_TRAIN,
};

fn run(args: &[&str]) -> Output {
    seggpu().args(args).output().expect("run seggpu")
}

/// A simulated Xenium folder of `cells` cells.
fn simulated(dir: &Path, cells: usize) -> PathBuf {
    let input = dir.join("input");
    assert_success(&run(&[
        "simulate",
        "--out",
        input.to_str().unwrap(),
        "--cells",
        &cells.to_string(),
        "--seed",
        "5",
    ]));
    input
}

fn train(input: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "train",
        "--xenium",
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(QUICK_TRAIN);
    args.extend_from_slice(extra);
    run(&args)
}

/// The same inputs, seed and threads give a byte-identical weights file (and
/// so do 1 and 2 threads); the file carries the vocabulary, the defaults and
/// the provenance, and the log its curves.
#[test]
fn train_writes_a_deterministic_weights_file_with_provenance_and_a_log() {
    let dir = tempfile::tempdir().unwrap();
    let input = simulated(dir.path(), 80);
    let (a, b, c) = (
        dir.path().join("a.safetensors"),
        dir.path().join("b.safetensors"),
        dir.path().join("c.safetensors"),
    );
    let stderr = assert_success(&train(&input, &a, &["--threads", "2", "--seed", "3"]));
    assert!(stderr.contains("validation accuracy"), "{stderr}");
    assert_success(&train(&input, &b, &["--threads", "2", "--seed", "3"]));
    assert_success(&train(&input, &c, &["--threads", "1", "--seed", "3"]));
    let bytes = std::fs::read(&a).unwrap();
    assert!(bytes == std::fs::read(&b).unwrap(), "reruns differ");
    assert!(
        bytes == std::fs::read(&c).unwrap(),
        "1 and 2 threads differ"
    );

    let model = Model::load(&a).unwrap();
    let mut sorted = model.genes.clone();
    sorted.sort();
    assert_eq!(model.genes, sorted, "vocabulary is sorted");
    assert_eq!(model.arch.vocab, model.genes.len());
    assert_eq!(
        (model.arch.emb, model.arch.hidden, model.arch.mid_layers),
        (8, 8, 1)
    );
    let d = model.defaults.clone().expect("seggpu.defaults stored");
    assert_eq!(
        (d.k_tx, d.dist_tx, d.k_bd, d.dist_bd, d.score_cut),
        (Some(5), Some(5.0), Some(4), Some(12.0), Some(0.5))
    );
    let meta = TensorFile::open(&a).unwrap().metadata();
    let provenance: serde_json::Value = serde_json::from_str(&meta["seggpu.training"]).unwrap();
    assert_eq!(provenance["seed"], 3);
    assert_eq!(provenance["steps"], 6);
    assert!(provenance["validation"]["accuracy"].as_f64().unwrap() >= 0.0);
    assert!(provenance["data"]["held_out"].as_u64().unwrap() > 0);
    assert!(provenance["data"]["inputs"]["transcripts"]
        .as_str()
        .unwrap()
        .ends_with("transcripts.parquet"));

    let log: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("a.training.json")).unwrap())
            .unwrap();
    assert_eq!(log["loss"].as_array().unwrap().len(), 6);
    let steps: Vec<u64> = log["validation"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, [0, 3, 6]);
    assert!(log["seconds_total"].as_f64().unwrap() > 0.0);
    assert_eq!(log["model_sha256"], model.sha256.as_str());

    // Quiet: nothing on stderr.
    let out = train(&input, &dir.path().join("q.safetensors"), &["-q"]);
    assert!(out.status.success());
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The dense kernels' AVX-512 copies give the bits of the AVX2 ones: at
/// segger_dev's default sizes (whose 96- and 32-wide products fill the
/// AVX-512 blocks), training with and without them writes the same weights
/// file, and segmenting with that model the same transcripts table. On a CPU
/// without AVX-512F both runs take the AVX2 copies (printed), and the test
/// then checks only that the hook changes nothing else.
#[test]
fn training_and_segmenting_give_the_same_bytes_with_and_without_avx512() {
    #[cfg(target_arch = "x86_64")]
    let wide = std::arch::is_x86_feature_detected!("avx512f");
    #[cfg(not(target_arch = "x86_64"))]
    let wide = false;
    println!("CPU has AVX-512F: {wide} (without it both runs use the AVX2 copies)");
    let dir = tempfile::tempdir().unwrap();
    let input = simulated(dir.path(), 40);
    let run_with = |no_avx512: bool, args: &[&str]| {
        let mut command = seggpu();
        command.args(args);
        if no_avx512 {
            command.env(seggpu::kernels::NO_AVX512_ENV, "1");
        }
        assert_success(&command.output().expect("run seggpu"));
    };
    let mut outputs = Vec::new();
    for no_avx512 in [false, true] {
        let tag = if no_avx512 { "avx2" } else { "default" };
        let model = dir.path().join(format!("{tag}.safetensors"));
        let out = dir.path().join(format!("{tag}-out"));
        let (input, model_s, out_s) = (
            input.to_str().unwrap(),
            model.to_str().unwrap(),
            out.to_str().unwrap(),
        );
        run_with(
            no_avx512,
            &[
                "train",
                "--xenium",
                input,
                "--out",
                model_s,
                "--steps",
                "3",
                "--eval-every",
                "3",
                "--window",
                "60",
                "--seed",
                "2",
                "-q",
            ],
        );
        run_with(
            no_avx512,
            &[
                "segment",
                "--xenium",
                input,
                "--model",
                model_s,
                "--out",
                out_s,
                "--backend",
                "cpu",
                "-q",
            ],
        );
        outputs.push((
            std::fs::read(&model).unwrap(),
            std::fs::read(out.join("segger_transcripts.parquet")).unwrap(),
        ));
    }
    let model = Model::load(&dir.path().join("default.safetensors")).unwrap();
    assert_eq!(
        (model.arch.emb, model.arch.hidden, model.arch.mid_layers),
        (16, 32, 3),
        "segger_dev's default sizes"
    );
    assert!(
        outputs[0].0 == outputs[1].0,
        "weights differ with and without AVX-512"
    );
    assert!(
        outputs[0].1 == outputs[1].1,
        "segger_transcripts.parquet differs with and without AVX-512"
    );
}

/// Validation never perturbs training: `--eval-every auto`, `0` and `1`
/// give byte-identical weights files; under `auto` the log records the
/// chosen interval (a round number ≥ 10) and the curve's steps follow it.
#[test]
fn eval_every_changes_the_curve_not_the_weights() {
    let dir = tempfile::tempdir().unwrap();
    let input = simulated(dir.path(), 60);
    let quick: Vec<&str> = QUICK_TRAIN
        .chunks(2)
        .filter(|flag| flag[0] != "--eval-every" && flag[0] != "--steps")
        .flatten()
        .copied()
        .collect();
    let mut files = Vec::new();
    for every in ["auto", "0", "1"] {
        let out = dir.path().join(format!("every_{every}.safetensors"));
        let mut args = vec!["train", "--xenium", input.to_str().unwrap()];
        args.extend(["--out", out.to_str().unwrap(), "--steps", "25"]);
        args.extend(["--eval-every", every]);
        args.extend(&quick);
        assert_success(&run(&args));
        let log: serde_json::Value = serde_json::from_slice(
            &std::fs::read(dir.path().join(format!("every_{every}.training.json"))).unwrap(),
        )
        .unwrap();
        let steps: Vec<u64> = log["validation"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["step"].as_u64().unwrap())
            .collect();
        let interval = log["eval_every"].as_u64().expect("eval_every logged");
        println!("--eval-every {every}: interval {interval}, validated at {steps:?}");
        let expected: Vec<u64> = match every {
            "0" => vec![0, 25],
            "1" => (0..=25).collect(),
            _ => {
                assert!(
                    [10, 20, 50, 100, 200, 500, 1000].contains(&interval),
                    "auto chose {interval}"
                );
                (0..25).step_by(interval as usize).chain([25]).collect()
            }
        };
        assert_eq!(steps, expected);
        files.push(std::fs::read(&out).unwrap());
    }
    assert!(files[0] == files[1], "--eval-every auto and 0 differ");
    assert!(files[0] == files[2], "--eval-every auto and 1 differ");
}

/// Continuing from a model: --init with the same vocabulary works, records
/// the starting model and keeps its stored graph defaults (--no-dist-cap
/// included).
#[test]
fn train_continues_from_an_init_model() {
    let dir = tempfile::tempdir().unwrap();
    let input = simulated(dir.path(), 60);
    let first = dir.path().join("first.safetensors");
    assert_success(&train(&input, &first, &["--no-dist-cap"]));
    let stored = Model::load(&first).unwrap().defaults.unwrap();
    assert_eq!((stored.no_dist_cap, stored.dist_tx), (Some(true), None));
    let second = dir.path().join("second.safetensors");
    // Architecture flags may repeat the model's own values.
    assert_success(&train(
        &input,
        &second,
        &["--init", first.to_str().unwrap()],
    ));
    let meta = TensorFile::open(&second).unwrap().metadata();
    let provenance: serde_json::Value = serde_json::from_str(&meta["seggpu.training"]).unwrap();
    assert_eq!(
        provenance["init_sha256"],
        Model::load(&first).unwrap().sha256.as_str()
    );
    let log: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("second.training.json")).unwrap())
            .unwrap();
    assert_eq!(
        log["parameters"]["graph"]["dist_tx"],
        serde_json::Value::Null
    );
    assert_eq!(
        Model::load(&second).unwrap().defaults.unwrap().no_dist_cap,
        Some(true)
    );
}

/// A CSV slide: a grid of transcripts (genes `A`, `B`, `C`) over
/// `[0, 60)²` and square nuclei with their lower-left corners at `corners`.
fn csv_slide(dir: &Path, corners: &[(f64, f64)]) -> (PathBuf, PathBuf) {
    let mut tx = String::from("x_location,y_location,feature_name\n");
    for i in 0..30 {
        for j in 0..30 {
            let gene = ["A", "B", "C"][(i + j) % 3];
            tx.push_str(&format!(
                "{},{},{gene}\n",
                i as f64 * 2.0 + 0.5,
                j as f64 * 2.0 + 0.5
            ));
        }
    }
    let mut bd = String::from("cell_id,vertex_x,vertex_y\n");
    for (k, (x, y)) in corners.iter().enumerate() {
        for (dx, dy) in [(0.0, 0.0), (8.0, 0.0), (8.0, 8.0), (0.0, 8.0)] {
            bd.push_str(&format!("n{k},{},{}\n", x + dx, y + dy));
        }
    }
    (
        write_file(dir, "t.csv", tx),
        write_file(dir, "nuclei.csv", bd),
    )
}

/// Runs `train` on a CSV slide and asserts a clean failure naming `expect`.
fn assert_train_fails(dir: &Path, slide: (PathBuf, PathBuf), extra: &[&str], expect: &str) {
    let out = dir.join("model.safetensors");
    let mut args = vec![
        "train",
        "--preset",
        "xenium",
        "--transcripts",
        slide.0.to_str().unwrap(),
        "--boundaries",
        slide.1.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    assert_failure(&run(&args), expect);
    let left: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "t.csv" && n != "nuclei.csv")
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn train_without_nuclear_transcripts_has_nothing_to_learn_from() {
    let dir = tempfile::tempdir().unwrap();
    // Nuclei far from every transcript: no polygon contains one.
    let slide = csv_slide(dir.path(), &[(500.0, 500.0), (520.0, 500.0)]);
    assert_train_fails(dir.path(), slide, &[], "nothing to learn from");
}

#[test]
fn train_with_too_few_nuclei_for_a_window_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let slide = csv_slide(dir.path(), &[(10.0, 10.0)]);
    assert_train_fails(dir.path(), slide, &[], "too few for a training window");
    // Two nuclei, but 40 µm apart: no 10 µm window holds both.
    let dir = tempfile::tempdir().unwrap();
    let slide = csv_slide(dir.path(), &[(2.0, 2.0), (42.0, 42.0)]);
    assert_train_fails(
        dir.path(),
        slide,
        &["--window", "10"],
        "too few transcripts or nuclei for a training window",
    );
}

#[test]
fn train_init_with_another_vocabulary_names_the_genes() {
    let dir = tempfile::tempdir().unwrap();
    let slide = csv_slide(dir.path(), &[(10.0, 10.0), (30.0, 30.0)]);
    let demo = demo_model();
    assert_train_fails(
        dir.path(),
        slide,
        &["--init", demo.to_str().unwrap()],
        "its vocabulary does not fit: 3 of the 3 genes of the kept transcripts are not in it: A, B, C",
    );
}

#[test]
fn train_init_with_another_architecture_names_the_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    let slide = csv_slide(dir.path(), &[(10.0, 10.0), (30.0, 30.0)]);
    let demo = demo_model();
    assert_train_fails(
        dir.path(),
        slide,
        &["--init", demo.to_str().unwrap(), "--hidden", "8", "--heads", "2"],
        "its architecture does not fit: --hidden 8 but the model has 32; --heads 2 but the model has 3",
    );
}

#[test]
fn train_rejects_bad_numbers() {
    for (flag, value, expect) in [
        ("--lr", "0", "--lr is 0"),
        ("--window", "-5", "--window is -5"),
        ("--holdout", "1", "--holdout is 1"),
        ("--steps", "0", "--steps must be at least 1"),
        ("--minutes", "0", "--minutes is 0"),
        (
            "--eval-every",
            "often",
            "'often' is neither 'auto' nor a number of steps",
        ),
        (
            "--k-tx",
            "100000",
            "--k-tx is 100000, expected at least 1 and at most 256",
        ),
        (
            "--dist-bd",
            "inf",
            "--dist-bd is inf, expected a positive finite distance",
        ),
        (
            "--score-cut",
            "1.5",
            "--score-cut is 1.5, expected a number in [0, 1]",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let slide = csv_slide(dir.path(), &[(10.0, 10.0), (30.0, 30.0)]);
        let value = format!("{flag}={value}");
        assert_train_fails(dir.path(), slide, &[&value], expect);
    }
}

/// `segment --train`: trains on the slide, writes the model and its log next
/// to the outputs and segments with that model.
#[test]
fn segment_train_trains_then_segments_with_that_model() {
    let dir = tempfile::tempdir().unwrap();
    let input = simulated(dir.path(), 80);
    let out = dir.path().join("out");
    assert_success(&segment_quick_train(&input, &out, "cpu"));
    for name in [
        "segger_transcripts.parquet",
        "cells.parquet",
        "segmentation_log.json",
        "model.safetensors",
        "training_log.json",
    ] {
        assert!(out.join(name).exists(), "{name} missing");
    }
    let model = Model::load(&out.join("model.safetensors")).unwrap();
    let log: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("segmentation_log.json")).unwrap()).unwrap();
    assert_eq!(log["model"]["sha256"], model.sha256.as_str());
    assert!(log["result"]["counts"]["assigned"].as_u64().unwrap() > 0);

    // --train with --model is refused before anything is written.
    let out2 = dir.path().join("out2");
    let demo = demo_model();
    let refused = run(&[
        "segment",
        "--xenium",
        input.to_str().unwrap(),
        "--out",
        out2.to_str().unwrap(),
        "--train",
        "--model",
        demo.to_str().unwrap(),
    ]);
    assert_failure(&refused, "--model");
    assert!(!out2.exists());
}

/// Validation scores only the held-out transcripts (`score_tile` on
/// `TrainingData::validation`, whose receptive field holds their rows only,
/// so that it skips the rows their scores do not depend on). Its figures must be exactly those of the definition, counted
/// here: the whole forward pass over every transcript and nucleus of the
/// validation graph, every transcript scored, then the held-out ones
/// counted. The model is the shipped demo model (a trained one, so that
/// the figures are far from 0 and 1), on a simulated sample of its panel.
#[test]
fn validation_figures_equal_those_of_the_whole_forward_pass() {
    let dir = tempfile::tempdir().unwrap();
    let input = simulated(dir.path(), 120);
    let spec = InputArgs {
        xenium: Some(input),
        ..InputArgs::default()
    }
    .resolve()
    .unwrap();
    let model = Model::load(&demo_model()).unwrap();
    let mut transcripts = read_transcripts(&spec).unwrap();
    let nuclei = read_nuclei(&spec, model.bd_features).unwrap();
    check_membership(&mut transcripts, &nuclei, &spec).unwrap();
    let params = crate::common::training_params();
    let prepared = prepare::run(&mut transcripts, &nuclei, &model, &params).unwrap();
    let data = TrainingData::new(&prepared, &nuclei, &params.graph, 0.2, 7).unwrap();
    let mut backend = CpuBackend::new();

    let embeddings = backend.forward(&model, &data.validation, false).unwrap();
    let rf = data.receptive_field();
    let best = backend.score(&embeddings, rf).unwrap();
    let (mut correct, mut own_best, mut reach) = (0, 0, 0);
    for (&t, &own) in data.held_out.iter().zip(&data.held_out_nucleus) {
        let t = t as usize;
        let is_own = best.index[t] == own as i32;
        own_best += usize::from(is_own);
        correct += usize::from(is_own && best.score[t] >= defaults::SCORE_CUT);
        reach += usize::from(rf.index[t * rf.k..(t + 1) * rf.k].contains(&(own as i32)));
    }
    let n = data.held_out.len();
    let expected = Validation {
        accuracy: correct as f64 / n as f64,
        best_is_own: own_best as f64 / n as f64,
        own_in_rf: reach as f64 / n as f64,
        held_out: n,
    };
    let got = validate(&model, &data, defaults::SCORE_CUT, &mut backend).unwrap();
    println!("validation {got:?}, whole forward pass {expected:?}");
    assert!(n > 500, "{n} held-out transcripts");
    assert!(
        expected.accuracy > 0.5 && expected.accuracy < 1.0,
        "{expected:?}"
    );
    assert_eq!(got, expected);
}
