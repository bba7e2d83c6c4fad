//! `iotrules dead-letters replay`: stored dead letters back through the pipeline.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use iotrules::command::CommandPaths;
use iotrules::metrics::Metrics;
use iotrules::pipeline::{Acker, Delivery, Settle};
use iotrules::pipeline::{Parts, Pipeline};
use iotrules::plan::Plan;
use iotrules::service;
use iotrules::status::LastErrors;
use iotrules::store::{DeadLetter, Filter, SqliteStateStore, Store};

pub fn run(config: PathBuf, ids: Vec<i64>, filter: Filter) -> anyhow::Result<ExitCode> {
    super::init_logging(None, false);
    let plan = Plan::load(&config)?;
    let store = Arc::new(Store::open_existing(&plan.config.store)?);
    let letters = select(&store, &ids, &filter)?;
    if letters.is_empty() {
        println!("No dead letters to replay.");
        return Ok(ExitCode::SUCCESS);
    }
    let runtime = iotrules::service::io_runtime(2, plan.config.pipeline.scheduling)
        .context("cannot start the async runtime")?;
    let outcome = runtime.block_on(replay(&plan, store, letters))?;
    println!(
        "Replayed {} dead letter(s): {} processed and removed, {} stored again with a new \
         reason, {} kept (not acknowledged, or their connector is not in the config).",
        outcome.total, outcome.removed, outcome.failed_again, outcome.kept
    );
    Ok(if outcome.kept == 0 && outcome.failed_again == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn select(store: &Store, ids: &[i64], filter: &Filter) -> anyhow::Result<Vec<DeadLetter>> {
    let ids: Vec<i64> = if ids.is_empty() {
        store
            .list(filter)?
            .into_iter()
            .map(|letter| letter.id)
            .collect()
    } else {
        ids.to_vec()
    };
    let mut letters = Vec::with_capacity(ids.len());
    for id in ids {
        match store.get(id)? {
            Some(letter) => letters.push(letter),
            None => anyhow::bail!("there is no dead letter {id}"),
        }
    }
    Ok(letters)
}

struct Outcome {
    total: usize,
    removed: usize,
    failed_again: u64,
    kept: usize,
}

async fn replay(
    plan: &Plan,
    store: Arc<Store>,
    letters: Vec<DeadLetter>,
) -> anyhow::Result<Outcome> {
    let config = &plan.config;
    let core = service::load_core(
        plan,
        store.clone(),
        Arc::new(SqliteStateStore::new(store.clone())),
    )?;
    let runtime = tokio::runtime::Handle::current();
    let metrics = Arc::new(Metrics::default());
    let pipeline = Pipeline::start(
        &config.pipeline,
        Parts {
            rules: core.rules,
            registry: core.registry,
            paths: CommandPaths::start(&plan.command_paths, &config.clock, &runtime)?,
            dead_letters: core.dead_letters,
            metrics: metrics.clone(),
            errors: Arc::new(LastErrors::default()),
        },
        runtime,
    )
    .context("cannot start the pipeline workers")?;
    let mut ingests = HashMap::new();
    for connector in &plan.connectors {
        ingests.insert(
            connector.name.clone(),
            pipeline.ingest(&connector.name, connector.dialect.clone()),
        );
    }
    let total = letters.len();
    let removed = Arc::new(AtomicUsize::new(0));
    for letter in letters {
        let Some(ingest) = ingests.get(&letter.connector) else {
            eprintln!(
                "iotrules: dead letter {}: connector \"{}\" is not in {}; kept",
                letter.id,
                letter.connector,
                config.file.display()
            );
            continue;
        };
        let (id, store, removed) = (letter.id, store.clone(), removed.clone());
        let acker = Acker::new(move |how| {
            if how == Settle::Ack {
                match store.remove(id) {
                    Ok(_) => {
                        removed.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(error) => eprintln!("iotrules: dead letter {id}: processed, but {error}"),
                }
            }
        });
        let delivery = Delivery {
            payload: letter.payload,
            properties: letter.properties,
            acker,
        };
        if ingest.submit(delivery).await.is_err() {
            break;
        }
    }
    drop(ingests);
    let timeout = Duration::from_secs(config.pipeline.shutdown_timeout_s);
    if !pipeline.drain(timeout).await {
        eprintln!("iotrules: gave up waiting after {} s", timeout.as_secs());
    }
    let removed = removed.load(Ordering::SeqCst);
    let failed_again = metrics
        .dead_letters
        .members()
        .iter()
        .map(|(_, c)| c.get())
        .sum();
    Ok(Outcome {
        total,
        removed,
        failed_again,
        kept: total - removed,
    })
}
