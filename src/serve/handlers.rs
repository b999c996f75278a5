//! The endpoints: chat and text completions (plain or streamed as server-sent events), models,
//! health and metrics.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::sse::Sse;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use spectra_inference::{CausalDecoder, Request};

use super::answer::{streamed, unix_now, whole, Answer, CancelOnDrop, Kind};
use super::error::ApiError;
use super::kv_choice;
use super::openai::{ChatRequest, Common, CompletionRequest, PromptInput};
use super::AppState;

pub async fn chat_completions(State(app): State<Arc<AppState>>, body: Body) -> Response {
    let answer = async {
        let request = ChatRequest::parse(&read_body(body, app.config.max_body_bytes).await?)?;
        let text = app
            .template
            .render(&request.messages()?)
            .map_err(ApiError::from)?;
        let prompt = tokenize(&app, text).await?;
        run(app.clone(), Kind::Chat, prompt, request.common).await
    };
    respond(&app, answer.await)
}

pub async fn completions(State(app): State<Arc<AppState>>, body: Body) -> Response {
    let answer = async {
        let request = CompletionRequest::parse(&read_body(body, app.config.max_body_bytes).await?)?;
        let prompt = match request.prompt {
            PromptInput::Text(text) => tokenize(&app, text).await?,
            PromptInput::Texts(mut texts) if texts.len() == 1 => {
                tokenize(&app, texts.remove(0)).await?
            }
            PromptInput::Texts(texts) => {
                return Err(ApiError::invalid(
                    "prompt",
                    format!("`prompt` holds {} texts; send one per request", texts.len()),
                ))
            }
            PromptInput::Tokens(ids) => ids,
        };
        run(app.clone(), Kind::Completion, prompt, request.common).await
    };
    respond(&app, answer.await)
}

pub async fn models(State(app): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({
        "object": "list",
        "data": [{
            "id": app.model_name,
            "object": "model",
            "created": app.started,
            "owned_by": "spectra",
            "max_model_len": app.model.context_len(),
        }]
    }))
}

pub async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

pub async fn metrics(State(app): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        app.metrics.text(),
    )
        .into_response()
}

/// Counts an error answer before it goes out.
fn respond(app: &AppState, answer: Result<Response, ApiError>) -> Response {
    answer.unwrap_or_else(|e| {
        app.metrics.rejected();
        e.into_response()
    })
}

/// The body, at most `limit` bytes.
async fn read_body(body: Body, limit: usize) -> Result<axum::body::Bytes, ApiError> {
    axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            message: format!(
            "the request body is larger than this server's limit of {limit} bytes (max_body_bytes)"
        ),
            param: Some("body".into()),
            retry_after: None,
        })
}

/// The text's tokens, off the async threads (a long prompt takes milliseconds).
async fn tokenize(app: &Arc<AppState>, text: String) -> Result<Vec<u32>, ApiError> {
    let tokenizer = app.tokenizer.clone();
    tokio::task::spawn_blocking(move || tokenizer.encode(&text))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(ApiError::from)
}

/// Submits the generation and answers, whole or streamed.
async fn run(
    app: Arc<AppState>,
    kind: Kind,
    prompt: Vec<u32>,
    common: Common,
) -> Result<Response, ApiError> {
    let kv = kv_choice::resolve(common.kv.as_ref(), &app.config)?;
    let prompt_field = match kind {
        Kind::Chat => "messages",
        Kind::Completion => "prompt",
    };
    let params = common.generation(
        prompt_field,
        prompt.len(),
        app.model.context_len(),
        app.config.default_max_tokens,
        app.tokenizer.eos.into_iter().collect(),
    )?;
    let prompt_tokens = prompt.len();
    let request = Request {
        prompt,
        params,
        policy: kv.policy.clone(),
        budget: kv.budget.clone(),
        seed: 0,
    };
    let (id, events) = app.worker.submit(request).await.map_err(ApiError::from)?;
    let answer = Answer {
        kind,
        id,
        server_started: app.started,
        created: unix_now(),
        model: app.model_name.clone(),
        kv,
        prompt_tokens,
    };
    let guard = CancelOnDrop {
        worker: app.worker.clone(),
        id,
        armed: true,
    };
    if common.stream == Some(true) {
        let usage = common.stream_options.is_some_and(|o| o.include_usage);
        Ok(Sse::new(streamed(answer, events, guard, usage)).into_response())
    } else {
        whole(answer, events, guard).await
    }
}
