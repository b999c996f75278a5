//! `spectra check FILE.ron`: validate a config and print what would run.

use std::path::Path;

use spectra::train::sweep::{self, SweepConfig};
use spectra_core::config::{self, KvEvalConfig, TrainConfig};
use spectra_core::error::ConfigError;
use spectra_core::registry::to_ron;
use spectra_core::Error;

/// A file is a training config if it has `groups`, a KV evaluation if it has `policies`, a sweep if it
/// has `methods`; the error of the kind it resembles is the one shown.
pub fn run(file: &Path) -> Result<(), Error> {
    let text = std::fs::read_to_string(file).map_err(|e| ConfigError {
        file: file.to_path_buf(),
        location: None,
        message: format!("cannot read the config: {e}"),
        help: Some("check the path; the experiments/ folder has examples".into()),
    })?;
    if looks_like_kv(&text) {
        let cfg: KvEvalConfig = config::parse(&text, file)?;
        print_kv(file, &cfg)
    } else if looks_like_sweep(&text) {
        let cfg: SweepConfig = config::parse(&text, file)?;
        print_sweep(file, &cfg)
    } else {
        let cfg: TrainConfig = config::parse(&text, file)?;
        print_train(file, &cfg)?;
        print_routing(&text, file, &cfg)
    }
}

fn looks_like_kv(text: &str) -> bool {
    text.contains("policies") && !text.contains("groups")
}

fn looks_like_sweep(text: &str) -> bool {
    text.contains("methods") && !text.contains("groups")
}

/// Every run of the grid, each config substituted and validated as `spectra sweep` would.
fn print_sweep(file: &Path, cfg: &SweepConfig) -> Result<(), Error> {
    let runs = sweep::plan(cfg)?;
    println!("{}: a sweep of {} runs", file.display(), runs.len());
    println!("  output:   {}", cfg.output.display());
    println!("  parallel: {}", cfg.parallel);
    if let Some(steps) = cfg.steps {
        println!("  steps:    {steps} (every run)");
    }
    for run in &runs {
        println!("    {} -> {}", run.method, run.folder.display());
    }
    Ok(())
}

fn print_train(file: &Path, cfg: &TrainConfig) -> Result<(), Error> {
    let device = cfg.device.resolve()?;
    println!("{}: a training experiment", file.display());
    println!("  model:    {}", to_ron(&cfg.model));
    println!("  data:     {}", to_ron(&cfg.data));
    println!(
        "  steps:    {} ({:?} schedule), seed {}",
        cfg.steps, cfg.schedule, cfg.seed
    );
    let windows = cfg
        .eval
        .windows
        .map_or("the whole validation split".to_string(), |w| {
            format!("{w} windows")
        });
    println!("  eval:     every {} steps on {windows}", cfg.eval.every);
    println!("  device:   {} -> {device:?}", cfg.device);
    println!("  output:   {}", cfg.output.display());
    println!("  groups (a parameter goes to the first group that selects it):");
    for g in &cfg.groups {
        let selectors: Vec<String> = g.params.iter().map(|s| s.to_string()).collect();
        println!("    {} <- [{}]", g.name, selectors.join(", "));
        println!("      optimizer:  {}", to_ron(&g.optimizer));
        for c in &g.constraints {
            println!("      constraint: {}", to_ron(c));
        }
    }
    Ok(())
}

/// Builds the model (on the CPU, from the data's vocabulary or image size) and shows which group each
/// parameter lands in: a group that matches nothing or a parameter no group takes is an error here.
fn print_routing(text: &str, file: &Path, cfg: &TrainConfig) -> Result<(), Error> {
    let data = spectra_models::data::open(&cfg.data, &cfg.model)?;
    let mut rng = spectra_core::rng::derived_rng(cfg.seed, 0);
    let model = spectra_models::build(
        &cfg.model,
        &data.input_kind(),
        &candle_core::Device::Cpu,
        &mut rng,
    )?;
    let params: Vec<_> = model
        .params()
        .iter()
        .map(|p| (p.name.clone(), p.role))
        .collect();
    let routed = config::route_params(&params, &cfg.groups).map_err(|e| e.in_file(text, file))?;
    println!("  parameters ({} in all):", model.params().len());
    for (i, g) in cfg.groups.iter().enumerate() {
        let mine: Vec<String> = model
            .params()
            .iter()
            .zip(&routed)
            .filter(|(_, r)| r.group == i)
            .map(|(p, _)| format!("{} {:?}", p.name, p.var.dims()))
            .collect();
        println!("    {}: {}", g.name, mine.join(", "));
    }
    Ok(())
}

fn print_kv(file: &Path, cfg: &KvEvalConfig) -> Result<(), Error> {
    let device = cfg.device.resolve()?;
    println!("{}: a KV-cache evaluation", file.display());
    println!("  model:    {}", to_ron(&cfg.model));
    println!("  device:   {} -> {device:?}", cfg.device);
    println!("  budgets:  {}", to_ron(&cfg.budgets));
    println!("  policies:");
    for p in &cfg.policies {
        println!("    {}", to_ron(p));
    }
    println!("  tasks:");
    for t in &cfg.tasks {
        println!("    {}", to_ron(t));
    }
    println!("  output:   {}", cfg.output.display());
    Ok(())
}
