//! The `gamestream` binary: parses the command line and hands over to the library.

use std::process::ExitCode;

fn main() -> ExitCode {
    gamestream::cli::main()
}

/// mimalloc instead of the system allocator: the ingest path allocates and frees small
/// buffers on one thread and drops them on another, which glibc's arenas serialize on a
/// lock; with mimalloc a single-event request costs about 12% less CPU
/// (benches/http_ingest.sh). Its v2 line (crate feature `v2`): v3 keeps freed pages for
/// 1 s before returning them, which put the daemon's peak RSS at 133–160 MB draining
/// 1,000,000 events (`gamestream bench`); v2 returns them after 10 ms: 93–97 MB, at the
/// same CPU time (7.7 s vs 7.1–7.8 s for the drain).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
