//! `spectra serve --model M [--host 127.0.0.1] [--port 8080] [--config serve.ron]`: an
//! OpenAI-compatible server (`spectra::serve`).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::Args;
use spectra::serve::{Serve, ServeConfig};
use spectra_core::Error;

use super::args::{parse_bytes, ModelArgs};

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The address to listen on: this machine only by default.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// The port (0: one the system chooses, printed at start).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Limits, defaults and KV presets (RON; see `ServeConfig`).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Require `Authorization: Bearer KEY` (also read from SPECTRA_API_KEY).
    #[arg(long, env = "SPECTRA_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// KV memory all requests may hold together (bytes, or with KiB, MiB, GiB); overrides the
    /// config's `kv_memory`.
    #[arg(long, value_parser = parse_bytes)]
    kv_memory: Option<usize>,
}

pub fn run(args: ServeArgs) -> Result<(), Error> {
    let mut config: ServeConfig = match &args.config {
        Some(path) => spectra_core::config::load(path)?,
        None => ServeConfig::default(),
    };
    if args.kv_memory.is_some() {
        config.kv_memory = args.kv_memory;
    }
    let (model, tokenizer) = args.model.load()?;
    let model_name = args
        .model
        .model
        .file_stem()
        .map_or("model".into(), |s| s.to_string_lossy().into_owned());
    spectra::serve::run(Serve {
        address: SocketAddr::new(args.host, args.port),
        model,
        tokenizer,
        model_name,
        config,
        api_key: args.api_key.filter(|k| !k.is_empty()),
    })
}
