//! Command-line interface: argument definitions and dispatch.

mod decode;
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
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Decode(args) => decode::run(args),
        Command::Test(args) => test::run(args),
    }
}
