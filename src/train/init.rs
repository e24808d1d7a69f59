//! A fresh model with PyTorch Geometric's initialisation (the distributions
//! of `segger_ref.build_model`; not its random numbers).

use rand::rngs::StdRng;
use rand::Rng;
use rand_distr::StandardNormal;

use crate::model::{Architecture, BdFeatureMode, GatWeights, Layer, Model, BD_FEATURES};

fn uniform(rng: &mut StdRng, n: usize, bound: f64) -> Vec<f32> {
    (0..n)
        .map(|_| (rng.random::<f64>() * 2.0 - 1.0) as f32 * bound as f32)
        .collect()
}

/// One GATv2Conv: lin_l and lin_r Glorot-uniform weights with biases
/// U(±1/√in), att Glorot-uniform over `[heads, channels]`, bias zero.
fn gat(rng: &mut StdRng, in_dim: usize, heads: usize, channels: usize) -> GatWeights {
    let hc = heads * channels;
    let glorot = (6.0 / (hc + in_dim) as f64).sqrt();
    let bias = 1.0 / (in_dim as f64).sqrt();
    GatWeights {
        in_dim,
        heads,
        channels,
        lin_l_wt: uniform(rng, in_dim * hc, glorot),
        lin_l_b: uniform(rng, hc, bias),
        lin_r_wt: uniform(rng, in_dim * hc, glorot),
        lin_r_b: uniform(rng, hc, bias),
        att: uniform(rng, hc, (6.0 / (heads + channels) as f64).sqrt()),
        bias: vec![0.0; hc],
    }
}

/// A model of architecture `arch` (its `vocab` is `genes.len()`) with
/// random weights: the embedding N(0, 1), `lin0` U(±1/√4) (PyTorch's
/// Kaiming-uniform with a = √5), and every GATv2Conv as [`gat`].
pub fn random_model(
    arch: Architecture,
    genes: Vec<String>,
    bd_features: BdFeatureMode,
    rng: &mut StdRng,
) -> Model {
    let tx_embedding = (0..arch.vocab * arch.emb)
        .map(|_| rng.sample::<f32, _>(StandardNormal))
        .collect();
    let lin0_bd_wt = uniform(
        rng,
        BD_FEATURES * arch.emb,
        1.0 / (BD_FEATURES as f64).sqrt(),
    );
    let width = arch.heads * arch.hidden;
    let mut layers = Vec::new();
    let mut in_dim = arch.emb;
    for l in 0..arch.layers() {
        let last = l + 1 == arch.layers();
        let name = match l {
            0 => "conv_first".to_owned(),
            _ if last => "conv_last".to_owned(),
            _ => format!("conv_mid_layers.{}", l - 1),
        };
        let channels = if last { arch.out } else { arch.hidden };
        layers.push(Layer {
            name,
            neighbors: gat(rng, in_dim, arch.heads, channels),
            belongs: gat(rng, in_dim, arch.heads, channels),
            relu: !last,
        });
        in_dim = width;
    }
    Model {
        arch,
        genes,
        bd_features,
        defaults: None,
        sha256: String::new(),
        dtype: "F32".into(),
        tx_embedding,
        lin0_bd_wt,
        layers,
    }
}
