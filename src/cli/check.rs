//! `spectra check FILE.ron`: validate a config and print what would run.

use std::path::Path;

use spectra::kv_eval::KvEvalConfig;
use spectra::train::sweep::{self, SweepConfig};
use spectra::train::TrainConfig;
use spectra_core::config;
use spectra_core::registry::to_ron;
use spectra_core::Error;

/// A file is a training config if its outermost fields include `groups`, a KV evaluation if they
/// include `policies`, a sweep if they include `methods`; the error of that kind is the one shown.
pub fn run(file: &Path) -> Result<(), Error> {
    let text = config::read(file)?;
    let fields = top_level_fields(&text, file);
    let has = |name: &str| fields.iter().any(|f| f == name);
    if has("policies") && !has("groups") {
        let cfg: KvEvalConfig = config::parse(&text, file)?;
        print_kv(file, &cfg)
    } else if has("methods") && !has("groups") {
        let cfg: SweepConfig = config::parse(&text, file)?;
        print_sweep((file, &text), &cfg)
    } else {
        let cfg: TrainConfig = config::parse(&text, file)?;
        print_train(file, &cfg)?;
        print_routing(file, &cfg)
    }
}

/// The field names of a config's outermost `( … )`, as RON reads them: enough to tell the kinds of
/// config apart before parsing one of them (whose errors then have their locations). Text that is not
/// RON has none, and is parsed as a training config to say where it goes wrong.
fn top_level_fields(text: &str, file: &Path) -> Vec<String> {
    match config::parse_ron::<ron::Value>(text, file) {
        Ok(ron::Value::Map(fields)) => fields
            .keys()
            .filter_map(|k| match k {
                ron::Value::String(name) => Some(name.clone()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Every run of the grid, each config with its grid values set and validated as `spectra sweep` would.
fn print_sweep((file, text): (&Path, &str), cfg: &SweepConfig) -> Result<(), Error> {
    let runs = sweep::plan(cfg, (file, text))?;
    println!("{}: a sweep of {} runs", file.display(), runs.len());
    spectra::output::check(&cfg.output)?;
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
    spectra::output::check(&cfg.output)?;
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

/// Builds the model (on the CPU, from the data's vocabulary or image size) as `spectra train` does and
/// shows which group each parameter lands in: a group that matches nothing or a parameter no group
/// takes is an error here.
fn print_routing(file: &Path, cfg: &TrainConfig) -> Result<(), Error> {
    let setup = spectra::train::setup::build(cfg, file, &candle_core::Device::Cpu)?;
    let params = setup.model.params();
    println!("  parameters ({} in all):", params.len());
    for (i, g) in cfg.groups.iter().enumerate() {
        let mine: Vec<String> = params
            .iter()
            .zip(&setup.routed)
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
    spectra::kv_eval::check_files(cfg)?;
    spectra::output::check(&cfg.output)?;
    println!("  output:   {}", cfg.output.display());
    Ok(())
}
