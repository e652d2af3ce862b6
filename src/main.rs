use clap::Parser;

/// Process-wide settings that decide CPU throughput; set before any worker thread starts.
fn tune_runtime() {
    // candle's elementwise thread pool spins 25,000 times before parking after every op; on a
    // small machine that spinning steals a core from the matmul threads. Keep it brief unless
    // the user chose otherwise.
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "200");
    }
    // Activations of a steering step are a few MB each and die within the step: keep freed
    // memory in the heap instead of returning it to the kernel, which then re-zeroes every page.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only adjusts allocator thresholds; called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
    }
}

fn main() {
    tune_runtime();
    let cli = clipsteer::cli::Cli::parse();
    match clipsteer::cli::run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {}", clipsteer::error_line(&e));
            std::process::exit(1);
        }
    }
}
