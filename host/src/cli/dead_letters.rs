//! `iotrules dead-letters`: look at, and clean up, the deliveries the service could not
//! process.
//!
//! The commands open an existing store and never create one: pointed at the wrong path
//! they say so instead of showing an empty list. They can run while the service writes to
//! the same file (SQLite WAL mode).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use base64::Engine;
use clap::{Args, Subcommand};
use iotrules::store::{DeadLetter, DeadLetterSummary, Filter, Store};
use iotrules::time::Utc;

/// How many letters `list` shows when --limit is not given.
const DEFAULT_LIMIT: usize = 100;

/// How many characters of a message's first line the `list` table shows.
const MESSAGE_WIDTH: usize = 72;

/// Widest a connector, kind or rule column gets before its values are clipped.
const COLUMN_WIDTH: usize = 24;

/// `iotrules dead-letters`: which subcommand, with its arguments.
#[derive(Debug, Args)]
pub struct DeadLettersArgs {
    /// `list`, `show` or `purge`.
    #[command(subcommand)]
    command: DeadLettersCommand,
}

#[derive(Debug, Subcommand)]
enum DeadLettersCommand {
    /// List stored dead letters, newest first: id, time (UTC), connector, kind, rule (with
    /// `/step`) and the first line of the error message.
    ///
    /// Examples:
    ///
    ///   iotrules dead-letters list --kind decrypt --since 2024-05-01
    ///
    ///   iotrules dead-letters list --connector tuya-eu --json | jq .message
    List(ListArgs),
    /// Show one dead letter in full: every field, the transport properties and the
    /// payload (as text when it is UTF-8, else base64).
    ///
    /// With --raw, write only the payload bytes, exactly as received, to standard output:
    ///
    ///   iotrules dead-letters show 42 --raw > message.bin
    ///
    ///   iotrules decode --vendor tuya --property em=aes_gcm message.bin
    Show(ShowArgs),
    /// Delete dead letters: by id, by filter, or all of them with --all. Prints how many
    /// were deleted.
    ///
    /// Examples:
    ///
    ///   iotrules dead-letters purge --id 3 --id 4
    ///
    ///   iotrules dead-letters purge --kind signature --before 2024-05-01
    Purge(PurgeArgs),
    /// Run dead letters back through the service's pipeline: decoded with their
    /// connector's dialect, through the current rules and plugins, commands to the configured
    /// paths. A letter is deleted once its delivery is acknowledged; one that fails again
    /// is stored again as a new dead letter with the new reason. Needs --config (connectors,
    /// rules, plugins, command paths).
    ///
    /// Examples:
    ///
    ///   iotrules dead-letters replay --config iotrules.toml --kind command
    ///
    ///   iotrules dead-letters replay --config iotrules.toml --id 42
    Replay(ReplayArgs),
}

#[derive(Debug, Args)]
struct ReplayArgs {
    /// The service configuration.
    #[arg(long, short, value_name = "FILE")]
    config: PathBuf,

    /// Only these letters (repeat the option for several).
    #[arg(long = "id", value_name = "ID")]
    ids: Vec<i64>,

    #[command(flatten)]
    filter: FilterArgs,
}

/// Where the dead letters are. The one place that decides the store's path, so that a
/// `--config FILE` option (reading `store` from the service config) can be added here
/// for every subcommand at once.
#[derive(Debug, Args)]
struct StoreArgs {
    /// The SQLite file the service keeps dead letters in (the service config's store
    /// path). It must exist: these commands never create one. [default: iotrules.db]
    #[arg(long = "store", value_name = "FILE", conflicts_with = "config")]
    store: Option<PathBuf>,

    /// Read the store's path from this service configuration.
    #[arg(long, short, value_name = "FILE")]
    config: Option<PathBuf>,
}

impl StoreArgs {
    /// Opens the existing store; the error names the path.
    fn open(&self) -> anyhow::Result<Store> {
        let path = match (&self.store, &self.config) {
            (Some(store), _) => store.clone(),
            (None, Some(config)) => iotrules::config::Config::load(config)?.store,
            (None, None) => PathBuf::from("iotrules.db"),
        };
        Ok(Store::open_existing(&path)?)
    }
}

/// Which letters: every option given narrows the selection.
#[derive(Debug, Args)]
struct FilterArgs {
    /// Only letters from this connector (its name in the config, e.g. `tuya-eu`).
    #[arg(long, value_name = "NAME")]
    connector: Option<String>,

    /// Only letters of this kind: `signature`, `base64`, `decrypt`, `json`, `unsupported`,
    /// `command`, `condition`, ... A family name selects all its kinds: `plugin` matches
    /// `plugin:deadline`, `plugin:trap` and the rest.
    #[arg(long, value_name = "KIND")]
    kind: Option<String>,

    /// Only letters from this rule (its name in the rule file).
    #[arg(long, value_name = "NAME")]
    rule: Option<String>,

    /// Only letters stored at or after this time: RFC 3339 (`2024-05-01T12:00:00Z`,
    /// `2024-05-01T14:00:00+02:00`), a UTC date (`2024-05-01`) or Unix milliseconds.
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    since: Option<u64>,

    /// Only letters stored before this time; same forms as --since.
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    before: Option<u64>,
}

impl FilterArgs {
    fn to_filter(&self) -> Filter {
        Filter {
            connector: self.connector.clone(),
            kind: self.kind.clone(),
            rule: self.rule.clone(),
            since_ms: self.since,
            before_ms: self.before,
            limit: None,
        }
    }
}

#[derive(Debug, Args)]
struct ListArgs {
    #[command(flatten)]
    store: StoreArgs,

    #[command(flatten)]
    filter: FilterArgs,

    /// Show at most this many, the newest; 0 shows all. A note on standard error says
    /// when more matched.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_LIMIT)]
    limit: usize,

    /// Print one JSON object per line instead of a table, for scripts (`time_ms` is Unix
    /// milliseconds, `time` the same in RFC 3339 UTC).
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct ShowArgs {
    /// The dead letter's id, as `list` shows it.
    id: i64,

    #[command(flatten)]
    store: StoreArgs,

    /// Write only the payload, byte for byte, with nothing added: for a file or a pipe
    /// into `iotrules decode`.
    #[arg(long)]
    raw: bool,
}

#[derive(Debug, Args)]
struct PurgeArgs {
    #[command(flatten)]
    store: StoreArgs,

    /// Delete every dead letter in the store. Required to purge without --id or a filter,
    /// so that a forgotten filter never empties the store.
    #[arg(long, conflicts_with_all = ["ids", "connector", "kind", "rule", "since", "before"])]
    all: bool,

    /// Delete the dead letter with this id (repeatable: `--id 3 --id 4`, or `--id 3 4`).
    /// Ids that do not exist are named on standard error and the exit status is 1.
    #[arg(
        long = "id",
        value_name = "ID",
        num_args = 1..,
        conflicts_with_all = ["connector", "kind", "rule", "since", "before"]
    )]
    ids: Vec<i64>,

    #[command(flatten)]
    filter: FilterArgs,
}

/// Runs one `dead-letters` subcommand.
pub fn run(args: DeadLettersArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        DeadLettersCommand::List(args) => list(args),
        DeadLettersCommand::Show(args) => show(args),
        DeadLettersCommand::Purge(args) => purge(args),
        DeadLettersCommand::Replay(args) => {
            super::replay::run(args.config, args.ids, args.filter.to_filter())
        }
    }
}

fn list(args: ListArgs) -> anyhow::Result<ExitCode> {
    let store = args.store.open()?;
    let mut filter = args.filter.to_filter();
    filter.limit = (args.limit > 0).then_some(args.limit);
    let letters = store.list(&filter)?;

    let mut out = std::io::stdout().lock();
    if args.json {
        for letter in &letters {
            serde_json::to_writer(&mut out, &summary_json(letter))?;
            out.write_all(b"\n")?;
        }
    } else if letters.is_empty() {
        let which = if filter.selects_all() {
            ""
        } else {
            " match the filters"
        };
        eprintln!(
            "iotrules: no dead letters in {}{which}",
            store.path().display()
        );
    } else {
        write_table(&mut out, &letters)?;
    }
    out.flush()?;

    if filter.limit == Some(letters.len()) {
        let total = store.count(&filter)?;
        if total > letters.len() {
            eprintln!(
                "iotrules: showing the newest {} of {total}; use --limit 0 to see all",
                letters.len()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn summary_json(letter: &DeadLetterSummary) -> serde_json::Value {
    serde_json::json!({
        "id": letter.id,
        "time_ms": letter.time_ms,
        "time": format_time(letter.time_ms),
        "connector": letter.connector,
        "vendor": letter.vendor,
        "kind": letter.kind,
        "rule": letter.rule,
        "step": letter.step,
        "event_id": letter.event_id,
        "message": letter.message,
        "replays": letter.replays,
        "payload_bytes": letter.payload_len,
    })
}

fn write_table(out: &mut impl Write, letters: &[DeadLetterSummary]) -> std::io::Result<()> {
    let rows: Vec<[String; 6]> = letters
        .iter()
        .map(|letter| {
            let rule = match (&letter.rule, letter.step) {
                (Some(rule), Some(step)) => format!("{rule}/{step}"),
                (Some(rule), None) => rule.clone(),
                (None, _) => "-".to_owned(),
            };
            [
                letter.id.to_string(),
                format_time_seconds(letter.time_ms),
                clip(&letter.connector, COLUMN_WIDTH),
                clip(&letter.kind, COLUMN_WIDTH),
                clip(&rule, COLUMN_WIDTH),
                clip(letter.message.lines().next().unwrap_or(""), MESSAGE_WIDTH),
            ]
        })
        .collect();
    let header = ["ID", "TIME (UTC)", "CONNECTOR", "KIND", "RULE", "MESSAGE"].map(String::from);
    let mut widths = [0; 5];
    for row in std::iter::once(&header).chain(&rows) {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    for row in std::iter::once(&header).chain(&rows) {
        let [id, time, connector, kind, rule, message] = row;
        let [w0, w1, w2, w3, w4] = widths;
        writeln!(
            out,
            "{id:>w0$}  {time:<w1$}  {connector:<w2$}  {kind:<w3$}  {rule:<w4$}  {message}"
        )?;
    }
    Ok(())
}

fn show(args: ShowArgs) -> anyhow::Result<ExitCode> {
    let store = args.store.open()?;
    let Some(letter) = store.get(args.id)? else {
        bail!("no dead letter {} in {}", args.id, store.path().display());
    };
    let mut out = std::io::stdout().lock();
    if args.raw {
        out.write_all(&letter.payload)
            .and_then(|()| out.flush())
            .context("cannot write the payload to standard output")?;
    } else {
        write_letter(&mut out, &letter)?;
        out.flush()?;
    }
    Ok(ExitCode::SUCCESS)
}

fn write_letter(out: &mut impl Write, letter: &DeadLetter) -> std::io::Result<()> {
    let or_dash = |value: Option<&str>| value.unwrap_or("-").to_owned();
    let fields = [
        ("id", letter.id.to_string()),
        (
            "time",
            format!("{} ({} ms)", format_time(letter.time_ms), letter.time_ms),
        ),
        ("connector", letter.connector.clone()),
        ("vendor", or_dash(letter.vendor.as_deref())),
        ("kind", letter.kind.clone()),
        ("rule", or_dash(letter.rule.as_deref())),
        (
            "step",
            letter.step.map_or_else(|| "-".into(), |s| s.to_string()),
        ),
        ("event id", or_dash(letter.event_id.as_deref())),
        ("replays", letter.replays.to_string()),
    ];
    for (name, value) in fields {
        writeln!(out, "{:<11}{value}", format!("{name}:"))?;
    }
    if letter.properties.is_empty() {
        writeln!(out, "properties: -")?;
    } else {
        writeln!(out, "properties:")?;
        for (key, value) in &letter.properties {
            writeln!(out, "  {key}={value}")?;
        }
    }
    writeln!(out, "message:")?;
    for line in letter.message.lines() {
        writeln!(out, "  {line}")?;
    }
    let size = letter.payload.len();
    match std::str::from_utf8(&letter.payload) {
        Ok(text) => {
            writeln!(out, "payload ({size} bytes, UTF-8 text):")?;
            out.write_all(text.as_bytes())?;
            if !text.ends_with('\n') {
                writeln!(out)?;
            }
        }
        Err(_) => {
            writeln!(
                out,
                "payload ({size} bytes, not UTF-8, shown as base64; --raw writes the bytes):"
            )?;
            let encoded = base64::engine::general_purpose::STANDARD.encode(&letter.payload);
            writeln!(out, "{encoded}")?;
        }
    }
    Ok(())
}

fn purge(args: PurgeArgs) -> anyhow::Result<ExitCode> {
    let filter = args.filter.to_filter();
    let store = args.store.open()?;
    if !args.all && args.ids.is_empty() && filter.selects_all() {
        bail!(
            "refusing to purge every dead letter in {} without --all; give --all, --id, or a \
             filter (--connector, --kind, --rule, --since, --before)",
            store.path().display()
        );
    }
    let path = store.path().display();
    if args.ids.is_empty() {
        let purged = store.purge(&filter)?;
        println!("purged {purged} {} from {path}", letters(purged));
        return Ok(ExitCode::SUCCESS);
    }
    let mut purged = 0;
    let mut missing = Vec::new();
    for &id in &args.ids {
        if store.remove(id)? {
            purged += 1;
        } else {
            missing.push(id.to_string());
        }
    }
    println!("purged {purged} {} from {path}", letters(purged));
    if missing.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "iotrules: no dead letter with id {} in {path}",
            missing.join(", ")
        );
        Ok(ExitCode::FAILURE)
    }
}

fn letters(n: usize) -> &'static str {
    if n == 1 {
        "dead letter"
    } else {
        "dead letters"
    }
}

/// `YYYY-MM-DDThh:mm:ss.fffZ`.
fn format_time(ms: u64) -> String {
    let t = Utc::from_ms(ms);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year, t.month, t.day, t.hour, t.minute, t.second, t.millis
    )
}

/// `YYYY-MM-DD hh:mm:ss`, for the table whose header says UTC.
fn format_time_seconds(ms: u64) -> String {
    let t = Utc::from_ms(ms);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        t.year, t.month, t.day, t.hour, t.minute, t.second
    )
}

/// `text` cut to `width` characters, the last one an ellipsis when cut.
fn clip(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_owned();
    }
    let mut clipped: String = text.chars().take(width.saturating_sub(1)).collect();
    clipped.push('…');
    clipped
}

/// Unix milliseconds, a UTC date, or RFC 3339 with `Z` or a `±hh:mm` offset.
fn parse_time(text: &str) -> Result<u64, String> {
    let refuse = || {
        format!(
            "`{text}` is not a time: give RFC 3339 (2024-05-01T12:00:00Z), a date \
             (2024-05-01) or Unix milliseconds"
        )
    };
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().map_err(|_| refuse());
    }
    if text.len() == 10 {
        return iotrules::time::parse_iso(&format!("{text}T00:00:00Z")).ok_or_else(refuse);
    }
    // RFC 3339 allows a lower-case `t` and `z`.
    let text_upper = text.to_ascii_uppercase();
    if text_upper.ends_with('Z') {
        return iotrules::time::parse_iso(&text_upper).ok_or_else(refuse);
    }
    // `...±hh:mm`: parse the local time as if UTC, then remove the offset.
    let Some((local, offset)) = text_upper
        .len()
        .checked_sub(6)
        .and_then(|at| Some((text_upper.get(..at)?, text_upper.get(at..)?)))
    else {
        return Err(refuse());
    };
    let (sign, hhmm) = offset.split_at(1);
    let (hours, minutes) = hhmm.split_once(':').ok_or_else(refuse)?;
    let (Ok(hours), Ok(minutes)) = (hours.parse::<u64>(), minutes.parse::<u64>()) else {
        return Err(refuse());
    };
    if hours > 23 || minutes > 59 || hhmm.len() != 5 {
        return Err(refuse());
    }
    let local = iotrules::time::parse_iso(&format!("{local}Z")).ok_or_else(refuse)?;
    let offset_ms = (hours * 60 + minutes) * 60_000;
    match sign {
        "+" => local.checked_sub(offset_ms).ok_or_else(refuse),
        "-" => local.checked_add(offset_ms).ok_or_else(refuse),
        _ => Err(refuse()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_in_every_documented_form() {
        let noon = 1_714_564_800_000; // 2024-05-01T12:00:00Z
        assert_eq!(parse_time("1714564800000"), Ok(noon));
        assert_eq!(parse_time("2024-05-01T12:00:00Z"), Ok(noon));
        assert_eq!(parse_time("2024-05-01t12:00:00.000z"), Ok(noon));
        assert_eq!(parse_time("2024-05-01T14:00:00+02:00"), Ok(noon));
        assert_eq!(parse_time("2024-05-01T07:30:00-04:30"), Ok(noon));
        assert_eq!(parse_time("2024-05-01"), Ok(noon - 12 * 3_600_000));
    }

    #[test]
    fn malformed_times_are_refused_with_the_forms_to_use() {
        for bad in [
            "",
            "yesterday",
            "2024-05-01T12:00:00",
            "2024-05-01T12:00:00+2:00",
            "2024-05-01T12:00:00*02:00",
            "2024-05-01T12:00:00+24:00",
            "2024-13-01",
            "1970-01-01T00:00:00+00:01",
            "99999999999999999999999",
            "2024-05-01T12:00:00+é:00",
        ] {
            let error = parse_time(bad).expect_err(bad);
            assert!(error.contains("RFC 3339"), "{bad}: {error}");
        }
    }

    #[test]
    fn clipping_counts_characters_not_bytes() {
        assert_eq!(clip("héllo", 5), "héllo");
        assert_eq!(clip("héllo wörld", 6), "héllo…");
    }

    #[test]
    fn times_format_in_utc_with_milliseconds() {
        assert_eq!(format_time(1_707_532_200_123), "2024-02-10T02:30:00.123Z");
        assert_eq!(format_time_seconds(0), "1970-01-01 00:00:00");
    }
}
