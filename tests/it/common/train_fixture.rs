//! The gradient-parity fixture of tests/fixtures/train_grad (made by
//! tools/reference/make_train_fixture.py), read the same way by the CPU and
//! GPU training tests.

use seggpu::graph::TileGraph;
use seggpu::model::Model;
use seggpu::tensorfile::TensorFile;
use seggpu::train::grad::Pairs;

use super::fixture_path;

/// Graphs in the fixture.
pub const GRAPHS: usize = 3;

fn pairs_of(file: &TensorFile, name: &str) -> Vec<(u32, u32)> {
    let (shape, values) = file.i64(name).unwrap();
    let n = shape[1];
    (0..n)
        .map(|i| (values[i] as u32, values[n + i] as u32))
        .collect()
}

/// Graph `i`, its pairs, and its file (which holds PyTorch's results).
pub fn batch(i: usize, vocab: usize) -> (TileGraph, Pairs, TensorFile) {
    let file =
        TensorFile::open(&fixture_path(&format!("train_grad/graph_{i}.safetensors"))).unwrap();
    let graph = TileGraph::from_tensor_file(&file, vocab).unwrap();
    let pairs = Pairs {
        positive: pairs_of(&file, "pos_pairs"),
        negative: pairs_of(&file, "neg_pairs"),
    };
    (graph, pairs, file)
}

/// The fixture's weights file `name`.
pub fn load(name: &str) -> Model {
    Model::load(&fixture_path(&format!("train_grad/{name}.safetensors"))).unwrap()
}
