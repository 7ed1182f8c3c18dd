//! The `ohlcv-server` binary: parse flags, set up logging, run the command.

use clap::Parser;
use ohlcv_server::cli::{run, Cli};
use tracing_subscriber::EnvFilter;

// mimalloc keeps freed memory for reuse instead of handing large blocks back to the kernel:
// with the system allocator 44 % of a 10 M-trade bar computation was the kernel faulting in
// and zeroing fresh pages, and allocation was a visible share of every candle query.
//
// It keeps freed pages for a second by default, though (mimalloc 3's `purge_delay`): a chunked
// build, which frees one chunk's trades as it reads the next, then held 1.8x its memory
// budget and grew with the length of the history (3 M trades: 107 MB peak against 60 MB with
// pages returned at once). Transparent huge pages are off (`no_thp`) for the same reason.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc 3's `mi_option_purge_delay` (its place in `mi_option_e`; `libmimalloc-sys` names
/// the options of mimalloc 2 only).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
/// Its default in mimalloc 3, by which the option is recognised.
const MI_PURGE_DELAY_DEFAULT_MS: std::ffi::c_long = 1000;
/// Freed pages go back to the kernel after this long (mimalloc 2's default)...
const PURGE_DELAY_MS: std::ffi::c_long = 10;
/// ...or this long with a build budget of `ROOMY_BUDGET_MB` or more: a chunked build frees
/// and refills its buffers every chunk (a chunk takes about half a second there), and faulting
/// them in again cost about 10 % of a first attach at 250 ms (1.2 M faults for 50 M trades,
/// 0.47 M at 2 s; benches/README.md, issue 24). The peak stays under the budget either way
/// (50 M trades, 1 GB: 680 MB at 250 ms, 750-830 MB at 2 s).
const ROOMY_PURGE_DELAY_MS: std::ffi::c_long = 2000;
const ROOMY_BUDGET_MB: u64 = 1024;
/// ...and never for the one-shot `build` command with such a budget: the process ends with
/// the build, so nothing freed needs to go back before then, and what a chunk frees is what
/// the next one reuses. A 2 s delay still returned and faulted in again 0.2 M pages of a
/// 50 M-trade first attach (0.45 s of system time of 1.4; benches/README.md, issue 24); the
/// peak stays bounded by the chunks (about 820 MB against 760 MB).
const NEVER: std::ffi::c_long = -1;

fn return_freed_memory_promptly(build_memory_mb: Option<u64>, one_shot_build: bool) {
    let delay = match build_memory_mb {
        Some(mb) if mb >= ROOMY_BUDGET_MB && one_shot_build => NEVER,
        Some(mb) if mb >= ROOMY_BUDGET_MB => ROOMY_PURGE_DELAY_MS,
        _ => PURGE_DELAY_MS,
    };
    // SAFETY: plain option get/set on the allocator, called before any other thread exists
    // (the options are not synchronised). An explicit MIMALLOC_PURGE_DELAY is left alone, and
    // nothing is set unless option 15 holds the purge delay's default, so another mimalloc
    // version's numbering cannot change an unrelated option.
    unsafe {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none()
            && libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) == MI_PURGE_DELAY_DEFAULT_MS
        {
            libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, delay);
        }
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // Read before any thread starts (see above); a config that does not load is reported by
    // the command itself.
    let config = cli.load_config();
    let one_shot_build = matches!(cli.command, ohlcv_server::cli::Command::Build { .. });
    return_freed_memory_promptly(
        config.as_ref().ok().map(|c| c.build.memory_mb),
        one_shot_build,
    );
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the tokio runtime starts")
        .block_on(run_cli(cli, config))
}

async fn run_cli(
    cli: Cli,
    config: anyhow::Result<ohlcv_server::config::Config>,
) -> std::process::ExitCode {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Logs are text until a config loads.
    let json = config
        .as_ref()
        .is_ok_and(|c| c.telemetry.log_format == "json");
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        logs.json().with_current_span(true).init();
    } else {
        logs.init();
    }
    match run(cli, config).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
