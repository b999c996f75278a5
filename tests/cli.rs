//! The `spectra` binary: list, check (training, KV and sweep configs), version, a closed output pipe.

use std::process::{Command, Output};

fn spectra(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_spectra"))
        .args(args)
        .output()
        .expect("spectra runs")
}

/// `spectra check FILE`'s output, which must succeed.
fn check_ok(file: &str) -> String {
    let out = spectra(&["check", file]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn write_config(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

/// A one-block GPT config on a small corpus written into `dir`. `groups` is the value of `groups:`, which
/// starts on line 4, so a test can expect an error's line inside it.
fn tiny_gpt_config(dir: &tempfile::TempDir, groups: &str) -> String {
    let corpus = write_config(dir, "corpus.txt", &"abc ".repeat(100));
    format!(
        r#"(
    model: LipschitzGpt(d_model: 32, blocks: 1, heads: 2, seq_len: 8),
    data: Text(path: {corpus:?}, batch_size: 4),
    groups: {groups},
    steps: 10,
    eval: (every: 5),
    output: "runs/x",
)"#
    )
}

#[test]
fn version_prints_the_crate_version() {
    let out = spectra(&["--version"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn list_prints_plugins_with_default_configs() {
    let out = spectra(&["list"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for family in [
        "WeightConstraint (constraint):",
        "Optimizer (optimizer):",
        "KvEvictionPolicy (policy):",
    ] {
        assert!(text.contains(family), "{text}");
    }
    let policies = String::from_utf8_lossy(&spectra(&["list", "policy"]).stdout).into_owned();
    assert!(!policies.contains("WeightConstraint"), "{policies}");
    let bad = spectra(&["list", "gpus"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown plugin family `gpus`"));
}

#[test]
fn check_accepts_a_good_config_and_prints_what_would_run() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = write_config(
        &dir,
        "corpus.txt",
        &"To be, or not to be: that is the question.\n".repeat(40),
    );
    let file = write_config(
        &dir,
        "good.ron",
        &format!(
            r#"(
    model: LipschitzGpt(d_model: 64, blocks: 2, seq_len: 16),
    data: Text(path: {corpus:?}, batch_size: 8),
    groups: [
        (name: "embedding", params: [Role(Embedding)], optimizer: (type: "Sgd", cfg: (lr: 0.1))),
        (name: "rest", params: [All], optimizer: (type: "Sgd", cfg: (lr: 0.1))),
    ],
    steps: 10,
    eval: (every: 5, windows: 16),
    device: Cpu,
    output: "runs/x",
)"#
        ),
    );
    let stdout = check_ok(&file);
    assert!(stdout.contains("a training experiment"), "{stdout}");
    assert!(stdout.contains("rest <- [All]"), "{stdout}");
    assert!(stdout.contains("on 16 windows"), "{stdout}");
    assert!(stdout.contains("embedding: embed [64, "), "{stdout}");
}

#[test]
fn check_plans_every_run_of_a_sweep() {
    let dir = tempfile::tempdir().unwrap();
    let train = write_config(
        &dir,
        "train.ron",
        &tiny_gpt_config(
            &dir,
            r#"[(name: "all", params: [All], optimizer: (type: "Muon", cfg: (lr: 0.1)),
              constraints: [(type: "SpectralSoftCap", cfg: (w_max: 2.0))])]"#,
        ),
    );
    let sweep = |grid: &str| {
        format!(
            r#"(
    output: "runs/sweep",
    methods: [(name: "Muon + SpectralSoftCap", config: {train:?}, grid: {grid})],
)"#
        )
    };
    let good = write_config(
        &dir,
        "sweep.ron",
        &sweep(r#"{"w_max": [1.5, 3.0], "lr": [0.1]}"#),
    );
    let out = spectra(&["check", &good]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("a sweep of 2 runs"), "{stdout}");
    assert!(stdout.contains("lr=0.1,w_max=3"), "{stdout}");
    let bad = write_config(&dir, "bad_sweep.ron", &sweep(r#"{"wmax": [1.5]}"#));
    let out = spectra(&["check", &bad]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("`wmax`"), "{stderr}");
}

#[test]
fn check_reports_a_group_that_matches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_config(
        &dir,
        "unused.ron",
        &tiny_gpt_config(
            &dir,
            r#"[
        (name: "all", params: [All], optimizer: (type: "Sgd", cfg: (lr: 0.1))),
        (name: "gains", params: [Role(Vector)], optimizer: (type: "Sgd", cfg: (lr: 0.1))),
    ]"#,
        ),
    );
    let out = spectra(&["check", &file]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("unused.ron:6:") && stderr.contains("group `gains` matches no parameter"),
        "{stderr}"
    );
}

#[test]
fn check_fails_on_a_bad_config_with_its_location() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_config(
        &dir,
        "bad.ron",
        r#"(
    model: Gguf(path: "m.gguf"),
    policies: [(type: "StreamingLmm", cfg: ())],
    budgets: [Tokens(64)],
    tasks: [],
    output: "runs/kv",
)"#,
    );
    let out = spectra(&["check", &file]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bad.ron:3:"), "{stderr}");
    assert!(stderr.contains("did you mean `StreamingLlm`?"), "{stderr}");
}

#[test]
fn check_refuses_a_gpu_the_build_cannot_use() {
    if cfg!(feature = "cuda") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = write_config(
        &dir,
        "gpu.ron",
        r#"(
    model: LipschitzMlp(),
    data: Idx(dir: "d", batch_size: 8),
    groups: [(name: "all", params: [All], optimizer: (type: "Sgd", cfg: (lr: 0.1)))],
    steps: 10,
    eval: (every: 5),
    device: Cuda(0),
    output: "runs/x",
)"#,
    );
    let out = spectra(&["check", &file]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--features cuda"));
}

#[test]
fn a_reader_that_closes_the_pipe_early_is_no_panic() {
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_spectra"))
        .arg("list")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spectra runs");
    // Closed before the child's first print (it is still starting up), as `spectra list | head -0` does.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// SIGTERM, which `timeout`, schedulers and container stops send, is an interrupt like Ctrl-C: the
/// run stops after its step with a checkpoint that `--resume` continues.
#[cfg(unix)]
#[test]
fn sigterm_stops_training_with_a_checkpoint_that_resumes_and_a_second_writer_is_refused() {
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let groups = r#"[
        (name: "embedding", params: [Role(Embedding)], optimizer: (type: "Sgd", cfg: (lr: 0.1))),
        (name: "rest", params: [All], optimizer: (type: "Sgd", cfg: (lr: 0.1))),
    ]"#;
    let config = tiny_gpt_config(&dir, groups).replace("steps: 10", "steps: 1000000");
    let file = write_config(&dir, "long.ron", &config);
    let output = dir.path().join("run");
    let output = output.to_str().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_spectra"))
        .args(["train", &file, "--output", output, "--quiet"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spectra runs");
    // Once training steps are being written, the run is past its setup.
    let metrics = dir.path().join("run/metrics.jsonl");
    let started = Instant::now();
    while !std::fs::read_to_string(&metrics)
        .map(|m| m.contains("\"kind\":\"train\""))
        .unwrap_or(false)
    {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no training step within 2 minutes"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // A second writer to the same folder, fresh or resuming, is refused while the first runs (two
    // used to interleave their metrics line by line).
    for extra in [&[][..], &["--resume"][..]] {
        let second =
            spectra(&[&["train", &file, "--output", output, "--quiet"][..], extra].concat());
        let err = String::from_utf8_lossy(&second.stderr);
        assert!(!second.status.success(), "{err}");
        assert!(err.contains("another spectra process is writing"), "{err}");
    }
    // SAFETY: kill(2) on the child's pid, which has not been waited for.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    // A stop has its own status, is not reported as a result, and promises no report.
    assert_eq!(
        out.status.code(),
        Some(i32::from(spectra::train::STOPPED_EXIT_STATUS)),
        "{stdout}\n{stderr}"
    );
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert!(
        stdout.contains("continue with:") && stdout.contains("--resume"),
        "{stdout}"
    );
    assert!(
        stdout.contains("not finished; the last evaluation, at step ")
            && stdout.contains("report.md comes when the run finishes"),
        "{stdout}"
    );
    assert!(!dir.path().join("run/report.md").exists());
    assert!(dir.path().join("run/checkpoint.safetensors").exists());
    // The resumed run continues from the checkpoint's step: one more step, then it stops again.
    let done = |dir: &std::path::Path| -> u64 {
        std::fs::read_to_string(dir.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .filter(|l| l.contains("\"kind\":\"train\""))
            .count() as u64
    };
    let before = done(&dir.path().join("run"));
    let stop_at = (before + 1).to_string();
    let resumed = spectra(&[
        "train",
        &file,
        "--output",
        output,
        "--resume",
        "--stop-at",
        &stop_at,
        "--quiet",
    ]);
    assert_eq!(
        resumed.status.code(),
        Some(i32::from(spectra::train::STOPPED_EXIT_STATUS)),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    assert_eq!(done(&dir.path().join("run")), before + 1);
}

/// The kind of config is decided by its outermost fields, not by words anywhere in the file: a KV
/// evaluation whose comments speak of groups and methods is still checked as one.
#[test]
fn check_tells_config_kinds_apart_by_their_fields_not_their_comments() {
    let dir = tempfile::tempdir().unwrap();
    // `check` looks for the model file, not into it.
    let model = dir.path().join("m.gguf");
    std::fs::write(&model, "").unwrap();
    let file = write_config(
        &dir,
        "kv.ron",
        &format!(
            r#"// Compares eviction groups (no training groups here) and methods: "groups: [...]"
(
    /* nested /* comment */ with groups: */
    model: Gguf(path: {model:?}),
    policies: [(type: "StreamingLlm", cfg: (sinks: 4))],
    budgets: [Tokens(64)],
    tasks: [Passkey(lengths: [512], depths: [0.5])],
    output: "runs/kv-groups",
)"#
        ),
    );
    let stdout = check_ok(&file);
    assert!(stdout.contains("a KV-cache evaluation"), "{stdout}");
}

/// Counts that must be at least 1 are refused at 0, naming the flag (they used to be made 1, and
/// `perplexity --chunks 0` printed "perplexity NaN over 0 chunks"); a missing policy file is named
/// (it was parsed as inline RON: "1:1: Unexpected char"); and a budget without a policy, which would
/// evict nothing, is refused saying so; all before any model is loaded.
#[test]
fn zero_counts_and_a_budget_without_a_policy_are_refused() {
    let full = r#"(type: "Full", cfg: ())"#;
    let cases: [(&[&str], &str); 5] = [
        (&["generate", "--chunk", "0", "Hi"], "--chunk"),
        (
            &["perplexity", "--text", "t.txt", "--chunks", "0"],
            "--chunks",
        ),
        (
            &[
                "calibrate",
                "--text",
                "t.txt",
                "--out",
                "s.st",
                "--chunk",
                "0",
            ],
            "--chunk",
        ),
        (
            &[
                "calibrate",
                "--text",
                "t.txt",
                "--out",
                "s.st",
                "--max-tokens",
                "0",
            ],
            "--max-tokens",
        ),
        (
            &["generate", "--budget", "0", "--policy", full, "Hi"],
            "--budget",
        ),
    ];
    for (args, flag) in cases {
        let out = spectra(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(
            stderr.contains(flag) && stderr.contains("at least 1"),
            "{args:?}: {stderr}"
        );
    }
    let out = spectra(&[
        "generate",
        "--model",
        "no-such.gguf",
        "--budget",
        "64",
        "Hi",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("--budget") && stderr.contains("--policy"),
        "{stderr}"
    );
}

/// `calibrate` to a path it cannot write advises its own flag, `--out` (it advised `output:` or
/// `--output`, which it does not have), before the model is loaded.
#[test]
fn calibrate_to_an_unwritable_path_names_its_out_flag() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let out_path = file.join("stats.safetensors");
    let out = spectra(&[
        "calibrate",
        "--model",
        "no-such.gguf",
        "--text",
        "t.txt",
        "--out",
        out_path.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("--out") && !stderr.contains("--output"),
        "{stderr}"
    );
}

/// A damaged checkpoint with none before it: the advice says how to start afresh (another folder,
/// or which files to move), and following it works. It used to say "run without --resume", which
/// refused because a checkpoint was there and said "continue it with --resume".
#[test]
fn a_damaged_last_checkpoint_says_how_to_start_afresh_and_that_works() {
    let dir = tempfile::tempdir().unwrap();
    let groups = r#"[(name: "all", params: [All], optimizer: (type: "Sgd", cfg: (lr: 0.1)))]"#;
    let file = write_config(&dir, "run.ron", &tiny_gpt_config(&dir, groups));
    let output = dir.path().join("run");
    std::fs::create_dir_all(&output).unwrap();
    std::fs::write(output.join("checkpoint.safetensors"), "not a checkpoint").unwrap();
    let out_dir = output.to_str().unwrap();
    let resumed = spectra(&["train", &file, "--output", out_dir, "--resume", "--quiet"]);
    let err = String::from_utf8_lossy(&resumed.stderr);
    assert!(!resumed.status.success());
    assert!(
        err.contains("--output DIR")
            && err
                .contains("move checkpoint.safetensors and checkpoint.previous.safetensors out of"),
        "{err}"
    );
    std::fs::rename(
        output.join("checkpoint.safetensors"),
        dir.path().join("damaged.safetensors"),
    )
    .unwrap();
    let fresh = spectra(&["train", &file, "--output", out_dir, "--quiet"]);
    assert!(
        fresh.status.success(),
        "{}",
        String::from_utf8_lossy(&fresh.stderr)
    );
}

/// A reader that goes away (`spectra train … | head -1`) stops training as a signal does: the next
/// step ends with a checkpoint and a message, and the summary goes to stderr. It used to end the
/// process by SIGPIPE with no checkpoint and no word.
#[test]
fn a_closed_stdout_stops_training_with_a_checkpoint() {
    use std::io::BufRead;
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let groups = r#"[(name: "all", params: [All], optimizer: (type: "Sgd", cfg: (lr: 0.1)))]"#;
    let config = tiny_gpt_config(&dir, groups)
        .replace("steps: 10", "steps: 1000000")
        .replace("every: 5", "every: 20");
    let file = write_config(&dir, "long.ron", &config);
    let output = dir.path().join("run");
    let mut child = Command::new(env!("CARGO_BIN_EXE_spectra"))
        .args(["train", &file, "--output", output.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spectra runs");
    // The first line (the evaluation at step 0), read on a thread so that the wait is bounded.
    let stdout = child.stdout.take().unwrap();
    let (sent, first) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = std::io::BufReader::new(stdout);
        let mut line = String::new();
        let _ = reader.read_line(&mut line);
        let _ = sent.send(line);
        // The reader is dropped here: the pipe closes, as when `head -1` exits.
    });
    let line = first.recv_timeout(Duration::from_secs(120));
    if line.is_err() {
        let _ = child.kill();
    }
    assert!(line.is_ok(), "no line on stdout within 2 minutes");
    let waited = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if waited.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            panic!("training went on for 2 minutes after its reader left");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(
        status.code(),
        Some(i32::from(spectra::train::STOPPED_EXIT_STATUS)),
        "{stderr}"
    );
    assert!(stderr.contains("standard output was closed"), "{stderr}");
    assert!(stderr.contains("continue with:"), "{stderr}");
    assert!(output.join("checkpoint.safetensors").exists());
}
