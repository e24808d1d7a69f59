//! `seggpu train`'s gradients and Adam against PyTorch autograd on the PyG
//! model (tests/fixtures/train_grad, made by tools/reference/make_train_fixture.py).

use seggpu::graph::TileGraph;
use seggpu::model::Model;
use seggpu::tensorfile::TensorFile;
use seggpu::train::grad::{loss_and_grad, zeros_like, Pairs};
use seggpu::train::kernels::{self, AdamConfig};
use seggpu::train::params;

use crate::common::{all_close, assert_close, fixture_path, Tolerance};

const GRAPHS: usize = 3;

fn pairs_of(file: &TensorFile, name: &str) -> Vec<(u32, u32)> {
    let (shape, values) = file.i64(name).unwrap();
    let n = shape[1];
    (0..n)
        .map(|i| (values[i] as u32, values[n + i] as u32))
        .collect()
}

fn batch(i: usize, vocab: usize) -> (TileGraph, Pairs, TensorFile) {
    let file =
        TensorFile::open(&fixture_path(&format!("train_grad/graph_{i}.safetensors"))).unwrap();
    let graph = TileGraph::from_tensor_file(&file, vocab).unwrap();
    let pairs = Pairs {
        positive: pairs_of(&file, "pos_pairs"),
        negative: pairs_of(&file, "neg_pairs"),
    };
    (graph, pairs, file)
}

fn load(name: &str) -> Model {
    Model::load(&fixture_path(&format!("train_grad/{name}.safetensors"))).unwrap()
}

/// Every parameter's gradient within 1e-5 + 1e-4·|g| of autograd's, for each graph.
#[test]
fn gradients_match_pytorch_autograd() {
    let model = load("model");
    for i in 0..GRAPHS {
        let (graph, pairs, file) = batch(i, model.arch.vocab);
        assert_close(
            &format!("graph {i} pos_weight"),
            pairs.pos_weight() as f64,
            file.f32("pos_weight").unwrap().1[0] as f64,
            1e-6,
        );
        let mut grads = zeros_like(&model);
        let loss = loss_and_grad(&model, &graph, &pairs, &mut grads);
        assert_close(
            &format!("graph {i} loss"),
            loss as f64,
            file.f32("loss").unwrap().1[0] as f64,
            1e-5,
        );
        let expected = load(&format!("grad_{i}"));
        for ((name, got), (_, want)) in params(&grads).into_iter().zip(params(&expected)) {
            all_close(
                &format!("graph {i} d/d {name}"),
                &got,
                &want,
                Tolerance {
                    atol: 1e-5,
                    rtol: 1e-4,
                },
            );
        }
    }
}

/// Adam's kernel applied to PyTorch's recorded gradients of 20 steps, with the
/// recorded learning rates, ends within 1e-4 relative of torch.optim.Adam.
#[test]
fn adam_kernel_matches_torch_optim_adam() {
    let open = |name: &str| TensorFile::open(&fixture_path(&format!("train_grad/{name}"))).unwrap();
    let (start, target, grads) = (
        open("model.safetensors"),
        open("adam.safetensors"),
        open("adam_grads.safetensors"),
    );
    let lrs = target.f32("adam_lr").unwrap().1;
    assert_eq!(lrs.len(), 20);
    let names: Vec<String> = grads
        .names()
        .iter()
        .filter_map(|n| n.strip_prefix("0.").map(str::to_owned))
        .collect();
    assert!(names.len() > 20, "{} parameters recorded", names.len());
    let config = AdamConfig::default();
    for name in names {
        let mut param = start.f32(&name).unwrap().1;
        let (mut m, mut v) = (vec![0.0; param.len()], vec![0.0; param.len()]);
        for (step, &lr) in lrs.iter().enumerate() {
            let grad = grads.f32(&format!("{step}.{name}")).unwrap().1;
            kernels::adam(
                &config,
                lr,
                step as u32 + 1,
                &mut param,
                &grad,
                &mut m,
                &mut v,
            );
        }
        all_close(
            &format!("Adam on recorded gradients: {name}"),
            &param,
            &target.f32(&name).unwrap().1,
            Tolerance {
                atol: 1e-6,
                rtol: 1e-4,
            },
        );
    }
}

/// The gradients are bit-identical for 1 and 2 threads: every reduction runs
/// in a fixed order.
#[test]
fn gradients_do_not_depend_on_the_thread_count() {
    let model = load("model");
    let (graph, pairs, _) = batch(1, model.arch.vocab);
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let mut grads = zeros_like(&model);
            let loss = loss_and_grad(&model, &graph, &pairs, &mut grads);
            (loss.to_bits(), params(&grads))
        })
    };
    let (one, two) = (run(1), run(2));
    assert_eq!(one.0, two.0, "loss differs between 1 and 2 threads");
    for ((name, a), (_, b)) in one.1.iter().zip(&two.1) {
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(
            bits(a),
            bits(b),
            "d/d {name} differs between 1 and 2 threads"
        );
    }
}
