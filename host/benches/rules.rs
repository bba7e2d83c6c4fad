//! Rule selection costs per event: the structural `when` alone over a set of rules that do
//! not match, one `if` (which builds the expression variables it uses), and several `if`s
//! sharing those variables. Plugin steps are not run: `benches/plugin.rs` measures them.

/// The service's allocator (`main.rs`), so the figures are the binary's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod shared;

use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use iotrules::event::{Device, Event};
use iotrules::rules::RuleSet;

fn event() -> Event {
    shared::thermostat(
        0,
        Device {
            id: "vdevo123456789".into(),
            product: Some("keyLamp01".into()),
            name: None,
        },
    )
}

/// `count` rules, each `[[rule]]` with `head` (numbered by `{i}`) and one step.
fn rules(count: usize, head: &str) -> RuleSet {
    let text: String = (0..count)
        .map(|i| {
            format!(
                "[[rule]]\nname = \"r{i}\"\n{}\n[[rule.step]]\nplugin = \"p\"\n",
                head.replace("{i}", &i.to_string())
            )
        })
        .collect();
    RuleSet::parse([(Path::new("bench.toml"), text.as_str())]).expect("rules")
}

fn bench(c: &mut Criterion) {
    let event = event();
    let mut group = c.benchmark_group("rules");
    group.throughput(Throughput::Elements(1));

    let miss = rules(
        20,
        "when = { source = \"alibaba-*\", device = [\"dev-{i}\", \"a1*\"], kind = \"properties\" }",
    );
    group.bench_function("when, 20 rules, none match", |b| {
        b.iter(|| black_box(miss.matching(black_box(&event)).count()))
    });

    let one = rules(
        1,
        "when = { vendor = \"tuya\", device = \"vdevo*\" }\nif = 'props.temp_current > 200 && props.mode == \"auto\"'",
    );
    group.bench_function("one if on props", |b| {
        b.iter(|| black_box(one.matching(black_box(&event)).count()))
    });

    let fields = rules(
        1,
        "if = 'event.kind == \"properties\" && event.device.id.startsWith(\"vdevo\")'",
    );
    group.bench_function("one if on event fields", |b| {
        b.iter(|| black_box(fields.matching(black_box(&event)).count()))
    });

    let whole = rules(
        1,
        "if = 'event.properties.exists(p, p.code == \"humidity\" && p.value > 40.0)'",
    );
    group.bench_function("one if on event.properties", |b| {
        b.iter(|| black_box(whole.matching(black_box(&event)).count()))
    });

    let five = rules(
        5,
        "if = 'props.temp_current > 200 + {i} && event.device.product == \"keyLamp01\"'",
    );
    group.bench_function("five ifs sharing one context", |b| {
        b.iter(|| black_box(five.matching(black_box(&event)).count()))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
