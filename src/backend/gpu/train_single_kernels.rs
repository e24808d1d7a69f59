//! Test-only entry points: each training shader alone on the GPU, for the
//! parity tests against its CPU twin in [`crate::train::kernels`].

use anyhow::Result;

use super::chunking::Aux;
use super::kernels::train_gather_rows::DeviceCsr;
use super::kernels::train_gatv2_backward::{self as gat_backward, Grads};
use super::kernels::train_gatv2_forward::{self as gat_forward, Relation};
use super::kernels::train_linear_input_grad::{self as input_grad, Store};
use super::kernels::train_linear_weight_grad::{self as weight_grad, WeightGrad};
use super::kernels::train_pair_loss::{self as pair_loss, DevicePairs};
use super::kernels::{train_adam, train_gather_rows, train_pair_grad, train_relu_backward};
use super::program::{Array, Program, Slot};
use super::train::INDEX;
use super::GpuBackend;
use crate::graph::Csr;
use crate::kernels::gatv2::Gat;
use crate::train::grad::Pairs;
use crate::train::kernels::AdamConfig;

/// Uploads `values` to `slot` (one element when empty: a buffer is never empty).
fn upload(program: &mut Program, slot: Slot, values: &[f32]) -> Array {
    let bytes = if values.is_empty() {
        vec![0u8; 4]
    } else {
        bytemuck::cast_slice(values).to_vec()
    };
    program.upload(slot, bytes);
    Array::at(slot, 4, values.len() as u64)
}

/// An output array of `len` elements at the start of `slot`.
fn output(program: &mut Program, slot: Slot, len: u64) -> Array {
    program.need(slot, len * 4);
    Array::at(slot, 4, len)
}

fn push(aux: &mut Aux, values: &[u32]) -> Array {
    let at = aux.push(values);
    aux.array(at as i64, values.len() as u64)
}

impl GpuBackend {
    /// Uploads the index lists, runs `program` and reads back `outputs`.
    fn run_train_kernel(
        &mut self,
        mut program: Program,
        aux: Aux,
        outputs: &[Array],
    ) -> Result<Vec<Vec<f32>>> {
        aux.upload(&mut program);
        let at: Vec<u64> = outputs
            .iter()
            .map(|a| program.readback(a.slot, a.base as u64 * 4, a.len * 4))
            .collect();
        let bytes = self.run(&program)?;
        Ok(outputs
            .iter()
            .zip(at)
            .map(|(a, at)| super::forward::from_act(&bytes, at, a.len, super::shaders::Elem::F32))
            .collect())
    }

    /// A relation's arrays for the GATv2 training kernels.
    fn train_relation<'a>(
        program: &mut Program,
        aux: &mut Aux,
        gat: &Gat,
        xl: &[f32],
        xr: &[f32],
        csr: &'a Csr,
    ) -> Relation<'a> {
        let hc = (gat.heads * gat.channels) as u64;
        let x = upload(program, "k.x", &[xl, xr].concat());
        let w = upload(program, "k.w", &[gat.att, gat.bias].concat());
        let n_src = xl.len() as u64 / hc.max(1);
        Relation {
            n_src,
            n_dst: csr.n_dst() as u64,
            heads: gat.heads as u64,
            channels: gat.channels as u64,
            xl: Array {
                len: n_src * hc,
                ..x
            },
            xr: Array {
                base: (n_src * hc) as i64,
                len: xr.len() as u64,
                ..x
            },
            csr,
            offsets: push(aux, &csr.offsets),
            sources: push(aux, &csr.sources),
            att: Array { len: hc, ..w },
            bias: Array {
                base: hc as i64,
                len: hc,
                ..w
            },
            alpha: output(program, "k.alpha", csr.n_edges() as u64 * gat.heads as u64),
        }
    }

    /// `shaders/train_gatv2_forward.wgsl` alone: (out `[n_dst, H·C]`, alpha `[E, H]`).
    pub fn train_gatv2_forward(
        &mut self,
        gat: &Gat,
        xl: &[f32],
        xr: &[f32],
        csr: &Csr,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        let mut program = self.program(format!(
            "train_gatv2_forward kernel ({} destinations, {} edges)",
            csr.n_dst(),
            csr.n_edges()
        ));
        let mut aux = Aux::new(INDEX);
        let r = Self::train_relation(&mut program, &mut aux, gat, xl, xr, csr);
        let out = output(&mut program, "k.out", xr.len() as u64);
        gat_forward::record(&mut program, &mut aux, &r, gat.relu, out)?;
        let mut got = self.run_train_kernel(program, aux, &[out, r.alpha])?;
        let alpha = got.pop().expect("alpha");
        Ok((got.pop().expect("out"), alpha))
    }

    /// `shaders/train_gatv2_backward.wgsl` alone: [d xr, d xl per edge, d att
    /// per destination, d lin_l bias per destination].
    #[allow(clippy::too_many_arguments)]
    pub fn train_gatv2_backward(
        &mut self,
        gat: &Gat,
        xl: &[f32],
        xr: &[f32],
        csr: &Csr,
        alpha: &[f32],
        g: &[f32],
    ) -> Result<[Vec<f32>; 4]> {
        let hc = (gat.heads * gat.channels) as u64;
        let (n_dst, n_edges) = (csr.n_dst() as u64, csr.n_edges() as u64);
        let mut program = self.program(format!(
            "train_gatv2_backward kernel ({n_dst} destinations, {n_edges} edges)"
        ));
        let mut aux = Aux::new(INDEX);
        let mut r = Self::train_relation(&mut program, &mut aux, gat, xl, xr, csr);
        r.alpha = upload(&mut program, "k.alpha", alpha);
        let g = upload(&mut program, "k.g", g);
        let grads = Grads {
            per_dst: output(&mut program, "k.out", 3 * n_dst * hc),
            dxl_edge: output(&mut program, "k.edges", n_edges * hc),
        };
        gat_backward::record(&mut program, &mut aux, &r, g, &grads)?;
        let mut got = self.run_train_kernel(program, aux, &[grads.per_dst, grads.dxl_edge])?;
        let dxl = got.pop().expect("dxl");
        let per_dst = got.pop().expect("dxr, datt and the bias rows");
        let (mut dxr, mut datt, mut dbias_l) = (Vec::new(), Vec::new(), Vec::new());
        for row in per_dst.chunks(3 * hc as usize) {
            let (r, rest) = row.split_at(hc as usize);
            let (a, b) = rest.split_at(hc as usize);
            dxr.extend_from_slice(r);
            datt.extend_from_slice(a);
            dbias_l.extend_from_slice(b);
        }
        Ok([dxr, dxl, datt, dbias_l])
    }

    /// `shaders/train_gather_rows.wgsl` alone: `[by.n_dst(), width]`.
    pub fn train_gather_rows(
        &mut self,
        by: &Csr,
        values: &[f32],
        width: usize,
    ) -> Result<Vec<f32>> {
        let n = by.n_dst() as u64;
        let mut program = self.program(format!("train_gather_rows kernel ({n} rows × {width})"));
        let mut aux = Aux::new(INDEX);
        let csr = DeviceCsr {
            host: by,
            offsets: push(&mut aux, &by.offsets),
            ids: push(&mut aux, &by.sources),
        };
        let value_rows = (values.len() / width.max(1)) as u64;
        let values = upload(&mut program, "k.x", values);
        let out = output(&mut program, "k.out", n * width as u64);
        train_gather_rows::record(
            &mut program,
            &mut aux,
            &csr,
            width as u64,
            values,
            value_rows,
            out,
        )?;
        let mut got = self.run_train_kernel(program, aux, &[out])?;
        Ok(got.pop().expect("out"))
    }

    /// `shaders/train_relu_backward.wgsl` alone: `g` with the ReLU mask of `out` applied.
    pub fn train_relu_backward(&mut self, g: &[f32], out: &[f32]) -> Result<Vec<f32>> {
        let mut program = self.program(format!("train_relu_backward kernel ({})", g.len()));
        let g = upload(&mut program, "k.g", g);
        let out = upload(&mut program, "k.x", out);
        train_relu_backward::record(&mut program, g, out)?;
        let mut got = self.run_train_kernel(program, Aux::new(INDEX), &[g])?;
        Ok(got.pop().expect("g"))
    }

    /// `shaders/train_linear_input_grad.wgsl` alone: `dy · wtᵀ` stored into
    /// a fresh `[n, in_dim]` (`dx` `None`), added to `dx`, or added to its
    /// rows `rows`.
    pub fn train_linear_input_grad(
        &mut self,
        dy: &[f32],
        wt: &[f32],
        in_dim: usize,
        out_dim: usize,
        rows: Option<&[u32]>,
        dx: Option<&[f32]>,
    ) -> Result<Vec<f32>> {
        let n = (dy.len() / out_dim.max(1)) as u64;
        let mut program = self.program(format!(
            "train_linear_input_grad kernel ({n} rows, {out_dim} → {in_dim})"
        ));
        let mut aux = Aux::new(INDEX);
        let dy = upload(&mut program, "k.g", dy);
        let wt = upload(&mut program, "k.w", wt);
        let (store, dx) = match (dx, rows) {
            (None, _) => (
                Store::Overwrite,
                output(&mut program, "k.out", n * in_dim as u64),
            ),
            (Some(dx), None) => (Store::Add, upload(&mut program, "k.out", dx)),
            (Some(dx), Some(rows)) => (
                Store::AddTo(push(&mut aux, rows), rows),
                upload(&mut program, "k.out", dx),
            ),
        };
        input_grad::record(
            &mut program,
            &mut aux,
            n,
            in_dim as u64,
            out_dim as u64,
            (dy, out_dim as u64),
            wt,
            store,
            dx,
        )?;
        let mut got = self.run_train_kernel(program, aux, &[dx])?;
        Ok(got.pop().expect("dx"))
    }

    #[allow(clippy::too_many_arguments)]
    fn weight_grad_problem<'a>(
        program: &mut Program,
        aux: &mut Aux,
        x: &[f32],
        rows: Option<&'a [u32]>,
        dy: &[f32],
        in_dim: usize,
        out_dim: usize,
        with_bias: bool,
    ) -> WeightGrad<'a> {
        WeightGrad {
            n_rows: (dy.len() / out_dim.max(1)) as u64,
            in_dim: in_dim as u64,
            out_dim: out_dim as u64,
            with_bias,
            x: upload(program, "k.x", x),
            rows: rows.map(|r| (push(aux, r), r)),
            dy: upload(program, "k.g", dy),
            dy_stride: out_dim as u64,
        }
    }

    /// `shaders/train_linear_weight_grad.wgsl` alone: the partial sums of
    /// every row chunk, `[chunks, in·out (+ out)]`.
    #[allow(clippy::too_many_arguments)]
    pub fn train_linear_weight_grad_partials(
        &mut self,
        x: &[f32],
        rows: Option<&[u32]>,
        dy: &[f32],
        in_dim: usize,
        out_dim: usize,
        with_bias: bool,
    ) -> Result<Vec<f32>> {
        self.weight_grad(x, rows, dy, (in_dim, out_dim), with_bias, false)
    }

    /// `shaders/train_linear_weight_grad.wgsl` then
    /// `shaders/train_sum_partials.wgsl`: the weight gradient `[in, out]`
    /// then, with `with_bias`, the bias gradient `[out]`; with `in_dim` 0,
    /// the column sums of `dy`.
    #[allow(clippy::too_many_arguments)]
    pub fn train_linear_weight_grad(
        &mut self,
        x: &[f32],
        rows: Option<&[u32]>,
        dy: &[f32],
        in_dim: usize,
        out_dim: usize,
        with_bias: bool,
    ) -> Result<Vec<f32>> {
        self.weight_grad(x, rows, dy, (in_dim, out_dim), with_bias, true)
    }

    /// The two entry points above: the per-chunk partials alone, or
    /// (`summed`) reduced to one gradient by the partial-sum kernel.
    fn weight_grad(
        &mut self,
        x: &[f32],
        rows: Option<&[u32]>,
        dy: &[f32],
        (in_dim, out_dim): (usize, usize),
        with_bias: bool,
        summed: bool,
    ) -> Result<Vec<f32>> {
        let kernels = if summed {
            "train_linear_weight_grad + train_sum_partials kernels"
        } else {
            "train_linear_weight_grad kernel"
        };
        let mut program = self.program(format!(
            "{kernels} ({} rows, {in_dim} → {out_dim})",
            dy.len() / out_dim.max(1)
        ));
        let mut aux = Aux::new(INDEX);
        let p = Self::weight_grad_problem(
            &mut program,
            &mut aux,
            x,
            rows,
            dy,
            in_dim,
            out_dim,
            with_bias,
        );
        let out = if summed {
            let out = output(&mut program, "k.out", p.width());
            weight_grad::record(
                &mut program,
                &mut aux,
                &p,
                Array::at("k.part", 4, 0),
                Some(out),
            )?;
            out
        } else {
            let partial = output(&mut program, "k.out", p.chunks() * p.width());
            weight_grad::record(&mut program, &mut aux, &p, partial, None)?;
            partial
        };
        let mut got = self.run_train_kernel(program, aux, &[out])?;
        Ok(got.pop().expect("gradient"))
    }

    /// `shaders/train_pair_loss.wgsl` alone: (loss terms, d loss / d logit)
    /// of the positives then the negatives.
    pub fn train_pair_loss(
        &mut self,
        z_tx: &[f32],
        z_bd: &[f32],
        dim: usize,
        pairs: &Pairs,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        let n = (pairs.positive.len() + pairs.negative.len()) as u64;
        let mut program = self.program(format!("train_pair_loss kernel ({n} pairs × {dim})"));
        let mut aux = Aux::new(INDEX);
        let all = || pairs.positive.iter().chain(&pairs.negative);
        let tx_of: Vec<u32> = all().map(|p| p.0).collect();
        let bd_of: Vec<u32> = all().map(|p| p.1).collect();
        let device = DevicePairs {
            n_pairs: n,
            n_pos: pairs.positive.len() as u64,
            pos_weight: pairs.pos_weight(),
            tx: push(&mut aux, &tx_of),
            bd: push(&mut aux, &bd_of),
            tx_of: &tx_of,
            bd_of: &bd_of,
        };
        let z_tx = upload(&mut program, "k.x", z_tx);
        let z_bd = upload(&mut program, "k.w", z_bd);
        let loss = output(&mut program, "k.out", n);
        let d_logit = output(&mut program, "k.edges", n);
        pair_loss::record(
            &mut program,
            &mut aux,
            &device,
            dim as u64,
            z_tx,
            z_bd,
            loss,
            d_logit,
        )?;
        let mut got = self.run_train_kernel(program, aux, &[loss, d_logit])?;
        let d = got.pop().expect("d_logit");
        Ok((got.pop().expect("loss"), d))
    }

    /// `shaders/train_pair_grad.wgsl` alone: `[by_node.n_dst(), dim]`.
    pub fn train_pair_grad(
        &mut self,
        by_node: &Csr,
        partner: &[u32],
        d_logit: &[f32],
        other: &[f32],
        dim: usize,
    ) -> Result<Vec<f32>> {
        let n = by_node.n_dst() as u64;
        let mut program = self.program(format!("train_pair_grad kernel ({n} nodes × {dim})"));
        let mut aux = Aux::new(INDEX);
        let csr = DeviceCsr {
            host: by_node,
            offsets: push(&mut aux, &by_node.offsets),
            ids: push(&mut aux, &by_node.sources),
        };
        // The partner of each entry's pair.
        let by_entry: Vec<u32> = by_node
            .sources
            .iter()
            .map(|&p| partner[p as usize])
            .collect();
        let partner = push(&mut aux, &by_entry);
        let other_rows = (other.len() / dim.max(1)) as u64;
        let d_logit = upload(&mut program, "k.g", d_logit);
        let other = upload(&mut program, "k.x", other);
        let out = output(&mut program, "k.out", n * dim as u64);
        train_pair_grad::record(
            &mut program,
            &mut aux,
            &csr,
            dim as u64,
            (partner, &by_entry),
            d_logit,
            other,
            other_rows,
            out,
        )?;
        let mut got = self.run_train_kernel(program, aux, &[out])?;
        Ok(got.pop().expect("out"))
    }

    /// `shaders/train_adam.wgsl` alone: step `t` on `param` with moments
    /// `m`, `v`; returns the three updated.
    #[allow(clippy::too_many_arguments)]
    pub fn train_adam(
        &mut self,
        config: &AdamConfig,
        lr: f32,
        t: u32,
        param: &[f32],
        grad: &[f32],
        m: &[f32],
        v: &[f32],
    ) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
        let mut program = self.program(format!("train_adam kernel ({})", param.len()));
        let param = upload(&mut program, "k.out", param);
        let grad = upload(&mut program, "k.g", grad);
        let m = upload(&mut program, "k.x", m);
        let v = upload(&mut program, "k.w", v);
        train_adam::record(&mut program, config, lr, t, param, grad, m, v)?;
        let mut got = self.run_train_kernel(program, Aux::new(INDEX), &[param, m, v])?;
        let v = got.pop().expect("v");
        let m = got.pop().expect("m");
        Ok((got.pop().expect("param"), m, v))
    }
}
