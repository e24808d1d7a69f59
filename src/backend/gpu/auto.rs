//! `--backend auto`: the GPU when there is one, the CPU otherwise, and the
//! CPU for any tile or fragment step the GPU fails on.

use anyhow::Result;

use super::{GpuBackend, GpuError, GpuOptions};
use crate::backend::cpu::CpuBackend;
use crate::backend::{Backend, BestMatches, EdgeSimilarity, Embeddings};
use crate::graph::{ReceptiveField, TileGraph};
use crate::model::Model;

/// Runs on the GPU when one was opened; redoes on the CPU any call the GPU
/// fails (one warning line per failure). After a device loss the GPU is
/// dropped and every later call runs on the CPU.
#[derive(Debug)]
pub struct AutoBackend {
    gpu: Option<GpuBackend>,
    cpu: CpuBackend,
}

impl AutoBackend {
    /// Opens a GPU with `options` (software adapters skipped unless named);
    /// without one, warns once on stderr and uses the CPU.
    pub fn new(options: GpuOptions) -> Self {
        let options = GpuOptions {
            hardware_only: options.adapter.is_none(),
            ..options
        };
        let gpu = match GpuBackend::new(options) {
            Ok(gpu) => Some(gpu),
            Err(e) => {
                eprintln!("warning: {e}; using the CPU backend");
                None
            }
        };
        Self::with(gpu)
    }

    /// Wraps an already opened GPU backend (or none).
    pub fn with(gpu: Option<GpuBackend>) -> Self {
        Self {
            gpu,
            cpu: CpuBackend::new(),
        }
    }

    /// The GPU backend, while there is one.
    pub fn gpu(&self) -> Option<&GpuBackend> {
        self.gpu.as_ref()
    }

    fn fallen_back(&mut self, e: &GpuError) {
        if e.is_device_lost() {
            eprintln!("warning: {e}; continuing on the CPU backend");
            self.gpu = None;
        } else {
            eprintln!("warning: {e}; redoing it on the CPU backend");
        }
    }
}

impl Backend for AutoBackend {
    fn describe(&self) -> String {
        match &self.gpu {
            Some(gpu) => gpu.describe(),
            None => self.cpu.describe(),
        }
    }

    fn forward(
        &mut self,
        model: &Model,
        graph: &TileGraph,
        keep_layers: bool,
    ) -> Result<Embeddings> {
        if let Some(gpu) = &mut self.gpu {
            match gpu.try_forward(model, graph, keep_layers) {
                Ok(out) => return Ok(out),
                Err(e) => self.fallen_back(&e),
            }
        }
        self.cpu.forward(model, graph, keep_layers)
    }

    fn score(&mut self, embeddings: &Embeddings, rf: &ReceptiveField) -> Result<BestMatches> {
        if let Some(gpu) = &mut self.gpu {
            match gpu.try_score(embeddings, rf) {
                Ok(out) => return Ok(out),
                Err(e) => self.fallen_back(&e),
            }
        }
        self.cpu.score(embeddings, rf)
    }

    fn fragment_similarity(
        &mut self,
        neighbors: &[i32],
        k: usize,
        tokens: &[u32],
        unit: &[f32],
        dim: usize,
    ) -> Result<EdgeSimilarity> {
        if let Some(gpu) = &mut self.gpu {
            match gpu.try_fragment_similarity(neighbors, k, tokens, unit, dim) {
                Ok(out) => return Ok(out),
                Err(e) => self.fallen_back(&e),
            }
        }
        self.cpu
            .fragment_similarity(neighbors, k, tokens, unit, dim)
    }

    fn components(&mut self, n: usize, edges: &[[u32; 2]]) -> Result<Vec<u32>> {
        if let Some(gpu) = &mut self.gpu {
            match gpu.try_components(n, edges) {
                Ok(out) => return Ok(out),
                Err(e) => self.fallen_back(&e),
            }
        }
        self.cpu.components(n, edges)
    }
}
