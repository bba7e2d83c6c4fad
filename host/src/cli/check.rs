//! `iotrules check`: the config, the plugins and the rules, without starting anything.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;
use iotrules::plan::Plan;
use iotrules::plugin::MemoryStateStore;
use iotrules::service;
use iotrules::store::MemoryDeadLetters;

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The service configuration.
    #[arg(long, short, value_name = "FILE")]
    config: PathBuf,
}

pub fn run(args: CheckArgs) -> anyhow::Result<ExitCode> {
    super::init_logging(Some("error"), false);
    let plan = match Plan::load(&args.config) {
        Ok(plan) => plan,
        Err(error) => {
            println!("{error}");
            return Ok(ExitCode::FAILURE);
        }
    };
    // The plugins run their `init` against scratch state: a check changes nothing the
    // service keeps.
    let config = &plan.config;
    let core = service::load_core(
        &plan,
        Arc::new(MemoryDeadLetters::default()),
        Arc::new(MemoryStateStore::new()),
    );
    let mut problems = Vec::new();
    let core = match core {
        Ok(core) => Some(core),
        Err(error) => {
            match error.downcast_ref::<service::RulesRefused>() {
                Some(refused) => problems.extend(refused.0.iter().map(ToString::to_string)),
                None => problems.push(format!("{error:#}")),
            }
            None
        }
    };
    if let Some(core) = &core {
        problems.extend(core.plugin_errors.iter().cloned());
        problems.extend(service::unknown_paths(
            &core.rules.current(),
            &plan.command_path_names(),
        ));
    }
    if problems.is_empty() {
        let (rules, plugins) = core.as_ref().map_or((0, 0), |core| {
            (
                core.rules.current().rules().len(),
                core.registry.names().len(),
            )
        });
        for connector in &plan.connectors {
            let identity = connector.connector.identity(config.clock.now_ms());
            println!(
                "connector {} ({}): {}",
                connector.name,
                connector.kind,
                super::identity_text(&identity)
            );
        }
        println!(
            "{}: ok ({} connector(s), {} command path(s), {plugins} plugin(s), {rules} rule(s))",
            config.file.display(),
            config.connectors.len(),
            plan.command_path_names().len(),
        );
        Ok(ExitCode::SUCCESS)
    } else {
        for problem in &problems {
            println!("{problem}");
        }
        println!("{}: {} problem(s)", config.file.display(), problems.len());
        Ok(ExitCode::FAILURE)
    }
}
