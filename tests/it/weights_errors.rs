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
