//! A broken weights file gives one distinct, clear error per problem.

use std::collections::HashMap;

use seggpu::model::{Model, ModelError};
use seggpu::tensorfile::{self, OwnedTensor, TensorFile, TensorFileError};

use crate::common::{self, all_close, write_file, Tolerance};

/// The dev fixture's tensors and metadata, to be altered by each test.
fn dev_parts() -> (Vec<(String, OwnedTensor)>, HashMap<String, String>) {
    let file = TensorFile::open(&common::fixture_path("dev.model.safetensors")).unwrap();
    let tensors = file
        .names()
        .into_iter()
        .map(|name| {
            let (shape, values) = file.f32(&name).unwrap();
            (name, OwnedTensor::f32(shape, &values))
        })
        .collect();
    (tensors, file.metadata())
}

fn load(
    tensors: &[(String, OwnedTensor)],
    metadata: HashMap<String, String>,
) -> Result<Model, ModelError> {
    let bytes = tensorfile::serialize(tensors, Some(metadata)).unwrap();
    let file = TensorFile::from_bytes(std::path::Path::new("altered.safetensors"), bytes)?;
    Model::from_file(&file)
}

#[test]
fn unaltered_fixture_loads() {
    let (tensors, metadata) = dev_parts();
    let model = load(&tensors, metadata).unwrap();
    assert_eq!(model.arch.mid_layers, 3);
}

#[test]
fn missing_tensor_is_named() {
    let (mut tensors, metadata) = dev_parts();
    let gone = "conv_last.tx__belongs__bd.lin_r.bias";
    tensors.retain(|(name, _)| name != gone);
    let err = load(&tensors, metadata).unwrap_err();
    println!("{err}");
    assert!(
        matches!(&err, ModelError::File(TensorFileError::MissingTensor { name, .. }) if name == gone),
        "{err:?}"
    );
    assert!(err.to_string().contains(gone));
}

#[test]
fn wrong_shape_names_tensor_and_both_shapes() {
    let (mut tensors, metadata) = dev_parts();
    let bad = "conv_mid_layers.1.tx__neighbors__tx.lin_l.weight";
    let slot = tensors.iter_mut().find(|(name, _)| name == bad).unwrap();
    slot.1 = OwnedTensor::f32(vec![96, 95], &vec![0.0; 96 * 95]);
    let err = load(&tensors, metadata).unwrap_err();
    println!("{err}");
    assert!(
        matches!(&err, ModelError::File(TensorFileError::WrongShape { name, found, .. }) if name == bad && found == &vec![96, 95]),
        "{err:?}"
    );
    assert!(err.to_string().contains("[96, 96]"));
}

#[test]
fn truncated_file_is_not_safetensors() {
    let bytes = std::fs::read(common::fixture_path("dev.model.safetensors")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(
        dir.path(),
        "truncated.safetensors",
        &bytes[..bytes.len() / 2],
    );
    let err = Model::load(&path).unwrap_err();
    println!("{err}");
    assert!(
        matches!(
            &err,
            ModelError::File(TensorFileError::NotSafetensors { .. })
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("truncated.safetensors"));
}

#[test]
fn vocabulary_longer_than_embedding_gives_both_numbers() {
    let (tensors, mut metadata) = dev_parts();
    let mut genes: Vec<String> = serde_json::from_str(&metadata["seggpu.genes"]).unwrap();
    let rows = Model::load(&common::fixture_path("dev.model.safetensors"))
        .unwrap()
        .arch
        .vocab;
    while genes.len() <= rows {
        genes.push(format!("EXTRA{}", genes.len()));
    }
    metadata.insert(
        "seggpu.genes".into(),
        serde_json::to_string(&genes).unwrap(),
    );
    let err = load(&tensors, metadata).unwrap_err();
    println!("{err}");
    assert!(
        matches!(&err, ModelError::VocabularyTooLong { genes: g, rows: r, .. } if *g == genes.len() && *r == rows),
        "{err:?}"
    );
}

#[test]
fn bf16_and_f16_copies_load_with_half_precision_values() {
    let model = Model::load(&common::fixture_path("dev.model.safetensors")).unwrap();
    for dtype in [
        seggpu::model::StorageDtype::F16,
        seggpu::model::StorageDtype::Bf16,
    ] {
        let bytes = model.to_safetensors(dtype).unwrap();
        let file = TensorFile::from_bytes(std::path::Path::new("half.safetensors"), bytes).unwrap();
        let half = Model::from_file(&file).unwrap();
        assert_eq!(half.arch, model.arch);
        all_close(
            &format!("{dtype:?} copy of the embedding"),
            &half.tx_embedding,
            &model.tx_embedding,
            Tolerance::HALF_WEIGHTS,
        );
        assert_ne!(
            half.tx_embedding, model.tx_embedding,
            "{dtype:?} copy should be rounded"
        );
    }
}

/// Replaces tensor `name` of `tensors` with `tensor`.
fn replace(tensors: &mut [(String, OwnedTensor)], name: &str, tensor: OwnedTensor) {
    let slot = tensors
        .iter_mut()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("the dev fixture has no tensor {name}"));
    slot.1 = tensor;
}

/// The error of loading the dev fixture with tensor `name` replaced.
fn load_with(name: &str, tensor: OwnedTensor) -> ModelError {
    let (mut tensors, metadata) = dev_parts();
    replace(&mut tensors, name, tensor);
    load(&tensors, metadata).expect_err("the altered file should not load")
}

#[test]
fn a_nan_or_infinite_weight_is_an_error_naming_its_tensor() {
    let name = "conv_mid_layers.2.tx__belongs__bd.att";
    let mut values = vec![0.5f32; 96];
    values[7] = f32::NAN;
    values[40] = f32::INFINITY;
    let err = load_with(name, OwnedTensor::f32(vec![1, 3, 32], &values));
    println!("{err}");
    assert!(
        matches!(&err, ModelError::NonFinite { name: n, count: 2, index: 7, .. } if n == name),
        "{err:?}"
    );
    assert!(err.to_string().contains(name), "{err}");

    // A finite value too large for F16 becomes infinite when stored so.
    let name = "tx_embedding.tx.weight";
    let mut values = vec![0.25f32; 40 * 16];
    values[100] = 1e6;
    let err = load_with(name, OwnedTensor::f16(vec![40, 16], &values));
    println!("{err}");
    assert!(
        matches!(&err, ModelError::NonFinite { name: n, count: 1, index: 100, value, .. } if n == name && value.is_infinite()),
        "{err:?}"
    );
}

#[test]
fn a_shape_error_names_the_tensor_that_differs_from_the_others() {
    // Each tensor disagrees with the sizes every other tensor states; the
    // error names it, with the shape the others imply.
    let cases = [
        // The embedding width (16) is stated by lin0 and conv_first too.
        ("tx_embedding.tx.weight", vec![40, 15], "[40, 16]"),
        // Same width (3 · 32 = 96), other heads: only the attention is off.
        (
            "conv_first.tx__neighbors__tx.att",
            vec![1, 2, 48],
            "[1, 3, 32]",
        ),
        (
            "conv_last.tx__belongs__bd.att",
            vec![1, 4, 32],
            "[1, 3, 32]",
        ),
        ("conv_first.tx__belongs__bd.bias", vec![97], "[96]"),
        (
            "conv_last.tx__neighbors__tx.lin_r.weight",
            vec![96, 95],
            "[96, 96]",
        ),
        ("lin0.bd.weight", vec![16, 5], "[16, 4]"),
    ];
    for (name, shape, expected) in cases {
        let len = shape.iter().product();
        let err = load_with(name, OwnedTensor::f32(shape.clone(), &vec![0.0; len]));
        println!("{err}");
        assert!(
            matches!(&err, ModelError::File(TensorFileError::WrongShape { name: n, found, .. }) if n == name && found == &shape),
            "{name}: {err:?}"
        );
        assert!(err.to_string().contains(expected), "{name}: {err}");
    }
}

#[test]
fn a_missing_middle_layer_is_named() {
    let (mut tensors, metadata) = dev_parts();
    tensors.retain(|(name, _)| !name.starts_with("conv_mid_layers.1."));
    let err = load(&tensors, metadata).unwrap_err();
    println!("{err}");
    assert!(
        matches!(&err, ModelError::File(TensorFileError::MissingTensor { name, .. }) if name.starts_with("conv_mid_layers.1.")),
        "{err:?}"
    );
}

#[test]
fn stored_defaults_out_of_range_are_refused_like_the_flags() {
    for (defaults, says) in [
        (
            r#"{"k_tx": 100000000000}"#,
            "`k_tx` is 100000000000, expected at least 1 and at most 256",
        ),
        (
            r#"{"dist_tx": -1}"#,
            "`dist_tx` is -1, expected a positive finite distance in µm",
        ),
        (r#"{"dist_bd": 0}"#, "`dist_bd` is 0"),
        (
            r#"{"score_cut": 2}"#,
            "`score_cut` is 2, expected a number in [0, 1]",
        ),
    ] {
        let (tensors, mut metadata) = dev_parts();
        metadata.insert("seggpu.defaults".into(), defaults.into());
        let err = load(&tensors, metadata).unwrap_err();
        println!("{err}");
        let text = err.to_string();
        assert!(
            matches!(&err, ModelError::Metadata { key, .. } if key == "seggpu.defaults"),
            "{err:?}"
        );
        assert!(text.contains(says), "{defaults}: {text}");
    }
}
