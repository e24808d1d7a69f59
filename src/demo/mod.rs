//! The demo model: Segger's default architecture trained on `seggpu simulate`
//! data (provenance in `src/demo/README.md`). Its vocabulary is
//! [`crate::simulate::gene_panel`], so it segments simulated samples out of
//! the box; it is not meant for real tissue.

use std::path::Path;

use crate::model::{Model, ModelError};
use crate::tensorfile::TensorFile;

/// The demo weights file (safetensors, SPEC §7).
pub const DEMO_MODEL: &[u8] = include_bytes!("demo_model.safetensors");

/// Name under which the demo model reports itself in errors and logs.
pub const DEMO_MODEL_NAME: &str = "<demo model>";

/// Loads [`DEMO_MODEL`].
pub fn demo_model() -> Result<Model, ModelError> {
    Model::from_file(&TensorFile::from_bytes(
        Path::new(DEMO_MODEL_NAME),
        DEMO_MODEL.to_vec(),
    )?)
}
