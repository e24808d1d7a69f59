//! Synthetic tiles and random models of Segger's default sizes, for
//! benchmarks and tests that need more than the small golden fixtures.

use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};

use crate::graph::knn::{knn_2d, knn_3d, DistanceCap};
use crate::graph::{Csr, ReceptiveField, TileGraph};
use crate::model::{Architecture, BdFeatureMode, GatWeights, Layer, Model, BD_FEATURES};

/// segger_dev's default architecture with a vocabulary of `vocab` genes.
pub fn default_architecture(vocab: usize) -> Architecture {
    Architecture {
        vocab,
        emb: 16,
        heads: 3,
        hidden: 32,
        out: 32,
        mid_layers: 3,
    }
}

/// A model with random weights of the given sizes (deterministic in `seed`).
pub fn random_model(arch: Architecture, seed: u64) -> Model {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut values = |n: usize, scale: f32| -> Vec<f32> {
        let normal = Normal::new(0.0f32, scale).expect("valid normal");
        (0..n).map(|_| normal.sample(&mut rng)).collect()
    };
    let mut gat = |in_dim: usize, channels: usize| {
        let hc = arch.heads * channels;
        let glorot = (2.0 / (in_dim + hc) as f32).sqrt();
        GatWeights {
            in_dim,
            heads: arch.heads,
            channels,
            lin_l_wt: values(in_dim * hc, glorot),
            lin_l_b: values(hc, 0.1),
            lin_r_wt: values(in_dim * hc, glorot),
            lin_r_b: values(hc, 0.1),
            att: values(hc, 0.3),
            bias: values(hc, 0.1),
        }
    };
    let hidden_width = arch.heads * arch.hidden;
    let mut layers = Vec::new();
    let names = std::iter::once("conv_first".to_owned())
        .chain((0..arch.mid_layers).map(|i| format!("conv_mid_layers.{i}")))
        .chain(std::iter::once("conv_last".to_owned()));
    for (l, name) in names.enumerate() {
        let in_dim = if l == 0 { arch.emb } else { hidden_width };
        let last = l == arch.mid_layers + 1;
        let channels = if last { arch.out } else { arch.hidden };
        layers.push(Layer {
            name,
            neighbors: gat(in_dim, channels),
            belongs: gat(in_dim, channels),
            relu: !last,
        });
    }
    Model {
        arch,
        genes: (0..arch.vocab).map(|i| format!("GENE{i:05}")).collect(),
        bd_features: BdFeatureMode::Props,
        defaults: None,
        sha256: String::new(),
        dtype: "F32".to_owned(),
        tx_embedding: values(arch.vocab * arch.emb, 1.0),
        lin0_bd_wt: values(BD_FEATURES * arch.emb, 0.5),
        layers,
    }
}

/// A synthetic tile of `n_tx` transcripts with one nucleus per ~200
/// transcripts, graphs built by docs/contract.md §5's rules (k_tx = 5 with self,
/// dist_tx = 5; belongs for transcripts within 3 µm of a nucleus centre;
/// receptive field k_bd = 4 within 12 µm), and a random model of segger_dev's
/// default sizes.
pub fn tile(n_tx: usize, seed: u64) -> (Model, TileGraph) {
    let vocab = 300;
    let model = random_model(default_architecture(vocab), seed);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5eed);
    let n_bd = (n_tx / 200).max(1);
    // About 0.5 transcripts per µm², like a dense Xenium region.
    let side = (n_tx as f64 / 0.5).sqrt();
    let centres: Vec<[f64; 2]> = (0..n_bd)
        .map(|_| [rng.random_range(0.0..side), rng.random_range(0.0..side)])
        .collect();
    let positions: Vec<[f64; 3]> = (0..n_tx)
        .map(|_| {
            [
                rng.random_range(0.0..side),
                rng.random_range(0.0..side),
                rng.random_range(0.0..3.0),
            ]
        })
        .collect();
    let positions = spatially_sorted(positions);
    let tx_token: Vec<u32> = (0..n_tx)
        .map(|_| rng.random_range(0..vocab as u32))
        .collect();
    let bd_x: Vec<f32> = (0..n_bd)
        .flat_map(|_| {
            let area: f32 = rng.random_range(20.0..80.0);
            [
                area,
                rng.random_range(1.0..1.2),
                rng.random_range(0.6..1.0),
                rng.random_range(1.5..3.1),
            ]
        })
        .collect();

    let neighbors = knn_3d(&positions, 5, DistanceCap::Inclusive(5.0), false);
    let neighbors = Csr::from_edges(
        n_tx,
        neighbors.index.chunks(5).enumerate().flat_map(|(i, row)| {
            row.iter()
                .filter(|&&j| j >= 0)
                .map(move |&j| (i as u32, j as u32))
        }),
    );
    let flat: Vec<[f64; 2]> = positions.iter().map(|p| [p[0], p[1]]).collect();
    let nearest = knn_2d(&flat, &centres, 1, DistanceCap::Exclusive(3.0));
    let belongs = Csr::from_edges(
        n_bd,
        nearest
            .index
            .iter()
            .enumerate()
            .filter(|(_, &n)| n >= 0)
            .map(|(i, &n)| (i as u32, n as u32)),
    );
    let rf = knn_2d(&flat, &centres, 4, DistanceCap::Exclusive(12.0));
    let graph = TileGraph {
        tx_token,
        bd_x,
        neighbors,
        belongs,
        receptive_field: Some(ReceptiveField {
            k: rf.k,
            index: rf.index,
        }),
    };
    (model, graph)
}

/// Orders points along 10 µm row strips, as the pipeline orders a tile's
/// transcripts, so graph neighbours sit close together in memory.
fn spatially_sorted(mut positions: Vec<[f64; 3]>) -> Vec<[f64; 3]> {
    positions.sort_by(|a, b| {
        let strip = |p: &[f64; 3]| (p[1] / 10.0).floor() as i64;
        strip(a).cmp(&strip(b)).then(a[0].total_cmp(&b[0]))
    });
    positions
}
