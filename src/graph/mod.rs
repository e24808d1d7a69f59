//! Per-tile graphs (docs/contract.md §5): the tx–tx neighbour and tx→bd belongs edges the
//! model passes messages over, and the receptive field used for scoring.

pub mod build;
pub mod knn;

use anyhow::{bail, Result};

use crate::model::BD_FEATURES;
use crate::tensorfile::TensorFile;

/// Edges grouped by destination (compressed sparse rows): the incoming edges
/// of destination `d` have sources `sources[offsets[d]..offsets[d + 1]]`, in
/// the order the edges were given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Csr {
    /// `n_dst + 1` offsets into `sources`.
    pub offsets: Vec<u32>,
    /// Source node of every edge.
    pub sources: Vec<u32>,
}

impl Csr {
    /// Groups `(source, destination)` edges by destination, keeping their order.
    pub fn from_edges(n_dst: usize, edges: impl Iterator<Item = (u32, u32)> + Clone) -> Self {
        let mut offsets = vec![0u32; n_dst + 1];
        for (_, d) in edges.clone() {
            offsets[d as usize + 1] += 1;
        }
        for i in 0..n_dst {
            offsets[i + 1] += offsets[i];
        }
        let mut fill = offsets.clone();
        let mut sources = vec![0u32; offsets[n_dst] as usize];
        for (s, d) in edges {
            sources[fill[d as usize] as usize] = s;
            fill[d as usize] += 1;
        }
        Self { offsets, sources }
    }

    /// Number of destinations.
    pub fn n_dst(&self) -> usize {
        self.offsets.len() - 1
    }

    /// Number of edges.
    pub fn n_edges(&self) -> usize {
        self.sources.len()
    }

    /// Sources of the incoming edges of destination `d`, in edge order.
    pub fn sources_of(&self, d: usize) -> &[u32] {
        &self.sources[self.offsets[d] as usize..self.offsets[d + 1] as usize]
    }

    /// The distinct sources in increasing order, and a copy of this graph whose
    /// sources index into that list. Lets a layer transform only the
    /// transcripts that actually send a belongs message.
    pub fn compact_sources(&self) -> (Vec<u32>, Csr) {
        let mut rows = self.sources.clone();
        rows.sort_unstable();
        rows.dedup();
        let sources = self
            .sources
            .iter()
            .map(|s| rows.binary_search(s).expect("source is in rows") as u32)
            .collect();
        (
            rows,
            Csr {
                offsets: self.offsets.clone(),
                sources,
            },
        )
    }
}

/// Candidate nuclei per transcript, `k` slots each, −1 for an empty slot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReceptiveField {
    /// Slots per transcript.
    pub k: usize,
    /// `[n_tx, k]` nucleus indices or −1.
    pub index: Vec<i32>,
}

/// Everything the model needs for one tile.
#[derive(Debug, Clone, Default)]
pub struct TileGraph {
    /// Gene token of every transcript.
    pub tx_token: Vec<u32>,
    /// `[n_bd, 4]` nucleus features.
    pub bd_x: Vec<f32>,
    /// tx→tx neighbour edges, grouped by destination transcript.
    pub neighbors: Csr,
    /// tx→bd belongs edges, grouped by destination nucleus.
    pub belongs: Csr,
    /// Scoring candidates, when scoring is wanted.
    pub receptive_field: Option<ReceptiveField>,
}

impl TileGraph {
    /// Number of transcripts.
    pub fn n_tx(&self) -> usize {
        self.tx_token.len()
    }

    /// Number of nuclei.
    pub fn n_bd(&self) -> usize {
        self.bd_x.len() / BD_FEATURES
    }

    /// Reads a graph file in the `seggpu forward` format (README): `tx_token`,
    /// `bd_x`, `edge_tx_tx`, `edge_tx_bd` and optionally `rf_index`, checking
    /// every index against the node counts and the vocabulary size.
    pub fn from_tensor_file(file: &TensorFile, vocab: usize) -> Result<Self> {
        let path = file.path().display().to_string();
        let (shape, tokens) = file.i64("tx_token")?;
        if shape.len() != 1 {
            return Err(file.wrong_shape("tx_token", &shape, "[n_tx]".into()).into());
        }
        let n_tx = tokens.len();
        let tx_token = tokens
            .iter()
            .enumerate()
            .map(|(i, &t)| {
                u32::try_from(t)
                    .ok()
                    .filter(|&t| (t as usize) < vocab)
                    .ok_or_else(|| {
                        anyhow::anyhow!(
                            "{path}: tx_token[{i}] = {t} is outside the vocabulary [0, {vocab})"
                        )
                    })
            })
            .collect::<Result<Vec<u32>>>()?;
        let (shape, bd_x) = file.f32("bd_x")?;
        if shape.len() != 2 || shape[1] != BD_FEATURES {
            return Err(file
                .wrong_shape("bd_x", &shape, format!("[n_bd, {BD_FEATURES}]"))
                .into());
        }
        let n_bd = shape[0];
        let neighbors = read_edges(file, "edge_tx_tx", n_tx, n_tx)?;
        let belongs = read_edges(file, "edge_tx_bd", n_tx, n_bd)?;
        let receptive_field = if file.contains("rf_index") {
            let (shape, values) = file.i64("rf_index")?;
            if shape.len() != 2 || shape[0] != n_tx {
                return Err(file
                    .wrong_shape("rf_index", &shape, format!("[{n_tx}, k]"))
                    .into());
            }
            let index = values
                .iter()
                .map(|&n| {
                    if n == -1 || (0..n_bd as i64).contains(&n) {
                        Ok(n as i32)
                    } else {
                        bail!("{path}: rf_index holds {n}, expected −1 or a nucleus index below {n_bd}")
                    }
                })
                .collect::<Result<Vec<i32>>>()?;
            Some(ReceptiveField { k: shape[1], index })
        } else {
            None
        };
        Ok(Self {
            tx_token,
            bd_x,
            neighbors,
            belongs,
            receptive_field,
        })
    }
}

fn read_edges(file: &TensorFile, name: &str, n_src: usize, n_dst: usize) -> Result<Csr> {
    let (shape, values) = file.i64(name)?;
    if shape.len() != 2 || shape[0] != 2 {
        return Err(file.wrong_shape(name, &shape, "[2, n_edges]".into()).into());
    }
    let n_edges = shape[1];
    let (src, dst) = values.split_at(n_edges);
    for (row, limit, what) in [(src, n_src, "source"), (dst, n_dst, "target")] {
        if let Some((e, v)) = row
            .iter()
            .enumerate()
            .find(|(_, &v)| v < 0 || v as usize >= limit)
        {
            bail!(
                "{}: {name} edge {e} has {what} {v}, expected an index below {limit}",
                file.path().display()
            );
        }
    }
    Ok(Csr::from_edges(
        n_dst,
        src.iter().zip(dst).map(|(&s, &d)| (s as u32, d as u32)),
    ))
}

impl TileGraph {
    /// The graph as tensors in the `seggpu forward` input format.
    pub fn to_tensors(&self) -> Vec<(String, crate::tensorfile::OwnedTensor)> {
        use crate::tensorfile::OwnedTensor;
        let edge_index = |csr: &Csr| {
            let mut src = Vec::with_capacity(csr.n_edges());
            let mut dst = Vec::with_capacity(csr.n_edges());
            for d in 0..csr.n_dst() {
                for &s in &csr.sources[csr.offsets[d] as usize..csr.offsets[d + 1] as usize] {
                    src.push(s as i64);
                    dst.push(d as i64);
                }
            }
            let n = src.len();
            src.extend(dst);
            OwnedTensor::i64(vec![2, n], &src)
        };
        let tokens: Vec<i64> = self.tx_token.iter().map(|&t| t as i64).collect();
        let mut tensors = vec![
            (
                "tx_token".to_owned(),
                OwnedTensor::i64(vec![self.n_tx()], &tokens),
            ),
            (
                "bd_x".to_owned(),
                OwnedTensor::f32(vec![self.n_bd(), BD_FEATURES], &self.bd_x),
            ),
            ("edge_tx_tx".to_owned(), edge_index(&self.neighbors)),
            ("edge_tx_bd".to_owned(), edge_index(&self.belongs)),
        ];
        if let Some(rf) = &self.receptive_field {
            let index: Vec<i64> = rf.index.iter().map(|&i| i as i64).collect();
            tensors.push((
                "rf_index".to_owned(),
                OwnedTensor::i64(vec![self.n_tx(), rf.k], &index),
            ));
        }
        tensors
    }
}
