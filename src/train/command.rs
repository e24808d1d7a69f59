//! `seggpu train` and `seggpu segment --train`: flags, reading the slide
//! with the same readers, filters, nucleus features and graphs as
//! `segment` (its `prepare` stage), the loop, and the weights file and
//! training log written atomically.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::data::{stream, streams, DataCounts, TrainingData, WindowSettings};
use super::engine;
use super::kernels::AdamConfig;
use super::session::{self, EvalEvery, Outcome, Settings, ValidationPoint};
use super::validate::{validate, Validation};
use super::weights;
use crate::backend::cpu::CpuBackend;
use crate::cli::BackendArgs;
use crate::defaults::{self, StoredDefaults};
use crate::io::{InputArgs, InputSpec, Nuclei, Transcripts};
use crate::logging::Verbosity;
use crate::model::{Architecture, BdFeatureMode, Model, StorageDtype};
use crate::pipeline::progress::Progress;
use crate::pipeline::{prepare, ScoreCut, SegmentParams, UnknownGenes};

/// Name of the trained model that `segment --train` writes into its output folder.
pub const SEGMENT_MODEL_FILE: &str = "model.safetensors";
/// Name of the training log that `segment --train` writes into its output folder.
pub const SEGMENT_LOG_FILE: &str = "training_log.json";

/// Storage dtype of the weights file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DtypeChoice {
    /// 32-bit floats (continuing with --init is exact).
    F32,
    /// IEEE half precision (half the size).
    F16,
    /// bfloat16.
    Bf16,
}

impl DtypeChoice {
    fn storage(self) -> StorageDtype {
        match self {
            DtypeChoice::F32 => StorageDtype::F32,
            DtypeChoice::F16 => StorageDtype::F16,
            DtypeChoice::Bf16 => StorageDtype::Bf16,
        }
    }
}

/// Nucleus features of a new model (docs/contract.md §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BdFeaturesChoice {
    /// Area, convexity, elongation, circularity.
    Props,
    /// All zero (segger_dev after April 2025).
    Zeros,
}

impl BdFeaturesChoice {
    fn mode(self) -> BdFeatureMode {
        match self {
            BdFeaturesChoice::Props => BdFeatureMode::Props,
            BdFeaturesChoice::Zeros => BdFeatureMode::Zeros,
        }
    }
}

/// Training flags shared by `seggpu train` and `seggpu segment --train`.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Training")]
pub struct TrainFlags {
    /// Start from this weights file (continue or fine-tune) instead of random weights. Its
    /// vocabulary must hold every gene of the kept transcripts; its architecture, nucleus
    /// features and stored defaults are used (architecture flags must agree with it).
    #[arg(long, value_name = "MODEL")]
    pub init: Option<PathBuf>,
    /// Optimiser steps, one random window each; the learning rate follows a cosine from --lr
    /// down to 5% of it over these steps.
    #[arg(long, default_value_t = 1000, value_name = "N")]
    pub steps: usize,
    /// Stop after this many minutes of training (validation included) even if --steps are not
    /// done. The weights then depend on the machine's speed.
    #[arg(long, value_name = "M")]
    pub minutes: Option<f64>,
    /// Seed of the held-out split, the initial weights, the windows and the negatives (the same
    /// inputs, seed and --threads give a byte-identical weights file).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Peak learning rate of Adam.
    #[arg(long, default_value_t = 5e-3, value_name = "RATE")]
    pub lr: f32,
    /// Side of the square training windows, µm.
    #[arg(long, default_value_t = 100.0, value_name = "UM")]
    pub window: f64,
    /// Fraction of a window's nuclear transcripts taken out of message passing
    /// (supervision-only positives); the rest are message edges and positives.
    #[arg(long, default_value_t = 0.5, value_name = "F")]
    pub supervision_fraction: f64,
    /// Random nuclei of the window drawn as negatives per positive (besides the other nuclei
    /// of its receptive field).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub random_negatives: usize,
    /// Fraction of the nuclear transcripts held out for validation (never message edges,
    /// never positives).
    #[arg(long, default_value_t = 0.2, value_name = "F")]
    pub holdout: f64,
    /// Validate every N steps besides before and after training (0: only then). `auto`: N is
    /// chosen after the first 10 steps as the smallest of 10, 20, 50, 100, 200, 500, … steps
    /// over which one validation takes at most 2% of the steps' time (it grows with the
    /// sample). Validation never changes the weights.
    #[arg(long, default_value = "auto", value_name = "N|auto")]
    pub eval_every: EvalEvery,
    /// Gene embedding size E [default: 16, or the --init model's].
    #[arg(long, value_name = "N")]
    pub emb: Option<usize>,
    /// Channels per head of the hidden layers [default: 32, or the --init model's].
    #[arg(long, value_name = "N")]
    pub hidden: Option<usize>,
    /// Attention heads [default: 3, or the --init model's].
    #[arg(long, value_name = "N")]
    pub heads: Option<usize>,
    /// GATv2 layers between the first and the last [default: 3, or the --init model's].
    #[arg(long, value_name = "N")]
    pub mid_layers: Option<usize>,
    /// Channels per head of the last layer [default: 32, or the --init model's].
    #[arg(long, value_name = "N")]
    pub out_channels: Option<usize>,
    /// Nucleus features of a new model [default: props, or the --init model's].
    #[arg(long, value_enum)]
    pub bd_features: Option<BdFeaturesChoice>,
    /// Storage dtype of the weights file.
    #[arg(long, value_enum, default_value_t = DtypeChoice::F32)]
    pub dtype: DtypeChoice,
}

/// segger_dev's default architecture: (E, hidden, heads, mid layers, out).
pub const DEFAULT_ARCHITECTURE: (usize, usize, usize, usize, usize) = (16, 32, 3, 3, 32);

/// Flags of `seggpu train` (input flags come separately).
#[derive(Debug, Clone, clap::Args)]
pub struct TrainArgs {
    /// Weights file to write (safetensors, docs/contract.md §7). The training log goes next to
    /// it, the extension replaced by `.training.json`.
    #[arg(long, value_name = "MODEL")]
    pub out: PathBuf,
    /// Graph flags, stored in the model's defaults.
    #[command(flatten)]
    pub graph: defaults::GraphFlags,
    /// Score cut of the validation accuracy, stored in the model's defaults [--init model's,
    /// else 0.5].
    #[arg(long, allow_negative_numbers = true)]
    pub score_cut: Option<f32>,
    /// Training flags.
    #[command(flatten)]
    pub flags: TrainFlags,
}

impl TrainArgs {
    /// The graph parameters and score cut: flags over the starting model's
    /// stored defaults over the built-in ones (as `segment` resolves them).
    pub fn params(&self, model: &Model) -> Result<SegmentParams> {
        let stored = model.defaults.clone().unwrap_or_default();
        let graph = self.graph.resolve(&stored)?;
        let score_cut = self
            .score_cut
            .or(stored.score_cut)
            .unwrap_or(defaults::SCORE_CUT);
        // The check `segment` and a model's stored defaults use.
        defaults::check_score_cut("--score-cut", score_cut).map_err(anyhow::Error::msg)?;
        Ok(SegmentParams {
            graph,
            score_cut: ScoreCut::Fixed(score_cut),
            fragments: None,
            unknown_genes: UnknownGenes::Error,
            tile_size: defaults::TILE_SIZE,
            margin: None,
        })
    }
}

impl TrainFlags {
    /// Checks the numbers (finite, in range).
    fn check(&self) -> Result<()> {
        anyhow::ensure!(self.steps >= 1, "--steps must be at least 1");
        anyhow::ensure!(
            self.lr > 0.0 && self.lr.is_finite(),
            "--lr is {}, expected a positive finite number",
            self.lr
        );
        anyhow::ensure!(
            self.window > 0.0 && self.window.is_finite(),
            "--window is {}, expected a positive finite side in µm",
            self.window
        );
        anyhow::ensure!(
            (0.0..1.0).contains(&self.supervision_fraction),
            "--supervision-fraction is {}, expected a number in [0, 1)",
            self.supervision_fraction
        );
        anyhow::ensure!(
            (0.0..1.0).contains(&self.holdout),
            "--holdout is {}, expected a number in [0, 1)",
            self.holdout
        );
        if let Some(m) = self.minutes {
            anyhow::ensure!(
                m > 0.0 && m.is_finite(),
                "--minutes is {m}, expected a positive finite number"
            );
        }
        for (flag, v) in [
            ("--emb", self.emb),
            ("--hidden", self.hidden),
            ("--heads", self.heads),
            ("--out-channels", self.out_channels),
        ] {
            anyhow::ensure!(v != Some(0), "{flag} must be at least 1");
        }
        Ok(())
    }

    /// The architecture for `vocab` genes from the flags and the defaults.
    fn architecture(&self, vocab: usize) -> Architecture {
        let (emb, hidden, heads, mid_layers, out) = DEFAULT_ARCHITECTURE;
        Architecture {
            vocab,
            emb: self.emb.unwrap_or(emb),
            heads: self.heads.unwrap_or(heads),
            hidden: self.hidden.unwrap_or(hidden),
            out: self.out_channels.unwrap_or(out),
            mid_layers: self.mid_layers.unwrap_or(mid_layers),
        }
    }

    /// Errors naming every architecture flag or nucleus-feature flag that
    /// disagrees with the --init model.
    fn check_fits(&self, init: &Model, path: &Path) -> Result<()> {
        let a = init.arch;
        let mut mismatches = Vec::new();
        for (flag, given, has) in [
            ("--emb", self.emb, a.emb),
            ("--hidden", self.hidden, a.hidden),
            ("--heads", self.heads, a.heads),
            ("--mid-layers", self.mid_layers, a.mid_layers),
            ("--out-channels", self.out_channels, a.out),
        ] {
            if let Some(v) = given.filter(|&v| v != has) {
                mismatches.push(format!("{flag} {v} but the model has {has}"));
            }
        }
        if let Some(choice) = self.bd_features {
            if choice.mode() != init.bd_features {
                mismatches.push(format!(
                    "--bd-features {} but the model has {}",
                    serde_json::to_string(&choice.mode())?.trim_matches('"'),
                    serde_json::to_string(&init.bd_features)?.trim_matches('"')
                ));
            }
        }
        if !mismatches.is_empty() {
            bail!(
                "--init {}: its architecture does not fit: {}",
                path.display(),
                mismatches.join("; ")
            );
        }
        Ok(())
    }
}

/// The sorted names of the genes of the kept (unfiltered) transcripts.
pub fn kept_genes(transcripts: &Transcripts) -> Vec<String> {
    let mut seen = vec![false; transcripts.gene_names.len()];
    for (row, &g) in transcripts.gene.iter().enumerate() {
        if transcripts.filter[row].is_none() {
            seen[g as usize] = true;
        }
    }
    let mut genes: Vec<String> = transcripts
        .gene_names
        .iter()
        .zip(&seen)
        .filter(|(_, &s)| s)
        .map(|(g, _)| g.clone())
        .collect();
    genes.sort_unstable();
    genes
}

/// The slide as read: the same readers and membership check as `segment`.
struct Slide {
    spec: InputSpec,
    transcripts: Transcripts,
    nuclei: Nuclei,
    membership: crate::io::MembershipReport,
}

fn read_slide(input: &InputArgs, mode: BdFeatureMode, progress: &Progress) -> Result<Slide> {
    let spec = input.resolve()?;
    let spinner = progress.spinner("reading");
    let mut transcripts = crate::io::read_transcripts(&spec)?;
    let nuclei = crate::io::read_nuclei(&spec, mode)?;
    spinner.finish_and_clear();
    if !nuclei.skipped.is_empty() {
        log::warn!(
            "{}: {} nuclei skipped while reading (e.g. {})",
            spec.boundaries.display(),
            nuclei.skipped.len(),
            nuclei
                .skipped
                .first()
                .map_or_else(String::new, |(id, why)| format!("{id}: {why}"))
        );
    }
    let membership = crate::io::check_membership(&mut transcripts, &nuclei, &spec)?;
    Ok(Slide {
        spec,
        transcripts,
        nuclei,
        membership,
    })
}

/// The starting model: `--init` (checked against the data's genes and the
/// flags) or random weights over the data's genes.
fn starting_model(
    flags: &TrainFlags,
    init: Option<Model>,
    genes: Vec<String>,
    mode: BdFeatureMode,
) -> Result<Model> {
    let Some(init) = init else {
        let arch = flags.architecture(genes.len());
        return Ok(super::init::random_model(
            arch,
            genes,
            mode,
            &mut stream(flags.seed, streams::INIT),
        ));
    };
    let path = flags.init.as_deref().expect("init model has a path");
    flags.check_fits(&init, path)?;
    let index = init.gene_index();
    let missing: Vec<&str> = genes
        .iter()
        .map(String::as_str)
        .filter(|g| !index.contains_key(g))
        .collect();
    if !missing.is_empty() {
        bail!(
            "--init {}: its vocabulary does not fit: {} of the {} genes of the kept transcripts \
             are not in it: {}{}",
            path.display(),
            missing.len(),
            genes.len(),
            missing
                .iter()
                .take(20)
                .copied()
                .collect::<Vec<_>>()
                .join(", "),
            if missing.len() > 20 { ", …" } else { "" }
        );
    }
    Ok(init)
}

/// The provenance stored in the weights file (`seggpu.training`).
#[derive(Debug, Serialize)]
struct Provenance<'a> {
    version: &'static str,
    engine: String,
    seed: u64,
    steps: usize,
    stopped_by: &'static str,
    lr: f32,
    adam: AdamFacts,
    window: WindowSettings,
    holdout: f64,
    init_sha256: Option<&'a str>,
    data: DataFacts<'a>,
    validation: Validation,
}

#[derive(Debug, Serialize)]
struct AdamFacts {
    beta1: f32,
    beta2: f32,
    eps: f32,
    schedule: &'static str,
}

#[derive(Debug, Serialize)]
struct DataFacts<'a> {
    inputs: &'a std::collections::BTreeMap<&'static str, String>,
    genes: usize,
    #[serde(flatten)]
    counts: DataCounts,
}

/// The JSON training log written next to the model.
#[derive(Debug, Serialize)]
struct TrainingLog<'a> {
    version: &'static str,
    command_line: &'a [String],
    engine: String,
    architecture: Architecture,
    parameters: &'a SegmentParams,
    settings: &'a Settings,
    dtype: DtypeChoice,
    init: Option<String>,
    inputs: std::collections::BTreeMap<&'static str, String>,
    membership: &'a crate::io::MembershipReport,
    data: DataCounts,
    genes: usize,
    steps: usize,
    stopped_by: &'static str,
    loss: &'a [f32],
    validation: &'a [ValidationPoint],
    eval_every: Option<usize>,
    validation_stored_weights: Validation,
    model_sha256: &'a str,
    seconds: std::collections::BTreeMap<&'static str, f64>,
    seconds_total: f64,
    window_transcripts_per_second: f64,
}

/// A trained model, its file bytes and its log.
pub struct Trained {
    /// The model as stored (rounded to the dtype), with its sha256.
    pub model: Model,
    /// The weights file.
    pub bytes: Vec<u8>,
    /// The training log (JSON).
    pub log: Vec<u8>,
}

/// Graph parameters of a run: resolved by the caller from the starting model.
type ParamsOf<'a> = dyn Fn(&Model) -> Result<SegmentParams> + 'a;

/// Reads the slide, trains and serialises: everything but writing.
fn train_slide(
    input: &InputArgs,
    flags: &TrainFlags,
    params_of: &ParamsOf,
    out_name: &Path,
    backend: &BackendArgs,
    command_line: &[String],
    verbosity: Verbosity,
) -> Result<Trained> {
    let started = Instant::now();
    let progress = Progress {
        quiet: verbosity == Verbosity::Quiet,
    };
    flags.check()?;
    let init = match &flags.init {
        Some(path) => Some(Model::load(path)?),
        None => None,
    };
    let mode = match (&init, flags.bd_features) {
        (Some(m), _) => m.bd_features,
        (None, Some(choice)) => choice.mode(),
        (None, None) => BdFeatureMode::Props,
    };
    let mut seconds = std::collections::BTreeMap::new();
    let clock = Instant::now();
    let mut slide = read_slide(input, mode, &progress)?;
    seconds.insert("read", clock.elapsed().as_secs_f64());

    let clock = Instant::now();
    let genes = kept_genes(&slide.transcripts);
    if genes.is_empty() {
        bail!(
            "no transcript is left after filtering ({} rows read); check --qv-min and the control \
             prefixes",
            slide.transcripts.x.len()
        );
    }
    let n_genes = genes.len();
    let mut model = starting_model(flags, init, genes, mode)?;
    let init_sha = flags.init.as_ref().map(|_| model.sha256.clone());
    let params = params_of(&model)?;
    let score_cut = match params.score_cut {
        ScoreCut::Fixed(c) => c,
        ScoreCut::Auto => defaults::SCORE_CUT,
    };
    model.defaults = Some(StoredDefaults {
        dist_bd: Some(params.graph.dist_bd),
        dist_tx: params.graph.dist_tx,
        k_bd: Some(params.graph.k_bd),
        k_tx: Some(params.graph.k_tx),
        min_transcripts: None,
        no_dist_cap: params.graph.dist_tx.is_none().then_some(true),
        score_cut: matches!(params.score_cut, ScoreCut::Fixed(_)).then_some(score_cut),
    });
    let prepared = prepare::run(&mut slide.transcripts, &slide.nuclei, &model, &params)?;
    let data = TrainingData::new(
        &prepared,
        &slide.nuclei,
        &params.graph,
        flags.holdout,
        flags.seed,
    )?;
    seconds.insert("graphs", clock.elapsed().as_secs_f64());
    log::info!(
        "training data: {} kept transcripts ({} genes), {} nuclei, {} nuclear transcripts ({} for training, {} held out for validation)",
        data.counts.transcripts,
        n_genes,
        data.counts.nuclei,
        data.counts.nuclear_transcripts,
        data.counts.training,
        data.counts.held_out
    );
    if data.counts.held_out == 0 {
        log::warn!("no nuclear transcript is held out (--holdout {}): the validation accuracy is undefined", flags.holdout);
    }

    let settings = Settings {
        steps: flags.steps,
        minutes: flags.minutes,
        seed: flags.seed,
        lr: flags.lr,
        window: WindowSettings {
            size: flags.window,
            supervision_fraction: flags.supervision_fraction,
            random_negatives: flags.random_negatives,
        },
        eval_every: flags.eval_every,
        score_cut,
    };
    let arch = model.arch;
    let adam = AdamConfig::default();
    let mut engine = engine::open(backend, model, adam)?;
    // Validation runs on the CPU whatever trains: the same weights give the
    // same figures on every engine.
    let mut validator = CpuBackend::new();
    let outcome: Outcome =
        session::train(engine.as_mut(), &data, &settings, &mut validator, &progress)?;
    let engine_name = engine.describe();
    seconds.insert("train", outcome.seconds - outcome.validation_seconds);
    seconds.insert("validation", outcome.validation_seconds);

    // The weights as stored (rounded to the dtype) are validated once more:
    // that figure goes into the file.
    let clock = Instant::now();
    let dtype = flags.dtype.storage();
    let stored = weights::reload(out_name, weights::to_bytes(&outcome.model, dtype, &[])?)?;
    let final_validation = if flags.dtype == DtypeChoice::F32 {
        outcome.last().validation
    } else {
        validate(&stored, &data, score_cut, &mut validator)?
    };
    let provenance = Provenance {
        version: env!("CARGO_PKG_VERSION"),
        engine: engine.kind(),
        seed: flags.seed,
        steps: outcome.steps,
        stopped_by: outcome.stopped_by,
        lr: flags.lr,
        adam: AdamFacts {
            beta1: adam.beta1,
            beta2: adam.beta2,
            eps: adam.eps,
            schedule: "cosine from lr to 0.05·lr over --steps",
        },
        window: settings.window,
        holdout: flags.holdout,
        init_sha256: init_sha.as_deref(),
        data: DataFacts {
            inputs: &slide.spec.files(),
            genes: n_genes,
            counts: data.counts,
        },
        validation: final_validation,
    };
    let bytes = weights::to_bytes(
        &outcome.model,
        dtype,
        &[(weights::TRAINING_KEY, serde_json::to_string(&provenance)?)],
    )?;
    let model = weights::reload(out_name, bytes.clone())?;
    seconds.insert("write", clock.elapsed().as_secs_f64());
    let train_seconds = seconds["train"];
    let log = TrainingLog {
        version: env!("CARGO_PKG_VERSION"),
        command_line,
        engine: engine_name,
        architecture: arch,
        parameters: &params,
        settings: &settings,
        dtype: flags.dtype,
        init: flags.init.as_ref().map(|p| p.display().to_string()),
        inputs: slide.spec.files(),
        membership: &slide.membership,
        data: data.counts,
        genes: n_genes,
        steps: outcome.steps,
        stopped_by: outcome.stopped_by,
        loss: &outcome.losses,
        validation: &outcome.validations,
        eval_every: outcome.eval_every,
        validation_stored_weights: final_validation,
        model_sha256: &model.sha256,
        seconds,
        seconds_total: started.elapsed().as_secs_f64(),
        window_transcripts_per_second: outcome.window_transcripts as f64
            / train_seconds.max(f64::MIN_POSITIVE),
    };
    let log = serde_json::to_vec_pretty(&log)?;
    log::info!(
        "seggpu train: {} steps ({}) in {:.1} s on {}; validation accuracy {:.1}% on {} held-out nuclear transcripts",
        outcome.steps,
        outcome.stopped_by,
        outcome.seconds,
        engine.describe(),
        100.0 * final_validation.accuracy,
        final_validation.held_out
    );
    Ok(Trained { model, bytes, log })
}

/// The training log's path for a weights file: the extension replaced by `.training.json`.
pub fn log_path(model: &Path) -> PathBuf {
    model.with_extension("training.json")
}

/// Runs `seggpu train`.
pub fn run(
    args: &TrainArgs,
    input: &InputArgs,
    backend: &BackendArgs,
    command_line: &[String],
    verbosity: Verbosity,
) -> Result<()> {
    if args.out.is_dir() {
        bail!(
            "--out {} is a folder; give the weights file to write",
            args.out.display()
        );
    }
    let trained = train_slide(
        input,
        &args.flags,
        &|model| args.params(model),
        &args.out,
        backend,
        command_line,
        verbosity,
    )?;
    let log = log_path(&args.out);
    let mut staging = crate::staging::Staging::new();
    let model_tmp = staging.stage(&args.out)?;
    let log_tmp = staging.stage(&log)?;
    std::fs::write(&model_tmp, &trained.bytes)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    std::fs::write(&log_tmp, &trained.log)
        .with_context(|| format!("cannot write {}", log.display()))?;
    staging.commit()?;
    log::info!(
        "wrote {} (sha256 {}) and {}",
        args.out.display(),
        trained.model.sha256,
        log.display()
    );
    Ok(())
}

/// `seggpu segment --train`: trains on the slide with the segment run's
/// graph parameters (`args.params`), stages the weights file and the
/// training log in the output folder, and returns the model to segment with.
pub fn for_segment(
    args: &crate::pipeline::run::SegmentArgs,
    flags: &TrainFlags,
    input: &InputArgs,
    backend: &BackendArgs,
    out: &mut crate::output::OutputDir,
    verbosity: Verbosity,
) -> Result<Model> {
    let command_line: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let name = args.out.join(SEGMENT_MODEL_FILE);
    let trained = train_slide(
        input,
        flags,
        &|model| args.params(model),
        &name,
        backend,
        &command_line,
        verbosity,
    )?;
    std::fs::write(out.staged(SEGMENT_MODEL_FILE)?, &trained.bytes)
        .with_context(|| format!("cannot write {}", name.display()))?;
    std::fs::write(out.staged(SEGMENT_LOG_FILE)?, &trained.log)
        .with_context(|| format!("cannot write {}", args.out.join(SEGMENT_LOG_FILE).display()))?;
    Ok(trained.model)
}
