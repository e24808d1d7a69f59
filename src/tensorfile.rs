//! Reading and writing safetensors files: typed access to named tensors with
//! errors that name the file, the tensor and what was expected.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use safetensors::{Dtype, SafeTensors};

/// A problem with a tensor file, naming the file and the tensor.
#[derive(Debug, thiserror::Error)]
pub enum TensorFileError {
    /// The file could not be read from disk.
    #[error("cannot read {path}: {source}")]
    Io {
        /// File path.
        path: PathBuf,
        /// Underlying I/O error.
        source: std::io::Error,
    },
    /// The bytes are not a valid safetensors file (bad header, truncated data).
    #[error("{path} is not a valid safetensors file ({reason})")]
    NotSafetensors {
        /// File path.
        path: PathBuf,
        /// What the parser reported.
        reason: String,
    },
    /// A required tensor is absent.
    #[error("{path}: tensor `{name}` is missing")]
    MissingTensor {
        /// File path.
        path: PathBuf,
        /// Tensor name.
        name: String,
    },
    /// A tensor has a shape other than the one required.
    #[error("{path}: tensor `{name}` has shape {found:?}, expected {expected}")]
    WrongShape {
        /// File path.
        path: PathBuf,
        /// Tensor name.
        name: String,
        /// Shape found in the file.
        found: Vec<usize>,
        /// Human-readable description of the expected shape.
        expected: String,
    },
    /// A tensor has a dtype seggpu cannot use in this role.
    #[error("{path}: tensor `{name}` has dtype {found}, expected {expected}")]
    WrongDtype {
        /// File path.
        path: PathBuf,
        /// Tensor name.
        name: String,
        /// Dtype found.
        found: String,
        /// Accepted dtypes.
        expected: String,
    },
}

/// An opened safetensors file held in memory.
pub struct TensorFile {
    path: PathBuf,
    bytes: Vec<u8>,
}

impl TensorFile {
    /// Reads `path` fully and checks that it parses as safetensors.
    pub fn open(path: &Path) -> Result<Self, TensorFileError> {
        let bytes = std::fs::read(path).map_err(|source| TensorFileError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_bytes(path, bytes)
    }

    /// Wraps bytes already in memory; `path` is used in error messages only.
    pub fn from_bytes(path: &Path, bytes: Vec<u8>) -> Result<Self, TensorFileError> {
        SafeTensors::deserialize(&bytes).map_err(|e| TensorFileError::NotSafetensors {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            bytes,
        })
    }

    /// The path this file was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The raw file bytes (for hashing).
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    fn parsed(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes).expect("validated in from_bytes")
    }

    /// The string metadata of the header (empty when there is none).
    pub fn metadata(&self) -> HashMap<String, String> {
        SafeTensors::read_metadata(&self.bytes)
            .ok()
            .and_then(|(_, m)| m.metadata().clone())
            .unwrap_or_default()
    }

    /// Whether a tensor of this name exists.
    pub fn contains(&self, name: &str) -> bool {
        self.parsed().tensor(name).is_ok()
    }

    /// All tensor names, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .parsed()
            .names()
            .into_iter()
            .map(str::to_owned)
            .collect();
        names.sort();
        names
    }

    /// Shape and dtype name of a tensor.
    pub fn info(&self, name: &str) -> Result<(Vec<usize>, String), TensorFileError> {
        let view = self.view(name)?;
        Ok((view.shape().to_vec(), format!("{:?}", view.dtype())))
    }

    fn view(&self, name: &str) -> Result<safetensors::tensor::TensorView<'_>, TensorFileError> {
        self.parsed()
            .tensor(name)
            .map_err(|_| TensorFileError::MissingTensor {
                path: self.path.clone(),
                name: name.to_owned(),
            })
    }

    /// A floating-point tensor (F32, F16, BF16 or F64) converted to f32, with its shape.
    pub fn f32(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>), TensorFileError> {
        let view = self.view(name)?;
        let data = view.data();
        let values: Vec<f32> = match view.dtype() {
            Dtype::F32 => data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => data
                .chunks_exact(2)
                .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => data
                .chunks_exact(2)
                .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::F64 => data
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes(b.try_into().expect("8-byte chunk")) as f32)
                .collect(),
            other => return Err(self.wrong_dtype(name, other, "F32, F16, BF16 or F64")),
        };
        Ok((view.shape().to_vec(), values))
    }

    /// An integer tensor (I64, I32, U32 or U8) converted to i64, with its shape.
    pub fn i64(&self, name: &str) -> Result<(Vec<usize>, Vec<i64>), TensorFileError> {
        let view = self.view(name)?;
        let data = view.data();
        let values: Vec<i64> = match view.dtype() {
            Dtype::I64 => data
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes(b.try_into().expect("8-byte chunk")))
                .collect(),
            Dtype::I32 => data
                .chunks_exact(4)
                .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64)
                .collect(),
            Dtype::U32 => data
                .chunks_exact(4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64)
                .collect(),
            Dtype::U8 => data.iter().map(|&b| b as i64).collect(),
            other => return Err(self.wrong_dtype(name, other, "I64, I32, U32 or U8")),
        };
        Ok((view.shape().to_vec(), values))
    }

    fn wrong_dtype(&self, name: &str, found: Dtype, expected: &str) -> TensorFileError {
        TensorFileError::WrongDtype {
            path: self.path.clone(),
            name: name.to_owned(),
            found: format!("{found:?}"),
            expected: expected.to_owned(),
        }
    }

    /// Builds a shape error for tensor `name` in this file.
    pub fn wrong_shape(&self, name: &str, found: &[usize], expected: String) -> TensorFileError {
        TensorFileError::WrongShape {
            path: self.path.clone(),
            name: name.to_owned(),
            found: found.to_vec(),
            expected,
        }
    }
}

/// A tensor to be written: name, shape and little-endian data of one dtype.
pub struct OwnedTensor {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl OwnedTensor {
    /// An F32 tensor.
    pub fn f32(shape: Vec<usize>, values: &[f32]) -> Self {
        Self {
            dtype: Dtype::F32,
            shape,
            data: bytemuck::cast_slice(values).to_vec(),
        }
    }

    /// An F16 tensor (values rounded to nearest).
    pub fn f16(shape: Vec<usize>, values: &[f32]) -> Self {
        let halves: Vec<u16> = values.iter().map(|&v| f16::from_f32(v).to_bits()).collect();
        Self {
            dtype: Dtype::F16,
            shape,
            data: bytemuck::cast_slice(&halves).to_vec(),
        }
    }

    /// A BF16 tensor (values rounded to nearest).
    pub fn bf16(shape: Vec<usize>, values: &[f32]) -> Self {
        let halves: Vec<u16> = values
            .iter()
            .map(|&v| bf16::from_f32(v).to_bits())
            .collect();
        Self {
            dtype: Dtype::BF16,
            shape,
            data: bytemuck::cast_slice(&halves).to_vec(),
        }
    }

    /// An I64 tensor.
    pub fn i64(shape: Vec<usize>, values: &[i64]) -> Self {
        Self {
            dtype: Dtype::I64,
            shape,
            data: bytemuck::cast_slice(values).to_vec(),
        }
    }
}

impl safetensors::View for &OwnedTensor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// Serialises tensors and metadata to safetensors bytes.
pub fn serialize(
    tensors: &[(String, OwnedTensor)],
    metadata: Option<HashMap<String, String>>,
) -> anyhow::Result<Vec<u8>> {
    let views = tensors.iter().map(|(name, t)| (name.as_str(), t));
    Ok(safetensors::serialize(views, metadata)?)
}
