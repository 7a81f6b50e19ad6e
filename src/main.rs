//! `secure-serving`: the command-line entry point (see [`secure_serving::cli`]).

use clap::Parser;

fn main() {
    // Before any thread starts: environment changes are only sound while single-threaded.
    secure_serving::cli::quiet_gpu_driver();
    let cli = secure_serving::cli::Cli::parse();
    if let Err(e) = secure_serving::cli::run(cli) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
