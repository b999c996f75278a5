//! `spectra serve`: an OpenAI-compatible server on the batching engine, in which each request may
//! choose its KV policy and budget (`"kv": {"policy": ..., "budget": N}`).
//!
//! Requests run on one engine thread ([`worker`]); handlers parse, tokenize, submit and stream. A
//! request waits until its KV peak fits the server's KV memory; a full queue answers 429; a client
//! that goes away cancels its request and frees its cache; SIGTERM or SIGINT stops taking requests,
//! lets running ones finish within a grace period, cancels the rest, and exits 0.

mod answer;
pub mod config;
mod error;
mod handlers;
mod kv_choice;
mod metrics;
mod openai;
mod worker;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use spectra_core::{Error, Result};
use spectra_inference::{Engine, EngineConfig, SchedulerConfig, StepPriority};
use spectra_models::llama::{Llama, TextTokenizer};

use crate::chat_template::ChatTemplate;
pub use config::ServeConfig;
use error::ApiError;
use metrics::Metrics;
use worker::WorkerHandle;

/// What every handler reads.
pub struct AppState {
    worker: WorkerHandle,
    model: Arc<Llama>,
    tokenizer: Arc<TextTokenizer>,
    template: ChatTemplate,
    config: ServeConfig,
    metrics: Arc<Metrics>,
    model_name: String,
    api_key: Option<String>,
    started: u64,
}

/// Where and how to serve.
pub struct Serve {
    pub address: SocketAddr,
    pub model: Arc<Llama>,
    pub tokenizer: TextTokenizer,
    pub model_name: String,
    pub config: ServeConfig,
    pub api_key: Option<String>,
}

/// Serves until SIGTERM or SIGINT. Prints the address it listens on (with the port the system chose
/// for port 0) to stderr.
pub fn run(serve: Serve) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::invalid("serve", format!("cannot start the runtime: {e}")))?;
    runtime.block_on(serve_until_signal(serve))
}

async fn serve_until_signal(serve: Serve) -> Result<()> {
    let config = serve.config;
    let tokenizer = Arc::new(serve.tokenizer);
    let reread = crate::kv_eval::reread_prompt(&tokenizer, &crate::kv_eval::Turn::default())?;
    let engine = Engine::new(
        serve.model.clone(),
        EngineConfig {
            scheduler: SchedulerConfig {
                kv_memory: config.kv_memory.unwrap_or(usize::MAX),
                max_sequences: config.max_sequences,
                step_tokens: config.step_tokens,
                chunk: config.chunk,
                priority: StepPriority::DecodeFirst,
            },
            reread: Some(reread),
        },
        Some(tokenizer.clone()),
    )?;
    let metrics = Arc::new(Metrics::new(config.kv_memory));
    let (worker, thread) = worker::start(engine, config.max_queue, metrics.clone());
    let template = ChatTemplate::of(&tokenizer)?;
    let listener = tokio::net::TcpListener::bind(serve.address)
        .await
        .map_err(|e| {
            Error::invalid(
                "--host/--port",
                format!("cannot listen on {}: {e}", serve.address),
            )
        })?;
    let address = listener
        .local_addr()
        .map_err(|e| Error::invalid("--port", e.to_string()))?;
    let grace = Duration::from_secs(config.shutdown_grace_seconds);
    let state = Arc::new(AppState {
        worker: worker.clone(),
        model: serve.model,
        tokenizer,
        template,
        config,
        metrics,
        model_name: serve.model_name,
        api_key: serve.api_key,
        started: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    });
    eprintln!("spectra serve: listening on http://{address}");
    let app = router(state);
    let draining = worker.clone();
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            stop_signal().await;
            eprintln!("spectra serve: stopping; running requests have {grace:?} to finish");
            draining.drain(grace);
        })
        .await;
    worker.stop();
    let _ = thread.join();
    served.map_err(|e| Error::invalid("serve", e.to_string()))
}

fn router(state: Arc<AppState>) -> Router {
    let api = Router::new()
        .route("/v1/chat/completions", post(handlers::chat_completions))
        .route("/v1/completions", post(handlers::completions))
        .route("/v1/models", get(handlers::models))
        .route("/metrics", get(handlers::metrics))
        .route_layer(middleware::from_fn_with_state(state.clone(), authorize));
    Router::new()
        .route("/health", get(handlers::health))
        .merge(api)
        .fallback(not_found)
        // Handlers read their bodies themselves, up to the configured limit.
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

async fn not_found(request: Request) -> Response {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!(
            "no endpoint {} {}; this server has POST /v1/chat/completions, POST /v1/completions, \
             GET /v1/models, GET /health and GET /metrics",
            request.method(),
            request.uri().path()
        ),
    )
    .into_response()
}

/// With `--api-key`, every endpoint but `/health` wants `Authorization: Bearer KEY`.
async fn authorize(State(app): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let Some(key) = &app.api_key else {
        return next.run(request).await;
    };
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(given) if same_secret(given.as_bytes(), key.as_bytes()) => next.run(request).await,
        _ => {
            app.metrics.rejected();
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing or wrong API key; send `Authorization: Bearer <key>`",
            )
            .into_response()
        }
    }
}

/// Equality in time that depends on the lengths only, not on where the texts differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn stop_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {}
        _ = terminate => {}
    }
}

#[cfg(test)]
mod tests {
    use super::same_secret;

    #[test]
    fn secrets_are_equal_only_when_every_byte_is() {
        assert!(same_secret(b"key-1", b"key-1"));
        assert!(!same_secret(b"key-1", b"key-2"));
        assert!(!same_secret(b"key", b"key-1"));
        assert!(!same_secret(b"", b"k"));
    }
}
