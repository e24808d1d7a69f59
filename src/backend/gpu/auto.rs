//! `--backend auto`: the GPU when there is one, the CPU otherwise, and the
//! CPU for any tile or fragment step the GPU fails on.

use anyhow::Result;

use super::{GpuBackend, GpuError, GpuOptions};
use crate::backend::cpu::CpuBackend;
use crate::backend::{Backend, BestMatches, EdgeSimilarity, Embeddings, FragmentSlots};
use crate::graph::{ReceptiveField, TileGraph};
use crate::model::Model;

/// The GPU `--backend auto` runs on: the adapter `options` select, software
/// adapters skipped unless named; `None` (after one warning) when there is
/// none, and the CPU is used.
pub fn open_for_auto(options: GpuOptions) -> Option<GpuBackend> {
    let options = GpuOptions {
        hardware_only: options.adapter.is_none(),
        ..options
    };
    match GpuBackend::new(options) {
        Ok(gpu) => Some(gpu),
        Err(e) => {
            log::warn!("{e}; using the CPU backend");
            None
        }
    }
}

/// Runs on the GPU when one was opened; redoes on the CPU any call the GPU
/// fails with a [`GpuError`] (one warning per failure). After a device loss
/// the GPU is dropped and every later call runs on the CPU. Other errors
/// (bad input) are returned as they are: the CPU would fail the same way.
#[derive(Debug)]
pub struct AutoBackend {
    gpu: Option<GpuBackend>,
    cpu: CpuBackend,
}

impl AutoBackend {
    /// Opens a GPU with `options` (software adapters skipped unless named);
    /// without one, warns once and uses the CPU.
    pub fn new(options: GpuOptions) -> Self {
        Self::with(open_for_auto(options))
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

    /// `op` on the GPU; on a [`GpuError`], `op` again on the CPU.
    fn with_fallback<T>(&mut self, mut op: impl FnMut(&mut dyn Backend) -> Result<T>) -> Result<T> {
        if let Some(gpu) = &mut self.gpu {
            let error = match op(gpu) {
                Ok(out) => return Ok(out),
                Err(error) => error,
            };
            match error.downcast_ref::<GpuError>() {
                Some(e) if e.is_device_lost() => {
                    log::warn!("{e}; continuing on the CPU backend");
                    self.gpu = None;
                }
                Some(e) => log::warn!("{e}; redoing it on the CPU backend"),
                None => return Err(error),
            }
        }
        op(&mut self.cpu)
    }
}

impl Backend for AutoBackend {
    fn runs_on_gpu(&self) -> bool {
        self.gpu.is_some()
    }

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
        self.with_fallback(|b| b.forward(model, graph, keep_layers))
    }

    fn score(&mut self, embeddings: &Embeddings, rf: &ReceptiveField) -> Result<BestMatches> {
        self.with_fallback(|b| b.score(embeddings, rf))
    }

    fn score_tile(&mut self, model: &Model, graph: &TileGraph) -> Result<BestMatches> {
        self.with_fallback(|b| b.score_tile(model, graph))
    }

    fn fragment_similarity(&mut self, slots: FragmentSlots) -> Result<EdgeSimilarity> {
        self.with_fallback(|b| b.fragment_similarity(slots))
    }

    fn components(&mut self, n: usize, edges: &[[u32; 2]]) -> Result<Vec<u32>> {
        self.with_fallback(|b| b.components(n, edges))
    }
}
