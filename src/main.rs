//! `secure-serving`: the command-line entry point (see [`secure_serving::cli`]).

use clap::Parser;

/// Counts large allocations per role (alice, bob, dealer, owner) for the memory figures.
#[global_allocator]
static ALLOC: engine::memory::CountingAllocator = engine::memory::CountingAllocator;

fn main() {
    // Before any thread starts: environment changes are only sound while single-threaded.
    secure_serving::cli::quiet_gpu_driver();
    let cli = secure_serving::cli::Cli::parse();
    // Logs (refused connections, dealer refusals, per-request lines of the services) go to
    // stderr; RUST_LOG sets the level (services default to info, everything else to warn).
    let service = matches!(
        cli.command,
        secure_serving::cli::Command::Party { .. } | secure_serving::cli::Command::Dealer { .. }
    );
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new(if service { "info" } else { "warn" })
            }),
        )
        .init();
    if let Err(e) = secure_serving::cli::run(cli) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
