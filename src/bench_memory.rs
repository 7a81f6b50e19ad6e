//! The per-role peak memory table the bench command prints after each model run.

use engine::memory::{self, Role};

/// Print the per-role peak memory table (counting allocator; see `engine::memory`).
pub fn print_memory(share_bytes: u64) {
    let Some(r) = memory::report() else {
        println!("(per-role memory: the counting allocator is not installed in this program)");
        return;
    };
    println!(
        "peak live large buffers (>= 1 MiB) per role since the model load began (\"live at start\": buffers earlier work left, e.g. in the kernels' recycling pool); a party's encoded share of the model is {:.1} MB:",
        share_bytes as f64 / 1e6
    );
    println!("| role | peak MB | peak / encoded share | live at start MB | peak growth MB | growth / encoded share |");
    println!("|---|---|---|---|---|---|");
    let row = |name: &str, peak: u64, at: u64| {
        println!(
            "| {name} | {:.1} | {:.2}x | {:.1} | {:.1} | {:.2}x |",
            peak as f64 / 1e6,
            peak as f64 / share_bytes as f64,
            at as f64 / 1e6,
            (peak - at) as f64 / 1e6,
            (peak - at) as f64 / share_bytes as f64
        )
    };
    for role in Role::ALL {
        let b = r.role(role);
        row(role.name(), b.peak, b.at_reset);
    }
    row("all roles together", r.total_peak, r.total_at_reset);
}
