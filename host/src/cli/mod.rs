//! Command-line interface: argument definitions and dispatch.

mod dead_letters;
mod decode;

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
        Command::DeadLetters(args) => dead_letters::run(args),
    }
}
