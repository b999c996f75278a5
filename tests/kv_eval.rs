//! `spectra kv` end to end on a tiny random-weight model with a byte-level vocabulary: the report's
//! numbers obey what must hold whatever the weights (a budget above the context changes nothing, a
//! small one compresses and saves memory), and passkey lengths the model cannot solve are left out.

use std::path::Path;

use spectra::core::config;
use spectra::kv_eval::{run, write_report, FULL};
use spectra::kv_eval::{KvEvalConfig, KvTask, PromptFormat, RulerTask};
use spectra::models::DecoderConfig;

mod llama_support;

use llama_support::{Tiny, HEAD_DIM, KV_HEADS, LAYERS};

fn config(tiny: &Tiny, dir: &Path) -> KvEvalConfig {
    let text = dir.join("text.txt");
    let passage = "It was the best of times, it was the worst of times, it was the age of wisdom. ";
    std::fs::write(&text, passage.repeat(8)).unwrap();
    let ron = format!(
        r#"(
            model: Gguf(path: {model:?}),
            policies: [
                (type: "Full", cfg: ()),
                (type: "StreamingLlm", cfg: (sinks: 2)),
                (type: "H2o", cfg: (recent_window: 4)),
                (type: "TriAttention", cfg: (stats: ObservationWindow(8), protect_prompt: false, slack: 8)),
            ],
            budgets: [Tokens(16), Tokens(1000)],
            tasks: [
                LanguageModelling(text: {text:?}, context: 96, scored: 40, passages: 2, chunk: 8),
                Passkey(lengths: [320], depths: [0.5]),
                Decode(text: {text:?}, contexts: [64], tokens: 20),
            ],
            prefill_chunk: 16,
            device: Cpu,
            output: {out:?},
        )"#,
        model = tiny.gguf_path(),
        out = dir.join("out"),
    );
    config::parse(&ron, Path::new("kv.ron")).unwrap()
}

#[test]
fn the_report_holds_what_must_hold_for_any_weights() {
    let tiny = Tiny::byte_level();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&tiny, dir.path());
    let report = run(&cfg, dir.path()).unwrap();

    let lm = &report.language_modelling[0];
    assert_eq!(lm.rows.len(), 3 * 2);
    assert!(lm.full.nll.is_finite() && lm.full.nll > 0.0);
    for row in &lm.rows {
        if row.budget == "1000" {
            // Never compressed: the same computation as Full, bit for bit.
            assert_eq!(row.delta_nll, 0.0, "{row:?}");
            assert_eq!(row.agreement, 1.0, "{row:?}");
            assert_eq!(row.compressions, 0, "{row:?}");
        } else {
            assert!(row.compressions > 0, "{row:?}");
            assert!(row.peak_kv_bytes < lm.full.peak_kv_bytes, "{row:?}");
            assert!(row.nll.is_finite(), "{row:?}");
            assert!((0.0..=1.0).contains(&row.agreement));
        }
    }

    // Random weights cannot find the key, so the length is reported and no policy is scored on it.
    let passkey = &report.passkey[0];
    assert!(passkey.lengths_used().is_empty());
    assert_eq!(passkey.lengths[0].length, 320);
    assert_eq!(passkey.lengths[0].full_correct, 0);
    assert_eq!(passkey.answers.len(), 1);
    assert_eq!(passkey.answers[0].policy, FULL);
    assert!(passkey.rows.iter().all(|r| r.total == 0));

    let decode = &report.decode[0];
    assert_eq!(decode.rows.len(), 1 + 3 * 2);
    assert_eq!(decode.rows[0].policy, FULL);
    let full_peak = decode.rows[0].peak_kv_bytes;
    for row in &decode.rows {
        assert!(row.tokens_per_second > 0.0);
        assert!((0.0..=1.0).contains(&row.eviction_share));
        assert!(row.prefill_tokens_per_second > 0.0);
        if row.budget == "16" {
            assert!(row.peak_kv_bytes < full_peak, "{row:?}");
        }
        if row.budget == "16" && row.policy == "StreamingLlm" {
            // Each arm runs its 64-token prompt itself in chunks of 16, compressed between them: the
            // cache never holds more than the budget and one chunk per head, prefill included, and
            // decoding grows into the 16 free rows a compaction leaves (f32 keys and values).
            let row_bytes = LAYERS * KV_HEADS * HEAD_DIM * 2 * 4;
            assert!(row.peak_kv_bytes <= (16 + 16) * row_bytes, "{row:?}");
        }
    }

    let out = dir.path().join("out");
    write_report(&out, Path::new("kv.ron"), &report).unwrap();
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        md.contains("## Summary") && md.contains("| StreamingLlm | 16 |"),
        "{md}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(
        json["language_modelling"][0]["rows"]
            .as_array()
            .unwrap()
            .len(),
        6
    );
    for svg in ["delta_nll.svg", "passkey.svg"] {
        assert!(std::fs::read_to_string(out.join(svg))
            .unwrap()
            .starts_with("<svg"));
    }
}

#[test]
fn missing_files_and_impossible_tasks_are_clear_errors() {
    let tiny = Tiny::byte_level();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&tiny, dir.path());
    cfg.model = DecoderConfig::Gguf {
        path: dir.path().join("missing.gguf"),
    };
    let err = run(&cfg, dir.path()).err().unwrap().to_string();
    assert!(err.contains("scripts/get-model.sh"), "{err}");

    let mut cfg = config(&tiny, dir.path());
    cfg.tasks = vec![KvTask::LanguageModelling {
        text: dir.path().join("text.txt"),
        context: 600,
        scored: 10,
        passages: 2,
        chunk: 8,
    }];
    let err = run(&cfg, dir.path()).err().unwrap().to_string();
    assert!(err.contains("fewer passages"), "{err}");

    let mut cfg = config(&tiny, dir.path());
    cfg.tasks = vec![KvTask::Passkey {
        lengths: vec![1200],
        depths: vec![0.5],
        trials: 1,
    }];
    let err = run(&cfg, dir.path()).err().unwrap().to_string();
    assert!(err.contains("trained on 1024"), "{err}");
}

#[test]
fn bad_kv_configs_name_the_line_and_the_fix() {
    let bad = r#"(
        model: Gguf(path: "m.gguf"),
        policies: [(type: "StreamingLlm", cfg: (sinks: 2))],
        budgets: [Tokens(64)],
        tasks: [LanguageModelling(text: "t.txt", context: 100, scored: 100)],
        output: "out",
    )"#;
    let err = config::parse::<KvEvalConfig>(bad, Path::new("kv.ron"))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("kv.ron:5") && err.contains("scored = 100"),
        "{err}"
    );
    let bad = bad.replace(
        "LanguageModelling(text: \"t.txt\", context: 100, scored: 100)",
        "Passkey(lengths: [1024], depths: [1.5])",
    );
    let err = config::parse::<KvEvalConfig>(&bad, Path::new("kv.ron"))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("depth 1.5 is outside [0, 1]"), "{err}");
    let parse = |task: &str| {
        let text = bad.replace("Passkey(lengths: [1024], depths: [1.5])", task);
        config::parse::<KvEvalConfig>(&text, Path::new("kv.ron"))
            .err()
            .map(|e| e.to_string())
    };
    let err = parse("Ruler(tasks: [niah_single_1, vt, niah_single_1], lengths: [4096])").unwrap();
    assert!(err.contains("`niah_single_1` is listed twice"), "{err}");
    let err = parse("Ruler(tasks: [cwe], lengths: [100])").unwrap();
    assert!(err.contains("length 100 is too short"), "{err}");
    let err = parse("Ruler(tasks: [niah_single], lengths: [4096])").unwrap();
    assert!(err.contains("did you mean `niah_single_1`"), "{err}");
    let err = parse("Ruler(tasks: [fwe], lengths: [4096], samples: 0)").unwrap();
    assert!(err.contains("samples = 0"), "{err}");
    assert_eq!(
        parse("Ruler(tasks: [niah_multikey_3, vt, cwe, fwe], lengths: [2048], query_aware: true, format: Plain)"),
        None
    );
}

/// A RULER-style task whose text is missing says how to get it.
#[test]
fn a_ruler_task_without_its_text_says_how_to_get_it() {
    let tiny = Tiny::byte_level();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&tiny, dir.path());
    cfg.tasks = vec![KvTask::Ruler {
        tasks: vec![RulerTask::NiahSingle1],
        lengths: vec![512],
        samples: 1,
        query_aware: false,
        data: dir.path().join("no-such-folder"),
        max_new_tokens: Some(4),
        format: PromptFormat::Plain,
        batch: 4,
    }];
    let err = spectra::kv_eval::run(&cfg, dir.path())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("scripts/get-ruler-data.sh"), "{err}");
}

/// The suite end to end on a random tiny model: it cannot answer, so `Full` fails and the policies
/// are not run, and the report says so.
#[test]
fn a_ruler_task_reports_full_and_leaves_out_what_it_fails() {
    let tiny = Tiny::byte_level();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("ruler");
    std::fs::create_dir_all(data.join("json")).unwrap();
    std::fs::create_dir_all(data.join("words")).unwrap();
    let essays = serde_json::json!({"text": "It was the best of times. It was the worst of times. ".repeat(20)});
    std::fs::write(data.join("json/PaulGrahamEssays.json"), essays.to_string()).unwrap();
    for (file, words) in [
        (
            "adjectivelist.txt",
            "quick\nlazy\nbrave\ncalm\neager\ngentle\nhappy\njolly\nkind\nlively\n",
        ),
        (
            "nounlist.txt",
            "fox\ndog\nowl\ncat\nant\nbee\ncow\nelk\ngnu\nhen\n",
        ),
        ("verblist.txt", "run\njump\n"),
        ("profanitylist.txt", "\n"),
    ] {
        std::fs::write(data.join("words").join(file), words).unwrap();
    }
    let mut cfg = config(&tiny, dir.path());
    cfg.tasks = vec![KvTask::Ruler {
        tasks: vec![RulerTask::NiahSingle1, RulerTask::NiahSingle2],
        lengths: vec![1000],
        samples: 2,
        query_aware: true,
        data,
        max_new_tokens: Some(4),
        format: PromptFormat::Plain,
        batch: 4,
    }];
    let out = dir.path().join("report");
    let report = spectra::kv_eval::run(&cfg, &out).unwrap();
    let r = &report.ruler[0];
    assert_eq!(r.length, 1000);
    assert_eq!(r.tasks, ["niah_single_1", "niah_single_2"]);
    assert_eq!(r.full.scores.len(), 2);
    assert!(r.full.scores.iter().all(|s| s.is_some()));
    assert_eq!(r.used, [false, false]);
    assert!(r
        .rows
        .iter()
        .all(|row| row.scores == [None, None] && row.average.is_none()));
    // Two samples per task, Full alone.
    assert_eq!(r.answers.len(), 4);
    assert!(r.compressed_tokens > 800.0 && r.compressed_tokens < 1000.0);
    assert!(r.full.intervals.iter().all(|i| i.is_some()));
    spectra::kv_eval::write_report(&out, Path::new("kv.ron"), &report).unwrap();
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("1000 tokens, **query-aware**"), "{md}");
    assert!(out.join("ruler.svg").exists());

    // Run again: every answer is read back, none asked again; a third sample is the only new work.
    let stored = out.join("ruler-answers.jsonl");
    let lines = || std::fs::read_to_string(&stored).unwrap().lines().count();
    assert_eq!(lines(), 1 + 4);
    let again = spectra::kv_eval::run(&cfg, &out).unwrap();
    assert_eq!(lines(), 1 + 4);
    let said = |r: &spectra::kv_eval::RulerResult| {
        r.answers
            .iter()
            .map(|a| (a.task.clone(), a.sample, a.answer.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(said(&again.ruler[0]), said(r));
    if let KvTask::Ruler { samples, .. } = &mut cfg.tasks[0] {
        *samples = 3;
    }
    let more = spectra::kv_eval::run(&cfg, &out).unwrap();
    assert_eq!(lines(), 1 + 6);
    assert_eq!(said(&more.ruler[0])[..2], said(r)[..2]);
    // Other settings are refused rather than mixed in.
    cfg.seed += 1;
    let err = spectra::kv_eval::run(&cfg, &out).err().unwrap().to_string();
    assert!(err.contains("other settings"), "{err}");
}

/// `generate` refuses a prompt and generation that run past the model's trained context, as `kv`
/// refuses such a task, and a folder given as the policy.
#[test]
fn generate_refuses_to_run_past_the_context_and_a_folder_as_policy() {
    let tiny = Tiny::byte_level();
    let model = tiny.gguf_path();
    let generate = |extra: &[&str], prompt: &str| {
        let mut args = vec![
            "generate",
            "--model",
            model.to_str().unwrap(),
            "--device",
            "Cpu",
        ];
        args.extend_from_slice(extra);
        args.push(prompt);
        std::process::Command::new(env!("CARGO_BIN_EXE_spectra"))
            .args(&args)
            .output()
            .unwrap()
    };
    // 1000 bytes of prompt + 100 tokens > the tiny model's 1024 positions.
    let long = generate(&["--max-tokens", "100"], &"a".repeat(1000));
    let err = String::from_utf8_lossy(&long.stderr);
    assert!(!long.status.success(), "{err}");
    assert!(
        err.contains("needs 1100 positions") && err.contains("1024"),
        "{err}"
    );
    let short = generate(&["--max-tokens", "4"], "abc");
    assert!(
        short.status.success(),
        "{}",
        String::from_utf8_lossy(&short.stderr)
    );
    let dir = tempfile::tempdir().unwrap();
    let folder = generate(&["--policy", dir.path().to_str().unwrap()], "abc");
    let err = String::from_utf8_lossy(&folder.stderr);
    assert!(
        !folder.status.success() && err.contains("is a folder"),
        "{err}"
    );
}

/// `spectra COMMAND FILE` (`check` or `kv` on a config).
fn spectra_on(command: &str, file: &Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_spectra"))
        .args([command, file.to_str().unwrap()])
        .output()
        .unwrap()
}

/// A KV evaluation of one Decode task of `text` on `model`, StreamingLLM at budget 16.
fn decode_config(model: &Path, text: &Path, out: &Path) -> String {
    format!(
        r#"(
    model: Gguf(path: {model:?}),
    policies: [(type: "StreamingLlm", cfg: (sinks: 2))],
    budgets: [Tokens(16)],
    tasks: [Decode(text: {text:?}, contexts: [64], tokens: 4)],
    device: Cpu,
    output: {out:?},
)"#
    )
}

/// An output folder that cannot be made is found before any evaluation: `check` and `kv` both say so.
#[test]
fn an_unwritable_output_is_refused_before_the_evaluation() {
    let tiny = Tiny::byte_level();
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("a-file");
    std::fs::write(&blocker, "x").unwrap();
    let text = dir.path().join("text.txt");
    std::fs::write(&text, "It was the best of times. ".repeat(20)).unwrap();
    let file = dir.path().join("kv.ron");
    std::fs::write(
        &file,
        decode_config(&tiny.gguf_path(), &text, &blocker.join("out")),
    )
    .unwrap();
    for command in ["check", "kv"] {
        let out = spectra_on(command, &file);
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(!out.status.success(), "{command}: {stdout}");
        assert!(stderr.contains("--output"), "{command}: {stderr}");
        // Refused before the work: no decoding table was printed.
        assert!(!stdout.contains("tokens/s"), "{command}: {stdout}");
    }
}

/// `generate --chat` sends the prompt as a user's message through the file's chat template (ChatML
/// where, as here, it has none), as `spectra serve` does.
#[test]
fn generate_chat_renders_the_prompt_through_the_chat_template() {
    let tiny = Tiny::byte_level();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_spectra"))
        .args(["generate", "--model", tiny.gguf_path().to_str().unwrap()])
        .args(["--device", "Cpu", "--chat", "--max-tokens", "3", "hi"])
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    let rendered = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n";
    assert!(stdout.starts_with(rendered), "{stdout}");
    // One token per byte in the tiny model's vocabulary.
    assert!(
        stderr.contains(&format!("prompt {} tokens", rendered.len())),
        "{stderr}"
    );
}

/// `format: Template` wraps a RULER prompt in the model's own chat template: what the template puts
/// before and after a user's message, cut around it (here a template with a system message); ChatML
/// where the file has none; and a template that does not place the message as written is an error
/// naming the setting.
#[test]
fn the_template_format_is_the_files_chat_template_around_the_message() {
    let tiny = Tiny::byte_level();
    let (_, mut tokenizer) = spectra::models::llama::Llama::from_gguf(
        &tiny.gguf_path(),
        &candle_core::Device::Cpu,
        spectra::models::llama::WeightFormat::AsStored,
    )
    .unwrap();
    let chatml = PromptFormat::ChatMl.turn(&tokenizer).unwrap();
    let none = PromptFormat::Template.turn(&tokenizer).unwrap();
    assert_eq!((none.open, none.close), (chatml.open, chatml.close));
    tokenizer.chat_template = Some(
        "{{ '<|im_start|>system\\nBe brief.<|im_end|>\\n' }}{% for m in messages %}<|im_start|>\
         {{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}\
         {% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
            .into(),
    );
    let turn = PromptFormat::Template.turn(&tokenizer).unwrap();
    assert_eq!(
        turn.open,
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n"
    );
    assert_eq!(turn.close, PromptFormat::CHATML_ANSWER);
    tokenizer.chat_template = Some("{{ messages[0].content | upper }}".into());
    let err = PromptFormat::Template
        .turn(&tokenizer)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("Ruler.format") && err.contains("ChatMl"),
        "{err}"
    );
}

/// `check` finds a missing model or text file, naming it and the script that fetches it, as `kv`
/// would only after loading the model (it used to pass `check`).
#[test]
fn check_names_a_missing_model_or_text_and_how_to_get_it() {
    let tiny = Tiny::byte_level();
    let dir = tempfile::tempdir().unwrap();
    let config = |model: &Path, text: &Path| {
        let file = dir.path().join("kv.ron");
        std::fs::write(&file, decode_config(model, text, &dir.path().join("out"))).unwrap();
        let out = spectra_on("check", &file);
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let missing_text = dir.path().join("no-text.txt");
    let err = config(&tiny.gguf_path(), &missing_text);
    assert!(
        err.contains("no-text.txt: not found") && err.contains("scripts/get-data.sh"),
        "{err}"
    );
    let err = config(&dir.path().join("no-model.gguf"), &missing_text);
    assert!(
        err.contains("no-model.gguf: not found") && err.contains("scripts/get-model.sh"),
        "{err}"
    );
}

/// A task longer than the model's context is refused naming the setting and the model's limit
/// before any task runs; a LanguageModelling context of 100,000 used to ask for a longer text.
#[test]
fn a_length_beyond_the_models_context_names_the_setting_and_the_limit() {
    let tiny = Tiny::byte_level();
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("text.txt");
    std::fs::write(&text, "It was the best of times. ".repeat(20)).unwrap();
    let config = decode_config(&tiny.gguf_path(), &text, &dir.path().join("out")).replace(
        "tasks: [",
        "tasks: [LanguageModelling(text: TEXT, context: 100000, scored: 64), ",
    );
    let file = dir.path().join("kv.ron");
    std::fs::write(&file, config.replace("TEXT", &format!("{text:?}"))).unwrap();
    let out = spectra_on("kv", &file);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("LanguageModelling.context") && err.contains("needs 100000 positions"),
        "{err}"
    );
    assert!(!err.contains("longer text"), "{err}");
}

/// The reasoning task end to end on the tiny random model (which cannot solve anything): every arm
/// answers every problem through the batching engine, the answers are stored and read back on a
/// second run without generating again, the budget bounds the cache during generation, and the
/// report has the table and the chart.
#[test]
fn the_reasoning_task_answers_every_problem_per_arm_and_continues_from_the_stored_answers() {
    let tiny = Tiny::byte_level();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("reasoning");
    std::fs::create_dir_all(data.join("gsm8k")).unwrap();
    let problems: String = (0..3)
        .map(|i| {
            format!(
                "{}\n",
                serde_json::json!({"question": format!("What is {i} + {i}?"), "answer": format!("so\n#### {}", 2 * i)})
            )
        })
        .collect();
    std::fs::write(data.join("gsm8k/test.jsonl"), problems).unwrap();
    let mut cfg = config(&tiny, dir.path());
    cfg.tasks = vec![KvTask::Reasoning {
        sets: vec![spectra::kv_eval::ProblemSet::Gsm8k],
        problems: 3,
        max_new_tokens: 40,
        budgets: Some(vec![spectra::core::Budget::Tokens(24)]),
        data,
        batch: 2,
    }];
    let out = dir.path().join("report");
    let report = run(&cfg, &out).unwrap();
    let r = &report.reasoning[0];
    assert_eq!(r.problems, 3);
    // Full and the three evicting policies at the one budget.
    assert_eq!(r.rows.len(), 4);
    assert_eq!(r.answers.len(), 12);
    let full = &r.rows[0];
    assert_eq!(full.policy, FULL);
    assert!(full.tokens_per_second.is_some());
    for row in &r.rows[1..] {
        assert_eq!(row.budget, "24");
        // The bounded caches hold less than Full's at its largest: 24 entries and a chunk's headroom
        // against a prompt of over 100 bytes and its answer.
        assert!(row.peak_kv_bytes < full.peak_kv_bytes, "{row:?} {full:?}");
    }
    assert!(r
        .answers
        .iter()
        .all(|a| a.tokens <= 40 && a.reference.parse::<u32>().is_ok()));
    write_report(&out, Path::new("kv.ron"), &report).unwrap();
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        md.contains("## Reasoning under decode-time compression: gsm8k"),
        "{md}"
    );
    assert!(out.join("reasoning-gsm8k.svg").exists());
    let again = run(&cfg, &out).unwrap();
    let texts = |r: &spectra::kv_eval::ReasoningResult| {
        r.answers.iter().map(|a| a.text.clone()).collect::<Vec<_>>()
    };
    assert_eq!(texts(&again.reasoning[0]), texts(r));
    assert!(again.reasoning[0]
        .rows
        .iter()
        .all(|row| row.tokens_per_second.is_none()));
}
