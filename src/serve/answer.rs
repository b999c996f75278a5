//! An answer's objects in OpenAI's shapes, whole once the sequence ends or streamed as server-sent
//! events, and the guard that cancels a sequence whose client went away.

use std::convert::Infallible;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::StatusCode;
use axum::response::sse::Event as SseEvent;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::stream::{self, Stream, StreamExt};
use serde_json::{json, Value};
use spectra_inference::{Event, FinishReason, SequenceId, SequenceStats};
use tokio::sync::mpsc::UnboundedReceiver;

use super::error::ApiError;
use super::kv_choice::KvChoice;
use super::worker::{Refusal, WorkerHandle};

/// Which endpoint answers, which decides the shape of its objects.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Chat,
    Completion,
}

/// Cancels the sequence when the client goes away before it ends (the handler's future or the
/// response stream is dropped).
pub(super) struct CancelOnDrop {
    pub(super) worker: WorkerHandle,
    pub(super) id: SequenceId,
    pub(super) armed: bool,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if self.armed {
            self.worker.cancel(self.id);
        }
    }
}

/// What every object of one answer shares.
pub(super) struct Answer {
    pub(super) kind: Kind,
    pub(super) id: SequenceId,
    /// With the sequence id, it makes the answer's id unique across restarts.
    pub(super) server_started: u64,
    pub(super) created: u64,
    pub(super) model: String,
    pub(super) kv: KvChoice,
    pub(super) prompt_tokens: usize,
}

impl Answer {
    fn object(&self, chunk: bool) -> &'static str {
        match (self.kind, chunk) {
            (Kind::Chat, false) => "chat.completion",
            (Kind::Chat, true) => "chat.completion.chunk",
            (Kind::Completion, _) => "text_completion",
        }
    }

    fn id(&self) -> String {
        match self.kind {
            Kind::Chat => format!("chatcmpl-{}-{}", self.server_started, self.id),
            Kind::Completion => format!("cmpl-{}-{}", self.server_started, self.id),
        }
    }

    /// One choice carrying `text` (a delta when streamed) and the reason the answer ended, if it has.
    fn choice(&self, text: &str, finish: Option<&str>, chunk: bool) -> Value {
        let text_field = match (self.kind, chunk) {
            (Kind::Chat, false) => json!({"message": {"role": "assistant", "content": text}}),
            (Kind::Chat, true) if finish.is_some() && text.is_empty() => json!({"delta": {}}),
            (Kind::Chat, true) => json!({"delta": {"content": text}}),
            (Kind::Completion, _) => json!({"text": text, "logprobs": null}),
        };
        let mut choice = json!({"index": 0, "finish_reason": finish});
        merge(&mut choice, text_field);
        choice
    }

    fn envelope(&self, chunk: bool, choices: Vec<Value>) -> Value {
        json!({
            "id": self.id(),
            "object": self.object(chunk),
            "created": self.created,
            "model": self.model,
            "choices": choices,
        })
    }

    fn usage(&self, stats: &SequenceStats) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": stats.generated_tokens,
            "total_tokens": self.prompt_tokens + stats.generated_tokens,
        })
    }

    /// What was applied: the policy, its budget, and what the cache held.
    fn kv(&self, stats: &SequenceStats) -> Value {
        json!({
            "policy": self.kv.label,
            "preset": self.kv.preset,
            "budget": self.kv.budget_tokens(),
            "peak_kv_bytes": stats.peak_kv_bytes,
            "reserved_kv_bytes": stats.reserved_kv_bytes,
            "compressions": stats.compressions,
        })
    }
}

pub(super) fn merge(into: &mut Value, from: Value) {
    if let (Value::Object(a), Value::Object(b)) = (into, from) {
        a.extend(b);
    }
}

pub(super) fn finish_reason(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
        // vLLM's word for a request the server ended (shutting down).
        FinishReason::Cancelled => "abort",
    }
}

/// The whole answer once the sequence ends.
pub(super) async fn whole(
    answer: Answer,
    mut events: UnboundedReceiver<Event>,
    mut guard: CancelOnDrop,
) -> Result<Response, ApiError> {
    let mut text = String::new();
    while let Some(event) = events.recv().await {
        match event {
            Event::Token { text: piece, .. } => text.push_str(&piece),
            Event::Finished {
                reason,
                text: rest,
                stats,
                ..
            } => {
                guard.armed = false;
                if reason == FinishReason::Cancelled {
                    return Err(Refusal::Draining.into());
                }
                text.push_str(&rest);
                let mut body = answer.envelope(
                    false,
                    vec![answer.choice(&text, Some(finish_reason(reason)), false)],
                );
                merge(
                    &mut body,
                    json!({"usage": answer.usage(&stats), "kv": answer.kv(&stats)}),
                );
                return Ok(Json(body).into_response());
            }
            Event::Failed { error, .. } => {
                guard.armed = false;
                return Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, error));
            }
        }
    }
    Err(ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "the engine stopped before the answer ended",
    ))
}

/// The answer as server-sent events in OpenAI's chunk format, ending `data: [DONE]`.
pub(super) fn streamed(
    answer: Answer,
    events: UnboundedReceiver<Event>,
    guard: CancelOnDrop,
    include_usage: bool,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    let data = |value: Value| SseEvent::default().data(value.to_string());
    let opening = (answer.kind == Kind::Chat).then(|| {
        let mut first = answer.envelope(true, vec![answer.choice("", None, true)]);
        first["choices"][0]["delta"] = json!({"role": "assistant", "content": ""});
        data(first)
    });
    let state = (answer, events, guard, false);
    let body = stream::unfold(
        state,
        move |(answer, mut events, mut guard, done)| async move {
            if done {
                return None;
            }
            let chunks = match events.recv().await {
                Some(Event::Token { text, .. }) if text.is_empty() => Vec::new(),
                Some(Event::Token { text, .. }) => {
                    vec![data(
                        answer.envelope(true, vec![answer.choice(&text, None, true)]),
                    )]
                }
                Some(Event::Finished {
                    reason,
                    text,
                    stats,
                    ..
                }) => {
                    guard.armed = false;
                    let mut last = answer.envelope(
                        true,
                        vec![answer.choice(&text, Some(finish_reason(reason)), true)],
                    );
                    merge(&mut last, json!({"kv": answer.kv(&stats)}));
                    let mut chunks = vec![data(last)];
                    if include_usage {
                        let mut usage = answer.envelope(true, Vec::new());
                        merge(&mut usage, json!({"usage": answer.usage(&stats)}));
                        chunks.push(data(usage));
                    }
                    chunks.push(SseEvent::default().data("[DONE]"));
                    return Some((chunks, (answer, events, guard, true)));
                }
                Some(Event::Failed { error, .. }) => {
                    guard.armed = false;
                    let error = json!({"error": {"message": error, "type": "server_error"}});
                    return Some((
                        vec![data(error), SseEvent::default().data("[DONE]")],
                        (answer, events, guard, true),
                    ));
                }
                None => return None,
            };
            Some((chunks, (answer, events, guard, false)))
        },
    );
    stream::iter(opening)
        .chain(body.flat_map(stream::iter))
        .map(Ok)
}

pub(super) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
