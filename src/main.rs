//! `secure-serving`: the command-line entry point (see `engine::cli`).

use clap::Parser;

fn main() {
    let cli = engine::cli::Cli::parse();
    if let Err(e) = engine::cli::run(cli) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
