//! The engine on a thread of its own: requests arrive as commands, each step's events go to the
//! request they belong to. HTTP handlers never touch the model; the worker never waits for a client.

use std::collections::HashMap;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use spectra_core::Error;
use spectra_inference::{Engine, Event, Request, SequenceId};
use spectra_models::llama::Llama;
use tokio::sync::{mpsc as events, oneshot};

use super::metrics::Metrics;

/// Why a request was not taken.
#[derive(Debug)]
pub enum Refusal {
    /// The queue is full: try again later.
    Busy,
    /// The server is shutting down.
    Draining,
    /// The request cannot run (too long, too large for the KV memory, a policy that refuses its
    /// budget, ...).
    Invalid(Error),
}

pub enum Command {
    Submit {
        request: Box<Request>,
        events: events::UnboundedSender<Event>,
        reply: oneshot::Sender<Result<SequenceId, Refusal>>,
    },
    Cancel(SequenceId),
    /// Take no more requests; cancel what runs after `grace`.
    Drain {
        grace: Duration,
    },
    Stop,
}

/// The handlers' side of the worker.
#[derive(Clone)]
pub struct WorkerHandle {
    commands: Sender<Command>,
}

impl WorkerHandle {
    /// Queues `request`; its events arrive on the returned receiver, the last being `Finished` or
    /// `Failed`.
    pub async fn submit(
        &self,
        request: Request,
    ) -> Result<(SequenceId, events::UnboundedReceiver<Event>), Refusal> {
        let (events, received) = events::unbounded_channel();
        let (reply, answer) = oneshot::channel();
        let command = Command::Submit {
            request: Box::new(request),
            events,
            reply,
        };
        if self.commands.send(command).is_err() {
            return Err(Refusal::Draining);
        }
        let id = answer.await.map_err(|_| Refusal::Draining)??;
        Ok((id, received))
    }

    pub fn cancel(&self, id: SequenceId) {
        let _ = self.commands.send(Command::Cancel(id));
    }

    pub fn drain(&self, grace: Duration) {
        let _ = self.commands.send(Command::Drain { grace });
    }

    pub fn stop(&self) {
        let _ = self.commands.send(Command::Stop);
    }
}

/// Starts the worker on its own thread.
pub fn start(
    engine: Engine<Llama>,
    max_queue: usize,
    metrics: Arc<Metrics>,
) -> (WorkerHandle, JoinHandle<()>) {
    let (commands, received) = mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("spectra-engine".into())
        // On a pool thread, as every spectra command computes, so that its parallel sections do not
        // wake the pool from outside.
        .spawn(move || {
            rayon::scope(|_| {
                Worker {
                    engine,
                    max_queue,
                    metrics,
                    senders: HashMap::new(),
                    last_token: HashMap::new(),
                    draining: None,
                }
                .run(received)
            })
        })
        .expect("the engine thread starts");
    (WorkerHandle { commands }, thread)
}

struct Worker {
    engine: Engine<Llama>,
    max_queue: usize,
    metrics: Arc<Metrics>,
    senders: HashMap<SequenceId, events::UnboundedSender<Event>>,
    /// When each running request's last token came, for the inter-token latency.
    last_token: HashMap<SequenceId, Instant>,
    /// When running requests are cancelled, once draining.
    draining: Option<Instant>,
}

impl Worker {
    fn run(mut self, commands: Receiver<Command>) {
        loop {
            // Idle, wait for work; busy, take what has arrived and step.
            let first = if self.engine.has_work() {
                commands.try_recv().ok()
            } else {
                match commands.recv_timeout(Duration::from_millis(200)) {
                    Ok(command) => Some(command),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            };
            for command in first.into_iter().chain(commands.try_iter()) {
                if !self.handle(command) {
                    self.cancel_all();
                    return;
                }
            }
            if self.draining.is_some_and(|at| Instant::now() >= at) {
                self.cancel_all();
            }
            if self.engine.has_work() {
                self.step();
            }
        }
    }

    /// Whether to go on.
    fn handle(&mut self, command: Command) -> bool {
        match command {
            Command::Submit {
                request,
                events,
                reply,
            } => {
                let answer = if self.draining.is_some() {
                    Err(Refusal::Draining)
                } else if self.engine.waiting() >= self.max_queue {
                    Err(Refusal::Busy)
                } else {
                    self.engine.submit(*request).map_err(Refusal::Invalid)
                };
                if let Ok(id) = answer {
                    self.senders.insert(id, events);
                }
                // A client that left before the answer: its sequence is cancelled when seen.
                if let Err(Ok(id)) = reply.send(answer) {
                    self.engine.cancel(id);
                }
            }
            Command::Cancel(id) => {
                self.engine.cancel(id);
            }
            Command::Drain { grace } => {
                self.draining = Some(Instant::now() + grace);
            }
            Command::Stop => return false,
        }
        self.metrics.observe_engine(&self.engine);
        true
    }

    fn cancel_all(&mut self) {
        for id in self.senders.keys().copied().collect::<Vec<_>>() {
            self.engine.cancel(id);
        }
        // Hand out the cancellations now.
        if let Ok(events) = self.engine.step() {
            self.route(events);
        }
    }

    fn step(&mut self) {
        match self.engine.step() {
            Ok(events) => self.route(events),
            Err(e) => {
                // The engine's own books are wrong: end every request with the reason.
                for (id, sender) in self.senders.drain() {
                    let _ = sender.send(Event::Failed {
                        id,
                        error: e.to_string(),
                    });
                    self.engine.cancel(id);
                }
            }
        }
        self.metrics.observe_engine(&self.engine);
    }

    fn route(&mut self, events: Vec<Event>) {
        let now = Instant::now();
        for event in events {
            let id = match &event {
                Event::Token { id, .. } => {
                    self.metrics.generated_tokens.inc();
                    if let Some(last) = self.last_token.insert(*id, now) {
                        self.metrics
                            .inter_token_latency
                            .observe((now - last).as_secs_f64());
                    }
                    *id
                }
                Event::Finished {
                    id, reason, stats, ..
                } => {
                    self.metrics.finished(*reason, stats);
                    self.last_token.remove(id);
                    *id
                }
                Event::Failed { id, .. } => {
                    self.metrics.failed();
                    self.last_token.remove(id);
                    *id
                }
            };
            let last = matches!(event, Event::Finished { .. } | Event::Failed { .. });
            if let Some(sender) = self.senders.get(&id) {
                // A client that left cancels its sequence when its stream is dropped.
                let _ = sender.send(event);
            }
            if last {
                self.senders.remove(&id);
            }
        }
    }
}
