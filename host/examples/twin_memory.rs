//! What a device twin of many devices costs in memory, as the service holds it: fills a
//! [`Twins`] from six-property events (a Tuya thermostat's status report) of `N` devices
//! (default 100 000), twice (the second round replaces every value, as a running fleet
//! does), and prints the process's resident memory before and after, and per device, with
//! the size of a stored twin.
//!
//! `cargo run --offline -p iotrules --example twin_memory [-- N [STORE]]`
//!
//! With `STORE`, also writes the twins to that SQLite store's `@twin` namespace (through the
//! plugin state store, as the workers do), so that `iotrules run` on it starts with `N`
//! twins to load: the service's resident memory with a full twin. `… N STORE load` only loads
//! what STORE holds, as the service does at start, and prints what that costs.

use std::sync::Arc;

use iotrules::event::{Device, Event, Json, Kind, Property, Value, Vendor};
use iotrules::plugin::StateStore;
use iotrules::store::{SqliteStateStore, Store};
use iotrules::twin::{NAMESPACE, Twins, stored};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The process's resident memory, in bytes (`VmRSS` of `/proc/self/status`).
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|kb| kb.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Device `n`'s status report number `round`: six properties of the usual kinds.
fn report(n: u64, round: u64) -> Event {
    Event {
        id: format!("{n}-{round}"),
        source: "tuya-eu".into(),
        vendor: Vendor::Tuya,
        kind: Kind::Properties,
        action: "devicePropertyMessage".into(),
        device: Device {
            id: format!("vdevo{n:017}"),
            product: Some("keyThermo0x9a".into()),
            name: None,
        },
        time_ms: 1_763_884_800_000 + round * 60_000 + n % 1000,
        properties: vec![
            Property::new("switch", Value::Boolean(n.is_multiple_of(2))),
            Property::new("temp_current", Value::Integer(200 + (n % 50) as i64)),
            Property::new("temp_set", Value::Integer(220)),
            Property::new(
                "mode",
                Value::Text(["auto", "manual"][(round % 2) as usize].into()),
            ),
            Property::new("humidity", Value::Float(40.0 + (n % 20) as f64 / 2.0)),
            Property::new("bright_value_v2", Value::Integer((n % 1000) as i64)),
        ],
        payload: Json::null(),
        attributes: Default::default(),
    }
}

fn main() {
    iotrules::service::disable_transparent_huge_pages();
    let mut args = std::env::args().skip(1);
    let devices: u64 = args
        .next()
        .map_or(100_000, |n| n.parse().expect("N: a number of devices"));
    let store = args.next();
    let mib = |bytes: u64| bytes as f64 / (1 << 20) as f64;

    // `twin_memory N STORE load`: only load the twins STORE holds, as the service does at
    // start, and say what that costs.
    if let (Some(path), Some("load")) = (&store, args.next().as_deref()) {
        let state = SqliteStateStore::new(Arc::new(Store::open(path).expect("store")));
        let before = rss();
        let twins = Twins::new(devices as usize);
        let (loaded, _) = twins.load(|each| state.read_uncached(NAMESPACE, each));
        let after = rss();
        println!(
            "twin_memory: loaded {} twins from {path}: RSS {:.1} MiB before, {:.1} MiB after: \
             {:.1} MiB, {} bytes per device",
            loaded.restored,
            mib(before),
            mib(after),
            mib(after.saturating_sub(before)),
            after.saturating_sub(before) / (loaded.restored as u64).max(1)
        );
        return;
    }

    let before = rss();
    let twins = Twins::new(devices as usize);
    for round in 0..2 {
        for n in 0..devices {
            twins.update(&report(n, round));
        }
    }
    let after = rss();
    assert_eq!(twins.len() as u64, devices, "every device kept");
    let grown = after.saturating_sub(before);
    println!(
        "twin_memory: {devices} devices × 6 properties: RSS {:.1} MiB before, {:.1} MiB \
         after: {:.1} MiB, {} bytes per device",
        mib(before),
        mib(after),
        mib(grown),
        grown / devices.max(1)
    );
    // The CPU side, on the filled twin: what a worker pays per event (an update of a known
    // device, and the device's twin as the store keeps it, once per commit it is in).
    let events: Vec<Event> = (0..devices).map(|n| report(n, 2)).collect();
    let started = std::time::Instant::now();
    for event in &events {
        twins.update(event);
    }
    let update = started.elapsed();
    let started = std::time::Instant::now();
    let mut bytes = 0;
    for event in &events {
        let json = twins.with(&event.device.id, stored);
        bytes += json.and_then(Result::ok).map_or(0, |json| json.len());
    }
    let serialize = started.elapsed();
    println!(
        "twin_memory: per event, an update of a known device {:.2} µs, its twin as stored \
         {:.2} µs ({} bytes on average)",
        update.as_secs_f64() * 1e6 / devices.max(1) as f64,
        serialize.as_secs_f64() * 1e6 / devices.max(1) as f64,
        bytes as u64 / devices.max(1)
    );
    let json = twins
        .get(&report(0, 0).device.id)
        .map(|twin| stored(&twin).map_or(0, |json| json.len()))
        .unwrap_or(0);
    println!("twin_memory: one twin as stored: {json} bytes");

    if let Some(path) = store {
        let state = SqliteStateStore::new(Arc::new(Store::open(&path).expect("store")));
        for chunk in twins.all().chunks(1000) {
            let writes = chunk
                .iter()
                .map(|twin| {
                    let json = stored(twin).expect("twin as stored");
                    (twin.device.id.clone(), Some(json))
                })
                .collect();
            state.apply(NAMESPACE, writes);
        }
        state.flush();
        println!("twin_memory: {devices} twins stored in {path}");
    }
}
