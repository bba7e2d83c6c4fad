//! `iotrules run`: the service.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Args;
use iotrules::plan::Plan;
use iotrules::plugin::StateStore;
use iotrules::service::{self, Ending};
use iotrules::store::DeadLetterSink;
use tokio::sync::watch;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The service configuration (see examples/demo.toml).
    #[arg(long, short, value_name = "FILE")]
    config: PathBuf,

    /// Log every event with what each rule made of it (the `iotrules::event` target at
    /// debug level).
    #[arg(long, short)]
    verbose: bool,

    /// Log filter, as in RUST_LOG (`info`, `iotrules=debug`, `iotrules::plugin=trace`, …).
    /// RUST_LOG is used when this is not given; the default is `info`.
    #[arg(long, value_name = "FILTER")]
    log: Option<String>,

    /// Worker threads of the async runtime (connectors, command paths, admin API); by
    /// default one fewer than the cores, at least 1 and at most 2.
    #[arg(long, default_value_t = service::default_io_threads(), value_name = "N")]
    io_threads: usize,
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    super::init_logging(args.log.as_deref(), args.verbose);
    let plan = Plan::load(&args.config)?;
    let (dead_letters, state) = super::open_store(&plan.config)?;
    let runtime = service::io_runtime(args.io_threads, plan.config.pipeline.scheduling)
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(plan, dead_letters, state))
}

async fn serve(
    plan: Plan,
    dead_letters: Arc<dyn DeadLetterSink>,
    state: Arc<dyn StateStore>,
) -> anyhow::Result<ExitCode> {
    let core = service::load_core(&plan, dead_letters, state)?;
    for problem in service::unknown_paths(&core.rules.current(), &plan.command_path_names()) {
        tracing::warn!("{problem}");
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        let _ = stop_tx.send(true);
        // A second signal stops at once; what is in flight is delivered again later.
        wait_for_signal().await;
        tracing::warn!("Second signal: exiting without waiting for the events in flight");
        std::process::exit(130);
    });
    let rules = core.rules.current().rules().len();
    let (ending, observed) = service::run(&plan, core, stop_rx, |_| {
        tracing::info!(
            connectors = plan.connectors.len(),
            rules,
            "iotrules is running (config {})",
            plan.config.file.display()
        );
    })
    .await?;
    eprint!("{}", service::summary(&observed));
    Ok(match ending {
        Ending::Finished | Ending::Stopped => ExitCode::SUCCESS,
    })
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
