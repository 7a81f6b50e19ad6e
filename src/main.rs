//! `secure-serving`: the command-line entry point (see [`secure_serving::cli`]).

use clap::Parser;

/// Counts large allocations per role (alice, bob, dealer, owner) for the memory figures.
#[global_allocator]
static ALLOC: engine::memory::CountingAllocator = engine::memory::CountingAllocator;

fn main() {
    let cli = secure_serving::cli::Cli::parse();
    if let Err(e) = secure_serving::cli::run(cli) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
