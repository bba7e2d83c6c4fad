//! `iotrules decode`: one captured message in, the normalized event (or the decrypted body) out.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;
use iotrules::dialect::{Dialect, DialectName, RawMessage, SignMode, json, tuya};
use iotrules::event::ATTR_SIGNATURE;
use iotrules::plan::Plan;

#[derive(Debug, Args)]
pub struct DecodeArgs {
    /// The file holding the raw message; `-` or nothing reads standard input.
    file: Option<PathBuf>,

    /// Which dialect the message is in: tuya, tuya-business, alibaba, huawei or json (or give
    /// --config and --connector).
    #[arg(long, required_unless_present = "connector")]
    vendor: Option<DialectName>,

    /// Decode as this connector of --config does (its dialect, keys and signature policy),
    /// and print the identity it presents to its broker (URL, topic, subscription,
    /// username; never a secret) on standard error, to compare with the vendor console.
    #[arg(long, requires = "config", conflicts_with = "vendor")]
    connector: Option<String>,

    /// The service configuration --connector is read from.
    #[arg(long, short, value_name = "FILE", requires = "connector")]
    config: Option<PathBuf>,

    /// Tuya access key (the project's secret); required for tuya and tuya-business.
    #[arg(long, env = "IOTRULES_ACCESS_KEY", hide_env_values = true)]
    access_key: Option<String>,

    /// Tuya access id; only shown in the derived identity, not needed to decrypt.
    #[arg(long, default_value = "")]
    access_id: String,

    /// A transport property of the message, KEY=VALUE (repeatable): `em=aes_gcm` for Tuya,
    /// `topic=/pk/dn/thing/event/property/post`, `messageId=…`, `generateTime=…` for AMQP.
    #[arg(long = "property", value_name = "KEY=VALUE", value_parser = parse_property)]
    properties: Vec<(String, String)>,

    /// What to do when the envelope signature does not match (Tuya): enforce, warn or off.
    #[arg(long, default_value = "enforce")]
    sign: SignMode,

    /// The Alibaba AMQP body is base64 (the subscription's username had `encode=base64`).
    #[arg(long)]
    body_base64: bool,

    /// Print the decrypted vendor body instead of the normalized event.
    #[arg(long)]
    raw: bool,

    /// The json dialect: where the device is in the topic, as a connector's `device_topic`
    /// (`devices/{device}/telemetry`); the topic itself is the `topic` property.
    #[arg(long, value_name = "TEMPLATE")]
    device_topic: Option<String>,

    /// The connector name to put in the event's `source` (default: --connector, or `decode`).
    #[arg(long)]
    source: Option<String>,
}

fn parse_property(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("`{text}` is not KEY=VALUE")),
    }
}

/// The dialect of `--connector` in `--config`, after printing the connector's identity.
fn connector_dialect(config: &std::path::Path, name: &str) -> anyhow::Result<Dialect> {
    let plan = Plan::load(config)?;
    let Some(connector) = plan.connector(name) else {
        let names: Vec<&str> = plan.connectors.iter().map(|c| c.name.as_str()).collect();
        bail!(
            "{}: no connector \"{name}\" (it has: {})",
            plan.config.file.display(),
            names.join(", ")
        );
    };
    let identity = connector.connector.identity(plan.config.clock.now_ms());
    eprintln!(
        "iotrules: connector {name} ({}): {}",
        connector.kind,
        super::identity_text(&identity)
    );
    Ok(connector.dialect.clone())
}

fn dialect(args: &DecodeArgs) -> anyhow::Result<Dialect> {
    let vendor = match (&args.config, &args.connector, args.vendor) {
        (Some(config), Some(name), _) => return connector_dialect(config, name),
        (_, _, Some(vendor)) => vendor,
        _ => bail!("give --vendor, or --config and --connector"),
    };
    let keys = || -> anyhow::Result<tuya::Keys> {
        let Some(key) = args.access_key.as_deref() else {
            bail!("--access-key (or IOTRULES_ACCESS_KEY) is required to decrypt Tuya messages");
        };
        Ok(tuya::Keys::new(args.access_id.clone(), key)?)
    };
    let template = || -> anyhow::Result<json::TopicTemplate> {
        let Some(template) = args.device_topic.as_deref() else {
            bail!("--device-topic is required for the json dialect (the connector's device_topic)");
        };
        json::TopicTemplate::parse(template).map_err(|e| anyhow::anyhow!("--device-topic: {e}"))
    };
    vendor.build(args.sign, args.body_base64, keys, template)
}

fn read_input(file: Option<&PathBuf>) -> anyhow::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    match file {
        Some(path) if path.as_os_str() != "-" => {
            bytes =
                std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        }
        _ => {
            std::io::stdin()
                .read_to_end(&mut bytes)
                .context("cannot read standard input")?;
        }
    }
    Ok(bytes)
}

pub fn run(args: DecodeArgs) -> anyhow::Result<ExitCode> {
    let dialect = dialect(&args)?;
    let payload = read_input(args.file.as_ref())?;
    let source = args
        .source
        .as_deref()
        .or(args.connector.as_deref())
        .unwrap_or("decode");
    let message = RawMessage::new(source, &payload).with_properties(&args.properties);
    let origin = args
        .file
        .as_ref()
        .map_or_else(|| "standard input".to_owned(), |p| p.display().to_string());
    let refused =
        |e: iotrules::dialect::DecodeError| anyhow::anyhow!("{origin}: {} error: {e}", e.kind());

    let mut out = std::io::stdout().lock();
    if args.raw {
        let body = dialect.decrypt(&message).map_err(refused)?;
        out.write_all(&body)?;
        if !body.ends_with(b"\n") {
            out.write_all(b"\n")?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let event = dialect.decode(&message).map_err(refused)?;
    if event.attribute(ATTR_SIGNATURE) == Some("mismatch") {
        eprintln!(
            "iotrules: warning: {origin}: signature does not match; accepted because the sign \
             mode is warn (--sign warn, or the connector's sign, warn by default)"
        );
    }
    serde_json::to_writer_pretty(&mut out, &event)?;
    out.write_all(b"\n")?;
    Ok(ExitCode::SUCCESS)
}
