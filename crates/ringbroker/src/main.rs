//! `ringbroker`: a Kafka-compatible broker, thread-per-core on io_uring.
//!
//! `ringbroker topic|group|cluster|produce|consume` is the admin CLI (see [`cli`]); `ringbroker
//! bench` the load generator.
//!
//! `ringbroker serve` reads its settings (flags > `RINGBROKER_*` env > `--config` TOML >
//! defaults), probes the kernel, starts one pinned shard per CPU, then waits for SIGINT or
//! SIGTERM and stops in order (flush, fsync, clean-shutdown marker).
//!
//! Fail-stop: a panic on any thread of `serve` (a shard, the metrics threads, the main thread)
//! logs one line and ends the process at once with [`PANIC_EXIT_STATUS`]; no clean-shutdown
//! marker is written, so the next start recovers, and a supervisor restarts it.

mod bench;
mod cli;
mod client;
mod config;

use anyhow::{Context, Result};
use clap::Parser;
use ringbroker_broker::server::Broker;
use ringbroker_runtime::KernelFeatures;
use std::io::Write as _;

/// Exit status of a process stopped by a panic (the status Rust gives a panicking `main`).
const PANIC_EXIT_STATUS: i32 = 101;

/// Survives hostile array counts in request bodies (see `ringbroker_protocol::alloc`).
#[global_allocator]
static ALLOC: ringbroker_protocol::alloc::GuardedAlloc = ringbroker_protocol::alloc::GuardedAlloc;

fn main() {
    let cli = config::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match cli.command {
        config::Command::Serve(args) => serve(args),
        config::Command::Bench(args) => bench::run(args),
        config::Command::Topic(args) => cli::topic(args),
        config::Command::Group(args) => cli::group(args),
        config::Command::Cluster(args) => cli::cluster(args),
        config::Command::Produce(args) => cli::produce(args),
        config::Command::Consume(args) => cli::consume(args),
        config::Command::User(args) => cli::user::run(args),
    };
    if let Err(e) = result {
        eprintln!("ringbroker: {e:#}");
        std::process::exit(1);
    }
}

fn serve(args: config::ServeArgs) -> Result<()> {
    fail_stop_on_panic();
    let settings = args.resolve()?;
    let mut features = KernelFeatures::get()
        .map_err(anyhow::Error::msg)
        .context("io_uring is not usable")?;
    if settings.uring_fallback {
        features = features.without_optional();
    }
    let config = settings.broker;

    // Block the stop signals before any shard starts, so only sigwait below receives them.
    let signals = stop_signal_set();
    // SAFETY: the set is initialised; this changes only the calling thread's mask (inherited
    // by the threads it spawns).
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &signals, std::ptr::null_mut()) };

    raise_fd_limit(config.max_connections);
    let started = std::time::Instant::now();
    let broker = Broker::start(config.clone(), &features)?;
    if !broker.previous_shutdown_clean {
        let r = ringbroker_storage::recovery::totals();
        let elapsed_ms = started.elapsed().as_millis();
        tracing::info!(
            scanned_bytes = r.scanned_bytes,
            log_bytes = r.log_bytes,
            partitions = r.partitions,
            elapsed_ms,
            "recovery scanned {} bytes of {} in {} partitions in {} ms",
            r.scanned_bytes,
            r.log_bytes,
            r.partitions,
            elapsed_ms
        );
    }
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        shards = config.cores.len(),
        cores = ?config.cores,
        rings = config.cores.len(),
        kernel = %features.kernel_release,
        features = %features.summary(),
        wakeups = if config.use_msg_ring && features.msg_ring { "MSG_RING" } else { "eventfd" },
        data_dir = %config.data_dir.display(),
        advertised = %format!("{}:{}", broker.shared.advertised_host, broker.shared.advertised_port),
        listeners = %broker
            .shared
            .listeners
            .iter()
            .map(|l| {
                let tls = match (l.protocol.uses_tls(), broker.shared.ktls) {
                    (false, _) => "",
                    (true, true) => ", TLS: ktls",
                    (true, false) => ", TLS: userspace",
                };
                format!("{}://{} (advertised {}:{}{tls})", l.name, l.bound, l.advertised_host, l.advertised_port)
            })
            .collect::<Vec<_>>()
            .join(", "),
        flush = ?config.flush,
        recovery = if broker.previous_shutdown_clean { "trusted clean shutdown" } else { "scanned after the recovery checkpoints" },
        metrics = %broker.metrics_addr.map_or_else(|| "off".to_string(), |a| format!("http://{a}/metrics")),
        "listening on {}",
        broker.listen_addr
    );

    let mut signal: libc::c_int = 0;
    // SAFETY: waits for one of the blocked signals in the initialised set.
    unsafe { libc::sigwait(&signals, &mut signal) };
    tracing::info!(signal, "stopping: flushing partitions");
    broker
        .shutdown()
        .context("writing the clean-shutdown marker")?;
    tracing::info!("stopped cleanly");
    Ok(())
}

/// Makes a panic anywhere end the process: a shard that died would leave its partitions
/// unserved behind an open port, and a later SIGTERM would mark the data dir clean.
///
/// `_exit` rather than `abort`: the line below says what happened, a supervisor sees a failed
/// exit either way, and a core dump of a broker (its rings and buffers) would only delay the
/// restart. Set `RUST_BACKTRACE=1` to add a backtrace after the line.
fn fail_stop_on_panic() {
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        let payload = info
            .payload()
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| info.payload().downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(no message)");
        let location = info
            .location()
            .map_or_else(|| "unknown location".to_string(), ToString::to_string);
        // Written directly (not through tracing, whose state the panic may have left
        // borrowed) as one line, so a log reader finds it whole.
        let line = format!(
            "ringbroker: FATAL: thread '{}' panicked at {location}: {}; exiting with status {PANIC_EXIT_STATUS}, no clean-shutdown marker (the next start recovers)\n",
            thread.name().unwrap_or("unnamed"),
            payload.replace('\n', " "),
        );
        let mut stderr = std::io::stderr().lock();
        let _ = std::io::Write::write_all(&mut stderr, line.as_bytes());
        let backtrace = std::backtrace::Backtrace::capture();
        if backtrace.status() == std::backtrace::BacktraceStatus::Captured {
            let _ = writeln!(stderr, "{backtrace}");
        }
        // SAFETY: _exit ends the process at once, without running atexit handlers or
        // destructors (other threads may be mid-way through anything; nothing of theirs runs).
        unsafe { libc::_exit(PANIC_EXIT_STATUS) };
    }));
}

/// Raises the soft open-files limit towards the hard one, so `--max-connections` (plus
/// partition files) fits; warns when the hard limit is too low for it.
fn raise_fd_limit(max_connections: usize) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return;
        }
        if lim.rlim_cur < lim.rlim_max {
            let old = lim.rlim_cur;
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                lim.rlim_cur = old;
            }
        }
    }
    let wanted = max_connections as u64 + 1024;
    if lim.rlim_cur < wanted {
        tracing::warn!(
            open_files_limit = lim.rlim_cur,
            max_connections,
            "the open-files limit is below --max-connections + 1024; accepts will fail with EMFILE before the connection limit (raise LimitNOFILE / ulimit -n)"
        );
    }
}

fn stop_signal_set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and fill a local sigset_t.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        set
    }
}
