//! Test-only entry points of the GPU backend: each kernel alone, for the
//! parity tests against its CPU twin, and a forced device loss.

use anyhow::Result;

use super::chunking::{Aux, Planned};
use super::kernels::embed;
use super::kernels::gatv2::{self, Graph};
use super::kernels::linear::{self, Gathered};
use super::program::{Array, Program, Slot};
use super::shaders::{Elem, Variant, WG};
use super::{forward, plan, GpuBackend};
use crate::graph::{Csr, ReceptiveField};
use crate::kernels::{gatv2 as gat_twin, linear as linear_twin};

/// Slot of a single kernel's output.
const OUT: Slot = "k.out";

/// The output array of `len` `act` elements.
fn out(program: &mut Program, act: Elem, len: u64) -> Array {
    program.need(OUT, len * act.bytes());
    Array::at(OUT, act.bytes(), len)
}

impl GpuBackend {
    /// Uploads the index lists of `program`, runs it and returns its output
    /// of `len` elements.
    fn run_for_out(&mut self, mut program: Program, aux: Aux, len: u64) -> Result<Vec<f32>> {
        let act = self.act();
        aux.upload(&mut program);
        let at = program.readback(OUT, 0, len * act.bytes());
        let bytes = self.run(&program)?;
        Ok(forward::from_act(&bytes, at, len, act))
    }

    /// Destroys the device, as a driver reset would: every later call fails
    /// with [`super::GpuError::DeviceLost`]. For tests of the error paths.
    pub fn lose_device_for_tests(&self) {
        self.rt.dev.device.destroy();
    }

    /// `shaders/embed.wgsl` alone: `relu(table[tokens])`, `[tokens.len(), dim]`.
    pub fn embed_relu(&mut self, table: &[f32], dim: usize, tokens: &[u32]) -> Result<Vec<f32>> {
        let act = self.act();
        let n = tokens.len() as u64;
        let dim64 = dim as u64;
        let vocab = (table.len() / dim.max(1)) as u64;
        let mut program = self.program(format!("embed kernel ({n} rows × {dim})"));
        let mut w = forward::WeightsBuilder::new("k.weights");
        let table_arr = w.block(&[table]);
        program.upload("k.weights", w.bytes());
        let tokens_arr = program.upload_u32("k.tokens", tokens);
        let mut aux = Aux::new("k.aux");
        let planned = aux.plan(
            &program,
            &plan::Problem {
                rows: n as usize,
                row_bytes: dim64 * act.bytes(),
                refs: plan::Refs::One(tokens),
                gathered_rows: vocab as usize,
                gathered_row_bytes: dim64 * 4,
                max_rows: program.max_rows(dim64, u64::from(WG)),
            },
        )?;
        let out = out(&mut program, act, n * dim64);
        embed::record(
            &mut program,
            act,
            table_arr,
            vocab,
            dim64,
            tokens_arr,
            &planned,
            &aux,
            out,
        )?;
        self.run_for_out(program, aux, n * dim64)
    }

    /// `shaders/linear.wgsl` alone: `linear(x[rows])` as
    /// [`crate::kernels::linear::linear`] computes it. With f16 activations,
    /// `x` is stored as f16 too.
    pub fn linear(
        &mut self,
        x: &[f32],
        rows: Option<&[u32]>,
        layer: &linear_twin::Linear,
    ) -> Result<Vec<f32>> {
        let act = self.act();
        let (in_dim, out_dim) = (layer.in_dim as u64, layer.out_dim as u64);
        let x_rows = x.len() as u64 / in_dim.max(1);
        let n = rows.map_or(x_rows, |r| r.len() as u64);
        let mut program = self.program(format!(
            "linear kernel ({n} rows, {in_dim} → {out_dim}{})",
            if rows.is_some() { ", gathered" } else { "" }
        ));
        let mut w = forward::WeightsBuilder::new("k.weights");
        let weights = w.linear(layer.in_dim, layer.wt, layer.bias);
        program.upload("k.weights", w.bytes());
        program.upload("k.x", forward::to_act(x, act));
        let x_arr = Array::at("k.x", act.bytes(), x.len() as u64);
        let mut aux = Aux::new("k.aux");
        let rows_arr = rows.map(|r| program.upload_u32("k.rows", r));
        let planned = match rows {
            Some(r) => aux.plan(
                &program,
                &plan::Problem {
                    rows: r.len(),
                    row_bytes: out_dim * act.bytes(),
                    refs: plan::Refs::One(r),
                    gathered_rows: x_rows as usize,
                    gathered_row_bytes: in_dim * act.bytes(),
                    max_rows: linear::max_rows(&program, out_dim),
                },
            )?,
            None => Planned::default(),
        };
        let gathered = rows_arr.map(|rows| Gathered {
            rows,
            planned: &planned,
            x_rows,
        });
        let out = out(&mut program, act, n * out_dim);
        linear::record(
            &mut program,
            Variant::of(act),
            x_arr,
            gathered.as_ref(),
            &aux,
            n,
            weights,
            layer.relu,
            out,
        )?;
        self.run_for_out(program, aux, n * out_dim)
    }

    /// `shaders/gatv2.wgsl` alone, as [`crate::kernels::gatv2::gatv2`]
    /// computes it: `xl` `[n_src, H·C]`, `xr` `[n_dst, H·C]`.
    pub fn gatv2(
        &mut self,
        gat: &gat_twin::Gat,
        xl: &[f32],
        xr: &[f32],
        csr: &Csr,
    ) -> Result<Vec<f32>> {
        let act = self.act();
        let hc = (gat.heads * gat.channels) as u64;
        let n_dst = csr.n_dst() as u64;
        let n_src = xl.len() as u64 / hc.max(1);
        let stage = format!(
            "gatv2 kernel ({n_dst} destinations, {} edges, {} heads × {} channels)",
            csr.n_edges(),
            gat.heads,
            gat.channels
        );
        let variant = gatv2::variant(act, gat.channels as u64, &stage)?;
        let mut program = self.program(stage);
        let mut w = forward::WeightsBuilder::new("k.weights");
        let weights = w.gat(gat.heads, gat.channels, gat.att, gat.bias, gat.relu);
        program.upload("k.weights", w.bytes());
        program.upload("k.xl", forward::to_act(xl, act));
        program.upload("k.xr", forward::to_act(xr, act));
        let offsets = program.upload_u32("k.off", &csr.offsets);
        let sources = program.upload_u32("k.src", &csr.sources);
        let mut aux = Aux::new("k.aux");
        let planned = aux.plan(
            &program,
            &plan::Problem {
                rows: n_dst as usize,
                row_bytes: hc * act.bytes(),
                refs: plan::Refs::Csr {
                    offsets: &csr.offsets,
                    sources: &csr.sources,
                },
                gathered_rows: n_src as usize,
                gathered_row_bytes: hc * act.bytes(),
                max_rows: program.max_rows(gat.heads as u64, u64::from(WG)),
            },
        )?;
        let out = out(&mut program, act, n_dst * hc);
        gatv2::record(
            &mut program,
            variant,
            Array::at("k.xl", act.bytes(), n_src * hc),
            Array::at("k.xr", act.bytes(), n_dst * hc),
            &Graph {
                offsets,
                sources,
                offset_values: &csr.offsets,
                planned: &planned,
                n_src,
            },
            &aux,
            weights,
            out,
        )?;
        self.run_for_out(program, aux, n_dst * hc)
    }

    /// `shaders/score.wgsl` alone, as [`crate::kernels::score::best`] computes it.
    pub fn best(
        &mut self,
        z_tx: &[f32],
        z_bd: &[f32],
        dim: usize,
        rf: &ReceptiveField,
    ) -> Result<(Vec<f32>, Vec<i32>)> {
        let m = self.score_uploaded(z_tx, z_bd, dim, rf)?;
        Ok((m.score, m.index))
    }
}
