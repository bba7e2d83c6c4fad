//! Command-line interface: argument definitions and dispatch.

mod check;
mod dead_letters;
mod decode;
mod replay;
mod run;
mod test;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Verify, decrypt and normalize IoT cloud messages (Tuya, Alibaba, Huawei) and run them
/// through rules.
#[derive(Debug, Parser)]
#[command(name = "iotrules", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Decrypt and normalize one captured vendor message and print it as a JSON event.
    ///
    /// Give the message exactly as received: the Pulsar message payload for Tuya, the AMQP
    /// body or MQTT payload for Alibaba and Huawei. Transport properties that the dialect
    /// needs go in --property: Tuya's `em` (encryption mode; absent means aes_ecb), the
    /// `topic` of an Alibaba or Huawei message (AMQP application property or MQTT topic).
    ///
    /// Examples:
    ///
    ///   iotrules decode --vendor tuya --property em=aes_gcm message.json
    ///
    ///   iotrules decode --vendor alibaba --property topic=/a1B2/lamp/thing/event/property/post body.json
    ///
    /// The access key is read from IOTRULES_ACCESS_KEY when --access-key is not given, so it
    /// need not appear in shell history. Exits non-zero with a one-line reason when the
    /// message is refused (signature, base64, decrypt, json, unsupported).
    Decode(decode::DecodeArgs),

    /// Run the service: connectors, rules, plugins, command paths, admin API.
    ///
    /// Rule files and plugins reload while it runs. It stops when every connector has
    /// finished (a replay at the end of its file), or on SIGINT/SIGTERM after the events in
    /// flight are done, and prints a summary.
    ///
    /// Example (the embedded demo, no network):
    ///
    ///   iotrules run --config examples/demo.toml --verbose
    Run(run::RunArgs),

    /// Check a configuration, its plugins and its rules, and exit non-zero on any problem.
    ///
    /// Every problem is printed on its own line with its file, line and column.
    Check(check::CheckArgs),
    /// Run the rule tests: events through the rules and the real plugins, checked against
    /// the verdicts and commands the tests expect.
    ///
    /// Tests are `[[test]]` tables in the rules directory's `*.test.toml` files and in the
    /// `*.toml` files of its `tests/` subdirectory (the service skips both). Each test starts
    /// with empty plugin state and a clock at 2025-11-23T08:00:00Z that moves only by its
    /// inputs' `after_s`:
    ///
    ///   [[test]]
    ///   name = "motion switches the hallway lamp on"
    ///   [[test.input]]
    ///   vendor = "tuya"
    ///   device = "vdevo-hallway-pir"
    ///   properties = { pir = "pir" }
    ///   [[test.input.expect]]
    ///   rule = "hallway-motion-light"
    ///   verdict = "keep"        # replace, pass, drop, dead-letter, drop-on-error, no-match, if-error
    ///   commands = [{ device = "vdevo-hallway-lamp", name = "switch_led", params = true }]
    ///
    /// An expectation checks only the fields it gives. The format is documented in
    /// rules/README.md. Prints one line per test, a diff (- expected, + actual) per failed
    /// expectation, and a summary; exits non-zero when a test fails or a file has a problem.
    #[command(verbatim_doc_comment)]
    Test(test::TestArgs),
    /// List, show and purge dead letters: deliveries the service could not process, kept
    /// byte for byte with the reason, in the service's SQLite store.
    ///
    /// Examples:
    ///
    ///   iotrules dead-letters list --store /var/lib/iotrules/iotrules.db --kind decrypt
    ///
    ///   iotrules dead-letters show 42 --raw > message.bin
    ///
    ///   iotrules dead-letters purge --before 2024-05-01
    DeadLetters(dead_letters::DeadLettersArgs),
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Decode(args) => decode::run(args),
        Command::Run(args) => run::run(args),
        Command::Check(args) => check::run(args),
        Command::Test(args) => test::run(args),
        Command::DeadLetters(args) => dead_letters::run(args),
    }
}

/// Logs to standard error: `filter` (or RUST_LOG, or `info`), plus every event's trace with
/// `verbose`.
fn init_logging(filter: Option<&str>, verbose: bool) {
    use tracing_subscriber::EnvFilter;
    let mut filter = match filter {
        Some(filter) => EnvFilter::new(filter),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    if verbose && let Ok(directive) = "iotrules::event=debug".parse() {
        filter = filter.add_directive(directive);
    }
    // The pulsar crate traces the CONNECT frame, credentials included: never below debug.
    if let Ok(directive) = "pulsar::connection=debug".parse() {
        filter = filter.add_directive(directive);
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

/// The dead-letter store and the plugin state store of `config`: one SQLite file, created
/// (with its directory) if missing, its dead letters kept within `[dead_letters]`.
fn open_store(
    config: &iotrules::config::Config,
) -> anyhow::Result<(
    std::sync::Arc<dyn iotrules::store::DeadLetterSink>,
    std::sync::Arc<dyn iotrules::plugin::StateStore>,
)> {
    use anyhow::Context as _;
    if let Some(dir) = config.store.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the store's directory {}", dir.display()))?;
    }
    let store = iotrules::store::Store::open(&config.store)?
        .with_retention((&config.dead_letters).into(), config.clock.clone());
    let store = std::sync::Arc::new(store);
    let state = iotrules::store::SqliteStateStore::new(store.clone());
    Ok((store, std::sync::Arc::new(state)))
}

/// An identity as one line: `key=value, key=value`.
fn identity_text(identity: &[(String, String)]) -> String {
    identity
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect::<Vec<_>>()
        .join(", ")
}
