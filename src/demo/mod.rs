//! The built-in demo model: Segger trained with PyTorch Geometric on
//! `seggpu simulate` data by `tools/reference/train.py` (provenance in
//! `src/demo/README.md`).

/// The demo weights file, embedded in the binary.
pub const DEMO_MODEL: &[u8] = include_bytes!("demo_model.safetensors");
