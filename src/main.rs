//! The `spectra` command line.

mod cli;

// A plugin crate that is only a dependency is not linked, and its registrations would be lost.
use spectra_plugins as _;
use spectra_policies as _;

fn main() -> std::process::ExitCode {
    cli::run()
}
