//! `spectra serve` as a client sees it, on a tiny random Llama with a byte-level vocabulary: answers
//! equal the generation API's greedy tokens, plain and streamed; bad requests get the right 4xx naming
//! the field; concurrent requests all complete; a client that leaves frees its cache; a full queue
//! answers 429; SIGTERM ends the server with status 0. Every server a test starts is stopped by it.

mod llama_support;
mod serve_support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use candle_core::Device;
use llama_support::Tiny;
use serde_json::{json, Value};
use serve_support::Server;
use spectra::inference::{continue_session, GenerationParams, Logits, Session};
use spectra::models::llama::{Llama, WeightFormat};

/// The generation API's greedy continuation of `text` (`max_tokens` tokens) on the tiny model, as text.
fn greedy(tiny: &Tiny, text: &str, max_tokens: usize) -> String {
    greedy_on(&tiny.gguf_path(), text, max_tokens)
}

fn greedy_on(model: &Path, text: &str, max_tokens: usize) -> String {
    let (model, tokenizer) = Llama::from_gguf(model, &Device::Cpu, WeightFormat::AsStored).unwrap();
    let prompt = tokenizer.encode(text).unwrap();
    let mut session = Session::new(
        Arc::new(model),
        None,
        spectra::core::Budget::Tokens(usize::MAX),
        0,
    )
    .unwrap();
    let logits = session.prefill(&prompt, 256, Logits::Last).unwrap();
    let params = GenerationParams {
        max_tokens,
        stop_tokens: tokenizer.eos.into_iter().collect(),
        ..GenerationParams::default()
    };
    let tokens = continue_session(&mut session, &logits, &params, |_| Ok(false)).unwrap();
    tokenizer.decode(&tokens).unwrap()
}

fn body(value: Value) -> Vec<u8> {
    value.to_string().into_bytes()
}

/// The text of a streamed answer: its chunks' texts or deltas, in order.
fn streamed_text(events: &[String]) -> String {
    events
        .iter()
        .filter(|e| e.as_str() != "[DONE]")
        .filter_map(|e| {
            let v: Value = serde_json::from_str(e).unwrap();
            let choice = v["choices"].get(0)?.clone();
            choice["text"]
                .as_str()
                .or(choice["delta"]["content"].as_str())
                .map(str::to_string)
        })
        .collect()
}

#[test]
fn plain_and_streamed_answers_are_the_greedy_continuation() {
    let tiny = Tiny::byte_level();
    let server = Server::start(&tiny.gguf_path(), &[]);
    let want = greedy(&tiny, "hello world", 12);
    let request = json!({"prompt": "hello world", "max_tokens": 12, "temperature": 0});
    let plain = server.post("/v1/completions", &body(request.clone()));
    assert_eq!(plain.status, 200, "{}", plain.text());
    let plain = plain.json();
    assert_eq!(plain["choices"][0]["text"], want);
    assert_eq!(plain["choices"][0]["finish_reason"], "length");
    assert_eq!(plain["usage"]["prompt_tokens"], 11);
    assert_eq!(plain["usage"]["completion_tokens"], 12);
    assert_eq!(plain["kv"]["policy"], "Full");

    let mut streamed = request.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let reply = server.post("/v1/completions", &body(streamed));
    assert_eq!(reply.status, 200);
    assert!(reply
        .header("content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    let events = reply.events();
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    assert_eq!(streamed_text(&events), want);
    let usage: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(usage["usage"]["completion_tokens"], 12);

    // Chat: ChatML (the tiny model's file has no template), answered the same way.
    let chatml = "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n";
    let want = greedy(&tiny, chatml, 6);
    let chat = json!({"messages": [{"role": "user", "content": "Hi there"}], "max_tokens": 6,
                      "temperature": 0, "stream": true});
    let events = server.post("/v1/chat/completions", &body(chat)).events();
    let first: Value = serde_json::from_str(&events[0]).unwrap();
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(streamed_text(&events), want);
}

#[test]
fn a_request_chooses_its_kv_policy_and_budget() {
    let tiny = Tiny::byte_level();
    let server = Server::start(&tiny.gguf_path(), &[]);
    let request = json!({
        "prompt": "a".repeat(200), "max_tokens": 8, "temperature": 0,
        "kv": {"policy": {"type": "StreamingLlm", "cfg": {"sinks": 4}}, "budget": 32}
    });
    let reply = server.post("/v1/completions", &body(request));
    assert_eq!(reply.status, 200, "{}", reply.text());
    let kv = &reply.json()["kv"];
    assert_eq!(kv["policy"], "StreamingLlm");
    assert_eq!(kv["budget"], 32);
    assert!(kv["compressions"].as_u64().unwrap() > 0, "{kv}");
    // 32 kept entries and a 256-token chunk per head, at most: 2 layers × 2 KV heads × 8 × 2 × 4 bytes.
    assert!(
        kv["peak_kv_bytes"].as_u64().unwrap() <= 4 * (32 + 256) * 64,
        "{kv}"
    );
}

#[test]
fn bad_requests_get_the_right_status_and_name_the_field() {
    let tiny = Tiny::byte_level();
    let server = Server::start(
        &tiny.gguf_path(),
        &["--config", &write_config(&tiny, "(max_body_bytes: 4096)")],
    );
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("malformed JSON", b"{\"prompt\": ".to_vec(), 400, "body"),
        ("not an object", b"[1, 2]".to_vec(), 400, "body"),
        (
            "wrong type",
            body(json!({"prompt": "x", "max_tokens": "ten"})),
            400,
            "max_tokens",
        ),
        (
            "missing prompt",
            body(json!({"max_tokens": 3})),
            400,
            "prompt",
        ),
        (
            "unknown policy",
            body(json!({"prompt": "x", "kv": {"policy": {"type": "Nope", "cfg": {}}}})),
            400,
            "kv.policy",
        ),
        (
            "a file in a policy",
            body(
                json!({"prompt": "x", "kv": {"policy": {"type": "TriAttention", "cfg": {"stats": {"File": "/etc/passwd"}}}}}),
            ),
            400,
            "kv.policy",
        ),
        (
            "budget 0",
            body(json!({"prompt": "x", "kv": {"policy": "Full", "budget": 0}})),
            400,
            "kv.budget",
        ),
        (
            "a prompt longer than the context",
            body(json!({"prompt": "x".repeat(1100)})),
            400,
            "prompt",
        ),
        (
            "huge max_tokens",
            body(json!({"prompt": "x", "max_tokens": 1_000_000})),
            400,
            "max_tokens",
        ),
        ("n > 1", body(json!({"prompt": "x", "n": 2})), 400, "n"),
        (
            "bad temperature",
            body(json!({"prompt": "x", "temperature": -1})),
            400,
            "temperature",
        ),
        (
            "token outside the vocabulary",
            body(json!({"prompt": [999_999]})),
            400,
            "prompt",
        ),
        (
            "invalid UTF-8",
            b"{\"prompt\": \"\xff\xfe\"}".to_vec(),
            400,
            "body",
        ),
        (
            "oversized body",
            body(json!({"prompt": "x".repeat(10_000)})),
            413,
            "body",
        ),
    ];
    for (what, request, status, param) in cases {
        let reply = server.post("/v1/completions", &request);
        assert_eq!(reply.status, status, "{what}: {}", reply.text());
        let error = &reply.json()["error"];
        assert_eq!(error["param"], param, "{what}: {error}");
        assert!(
            error["message"].as_str().is_some_and(|m| m.len() > 10),
            "{what}"
        );
    }
    let chat = server.post("/v1/chat/completions", &body(json!({"messages": []})));
    assert_eq!(
        (chat.status, chat.json()["error"]["param"].clone()),
        (400, json!("messages"))
    );
    assert_eq!(server.get("/v1/nothing").status, 404);
    // The server still answers.
    assert_eq!(server.get("/health").status, 200);
}

#[test]
fn an_api_key_guards_every_endpoint_but_health() {
    let tiny = Tiny::byte_level();
    let server = Server::start(&tiny.gguf_path(), &["--api-key", "s3cret"]);
    let request = body(json!({"prompt": "x", "max_tokens": 1}));
    assert_eq!(server.post("/v1/completions", &request).status, 401);
    let wrong = [("Authorization", "Bearer s3cre7")];
    assert_eq!(
        server
            .request("POST", "/v1/completions", &request, &wrong)
            .status,
        401
    );
    let right = [("Authorization", "Bearer s3cret")];
    assert_eq!(
        server
            .request("POST", "/v1/completions", &request, &right)
            .status,
        200
    );
    assert_eq!(server.get("/v1/models").status, 401);
    assert_eq!(server.get("/health").status, 200);
}

#[test]
fn sixteen_concurrent_requests_all_complete() {
    let tiny = Tiny::byte_level();
    let server = Arc::new(Server::start(&tiny.gguf_path(), &[]));
    let threads: Vec<_> = (0..16)
        .map(|i| {
            let server = server.clone();
            std::thread::spawn(move || {
                let request = json!({"prompt": format!("request {i}"), "max_tokens": 10,
                                     "temperature": 0, "stream": i % 2 == 0});
                server.post("/v1/completions", &body(request))
            })
        })
        .collect();
    for (i, t) in threads.into_iter().enumerate() {
        let reply = t.join().unwrap();
        assert_eq!(reply.status, 200, "request {i}: {}", reply.text());
    }
    let models = server.get("/v1/models").json();
    assert_eq!(models["data"][0]["id"], "tiny");
    assert_eq!(
        server.metric("spectra_requests_total{outcome=\"length\"}"),
        16.0
    );
}

#[test]
fn a_client_that_leaves_frees_its_sequence() {
    let tiny = Tiny::byte_level();
    let server = Server::start(&tiny.gguf_path(), &[]);
    let request =
        body(json!({"prompt": "long", "max_tokens": 1000, "temperature": 0, "stream": true}));
    let mut stream = server.send("POST", "/v1/completions", &request, &[]);
    let mut first = [0u8; 64];
    std::io::Read::read(&mut stream, &mut first).unwrap();
    server.eventually("the request runs", |s| {
        s.metric("spectra_running_sequences") == 1.0
    });
    drop(stream);
    server.eventually("the cancelled sequence is freed", |s| {
        s.metric("spectra_running_sequences") == 0.0 && s.metric("spectra_kv_bytes_in_use") == 0.0
    });
    assert_eq!(
        server.metric("spectra_requests_total{outcome=\"cancelled\"}"),
        1.0
    );
}

#[test]
fn a_full_queue_answers_429_with_retry_after() {
    let tiny = Tiny::byte_level();
    let config = write_config(&tiny, "(max_sequences: 1, max_queue: 1)");
    let server = Arc::new(Server::start(&tiny.gguf_path(), &["--config", &config]));
    let long = body(json!({"prompt": "x", "max_tokens": 1000, "temperature": 0, "stream": true}));
    // One runs, one waits; a third finds the queue full.
    let running = server.send("POST", "/v1/completions", &long, &[]);
    server.eventually("the first runs", |s| {
        s.metric("spectra_running_sequences") == 1.0
    });
    let waiting = server.send("POST", "/v1/completions", &long, &[]);
    server.eventually("the second waits", |s| {
        s.metric("spectra_queue_length") == 1.0
    });
    let refused = server.post("/v1/completions", &long);
    assert_eq!(refused.status, 429, "{}", refused.text());
    assert_eq!(refused.header("retry-after"), Some("1"));
    drop((running, waiting));
    server.eventually("both are cancelled", |s| {
        s.metric("spectra_kv_bytes_in_use") == 0.0
    });
}

#[test]
fn sigterm_finishes_running_requests_and_exits_0() {
    let tiny = Tiny::byte_level();
    let config = write_config(&tiny, "(shutdown_grace_seconds: 1)");
    let server = Server::start(&tiny.gguf_path(), &["--config", &config]);
    let long = body(json!({"prompt": "x", "max_tokens": 1000, "temperature": 0, "stream": true}));
    let _open = server.send("POST", "/v1/completions", &long, &[]);
    server.eventually("the request runs", |s| {
        s.metric("spectra_running_sequences") == 1.0
    });
    let status = server
        .terminate(Duration::from_secs(30))
        .expect("the server exits");
    assert!(status.success(), "{status:?}");
}

/// A serve config in the test model's folder.
fn write_config(tiny: &Tiny, text: &str) -> String {
    let path = tiny.gguf_path().with_file_name("serve.ron");
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

#[test]
fn the_openai_python_client_gets_the_same_answers() {
    let python = std::process::Command::new("python3")
        .args(["-c", "import openai"])
        .output();
    if !python.as_ref().is_ok_and(|o| o.status.success()) {
        eprintln!(
            "skipped: needs python3 with the `openai` package (pip install openai): {}",
            python.map_or_else(
                |e| e.to_string(),
                |o| String::from_utf8_lossy(&o.stderr).into_owned()
            )
        );
        return;
    }
    let tiny = Tiny::byte_level();
    let server = Server::start(&tiny.gguf_path(), &[]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/openai-client.py");
    let out = std::process::Command::new("python3")
        .args([script, &format!("http://127.0.0.1:{}", server.port)])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got["model"], "tiny");
    assert_eq!(got["completion"], greedy(&tiny, "hello world", 12));
    assert_eq!(got["completion_finish"], "length");
    assert_eq!(got["completion_streamed"], got["completion"]);
    assert_eq!(got["completion_usage"], 12);
    assert_eq!(got["completion_streamed_usage"], 12);
    let chatml = "<|im_start|>user\nhello world<|im_end|>\n<|im_start|>assistant\n";
    assert_eq!(got["chat"], greedy(&tiny, chatml, 8));
    assert_eq!(got["chat_streamed"], got["chat"]);
    assert_eq!(got["chat_kv"]["policy"], "StreamingLlm");
    assert_eq!(got["chat_kv"]["budget"], 64);
}

/// SmolLM2-135M-Instruct, where `scripts/get-model.sh` has fetched it: its own chat template (from the
/// GGUF), and the answer the generation API gives to that rendering.
#[test]
fn smollm2_answers_through_its_chat_template() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("data/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !path.exists() {
        eprintln!(
            "skipped: {} is absent; scripts/get-model.sh fetches it",
            path.display()
        );
        return;
    }
    let server = Server::start(&path, &[]);
    let question = "What is the capital of France?";
    // SmolLM2's template, rendered by hand: a default system message, then ChatML.
    let rendered = format!(
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face\
         <|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
    );
    let want = greedy_on(&path, &rendered, 16);
    let request = json!({"messages": [{"role": "user", "content": question}], "max_tokens": 16,
                         "temperature": 0});
    let reply = server.post("/v1/chat/completions", &body(request.clone()));
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["choices"][0]["message"]["content"], want);
    let mut streamed = request;
    streamed["stream"] = json!(true);
    let events = server
        .post("/v1/chat/completions", &body(streamed))
        .events();
    assert_eq!(streamed_text(&events), want);
}
