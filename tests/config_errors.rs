//! Config errors carry file:line:col, say what was expected and, for plugin names, list the valid ones.

use std::path::Path;

use spectra::core::config;
use spectra::core::error::ConfigError;
use spectra::kv_eval::KvEvalConfig;
use spectra::train::TrainConfig;
use third_party_plugin as _;

fn train_config(group: &str) -> String {
    format!(
        r#"(
    model: LipschitzMlp(),
    data: Idx(dir: "data/fashion-mnist", batch_size: 512),
    groups: [
{group}
    ],
    steps: 100,
    eval: (every: 50),
    output: "runs/test",
)"#
    )
}

fn parse_train(text: &str) -> Result<TrainConfig, ConfigError> {
    config::parse(text, Path::new("exp.ron"))
}

fn located(err: &ConfigError) -> (usize, usize) {
    let loc = err
        .location
        .unwrap_or_else(|| panic!("no line:col in `{err}`"));
    (loc.line, loc.col)
}

const GOOD_GROUP: &str = r#"        (name: "all", params: [All], optimizer: (type: "Sgd", cfg: (lr: 0.1)),
         constraints: [(type: "MaxEntryClip", cfg: (limit: 0.5))]),"#;

#[test]
fn a_valid_config_parses() {
    let cfg = parse_train(&train_config(GOOD_GROUP)).unwrap();
    assert_eq!(cfg.groups.len(), 1);
    assert_eq!(cfg.groups[0].constraints[0].typetag_name(), "MaxEntryClip");
}

#[test]
fn unknown_plugin_names_its_place_the_valid_names_and_the_likely_one() {
    let text = train_config(GOOD_GROUP).replace("MaxEntryClip", "MaxEntyClip");
    let err = parse_train(&text).unwrap_err();
    let msg = err.to_string();
    assert_eq!(located(&err).0, 6, "{msg}");
    assert!(msg.starts_with("exp.ron:6:"), "{msg}");
    assert!(
        msg.contains("unknown WeightConstraint `MaxEntyClip`"),
        "{msg}"
    );
    assert!(msg.contains("did you mean `MaxEntryClip`?"), "{msg}");
    assert!(
        msg.contains("valid names (WeightConstraint: ") && msg.contains("MaxEntryClip"),
        "{msg}"
    );
}

#[test]
fn misspelled_field_suggests_the_right_one() {
    let text = train_config(GOOD_GROUP).replace("limit: 0.5", "limt: 0.5");
    let err = parse_train(&text).unwrap_err();
    let msg = err.to_string();
    assert_eq!(located(&err).0, 6, "{msg}");
    assert!(msg.contains("unknown field `limt`"), "{msg}");
    assert!(msg.contains("did you mean `limit`?"), "{msg}");
}

#[test]
fn misspelled_top_level_field_is_caught() {
    let text = train_config(GOOD_GROUP).replace("steps: 100", "stesp: 100");
    let err = parse_train(&text).unwrap_err();
    let msg = err.to_string();
    assert_eq!(located(&err).0, 8, "{msg}");
    assert!(msg.contains("did you mean `steps`?"), "{msg}");
}

#[test]
fn missing_field_is_named_with_a_fix() {
    let text = train_config(GOOD_GROUP).replace("cfg: (limit: 0.5)", "cfg: ()");
    let err = parse_train(&text).unwrap_err();
    let msg = err.to_string();
    assert_eq!(located(&err).0, 6, "{msg}");
    assert!(msg.contains("missing field `limit`"), "{msg}");
    assert!(msg.contains("add `limit: ...`"), "{msg}");
}

#[test]
fn wrong_type_says_what_was_expected() {
    let text = train_config(GOOD_GROUP).replace("steps: 100", "steps: \"many\"");
    let err = parse_train(&text).unwrap_err();
    let msg = err.to_string();
    assert_eq!(located(&err).0, 8, "{msg}");
    assert!(msg.to_lowercase().contains("expected"), "{msg}");
}

#[test]
fn invalid_plugin_values_point_at_the_plugin() {
    let text = train_config(GOOD_GROUP).replace("limit: 0.5", "limit: -1.0");
    let err = parse_train(&text).unwrap_err();
    let msg = err.to_string();
    assert_eq!(located(&err), (6, 31), "{msg}");
    assert!(
        msg.contains("MaxEntryClip: limit must be a positive number"),
        "{msg}"
    );
}

#[test]
fn semantic_errors_name_the_field() {
    let err = parse_train(&train_config(GOOD_GROUP).replace("steps: 100", "steps: 0")).unwrap_err();
    assert!(err.to_string().contains("steps is 0"), "{err}");
    assert_eq!(located(&err).0, 8);
    let empty = train_config("");
    assert!(parse_train(&empty)
        .unwrap_err()
        .to_string()
        .contains("no parameter groups"));
}

#[test]
fn unknown_enum_variant_outside_plugins_lists_choices() {
    let text = train_config(GOOD_GROUP).replace("LipschitzMlp()", "LipschitzMLP()");
    let msg = parse_train(&text).unwrap_err().to_string();
    assert!(msg.contains("did you mean `LipschitzMlp`?"), "{msg}");
    assert!(msg.contains("LipschitzGpt"), "{msg}");
}

#[test]
fn unreadable_file_says_so() {
    let err = config::load::<TrainConfig>(Path::new("no/such/file.ron")).unwrap_err();
    assert!(
        err.to_string()
            .contains("no/such/file.ron: cannot read the config"),
        "{err}"
    );
}

#[test]
fn kv_configs_reject_budgets_that_cannot_hold() {
    let text = |budget: &str| {
        format!(
            r#"(
    model: Gguf(path: "m.gguf"),
    policies: [(type: "ValueNorm", cfg: (sinks: 8))],
    budgets: [{budget}],
    tasks: [Passkey(lengths: [512], depths: [0.5])],
    output: "runs/kv",
)"#
        )
    };
    let parse = |t: &str| config::parse::<KvEvalConfig>(t, Path::new("kv.ron"));
    assert!(parse(&text("Tokens(64)")).is_ok());
    let zero = parse(&text("Tokens(0)")).unwrap_err().to_string();
    assert!(zero.contains("budget 0"), "{zero}");
    let small = parse(&text("Tokens(8)")).unwrap_err();
    assert_eq!(located(&small).0, 3, "{small}");
    assert!(
        small
            .to_string()
            .contains("ValueNorm at budget Tokens(8): 8 sinks"),
        "{small}"
    );
}

/// Settings under which a run would report numbers that measure nothing.
#[test]
fn configs_that_would_report_empty_results_are_errors() {
    for (eval, expected) in [
        ("eval: (every: 50, windows: 0)", "eval.windows is 0"),
        ("eval: (every: 50, batch_size: 0)", "eval.batch_size is 0"),
    ] {
        let text = train_config(GOOD_GROUP).replace("eval: (every: 50)", eval);
        let err = parse_train(&text).unwrap_err();
        assert!(err.to_string().contains(expected), "{err}");
        assert_eq!(located(&err).0, 9, "{err}");
    }
    let kv = |policies: &str, tasks: &str| {
        config::parse::<KvEvalConfig>(
            &format!(
                r#"(
    model: Gguf(path: "m.gguf"),
    policies: [{policies}],
    budgets: [Tokens(64)],
    tasks: [{tasks}],
    output: "runs/kv",
)"#
            ),
            Path::new("kv.ron"),
        )
    };
    let passkey = "Passkey(lengths: [512], depths: [0.5])";
    let no_tasks = kv(r#"(type: "Full", cfg: ())"#, "").unwrap_err();
    assert!(no_tasks.to_string().contains("no tasks"), "{no_tasks}");
    assert_eq!(located(&no_tasks).0, 5, "{no_tasks}");
    let twice = r#"(type: "ValueNorm", cfg: (sinks: 8)), (type: "ValueNorm", cfg: (sinks: 8))"#;
    let dup = kv(twice, passkey).unwrap_err();
    assert!(
        dup.to_string().contains("`ValueNorm` is listed twice"),
        "{dup}"
    );
    assert_eq!(located(&dup).0, 3, "{dup}");
    let different = r#"(type: "ValueNorm", cfg: (sinks: 8)), (type: "ValueNorm", cfg: (sinks: 4))"#;
    assert!(kv(different, passkey).is_ok());
}

#[test]
fn an_empty_file_says_so_and_a_byte_order_mark_is_skipped() {
    for empty in ["", "  \n\t\n", "\u{feff}"] {
        let msg = parse_train(empty).unwrap_err().to_string();
        assert!(msg.contains("the config is empty"), "{msg}");
    }
    let with_bom = format!("\u{feff}{}", train_config(GOOD_GROUP));
    assert!(parse_train(&with_bom).is_ok());
}

/// An empty `output` (whose files would land in the current folder) and `checkpoint_every: 0`
/// (which was made 1) are refused at their place; they used to be accepted.
#[test]
fn an_empty_output_and_checkpoints_every_0_steps_are_refused_at_their_place() {
    let good = train_config(GOOD_GROUP);
    let empty = good.replace(r#"output: "runs/test""#, r#"output: """#);
    let err = parse_train(&empty).unwrap_err();
    assert!(err.to_string().contains("output is empty"), "{err}");
    assert_eq!(located(&err).0, 10, "{err}");
    let zero = good.replace(
        r#"output: "runs/test","#,
        "output: \"runs/test\",\n    checkpoint_every: 0,",
    );
    let err = parse_train(&zero).unwrap_err();
    assert!(err.to_string().contains("checkpoint_every is 0"), "{err}");
    assert_eq!(located(&err).0, 11, "{err}");
    let kv = r#"(
    model: Gguf(path: "m.gguf"),
    policies: [(type: "Full", cfg: ())],
    budgets: [Tokens(64)],
    tasks: [Passkey(lengths: [256], depths: [0.5])],
    output: "",
)"#;
    let err = config::parse::<KvEvalConfig>(kv, Path::new("kv.ron")).unwrap_err();
    assert!(err.to_string().contains("output is empty"), "{err}");
    assert_eq!(located(&err).0, 6, "{err}");
}

/// A constraint that needs the optimizer's bound on each update (SpectralSoftCap) in a group whose
/// optimizer gives none (AdamW) is refused when read, at the constraint in that group (not the first
/// mention of its name), naming the optimizers that pair; it used to pass `check` and fail at step 0.
#[test]
fn a_constraint_that_needs_an_update_bound_after_an_optimizer_without_one_is_refused() {
    let groups = r#"        (name: "hidden", params: [Role(Hidden)], optimizer: (type: "Muon", cfg: (lr: 0.1)),
         constraints: [(type: "SpectralSoftCap", cfg: (w_max: 1.0))]),
        (name: "head", params: [Role(Head)], optimizer: (type: "AdamW", cfg: (lr: 0.01)),
         constraints: [(type: "SpectralSoftCap", cfg: (w_max: 1.0))]),"#;
    let err = parse_train(&train_config(groups)).unwrap_err();
    let msg = err.to_string();
    assert_eq!(located(&err), (8, 32), "{msg}");
    assert!(
        msg.contains("group `head`: SpectralSoftCap needs an optimizer that bounds")
            && msg.contains("AdamW does not")
            && msg.contains("use an optimizer that does (Muon)")
            && msg.contains("SpectralNormalize"),
        "{msg}"
    );
    assert!(parse_train(&train_config(&groups.replace("AdamW", "Muon"))).is_ok());
}
