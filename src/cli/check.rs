//! `spectra check FILE.ron`: validate a config and print what would run.

use std::path::Path;

use spectra::train::config_error::model_error;
use spectra::train::sweep::{self, SweepConfig};
use spectra_core::config::{self, KvEvalConfig, TrainConfig};
use spectra_core::error::ConfigError;
use spectra_core::registry::to_ron;
use spectra_core::Error;
use spectra_models::memory_estimate::check_training_fits;

/// A file is a training config if its outermost fields include `groups`, a KV evaluation if they
/// include `policies`, a sweep if they include `methods`; the error of that kind is the one shown.
pub fn run(file: &Path) -> Result<(), Error> {
    let text = std::fs::read_to_string(file).map_err(|e| ConfigError {
        file: file.to_path_buf(),
        location: None,
        message: format!("cannot read the config: {e}"),
        help: Some("check the path; the experiments/ folder has examples".into()),
    })?;
    let fields = top_level_fields(&text);
    let has = |name: &str| fields.iter().any(|f| f == name);
    if has("policies") && !has("groups") {
        let cfg: KvEvalConfig = config::parse(&text, file)?;
        print_kv(file, &cfg)
    } else if has("methods") && !has("groups") {
        let cfg: SweepConfig = config::parse(&text, file)?;
        print_sweep(file, &cfg)
    } else {
        let cfg: TrainConfig = config::parse(&text, file)?;
        print_train(file, &cfg)?;
        print_routing(&text, file, &cfg)
    }
}

/// The field names of a RON text's outermost `( … )`, past comments and strings: enough to tell the
/// kinds of config apart before parsing one of them (whose errors then have their locations).
fn top_level_fields(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let (mut fields, mut depth, mut i) = (Vec::new(), 0usize, 0);
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            // Block comments nest in RON.
            let mut open = 1;
            i += 2;
            while i < chars.len() && open > 0 {
                match (chars[i], chars.get(i + 1).copied()) {
                    ('/', Some('*')) => (open, i) = (open + 1, i + 1),
                    ('*', Some('/')) => (open, i) = (open - 1, i + 1),
                    _ => {}
                }
                i += 1;
            }
            continue;
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
        } else if matches!(c, '(' | '[' | '{') {
            depth += 1;
        } else if matches!(c, ')' | ']' | '}') {
            depth = depth.saturating_sub(1);
        } else if depth == 1 && (c.is_alphabetic() || c == '_') {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            let name: String = chars[start..i].iter().collect();
            let mut j = i;
            while j < chars.len() && chars[j].is_whitespace() {
                j += 1;
            }
            if chars.get(j) == Some(&':') {
                fields.push(name);
            }
            continue;
        }
        i += 1;
    }
    fields
}

/// Every run of the grid, each config substituted and validated as `spectra sweep` would.
fn print_sweep(file: &Path, cfg: &SweepConfig) -> Result<(), Error> {
    let runs = sweep::plan(cfg)?;
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

/// Builds the model (on the CPU, from the data's vocabulary or image size) and shows which group each
/// parameter lands in: a group that matches nothing or a parameter no group takes is an error here.
fn print_routing(text: &str, file: &Path, cfg: &TrainConfig) -> Result<(), Error> {
    let data = spectra_models::data::open(&cfg.data, &cfg.model)?;
    check_training_fits(cfg, &data.input_kind(), &candle_core::Device::Cpu)
        .map_err(|e| e.in_file(text, file))?;
    let mut rng = spectra_core::rng::derived_rng(cfg.seed, 0);
    let model = spectra_models::build(
        &cfg.model,
        &data.input_kind(),
        &candle_core::Device::Cpu,
        &mut rng,
    )
    .map_err(|e| model_error(file, e))?;
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
    spectra::output::check(&cfg.output)?;
    println!("  output:   {}", cfg.output.display());
    Ok(())
}
