//! The trained weights file: a seggpu weights file (docs/contract.md §7)
//! with the training provenance in its metadata, laid out byte for byte the
//! same for the same weights and metadata.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};

use crate::model::{Model, StorageDtype};
use crate::tensorfile::TensorFile;

/// Metadata key of the training provenance (a JSON object).
pub const TRAINING_KEY: &str = "seggpu.training";

/// `model` as weights-file bytes in `dtype`, with `extra` metadata added to
/// the model's own (`seggpu.format`, `seggpu.genes`, `seggpu.bd_features`,
/// `seggpu.defaults`). The header's keys are written in sorted order
/// (safetensors keeps its metadata in a hash map, whose order changes from
/// run to run), so the same weights give the same bytes.
pub fn to_bytes(model: &Model, dtype: StorageDtype, extra: &[(&str, String)]) -> Result<Vec<u8>> {
    let bytes = model.to_safetensors(dtype)?;
    let header_len = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let header: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..8 + header_len]).context("safetensors header")?;
    let mut sorted: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    for (key, value) in header {
        if key == "__metadata__" {
            let mut metadata: BTreeMap<String, String> =
                serde_json::from_value(value).context("safetensors metadata")?;
            for (k, v) in extra {
                metadata.insert((*k).to_owned(), v.clone());
            }
            sorted.insert(key, serde_json::to_value(metadata)?);
        } else {
            sorted.insert(key, value);
        }
    }
    let mut text = serde_json::to_vec(&sorted)?;
    // Tensor data starts on an 8-byte boundary.
    while !text.len().is_multiple_of(8) {
        text.push(b' ');
    }
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&text);
    out.extend_from_slice(&bytes[8 + header_len..]);
    Ok(out)
}

/// The model as a reader of `bytes` sees it (rounded to the stored dtype,
/// with its sha256), named `path` in messages.
pub fn reload(path: &Path, bytes: Vec<u8>) -> Result<Model> {
    Ok(Model::from_file(&TensorFile::from_bytes(path, bytes)?)?)
}
