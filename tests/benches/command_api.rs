//! Commands per second through the `tuya-openapi` and `alibaba-openapi` paths to the local
//! HTTPS stand-ins of the vendors' APIs (`iotrules_tests::cloud_api`), which verify every
//! signature: signing, the kept-alive TLS connections, the answer's classification and the
//! lanes' confirmation, without the pipeline.
//!
//! `cargo bench -p iotrules-tests --bench command_api`
//!
//! Each iteration enqueues [`BATCH`] commands for 64 devices on a path with 4 lanes and waits
//! for every confirmation. Criterion reports elements/s = commands/s. The Tuya token is
//! fetched once, before timing; its stand-in verifies an HMAC-SHA256 per request, Alibaba's an
//! HMAC-SHA1 over the sorted, percent-encoded parameters, on the same two cores as the client.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use iotrules::command::{CommandPath, CommandPaths};
use iotrules::event::{Command, Device, Json};
use iotrules::plan::Plan;
use iotrules::time::Clock;
use iotrules_tests::cloud_api::{AlibabaServer, Tls, TuyaProject, TuyaServer};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BATCH: u64 = 1_000;
const NOW: u64 = 1_700_000_000_000;

fn path(text: &str, runtime: &tokio::runtime::Runtime) -> Arc<dyn CommandPath> {
    let plan = Plan::parse(std::path::Path::new("bench.toml"), text).expect("config");
    let clock = Clock::Manual(Arc::new(AtomicU64::new(NOW)));
    let paths = CommandPaths::start(&plan.command_paths, &clock, runtime.handle()).expect("path");
    paths
        .get(&plan.command_paths[0].name)
        .expect("path")
        .clone()
}

fn command(n: u64, name: &str) -> Command {
    let mut device = Device::new(format!("a1Pk.dev{}", n % 64));
    device.product = Some("a1Pk".into());
    Command {
        via: None,
        device,
        name: name.into(),
        params: Json::from_text(format!(r#"{{"seq":{n}}}"#)).expect("JSON"),
        reply_to: None,
    }
}

/// Sends [`BATCH`] commands and waits for all; panics on a failed one.
fn send(path: &Arc<dyn CommandPath>, name: &str, runtime: &tokio::runtime::Runtime) -> Duration {
    let start = Instant::now();
    let confirmations: Vec<_> = (0..BATCH).map(|n| path.enqueue(command(n, name))).collect();
    runtime.block_on(async {
        for confirmation in confirmations {
            confirmation.await.expect("confirmed").expect("delivered");
        }
    });
    start.elapsed()
}

fn throughput(c: &mut Criterion) {
    let runtime = iotrules_tests::runtime();
    let tls = Tls::generate();
    let tuya = TuyaServer::start(
        runtime.handle(),
        &tls,
        TuyaProject {
            client_id: "bench".into(),
            secret: "bench-secret".into(),
            token_ttl_s: 7200,
        },
        Arc::new(AtomicU64::new(NOW)),
    );
    let alibaba = AlibabaServer::start(runtime.handle(), &tls, "LTAIbench", "bench-secret");
    let common = format!(
        "ca_file = \"{}\"\nlanes = 4\nqueue = 1024",
        tls.ca_file.display()
    );
    let tuya_path = path(
        &format!(
            "[[command_path]]\nname = \"tuya\"\nkind = \"tuya-openapi\"\nurl = \"{}\"\n\
             access_id = \"bench\"\naccess_key = \"bench-secret\"\n{common}\n",
            tuya.url
        ),
        &runtime,
    );
    let alibaba_path = path(
        &format!(
            "[[command_path]]\nname = \"ali\"\nkind = \"alibaba-openapi\"\nurl = \"{}\"\n\
             region = \"cn-shanghai\"\naccess_key_id = \"LTAIbench\"\n\
             access_key_secret = \"bench-secret\"\n{common}\n",
            alibaba.url
        ),
        &runtime,
    );
    // The token and the connections, before timing.
    send(&tuya_path, "switch_led", &runtime);
    send(&alibaba_path, "property/set", &runtime);

    let mut group = c.benchmark_group("command_api");
    group.throughput(Throughput::Elements(BATCH));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(15));
    group.bench_function("tuya-openapi/lanes=4", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| send(&tuya_path, "switch_led", &runtime))
                .sum()
        })
    });
    group.bench_function("alibaba-openapi/lanes=4", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| send(&alibaba_path, "property/set", &runtime))
                .sum()
        })
    });
    group.finish();
}

criterion_group!(benches, throughput);
criterion_main!(benches);
