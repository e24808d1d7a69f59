//! The Segger model (docs/contract.md §6–7): weights read from a seggpu safetensors file,
//! architecture derived from tensor shapes.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::tensorfile::{TensorFile, TensorFileError};

/// The value of `seggpu.format` this version reads.
pub const FORMAT: &str = "segger-hetero/1";

/// Number of nucleus shape features (area, convexity, elongation, circularity).
pub const BD_FEATURES: usize = 4;

/// A problem with a weights file.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The file could not be read, is not safetensors, or a tensor is missing or misshapen.
    #[error(transparent)]
    File(#[from] TensorFileError),
    /// The vocabulary lists more genes than the embedding has rows.
    #[error("{path}: the vocabulary (seggpu.genes) has {genes} genes but tx_embedding.tx.weight has only {rows} rows")]
    VocabularyTooLong {
        /// File path.
        path: PathBuf,
        /// Number of genes in the metadata.
        genes: usize,
        /// Rows of the embedding table.
        rows: usize,
    },
    /// A weight is NaN or infinite (after conversion to f32).
    #[error("{path}: tensor `{name}` has {count} value(s) that are not finite (the first, {value}, at flat index {index}); every weight must be a finite number")]
    NonFinite {
        /// File path.
        path: PathBuf,
        /// Tensor name.
        name: String,
        /// Number of NaN or infinite values.
        count: usize,
        /// Flat index of the first one.
        index: usize,
        /// Its value.
        value: f32,
    },
    /// A metadata entry is missing or malformed.
    #[error("{path}: metadata `{key}`: {reason}")]
    Metadata {
        /// File path.
        path: PathBuf,
        /// Metadata key.
        key: String,
        /// What is wrong.
        reason: String,
    },
}

/// Sizes of a Segger model, read from tensor shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Architecture {
    /// Embedding rows (vocabulary capacity) V.
    pub vocab: usize,
    /// Initial embedding size E.
    pub emb: usize,
    /// Attention heads H.
    pub heads: usize,
    /// Channels per head of the hidden layers.
    pub hidden: usize,
    /// Channels per head of the last layer.
    pub out: usize,
    /// Number of middle layers M.
    pub mid_layers: usize,
}

impl Architecture {
    /// Width of the final embeddings z (H·C_out).
    pub fn z_dim(&self) -> usize {
        self.heads * self.out
    }

    /// Number of GATv2 layers (first, mid, last).
    pub fn layers(&self) -> usize {
        self.mid_layers + 2
    }
}

/// How nucleus features are computed for this model (docs/contract.md §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BdFeatureMode {
    /// Area, convexity, elongation, circularity.
    Props,
    /// All four features zero (segger_dev after April 2025).
    Zeros,
}

/// Weights of one GATv2Conv for one edge type. Linear weights are stored
/// transposed, `[in, H·C]`, so the kernels stream them row by row.
#[derive(Debug, Clone)]
pub struct GatWeights {
    /// Input width.
    pub in_dim: usize,
    /// Heads H.
    pub heads: usize,
    /// Channels per head C.
    pub channels: usize,
    /// lin_l weight, transposed `[in, H·C]`.
    pub lin_l_wt: Vec<f32>,
    /// lin_l bias `[H·C]`.
    pub lin_l_b: Vec<f32>,
    /// lin_r weight, transposed `[in, H·C]`.
    pub lin_r_wt: Vec<f32>,
    /// lin_r bias `[H·C]`.
    pub lin_r_b: Vec<f32>,
    /// Attention vector `[H·C]`.
    pub att: Vec<f32>,
    /// Output bias `[H·C]`.
    pub bias: Vec<f32>,
}

impl GatWeights {
    /// Output width H·C.
    pub fn out_dim(&self) -> usize {
        self.heads * self.channels
    }
}

/// One heterogeneous layer: tx→tx neighbours and tx→bd belongs.
#[derive(Debug, Clone)]
pub struct Layer {
    /// Prefix in the weights file (`conv_first`, `conv_mid_layers.0`, …).
    pub name: String,
    /// The `tx__neighbors__tx` convolution.
    pub neighbors: GatWeights,
    /// The `tx__belongs__bd` convolution.
    pub belongs: GatWeights,
    /// Whether ReLU follows this layer (all but the last).
    pub relu: bool,
}

/// A loaded Segger model with its vocabulary and provenance.
#[derive(Debug, Clone)]
pub struct Model {
    /// Sizes.
    pub arch: Architecture,
    /// Gene names in token order.
    pub genes: Vec<String>,
    /// Nucleus feature mode.
    pub bd_features: BdFeatureMode,
    /// Optional defaults the model was trained for (`seggpu.defaults`).
    pub defaults: Option<crate::defaults::StoredDefaults>,
    /// sha256 of the file bytes, hex.
    pub sha256: String,
    /// Storage dtype of the embedding table (F32, F16, BF16).
    pub dtype: String,
    /// `tx_embedding.tx.weight` `[V, E]`.
    pub tx_embedding: Vec<f32>,
    /// `lin0.bd.weight` transposed, `[4, E]`.
    pub lin0_bd_wt: Vec<f32>,
    /// GATv2 layers in order.
    pub layers: Vec<Layer>,
}

fn transpose(rows: usize, cols: usize, m: &[f32]) -> Vec<f32> {
    let mut t = vec![0.0; m.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = m[r * cols + c];
        }
    }
    t
}

struct Reader<'a> {
    file: &'a TensorFile,
}

/// The value most of `votes` agree on (ties: the first listed); `None`
/// when no tensor gave one.
fn vote(votes: &[Option<usize>]) -> Option<usize> {
    let mut best = None;
    let mut best_count = 0;
    for v in votes.iter().flatten() {
        let count = votes.iter().filter(|w| **w == Some(*v)).count();
        if count > best_count {
            best = Some(*v);
            best_count = count;
        }
    }
    best
}

/// The two relations of every layer.
const RELATIONS: [&str; 2] = ["tx__neighbors__tx", "tx__belongs__bd"];

/// Sizes of the model read from the tensors' shapes.
struct Dims {
    emb: usize,
    heads: usize,
    hidden: usize,
    out: usize,
}

impl Reader<'_> {
    /// A weight tensor of the given shape; every value must be finite.
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, ModelError> {
        let (found, values) = self.file.f32(name)?;
        if found != shape {
            return Err(self
                .file
                .wrong_shape(name, &found, format!("{shape:?}"))
                .into());
        }
        if let Some(index) = values.iter().position(|v| !v.is_finite()) {
            return Err(ModelError::NonFinite {
                path: self.file.path().to_path_buf(),
                name: name.to_owned(),
                count: values.iter().filter(|v| !v.is_finite()).count(),
                index,
                value: values[index],
            });
        }
        Ok(values)
    }

    /// Dimension `axis` of tensor `name` when it has `rank` dimensions.
    fn dim(&self, name: &str, rank: usize, axis: usize) -> Option<usize> {
        let (shape, _) = self.file.info(name).ok()?;
        (shape.len() == rank).then(|| shape[axis])
    }

    /// The error for tensor `name`, which should be `expected`: missing,
    /// or the wrong shape.
    fn shape_error(&self, name: &str, expected: &str) -> ModelError {
        match self.file.info(name) {
            Err(e) => e.into(),
            Ok((shape, _)) => self
                .file
                .wrong_shape(name, &shape, expected.to_owned())
                .into(),
        }
    }

    /// Embedding width, heads and channels, each the value most of the
    /// tensors that carry it agree on, so that a shape error then names
    /// the tensor that differs from the rest rather than one that agrees.
    fn dims(&self, mid_layers: usize) -> Result<Dims, ModelError> {
        let mids: Vec<String> = (0..mid_layers)
            .map(|i| format!("conv_mid_layers.{i}"))
            .collect();
        let hidden_layers: Vec<&str> = std::iter::once("conv_first")
            .chain(mids.iter().map(String::as_str))
            .collect();
        let convs = |layers: &[&str]| -> Vec<String> {
            layers
                .iter()
                .flat_map(|l| RELATIONS.iter().map(move |r| format!("{l}.{r}")))
                .collect()
        };
        let mut emb = vec![
            self.dim("tx_embedding.tx.weight", 2, 1),
            self.dim("lin0.bd.weight", 2, 0),
        ];
        for conv in convs(&["conv_first"]) {
            for lin in ["lin_l", "lin_r"] {
                emb.push(self.dim(&format!("{conv}.{lin}.weight"), 2, 1));
            }
        }
        // Output width H·C of the convolutions of `layers`, as every
        // tensor of theirs states it.
        let widths = |layers: &[&str]| -> Vec<Option<usize>> {
            let mut votes = Vec::new();
            for conv in convs(layers) {
                for lin in ["lin_l", "lin_r"] {
                    votes.push(self.dim(&format!("{conv}.{lin}.weight"), 2, 0));
                    votes.push(self.dim(&format!("{conv}.{lin}.bias"), 1, 0));
                }
                votes.push(self.dim(&format!("{conv}.bias"), 1, 0));
                let att = format!("{conv}.att");
                votes.push(
                    self.dim(&att, 3, 1)
                        .zip(self.dim(&att, 3, 2))
                        .and_then(|(h, c)| h.checked_mul(c)),
                );
            }
            votes
        };
        let mut hidden_width = widths(&hidden_layers);
        let consumers: Vec<&str> = mids
            .iter()
            .map(String::as_str)
            .chain(std::iter::once("conv_last"))
            .collect();
        for conv in convs(&consumers) {
            for lin in ["lin_l", "lin_r"] {
                hidden_width.push(self.dim(&format!("{conv}.{lin}.weight"), 2, 1));
            }
        }
        let out_width = widths(&["conv_last"]);
        let mut all = hidden_layers.clone();
        all.push("conv_last");
        let heads: Vec<Option<usize>> = convs(&all)
            .iter()
            .map(|conv| self.dim(&format!("{conv}.att"), 3, 1))
            .collect();

        let first_att = "conv_first.tx__neighbors__tx.att";
        let last_att = "conv_last.tx__neighbors__tx.att";
        let emb = vote(&emb).filter(|&e| e > 0).ok_or_else(|| {
            self.shape_error("tx_embedding.tx.weight", "[vocab, emb] with emb ≥ 1")
        })?;
        let heads = vote(&heads)
            .filter(|&h| h > 0)
            .ok_or_else(|| self.shape_error(first_att, "[1, heads, channels], both ≥ 1"))?;
        let per_head = |width: Option<usize>, att: &str| {
            width
                .filter(|&w| w > 0 && w % heads == 0)
                .map(|w| w / heads)
                .ok_or_else(|| {
                    self.shape_error(
                        att,
                        &format!("[1, {heads}, channels] with channels ≥ 1 (the heads of the other layers)"),
                    )
                })
        };
        Ok(Dims {
            emb,
            heads,
            hidden: per_head(vote(&hidden_width), first_att)?,
            out: per_head(vote(&out_width), last_att)?,
        })
    }

    fn gat(
        &self,
        prefix: &str,
        in_dim: usize,
        heads: usize,
        channels: usize,
    ) -> Result<GatWeights, ModelError> {
        let hc = heads * channels;
        let lin_l = self.tensor(&format!("{prefix}.lin_l.weight"), &[hc, in_dim])?;
        let lin_r = self.tensor(&format!("{prefix}.lin_r.weight"), &[hc, in_dim])?;
        Ok(GatWeights {
            in_dim,
            heads,
            channels,
            lin_l_wt: transpose(hc, in_dim, &lin_l),
            lin_l_b: self.tensor(&format!("{prefix}.lin_l.bias"), &[hc])?,
            lin_r_wt: transpose(hc, in_dim, &lin_r),
            lin_r_b: self.tensor(&format!("{prefix}.lin_r.bias"), &[hc])?,
            att: self.tensor(&format!("{prefix}.att"), &[1, heads, channels])?,
            bias: self.tensor(&format!("{prefix}.bias"), &[hc])?,
        })
    }

    fn layer(
        &self,
        name: &str,
        in_dim: usize,
        heads: usize,
        channels: usize,
        relu: bool,
    ) -> Result<Layer, ModelError> {
        let [neighbors, belongs] = RELATIONS;
        Ok(Layer {
            name: name.to_owned(),
            neighbors: self.gat(&format!("{name}.{neighbors}"), in_dim, heads, channels)?,
            belongs: self.gat(&format!("{name}.{belongs}"), in_dim, heads, channels)?,
            relu,
        })
    }
}

impl Model {
    /// Reads a seggpu weights file.
    pub fn load(path: &Path) -> Result<Self, ModelError> {
        Self::from_file(&TensorFile::open(path)?)
    }

    /// Builds the model from an opened tensor file.
    pub fn from_file(file: &TensorFile) -> Result<Self, ModelError> {
        let path = file.path().to_path_buf();
        let meta = file.metadata();
        let metadata_error = |key: &str, reason: String| ModelError::Metadata {
            path: path.clone(),
            key: key.to_owned(),
            reason,
        };
        if let Some(format) = meta.get("seggpu.format") {
            if format != FORMAT {
                return Err(metadata_error(
                    "seggpu.format",
                    format!("is `{format}`, this version reads `{FORMAT}`"),
                ));
            }
        }
        let genes_json = meta.get("seggpu.genes").ok_or_else(|| {
            metadata_error(
                "seggpu.genes",
                "missing (a JSON array of gene names in token order is required)".into(),
            )
        })?;
        let genes: Vec<String> = serde_json::from_str(genes_json).map_err(|e| {
            metadata_error("seggpu.genes", format!("not a JSON array of strings: {e}"))
        })?;
        let mut seen = BTreeSet::new();
        if let Some(dup) = genes.iter().find(|g| !seen.insert(g.as_str())) {
            return Err(metadata_error(
                "seggpu.genes",
                format!("gene `{dup}` appears twice"),
            ));
        }
        let bd_features = match meta.get("seggpu.bd_features").map(String::as_str) {
            None | Some("props") => BdFeatureMode::Props,
            Some("zeros") => BdFeatureMode::Zeros,
            Some(other) => {
                return Err(metadata_error(
                    "seggpu.bd_features",
                    format!("is `{other}`, expected `props` or `zeros`"),
                ))
            }
        };
        let defaults = match meta.get("seggpu.defaults") {
            None => None,
            Some(text) => Some(
                crate::defaults::StoredDefaults::parse(text)
                    .map_err(|why| metadata_error("seggpu.defaults", why))?,
            ),
        };

        let reader = Reader { file };
        let emb_name = "tx_embedding.tx.weight";
        let (emb_shape, dtype) = file.info(emb_name)?;
        let [vocab, _] = emb_shape[..] else {
            return Err(file
                .wrong_shape(emb_name, &emb_shape, "[vocab, emb]".into())
                .into());
        };
        if genes.len() > vocab {
            return Err(ModelError::VocabularyTooLong {
                path,
                genes: genes.len(),
                rows: vocab,
            });
        }
        let mids: BTreeSet<usize> = file
            .names()
            .iter()
            .filter_map(|n| n.strip_prefix("conv_mid_layers."))
            .filter_map(|rest| rest.split('.').next()?.parse::<usize>().ok())
            .collect();
        // Middle layers are numbered 0, 1, …: a gap (or a stray large
        // number) names the first layer that is missing.
        let mid_layers = mids.len();
        if let Some(gap) = (0..mid_layers).find(|i| !mids.contains(i)) {
            return Err(TensorFileError::MissingTensor {
                path,
                name: format!("conv_mid_layers.{gap}.{}.lin_l.weight", RELATIONS[0]),
            }
            .into());
        }
        let Dims {
            emb,
            heads,
            hidden,
            out,
        } = reader.dims(mid_layers)?;
        let tx_embedding = reader.tensor(emb_name, &[vocab, emb])?;
        let lin0 = reader.tensor("lin0.bd.weight", &[emb, BD_FEATURES])?;

        let hidden_width = heads * hidden;
        let mut layers = vec![reader.layer("conv_first", emb, heads, hidden, true)?];
        for i in 0..mid_layers {
            let name = format!("conv_mid_layers.{i}");
            layers.push(reader.layer(&name, hidden_width, heads, hidden, true)?);
        }
        layers.push(reader.layer("conv_last", hidden_width, heads, out, false)?);

        Ok(Model {
            arch: Architecture {
                vocab,
                emb,
                heads,
                hidden,
                out,
                mid_layers,
            },
            genes,
            bd_features,
            defaults,
            sha256: hex_sha256(file.bytes()),
            dtype,
            tx_embedding,
            lin0_bd_wt: transpose(emb, BD_FEATURES, &lin0),
            layers,
        })
    }

    /// Token id of each gene name, for building a lookup.
    pub fn gene_index(&self) -> std::collections::HashMap<&str, u32> {
        self.genes
            .iter()
            .enumerate()
            .map(|(i, g)| (g.as_str(), i as u32))
            .collect()
    }
}

/// Lower-case hex sha256 of bytes.
pub fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Storage precision when writing a weights file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageDtype {
    /// 32-bit float.
    F32,
    /// IEEE half.
    F16,
    /// bfloat16.
    Bf16,
}

impl Model {
    /// Serialises the model as a seggpu weights file (docs/contract.md §7), tensors
    /// stored in `dtype`.
    pub fn to_safetensors(&self, dtype: StorageDtype) -> anyhow::Result<Vec<u8>> {
        use crate::tensorfile::OwnedTensor;
        let make = |shape: Vec<usize>, values: &[f32]| match dtype {
            StorageDtype::F32 => OwnedTensor::f32(shape, values),
            StorageDtype::F16 => OwnedTensor::f16(shape, values),
            StorageDtype::Bf16 => OwnedTensor::bf16(shape, values),
        };
        let a = self.arch;
        let mut tensors = vec![
            (
                "tx_embedding.tx.weight".to_owned(),
                make(vec![a.vocab, a.emb], &self.tx_embedding),
            ),
            (
                "lin0.bd.weight".to_owned(),
                make(
                    vec![a.emb, BD_FEATURES],
                    &transpose(BD_FEATURES, a.emb, &self.lin0_bd_wt),
                ),
            ),
        ];
        for layer in &self.layers {
            for (relation, w) in [
                ("tx__neighbors__tx", &layer.neighbors),
                ("tx__belongs__bd", &layer.belongs),
            ] {
                let prefix = format!("{}.{relation}", layer.name);
                let hc = w.out_dim();
                tensors.push((
                    format!("{prefix}.att"),
                    make(vec![1, w.heads, w.channels], &w.att),
                ));
                tensors.push((format!("{prefix}.bias"), make(vec![hc], &w.bias)));
                tensors.push((
                    format!("{prefix}.lin_l.weight"),
                    make(vec![hc, w.in_dim], &transpose(w.in_dim, hc, &w.lin_l_wt)),
                ));
                tensors.push((format!("{prefix}.lin_l.bias"), make(vec![hc], &w.lin_l_b)));
                tensors.push((
                    format!("{prefix}.lin_r.weight"),
                    make(vec![hc, w.in_dim], &transpose(w.in_dim, hc, &w.lin_r_wt)),
                ));
                tensors.push((format!("{prefix}.lin_r.bias"), make(vec![hc], &w.lin_r_b)));
            }
        }
        let mut metadata = std::collections::HashMap::new();
        metadata.insert("seggpu.format".to_owned(), FORMAT.to_owned());
        metadata.insert(
            "seggpu.genes".to_owned(),
            serde_json::to_string(&self.genes)?,
        );
        metadata.insert(
            "seggpu.bd_features".to_owned(),
            match self.bd_features {
                BdFeatureMode::Props => "props",
                BdFeatureMode::Zeros => "zeros",
            }
            .to_owned(),
        );
        if let Some(d) = &self.defaults {
            metadata.insert("seggpu.defaults".to_owned(), d.to_json());
        }
        crate::tensorfile::serialize(&tensors, Some(metadata))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// The demo weights with `seggpu.defaults` replaced by `defaults`.
    fn demo_with_defaults(defaults: &str) -> Result<Model, ModelError> {
        let bytes = crate::demo::DEMO_MODEL;
        let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let mut header: serde_json::Value =
            serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
        header["__metadata__"]["seggpu.defaults"] = defaults.into();
        let mut text = serde_json::to_vec(&header).unwrap();
        // Tensor data starts on an 8-byte boundary.
        while !text.len().is_multiple_of(8) {
            text.push(b' ');
        }
        let mut file = (text.len() as u64).to_le_bytes().to_vec();
        file.extend_from_slice(&text);
        file.extend_from_slice(&bytes[8 + header_len..]);
        Model::from_file(&TensorFile::from_bytes(Path::new("edited.safetensors"), file).unwrap())
    }

    #[test]
    fn stored_defaults_are_typed_and_checked() {
        let model = demo_with_defaults(r#"{"k_tx": 6, "score_cut": 0.25}"#).unwrap();
        let d = model.defaults.unwrap();
        assert_eq!((d.k_tx, d.score_cut, d.k_bd), (Some(6), Some(0.25), None));
        for (bad, says) in [
            (r#"{"k_tx": 5, "knn": 3}"#, "unknown key `knn`"),
            (r#"{"k_bd": 4.5}"#, "`k_bd` is 4.5, expected a whole number"),
            ("[5]", "is not a JSON object"),
        ] {
            let e = demo_with_defaults(bad).unwrap_err().to_string();
            assert!(e.contains("seggpu.defaults") && e.contains(says), "{e}");
        }
    }
}
