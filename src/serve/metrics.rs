//! `GET /metrics`: Prometheus text exposition of what the server did and holds.

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use spectra_inference::{Engine, FinishReason, SequenceStats};
use spectra_models::llama::Llama;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    outcome: &'static str,
}

pub struct Metrics {
    registry: Registry,
    requests: Family<Outcome, Counter>,
    prompt_tokens: Counter,
    pub generated_tokens: Counter,
    compressions: Counter,
    queue: Gauge,
    running: Gauge,
    kv_bytes: Gauge,
    kv_reserved: Gauge,
    time_to_first_token: Histogram,
    pub inter_token_latency: Histogram,
}

impl Metrics {
    /// `kv_memory` is the budget shown beside the bytes in use (unlimited when `None`).
    pub fn new(kv_memory: Option<usize>) -> Self {
        let mut registry = Registry::with_prefix("spectra");
        let requests = Family::<Outcome, Counter>::default();
        registry.register(
            "requests",
            "Requests by how they ended: stop, length, cancelled, failed, rejected",
            requests.clone(),
        );
        let counter = |registry: &mut Registry, name: &str, help: &str| {
            let c = Counter::default();
            registry.register(name, help, c.clone());
            c
        };
        let prompt_tokens = counter(&mut registry, "prompt_tokens", "Prompt tokens read");
        let generated_tokens = counter(&mut registry, "generated_tokens", "Tokens generated");
        let compressions = counter(
            &mut registry,
            "kv_compressions",
            "Times a KV policy compacted a request's cache",
        );
        let gauge = |registry: &mut Registry, name: &str, help: &str| {
            let g = Gauge::default();
            registry.register(name, help, g.clone());
            g
        };
        let queue = gauge(
            &mut registry,
            "queue_length",
            "Requests waiting for KV memory",
        );
        let running = gauge(&mut registry, "running_sequences", "Requests decoding");
        let kv_bytes = gauge(&mut registry, "kv_bytes_in_use", "KV cache bytes held now");
        let kv_reserved = gauge(
            &mut registry,
            "kv_bytes_reserved",
            "KV cache bytes reserved for the running requests' peaks",
        );
        let budget = gauge(
            &mut registry,
            "kv_memory_budget_bytes",
            "The KV memory all requests may hold (0: unlimited)",
        );
        budget.set(kv_memory.map_or(0, |b| b as i64));
        let histogram = |registry: &mut Registry, name: &str, help: &str, first: f64| {
            let h = Histogram::new(exponential_buckets(first, 2.0, 16));
            registry.register(name, help, h.clone());
            h
        };
        let time_to_first_token = histogram(
            &mut registry,
            "time_to_first_token_seconds",
            "From a request's arrival to its first token",
            0.01,
        );
        let inter_token_latency = histogram(
            &mut registry,
            "inter_token_latency_seconds",
            "Between a request's consecutive tokens",
            0.001,
        );
        Metrics {
            registry,
            requests,
            prompt_tokens,
            generated_tokens,
            compressions,
            queue,
            running,
            kv_bytes,
            kv_reserved,
            time_to_first_token,
            inter_token_latency,
        }
    }

    pub fn observe_engine(&self, engine: &Engine<Llama>) {
        self.queue.set(engine.waiting() as i64);
        self.running.set(engine.running() as i64);
        self.kv_bytes.set(engine.kv_bytes() as i64);
        self.kv_reserved.set(engine.reserved_kv_bytes() as i64);
    }

    pub fn finished(&self, reason: FinishReason, stats: &SequenceStats) {
        let outcome = match reason {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Cancelled => "cancelled",
        };
        self.requests.get_or_create(&Outcome { outcome }).inc();
        self.prompt_tokens.inc_by(stats.prompt_tokens as u64);
        self.compressions.inc_by(stats.compressions as u64);
        if let Some(ttft) = stats.time_to_first_token {
            self.time_to_first_token.observe(ttft.as_secs_f64());
        }
    }

    pub fn failed(&self) {
        self.requests
            .get_or_create(&Outcome { outcome: "failed" })
            .inc();
    }

    /// A request answered with an error before it ran.
    pub fn rejected(&self) {
        self.requests
            .get_or_create(&Outcome {
                outcome: "rejected",
            })
            .inc();
    }

    pub fn text(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
