//! `iotrules test`: runs the rule tests of a rules directory against the built plugins and
//! prints one line per test, then a diff per failed expectation and a summary.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;
use iotrules::plugin::{ReloadReport, Runtime, RuntimeConfig};
use iotrules::rules::{RuleError, RuleSet};
use iotrules::ruletest::{self, Runner, TestReport};

/// The rules directory unless `--rules` says otherwise.
const DEFAULT_RULES: &str = "rules";
/// The plugins directory unless `--plugins` says otherwise: where scripts/build-plugins puts
/// them.
const DEFAULT_PLUGINS: &str = "plugins/dist";

#[derive(Debug, Args)]
pub struct TestArgs {
    /// Run only the tests whose name contains this text.
    filter: Option<String>,

    /// The rules directory: its rules, and the tests in its `*.test.toml` files and in its
    /// `tests/` subdirectory [default: rules].
    #[arg(long, value_name = "DIR")]
    rules: Option<PathBuf>,

    /// The directory of the plugin components, NAME.wasm [default: plugins/dist].
    #[arg(long, value_name = "DIR")]
    plugins: Option<PathBuf>,

    /// Take the rules and plugins directories from this service configuration (the flags
    /// above still win).
    #[arg(long, short, value_name = "FILE")]
    config: Option<PathBuf>,
}

impl TestArgs {
    /// The directories to use: the flags, else the config's, else the defaults.
    fn dirs(&self) -> anyhow::Result<(PathBuf, PathBuf)> {
        let config = match &self.config {
            Some(file) => Some(iotrules::config::Config::load(file)?),
            None => None,
        };
        let rules = self
            .rules
            .clone()
            .or_else(|| config.as_ref().map(|c| c.rules.clone()));
        let plugins = self
            .plugins
            .clone()
            .or_else(|| config.as_ref().map(|c| c.plugins.clone()));
        Ok((
            rules.unwrap_or_else(|| PathBuf::from(DEFAULT_RULES)),
            plugins.unwrap_or_else(|| PathBuf::from(DEFAULT_PLUGINS)),
        ))
    }
}

pub fn run(args: TestArgs) -> anyhow::Result<ExitCode> {
    let (rules_dir, plugins_dir) = args.dirs()?;
    let runtime =
        Runtime::new(RuntimeConfig::default()).context("cannot start the plugin runtime")?;
    let runner = Runner::new(runtime, &plugins_dir);
    let reports = runner.registry().load_all().with_context(|| {
        format!(
            "cannot list the plugins in {} (build them with scripts/build-plugins, or point \
             --plugins at them)",
            plugins_dir.display()
        )
    })?;
    for report in reports {
        if let ReloadReport::Rejected { error, .. } = report {
            eprintln!("iotrules: warning: {error}");
        }
    }

    let set = RuleSet::load_dir(&rules_dir, runner.registry())
        .map_err(|errors| refused(&errors, "the rules in", &rules_dir))?;
    let files = ruletest::load_dir(&rules_dir, &set)
        .map_err(|errors| refused(&errors, "the tests in", &rules_dir))?;
    if files.is_empty() {
        bail!(
            "no test files in {} (tests are *{} files there, or *.toml files in its {}/)",
            rules_dir.display(),
            iotrules::rules::TEST_SUFFIX,
            ruletest::TESTS_DIR
        );
    }

    let tests: Vec<_> = files.iter().flat_map(|file| &file.tests).collect();
    let selected: Vec<_> = tests
        .iter()
        .filter(|test| {
            args.filter
                .as_deref()
                .is_none_or(|f| test.name().contains(f))
        })
        .collect();
    let filtered_out = tests.len() - selected.len();

    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "running {} test(s) from {}",
        selected.len(),
        rules_dir.display()
    )?;
    let mut reports: Vec<TestReport> = Vec::new();
    for test in selected {
        let report = runner.run(&set, test);
        let status = if report.passed() { "ok" } else { "FAILED" };
        writeln!(out, "test {} ... {status}", report.name)?;
        reports.push(report);
    }

    let failed: Vec<&TestReport> = reports.iter().filter(|r| !r.passed()).collect();
    if !failed.is_empty() {
        writeln!(out, "\nfailures (- expected, + actual):")?;
        for report in &failed {
            writeln!(out, "\n---- {} ----", report.name)?;
            for failure in &report.failures {
                write!(out, "{}", failure.display(&report.file))?;
            }
        }
    }
    let passed = reports.len() - failed.len();
    let result = if failed.is_empty() { "ok" } else { "FAILED" };
    writeln!(
        out,
        "\ntest result: {result}. {passed} passed; {} failed; {filtered_out} filtered out",
        failed.len()
    )?;
    Ok(if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Prints every problem on stderr; the error names how many and where.
fn refused(errors: &[RuleError], what: &str, dir: &Path) -> anyhow::Error {
    for error in errors {
        eprintln!("{error}");
    }
    anyhow::anyhow!("{} problem(s) in {what} {}", errors.len(), dir.display())
}
