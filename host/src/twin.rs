//! The device twin: what the host knows of every device from the events it has seen.
//!
//! Per device: its product and name, whether it is online (from `online`/`offline` events),
//! when it was last seen, and the last value and time of every property it reported. The
//! workers update it from every event before the rules run, so a rule (or a plugin, through
//! the `device-twin` import) reading the twin of the event's device sees the event in it, and
//! can read any other device's twin as of the events handled so far.
//!
//! It is held in memory, in shards (a device's shard by a hash of its id), so the workers
//! update and read it in parallel, and bounded: past `max_devices` the device seen longest
//! ago is evicted (counted, and logged at most once a minute).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::event::{Device, Event, Kind, Value};
use crate::sync::lock;

/// How many shards the map is cut into: a few per worker, so two workers rarely wait for the
/// same lock.
const SHARDS: usize = 16;

/// The default bound on devices.
pub const DEFAULT_MAX_DEVICES: usize = 100_000;

/// One property as the twin last saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TwinProperty {
    /// The property's code. Shared between devices: a fleet reports a few codes many times.
    pub code: Arc<str>,
    /// The Huawei service it belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<Arc<str>>,
    /// Its last value.
    pub value: Value,
    /// When it was reported: the property's own time, else its event's.
    pub time_ms: u64,
}

/// A device's twin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Twin {
    /// The device, with the product and name of the latest event that gave them.
    pub device: Device,
    /// After an `online` event true, after an `offline` one false; `None` before either.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub online: Option<bool>,
    /// The time of its latest event, Unix ms.
    pub last_seen_ms: u64,
    /// When its latest `online` or `offline` event happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub online_changed_ms: Option<u64>,
    /// Its properties, sorted by code then service.
    pub properties: Vec<TwinProperty>,
}

impl Twin {
    fn new(device: Device) -> Self {
        Twin {
            device,
            online: None,
            last_seen_ms: 0,
            online_changed_ms: None,
            properties: Vec::new(),
        }
    }

    /// The property `code` (the first of any service).
    pub fn property(&self, code: &str) -> Option<&TwinProperty> {
        self.properties.iter().find(|p| &*p.code == code)
    }
}

/// Whether an event tells the twin anything: every event about a device, except timers
/// (made by the host) and commands (addressed to the device, not from it).
pub fn updates_twin(event: &Event) -> bool {
    !matches!(event.kind, Kind::Timer | Kind::Command) && !event.device.id.is_empty()
}

/// One shard: its devices, and their order of last update for eviction.
#[derive(Debug, Default)]
struct Shard {
    devices: HashMap<String, (u64, Twin)>,
    /// Update sequence → device: the first is the one updated longest ago.
    order: BTreeMap<u64, String>,
    /// The property codes and services seen, shared by every twin of the shard.
    names: HashSet<Arc<str>>,
}

/// The shared copy of a property code or service name.
fn intern(names: &mut HashSet<Arc<str>>, name: &str) -> Arc<str> {
    if let Some(name) = names.get(name) {
        return name.clone();
    }
    let name: Arc<str> = Arc::from(name);
    names.insert(name.clone());
    name
}

/// Every device's twin, sharded and bounded.
#[derive(Debug)]
pub struct Twins {
    shards: Vec<Mutex<Shard>>,
    /// The most devices each shard keeps.
    per_shard: usize,
    max_devices: usize,
    hasher: std::collections::hash_map::RandomState,
    sequence: std::sync::atomic::AtomicU64,
}

/// What an update did besides updating: the devices it evicted to stay in bounds.
#[derive(Debug, Default, PartialEq)]
pub struct Updated {
    /// The ids of the devices evicted.
    pub evicted: Vec<String>,
}

impl Twins {
    /// Twins of at most `max_devices` devices (at least one per shard).
    pub fn new(max_devices: usize) -> Self {
        let per_shard = max_devices.div_ceil(SHARDS).max(1);
        Twins {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            per_shard,
            max_devices,
            hasher: Default::default(),
            sequence: Default::default(),
        }
    }

    /// The bound on devices.
    pub fn max_devices(&self) -> usize {
        self.max_devices
    }

    fn shard(&self, id: &str) -> &Mutex<Shard> {
        let index = (self.hasher.hash_one(id) % SHARDS as u64) as usize;
        &self.shards[index]
    }

    /// Updates the device's twin from `event` (see [`updates_twin`]); the device seen longest
    /// ago in its shard is evicted when the shard is full.
    pub fn update(&self, event: &Event) -> Updated {
        if !updates_twin(event) {
            return Updated::default();
        }
        let sequence = self
            .sequence
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut shard = lock(self.shard(&event.device.id));
        let shard = &mut *shard;
        let mut updated = Updated::default();
        let (twin, previous) = match shard.devices.get_mut(&event.device.id) {
            Some((seq, twin)) => {
                let previous = std::mem::replace(seq, sequence);
                (twin, Some(previous))
            }
            None => {
                while shard.devices.len() >= self.per_shard {
                    let Some((_, oldest)) = shard.order.pop_first() else {
                        break;
                    };
                    shard.devices.remove(&oldest);
                    updated.evicted.push(oldest);
                }
                let twin = Twin::new(event.device.clone());
                shard
                    .devices
                    .insert(event.device.id.clone(), (sequence, twin));
                let Some((_, twin)) = shard.devices.get_mut(&event.device.id) else {
                    return updated;
                };
                (twin, None)
            }
        };
        if let Some(previous) = previous {
            shard.order.remove(&previous);
        }
        shard.order.insert(sequence, event.device.id.clone());
        if event.device.product.is_some() {
            twin.device.product.clone_from(&event.device.product);
        }
        if event.device.name.is_some() {
            twin.device.name.clone_from(&event.device.name);
        }
        twin.last_seen_ms = twin.last_seen_ms.max(event.time_ms);
        match event.kind {
            Kind::Online | Kind::Offline => {
                // An older status report arriving late does not undo a newer one.
                if twin
                    .online_changed_ms
                    .is_none_or(|changed| changed <= event.time_ms)
                {
                    twin.online = Some(event.kind == Kind::Online);
                    twin.online_changed_ms = Some(event.time_ms);
                }
            }
            _ => {}
        }
        for property in &event.properties {
            let time_ms = property.time_ms.unwrap_or(event.time_ms);
            let service = property.service.as_deref();
            let found = twin.properties.binary_search_by(|p| {
                (&*p.code, p.service.as_deref()).cmp(&(property.code.as_str(), service))
            });
            match found {
                Ok(index) => {
                    let stored = &mut twin.properties[index];
                    if stored.time_ms <= time_ms {
                        stored.value = property.value.clone();
                        stored.time_ms = time_ms;
                    }
                }
                Err(index) => {
                    let code = intern(&mut shard.names, &property.code);
                    let service = service.map(|service| intern(&mut shard.names, service));
                    twin.properties.insert(
                        index,
                        TwinProperty {
                            code,
                            service,
                            value: property.value.clone(),
                            time_ms,
                        },
                    );
                }
            }
        }
        updated
    }

    /// A copy of the device's twin.
    pub fn get(&self, id: &str) -> Option<Twin> {
        lock(self.shard(id))
            .devices
            .get(id)
            .map(|(_, twin)| twin.clone())
    }

    /// Runs `f` on the device's twin without copying it.
    pub fn with<R>(&self, id: &str, f: impl FnOnce(&Twin) -> R) -> Option<R> {
        lock(self.shard(id))
            .devices
            .get(id)
            .map(|(_, twin)| f(twin))
    }

    /// Puts a twin back as it was stored (at start), unless the device is already known.
    pub fn restore(&self, twin: Twin) -> Updated {
        let sequence = self
            .sequence
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut shard = lock(self.shard(&twin.device.id));
        let shard = &mut *shard;
        let mut updated = Updated::default();
        if shard.devices.contains_key(&twin.device.id) {
            return updated;
        }
        while shard.devices.len() >= self.per_shard {
            let Some((_, oldest)) = shard.order.pop_first() else {
                break;
            };
            shard.devices.remove(&oldest);
            updated.evicted.push(oldest);
        }
        let mut twin = twin;
        for property in &mut twin.properties {
            property.code = intern(&mut shard.names, &property.code);
            property.service = property
                .service
                .as_deref()
                .map(|service| intern(&mut shard.names, service));
        }
        twin.properties.sort_by(|a, b| {
            (&*a.code, a.service.as_deref()).cmp(&(&*b.code, b.service.as_deref()))
        });
        shard.order.insert(sequence, twin.device.id.clone());
        shard
            .devices
            .insert(twin.device.id.clone(), (sequence, twin));
        updated
    }

    /// How many devices have a twin.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| lock(shard).devices.len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every device's twin, sorted by id: for `/devices`.
    pub fn all(&self) -> Vec<Twin> {
        let mut twins: Vec<Twin> = self
            .shards
            .iter()
            .flat_map(|shard| {
                lock(shard)
                    .devices
                    .values()
                    .map(|(_, twin)| twin.clone())
                    .collect::<Vec<_>>()
            })
            .collect();
        twins.sort_by(|a, b| a.device.id.cmp(&b.device.id));
        twins
    }

    /// Forgets every device (a rule test starts each test from nothing).
    pub fn clear(&self) {
        for shard in &self.shards {
            let mut shard = lock(shard);
            shard.devices.clear();
            shard.order.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Json, Property, Vendor};

    fn event(device: &str, kind: Kind, time_ms: u64, properties: &[(&str, Value)]) -> Event {
        Event {
            id: format!("{device}-{time_ms}"),
            source: "test".into(),
            vendor: Vendor::Tuya,
            kind,
            action: String::new(),
            device: Device::new(device),
            time_ms,
            properties: properties
                .iter()
                .map(|(code, value)| Property::new(*code, value.clone()))
                .collect(),
            payload: Json::null(),
            attributes: Default::default(),
        }
    }

    #[test]
    fn keeps_the_last_value_of_every_property_and_when_it_was_seen() {
        let twins = Twins::new(10);
        twins.update(&event(
            "d",
            Kind::Properties,
            100,
            &[("t", Value::Float(20.5)), ("h", Value::Integer(40))],
        ));
        twins.update(&event(
            "d",
            Kind::Properties,
            200,
            &[("t", Value::Float(21.0))],
        ));
        let twin = twins.get("d").expect("twin");
        assert_eq!(twin.last_seen_ms, 200);
        assert_eq!(twin.property("t").unwrap().value, Value::Float(21.0));
        assert_eq!(twin.property("t").unwrap().time_ms, 200);
        assert_eq!(twin.property("h").unwrap().value, Value::Integer(40));
        assert_eq!(twin.property("h").unwrap().time_ms, 100);
        let codes: Vec<_> = twin.properties.iter().map(|p| &*p.code).collect();
        assert_eq!(codes, ["h", "t"], "sorted by code");
    }

    #[test]
    fn a_late_report_does_not_overwrite_a_newer_value() {
        let twins = Twins::new(10);
        twins.update(&event(
            "d",
            Kind::Properties,
            200,
            &[("t", Value::Integer(2))],
        ));
        twins.update(&event(
            "d",
            Kind::Properties,
            100,
            &[("t", Value::Integer(1))],
        ));
        let twin = twins.get("d").unwrap();
        assert_eq!(twin.property("t").unwrap().value, Value::Integer(2));
        assert_eq!(twin.last_seen_ms, 200);
    }

    #[test]
    fn online_follows_online_and_offline_events_in_time_order() {
        let twins = Twins::new(10);
        assert_eq!(twins.get("d"), None);
        twins.update(&event("d", Kind::Properties, 50, &[]));
        assert_eq!(twins.get("d").unwrap().online, None);
        twins.update(&event("d", Kind::Offline, 100, &[]));
        assert_eq!(twins.get("d").unwrap().online, Some(false));
        twins.update(&event("d", Kind::Online, 90, &[]));
        assert_eq!(twins.get("d").unwrap().online, Some(false), "older");
        twins.update(&event("d", Kind::Online, 300, &[]));
        let twin = twins.get("d").unwrap();
        assert_eq!(
            (twin.online, twin.online_changed_ms),
            (Some(true), Some(300))
        );
    }

    #[test]
    fn timers_and_commands_do_not_touch_the_twin() {
        let twins = Twins::new(10);
        twins.update(&event("d", Kind::Timer, 50, &[]));
        twins.update(&event("d", Kind::Command, 50, &[("x", Value::Integer(1))]));
        assert!(twins.is_empty());
    }

    #[test]
    fn past_the_bound_the_device_seen_longest_ago_is_evicted() {
        // One device per shard: the bound is per shard.
        let twins = Twins::new(SHARDS);
        let mut evicted = Vec::new();
        for i in 0..(SHARDS * 4) {
            evicted.extend(
                twins
                    .update(&event(&format!("d{i}"), Kind::Properties, i as u64, &[]))
                    .evicted,
            );
        }
        assert_eq!(twins.len() + evicted.len(), SHARDS * 4);
        assert!(twins.len() <= SHARDS);
        // The last device updated is never the one evicted.
        assert!(twins.get(&format!("d{}", SHARDS * 4 - 1)).is_some());
        for id in &evicted {
            assert!(twins.get(id).is_none());
        }
    }

    #[test]
    fn a_restored_twin_reads_back_and_an_update_carries_on_from_it() {
        let twins = Twins::new(10);
        twins.update(&event(
            "d",
            Kind::Properties,
            100,
            &[("t", Value::Integer(1))],
        ));
        let stored = serde_json::to_vec(&twins.get("d").unwrap()).unwrap();
        let restored = Twins::new(10);
        restored.restore(serde_json::from_slice(&stored).unwrap());
        assert_eq!(restored.get("d"), twins.get("d"));
        restored.update(&event(
            "d",
            Kind::Properties,
            200,
            &[("u", Value::Integer(2))],
        ));
        assert_eq!(restored.get("d").unwrap().properties.len(), 2);
    }
}
