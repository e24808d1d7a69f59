//! The model's weights on the GPU and the programs of a tile: the forward
//! pass (every kernel of every layer in one program) and scoring, recorded
//! alone or after the forward pass in the same program, reading the
//! embeddings where the forward pass left them.

use crate::graph::{ReceptiveField, TileGraph};
use crate::model::{Model, BD_FEATURES};

use super::chunking::{Aux, Planned};
use super::kernels::gatv2::{self, GatWeights, Graph};
use super::kernels::linear::{self, Gathered, LinearWeights};
use super::kernels::{embed, score};
use super::plan::{Problem, Refs};
use super::program::{words, Array, Program, Slot};
use super::shaders::{self, Elem, Variant};
use super::GpuError;

/// Slot of the uploaded model weights.
pub(super) const MODEL: Slot = "model";

/// Where one layer's weights live in the weights slot.
#[derive(Debug, Clone)]
pub(super) struct LayerLayout {
    pub nb_l: LinearWeights,
    pub nb_r: LinearWeights,
    pub bl_l: LinearWeights,
    pub bl_r: LinearWeights,
    pub nb: GatWeights,
    pub bl: GatWeights,
}

/// Where the model's weights live in the weights slot.
#[derive(Debug, Clone)]
pub(super) struct ModelLayout {
    pub table: Array,
    pub vocab: u64,
    pub emb: u64,
    pub lin0: LinearWeights,
    pub layers: Vec<LayerLayout>,
    /// Elements of the weights slot.
    pub len: u64,
}

/// Concatenated weight blocks, each starting on a 256-byte boundary.
pub(super) struct WeightsBuilder {
    pub slot: Slot,
    pub data: Vec<f32>,
}

impl WeightsBuilder {
    pub fn new(slot: Slot) -> Self {
        Self {
            slot,
            data: Vec::new(),
        }
    }

    /// Appends `parts` as one block.
    pub fn block(&mut self, parts: &[&[f32]]) -> Array {
        while !self.data.len().is_multiple_of(64) {
            self.data.push(0.0);
        }
        let base = self.data.len();
        for part in parts {
            self.data.extend_from_slice(part);
        }
        Array {
            slot: self.slot,
            elem: 4,
            base: base as i64,
            len: (self.data.len() - base) as u64,
        }
    }

    /// A dense layer: `wt` `[in, out]` then the bias.
    pub fn linear(&mut self, in_dim: usize, wt: &[f32], bias: Option<&[f32]>) -> LinearWeights {
        let out_dim = wt.len() / in_dim.max(1);
        let block = match bias {
            Some(b) => self.block(&[wt, b]),
            None => self.block(&[wt]),
        };
        LinearWeights {
            block,
            in_dim: in_dim as u64,
            out_dim: out_dim as u64,
            has_bias: bias.is_some(),
        }
    }

    /// A GATv2 aggregation: `att` then `bias`.
    pub fn gat(
        &mut self,
        heads: usize,
        channels: usize,
        att: &[f32],
        bias: &[f32],
        relu: bool,
    ) -> GatWeights {
        GatWeights {
            block: self.block(&[att, bias]),
            heads: heads as u64,
            channels: channels as u64,
            relu,
        }
    }

    /// The bytes to upload.
    pub fn bytes(&self) -> Vec<u8> {
        let mut data = self.data.clone();
        if data.is_empty() {
            data.push(0.0);
        }
        bytemuck::cast_slice(&data).to_vec()
    }
}

/// Lays out `model`'s weights; returns the layout and the bytes to upload.
pub(super) fn layout_model(model: &Model) -> (ModelLayout, Vec<u8>) {
    let mut w = WeightsBuilder::new(MODEL);
    let a = model.arch;
    let table = w.block(&[&model.tx_embedding]);
    let lin0 = w.linear(BD_FEATURES, &model.lin0_bd_wt, None);
    let layers = model
        .layers
        .iter()
        .map(|l| {
            let (nb, bl) = (&l.neighbors, &l.belongs);
            LayerLayout {
                nb_l: w.linear(nb.in_dim, &nb.lin_l_wt, Some(&nb.lin_l_b)),
                nb_r: w.linear(nb.in_dim, &nb.lin_r_wt, Some(&nb.lin_r_b)),
                bl_l: w.linear(bl.in_dim, &bl.lin_l_wt, Some(&bl.lin_l_b)),
                bl_r: w.linear(bl.in_dim, &bl.lin_r_wt, Some(&bl.lin_r_b)),
                nb: w.gat(nb.heads, nb.channels, &nb.att, &nb.bias, l.relu),
                bl: w.gat(bl.heads, bl.channels, &bl.att, &bl.bias, l.relu),
            }
        })
        .collect();
    let layout = ModelLayout {
        table,
        vocab: a.vocab as u64,
        emb: a.emb as u64,
        lin0,
        layers,
        len: w.data.len().max(1) as u64,
    };
    (layout, w.bytes())
}

/// Activation values as the bytes of `act` elements.
pub(super) fn to_act(values: &[f32], act: Elem) -> Vec<u8> {
    match act {
        Elem::F32 => bytemuck::cast_slice(values).to_vec(),
        Elem::F16 => values
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_bits().to_le_bytes())
            .collect(),
    }
}

/// `n` `act` elements at byte `at` of `bytes` as f32.
pub(super) fn from_act(bytes: &[u8], at: u64, n: u64, act: Elem) -> Vec<f32> {
    let at = at as usize;
    let n = n as usize;
    match act {
        Elem::F32 => bytes[at..at + 4 * n]
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Elem::F16 => bytes[at..at + 2 * n]
            .chunks_exact(2)
            .map(|b| half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32())
            .collect(),
    }
}

/// `torch.nan_to_num`: NaN → 0, ±inf → the largest finite values.
fn nan_to_num(v: f32) -> f32 {
    if v.is_nan() {
        0.0
    } else {
        v.clamp(f32::MIN, f32::MAX)
    }
}

/// Where a stage's activations are in the staging bytes: (tx at, tx
/// elements, bd at, bd elements).
pub(super) type StageAt = (u64, u64, u64, u64);

/// What a forward program leaves: the final embeddings on the GPU and, when
/// asked for, where each stage's activations (input, then each layer) are
/// in the staging bytes.
#[derive(Debug)]
pub(super) struct Forward {
    pub z: score::DeviceEmbeddings,
    pub layers: Vec<StageAt>,
}

/// Records a whole forward pass: embed, lin0, then per layer the four dense
/// layers and the two aggregations. With `keep_layers`, reads back every
/// stage's activations; z itself stays on the GPU ([`read_z`]).
pub(super) fn build_forward(
    program: &mut Program,
    act: Elem,
    layout: &ModelLayout,
    graph: &TileGraph,
    keep_layers: bool,
) -> Result<Forward, GpuError> {
    let (n_tx, n_bd) = (graph.n_tx() as u64, graph.n_bd() as u64);
    let ab = act.bytes();
    let emb = layout.emb;
    let max_in = layout
        .layers
        .iter()
        .map(|l| l.nb_l.in_dim)
        .chain([emb])
        .max()
        .unwrap_or(emb);
    let max_hc = layout
        .layers
        .iter()
        .map(|l| l.nb_l.out_dim)
        .max()
        .unwrap_or(emb);
    let max_w = max_in.max(max_hc);
    let heads = layout.layers.first().map_or(1, |l| l.nb.heads);

    program.need(MODEL, layout.len * 4);
    let tokens = program.upload_u32("tokens", &graph.tx_token);
    let bd_x: Vec<f32> = graph.bd_x.iter().map(|&v| nan_to_num(v)).collect();
    program.upload("bd_x", bytemuck::cast_slice(&bd_x).to_vec());
    let bd_x = Array::at("bd_x", 4, bd_x.len() as u64);
    let nb_off = program.upload_u32("nb.off", &graph.neighbors.offsets);
    let nb_src = program.upload_u32("nb.src", &graph.neighbors.sources);
    let (bl_rows_v, bl_csr) = graph.belongs.compact_sources();
    let n_rows = bl_rows_v.len() as u64;
    let bl_rows = program.upload_u32("bl.rows", &bl_rows_v);
    let bl_off = program.upload_u32("bl.off", &bl_csr.offsets);
    let bl_src = program.upload_u32("bl.src", &bl_csr.sources);

    let tx = ["tx.a", "tx.b"];
    let bd = ["bd.a", "bd.b"];
    for s in tx {
        program.need(s, n_tx * max_w * ab);
    }
    for s in bd {
        program.need(s, n_bd * max_w * ab);
    }
    program.need("xl.nb", n_tx * max_hc * ab);
    program.need("xr.nb", n_tx * max_hc * ab);
    program.need("xl.bl", n_rows * max_hc * ab);
    program.need("xr.bl", n_bd * max_hc * ab);

    let mut aux = Aux::new("aux");
    let emb_plan = aux.plan(
        program,
        &Problem {
            rows: n_tx as usize,
            row_bytes: emb * ab,
            refs: Refs::One(&graph.tx_token),
            gathered_rows: layout.vocab as usize,
            gathered_row_bytes: emb * 4,
            max_rows: program.max_rows(emb, u64::from(shaders::WG)),
        },
    )?;
    let nb_plan = aux.plan(
        program,
        &Problem {
            rows: n_tx as usize,
            row_bytes: max_hc * ab,
            refs: Refs::Csr {
                offsets: &graph.neighbors.offsets,
                sources: &graph.neighbors.sources,
            },
            gathered_rows: n_tx as usize,
            gathered_row_bytes: max_hc * ab,
            max_rows: program.max_rows(heads, u64::from(shaders::WG)),
        },
    )?;
    let rows_plan = aux.plan(
        program,
        &Problem {
            rows: n_rows as usize,
            row_bytes: max_hc * ab,
            refs: Refs::One(&bl_rows_v),
            gathered_rows: n_tx as usize,
            gathered_row_bytes: max_in * ab,
            max_rows: linear::max_rows(program, max_hc),
        },
    )?;
    let bl_plan = aux.plan(
        program,
        &Problem {
            rows: n_bd as usize,
            row_bytes: max_hc * ab,
            refs: Refs::Csr {
                offsets: &bl_csr.offsets,
                sources: &bl_csr.sources,
            },
            gathered_rows: n_rows as usize,
            gathered_row_bytes: max_hc * ab,
            max_rows: program.max_rows(heads, u64::from(shaders::WG)),
        },
    )?;

    embed::record(
        program,
        act,
        layout.table,
        layout.vocab,
        emb,
        tokens,
        &emb_plan,
        &aux,
        Array::at(tx[0], ab, n_tx * emb),
    )?;
    if n_bd > 0 {
        linear::record(
            program,
            Variant {
                act,
                act_in: Elem::F32,
                max_c: shaders::MIN_MAX_C,
            },
            bd_x,
            None,
            &aux,
            n_bd,
            layout.lin0,
            true,
            Array::at(bd[0], ab, n_bd * emb),
        )?;
    }
    let mut width = emb;
    let read = |program: &mut Program, cur: usize, width: u64| {
        let tx_at = program.readback(tx[cur], 0, n_tx * width * ab);
        let bd_at = program.readback(bd[cur], 0, n_bd * width * ab);
        (tx_at, n_tx * width, bd_at, n_bd * width)
    };
    let mut layers = Vec::new();
    if keep_layers {
        layers.push(read(program, 0, width));
    }
    let mut cur = 0;
    for layer in &layout.layers {
        let next = 1 - cur;
        let in_dim = layer.nb_l.in_dim;
        let hc = layer.nb_l.out_dim;
        let variant = Variant::of(act);
        let gat = gatv2::variant(act, layer.nb.channels, &program.stage)?;
        let h_tx = Array::at(tx[cur], ab, n_tx * in_dim);
        let h_bd = Array::at(bd[cur], ab, n_bd * in_dim);
        let xl_nb = Array::at("xl.nb", ab, n_tx * hc);
        let xr_nb = Array::at("xr.nb", ab, n_tx * hc);
        linear::record(
            program, variant, h_tx, None, &aux, n_tx, layer.nb_l, false, xl_nb,
        )?;
        linear::record(
            program, variant, h_tx, None, &aux, n_tx, layer.nb_r, false, xr_nb,
        )?;
        gatv2::record(
            program,
            gat,
            xl_nb,
            xr_nb,
            &Graph {
                offsets: nb_off,
                sources: nb_src,
                offset_values: &graph.neighbors.offsets,
                planned: &nb_plan,
                n_src: n_tx,
            },
            &aux,
            layer.nb,
            Array::at(tx[next], ab, n_tx * hc),
        )?;
        if n_bd > 0 {
            let xl_bl = Array::at("xl.bl", ab, n_rows * hc);
            let xr_bl = Array::at("xr.bl", ab, n_bd * hc);
            linear::record(
                program,
                variant,
                h_tx,
                Some(&Gathered {
                    rows: bl_rows,
                    planned: &rows_plan,
                    x_rows: n_tx,
                }),
                &aux,
                n_rows,
                layer.bl_l,
                false,
                xl_bl,
            )?;
            linear::record(
                program, variant, h_bd, None, &aux, n_bd, layer.bl_r, false, xr_bl,
            )?;
            gatv2::record(
                program,
                gat,
                xl_bl,
                xr_bl,
                &Graph {
                    offsets: bl_off,
                    sources: bl_src,
                    offset_values: &bl_csr.offsets,
                    planned: &bl_plan,
                    n_src: n_rows,
                },
                &aux,
                layer.bl,
                Array::at(bd[next], ab, n_bd * hc),
            )?;
        }
        cur = next;
        width = hc;
        if keep_layers {
            layers.push(read(program, cur, width));
        }
    }
    aux.upload(program);
    Ok(Forward {
        z: score::DeviceEmbeddings {
            z_tx: Array::at(tx[cur], ab, n_tx * width),
            z_bd: Array::at(bd[cur], ab, n_bd * width),
            n_bd,
            dim: width,
        },
        layers,
    })
}

/// Reads back the final embeddings of a forward program.
pub(super) fn read_z(program: &mut Program, z: &score::DeviceEmbeddings) -> StageAt {
    let ab = z.z_tx.elem;
    let tx_at = program.readback(z.z_tx.slot, 0, z.z_tx.len * ab);
    let bd_at = program.readback(z.z_bd.slot, 0, z.z_bd.len * ab);
    (tx_at, z.z_tx.len, bd_at, z.z_bd.len)
}

/// Where a scoring program's results are, and the plan to map compact
/// nucleus positions back to nucleus indices.
pub(super) struct ScoreReadback {
    pub score_at: u64,
    pub index_at: u64,
    pub n_tx: u64,
    pub planned: Planned,
}

/// Uploads embeddings computed elsewhere, `[n, dim]` rows of `z_tx` and
/// `z_bd`, as `act` elements.
pub(super) fn upload_z(
    program: &mut Program,
    act: Elem,
    z_tx: &[f32],
    z_bd: &[f32],
    dim: usize,
) -> score::DeviceEmbeddings {
    let dim = dim as u64;
    let ab = act.bytes();
    program.upload("s.ztx", to_act(z_tx, act));
    program.upload("s.zbd", to_act(z_bd, act));
    let n_bd = z_bd.len() as u64 / dim.max(1);
    score::DeviceEmbeddings {
        z_tx: Array::at("s.ztx", ab, z_tx.len() as u64),
        z_bd: Array::at("s.zbd", ab, z_bd.len() as u64),
        n_bd,
        dim,
    }
}

/// Records scoring of every transcript of `z` against its receptive field
/// and reads back the best score and index of each.
pub(super) fn build_score(
    program: &mut Program,
    act: Elem,
    z: score::DeviceEmbeddings,
    rf: &ReceptiveField,
) -> Result<ScoreReadback, GpuError> {
    let dim = z.dim;
    let n_tx = z.z_tx.len / dim.max(1);
    let k = rf.k as u64;
    let ab = act.bytes();
    program.upload("s.rf", bytemuck::cast_slice(&rf.index).to_vec());
    program.need("s.score", n_tx * 4);
    program.need("s.index", n_tx * 4);
    let mut aux = Aux::new("s.aux");
    let planned = aux.plan(
        program,
        &Problem {
            rows: n_tx as usize,
            row_bytes: (dim * ab).max(k * 4).max(4),
            refs: Refs::Fixed {
                k: rf.k,
                index: &rf.index,
            },
            gathered_rows: z.n_bd as usize,
            gathered_row_bytes: dim * ab,
            max_rows: program.max_rows(1, u64::from(shaders::WG)),
        },
    )?;
    score::record(
        program,
        act,
        z,
        Array::at("s.rf", 4, n_tx * k),
        k,
        &planned,
        &aux,
        Array::at("s.score", 4, n_tx),
        Array::at("s.index", 4, n_tx),
    )?;
    aux.upload(program);
    let score_at = program.readback("s.score", 0, n_tx * 4);
    let index_at = program.readback("s.index", 0, n_tx * 4);
    Ok(ScoreReadback {
        score_at,
        index_at,
        n_tx,
        planned,
    })
}

/// Decodes a scoring readback: best score and nucleus index per transcript.
pub(super) fn decode_score(bytes: &[u8], r: &ScoreReadback) -> (Vec<f32>, Vec<i32>) {
    let score = from_act(bytes, r.score_at, r.n_tx, Elem::F32);
    let mut index: Vec<i32> = words(bytes, r.index_at, r.n_tx as usize)
        .map(|w| w as i32)
        .collect();
    for chunk in &r.planned.chunks {
        if let Some(c) = &chunk.compact {
            for i in &mut index[chunk.begin..chunk.end] {
                if *i >= 0 {
                    *i = c.list[*i as usize] as i32;
                }
            }
        }
    }
    (score, index)
}
