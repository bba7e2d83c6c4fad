//! The device twin: what the host knows of every device from the events it has seen.
//!
//! Per device: its product and name, whether it is online (from `online`/`offline` events),
//! when it was last seen, and the last value and time of every property it reported. The
//! workers update it from every event before the rules run, so a rule (or a plugin, through
//! the `device-twin` import) reading the twin of the event's device sees the event in it, and
//! can read any other device's twin as of the events handled so far.
//!
//! It is held in memory, in shards (a device's shard by a hash of its id), so the workers
//! update and read it in parallel, and bounded: once `max_devices` devices are kept, a new
//! device evicts the device updated longest ago in its shard (counted, and logged at most
//! once a minute). The bound is on the whole, not per shard: a per-shard share made the
//! fuller shards evict while the whole was still under it (100 000 devices under the default
//! bound of 100 000 lost 0.4 % of them). A device landing in a shard with nothing to evict is
//! kept all the same, so the whole may pass the bound by a device per shard at most, until
//! the next new devices bring it back. A bound of 0 turns the twin off: no update keeps
//! anything.
//!
//! It is durable: the plugin state store keeps it ([`crate::plugin::HostData`]) in the host's
//! namespace [`NAMESPACE`], one entry per device, the [`Twin`] in a compact JSON form (see
//! [`stored`]; the object form of earlier stores is still read). Updates mark the
//! devices they change; at each group commit the store takes the marked devices' twins as
//! they are then (a removal for one evicted), and the workers acknowledge no event before
//! the commit that follows its update. [`Twins::load`] reads them back at start.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::{Deserialize, Serialize};

use crate::event::{Device, Event, Kind, Value};
use crate::sync::lock;

/// How many shards the map is cut into: a few per worker, so two workers rarely wait for the
/// same lock.
const SHARDS: usize = 16;

/// The default bound on devices.
pub const DEFAULT_MAX_DEVICES: usize = crate::config::DEFAULT_TWIN_DEVICES;

/// The state namespace the twins are stored in, key = device id. Plugin steps' namespaces are
/// `{rule}/{step}`, so this one (no `/`) is never a step's; the SQLite store never caches it,
/// as the twins are in memory here already.
pub const NAMESPACE: &str = "@twin";

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

/// What `/devices` lists of a device: its twin without the property values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceSummary {
    /// The device id.
    pub id: String,
    /// Its product, if an event gave it.
    pub product: Option<String>,
    /// Its name, if an event gave it.
    pub name: Option<String>,
    /// See [`Twin::online`].
    pub online: Option<bool>,
    /// See [`Twin::last_seen_ms`].
    pub last_seen_ms: u64,
    /// How many properties its twin holds.
    pub properties: usize,
}

impl DeviceSummary {
    fn of(twin: &Twin) -> Self {
        DeviceSummary {
            id: twin.device.id.clone(),
            product: twin.device.product.clone(),
            name: twin.device.name.clone(),
            online: twin.online,
            last_seen_ms: twin.last_seen_ms,
            properties: twin.properties.len(),
        }
    }
}

/// A page of [`Twins::page`].
#[derive(Debug, Default, PartialEq)]
pub struct Page {
    /// How many devices have a twin.
    pub total: usize,
    /// How many of them sort after the page's `after` (all without one): when more than the
    /// page holds, the next page starts after its last id.
    pub after: usize,
    /// The page, sorted by id.
    pub devices: Vec<DeviceSummary>,
}

/// A summary ordered by its id alone (ids are unique): the order of `/devices`.
#[derive(Debug, PartialEq, Eq)]
struct ById(DeviceSummary);

impl Ord for ById {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.id.cmp(&other.0.id)
    }
}

impl PartialOrd for ById {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
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
    /// The next update's number in `order`. Each shard counts its own, under its lock: the
    /// order only ranks a shard's devices against each other, and one count shared by the
    /// shards was a write per event to a line both workers write.
    sequence: u64,
    /// The property codes and services seen, shared by every twin of the shard.
    names: HashSet<Arc<str>>,
    /// The devices whose twin changed (or went) since the store last took the changes.
    changed: HashSet<String>,
}

impl Shard {
    fn mark_changed(&mut self, id: &str) {
        if !self.changed.contains(id) {
            self.changed.insert(id.to_owned());
        }
    }
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
    max_devices: usize,
    hasher: std::collections::hash_map::RandomState,
    /// How many devices the shards hold, kept as they change so that the gauge read after
    /// every batch takes no lock.
    devices: AtomicUsize,
}

/// What an update did besides updating: the devices it evicted to stay in bounds.
#[derive(Debug, Default, PartialEq)]
pub struct Updated {
    /// The ids of the devices evicted.
    pub evicted: Vec<String>,
}

/// A twin as stored, read without copying its names: they are interned into the shard's as
/// the twin is built (see [`Twins::load`]).
#[derive(Deserialize)]
struct StoredTwin<'a> {
    #[serde(borrow)]
    device: StoredDevice<'a>,
    #[serde(default)]
    online: Option<bool>,
    last_seen_ms: u64,
    #[serde(default)]
    online_changed_ms: Option<u64>,
    #[serde(borrow)]
    properties: Vec<StoredProperty<'a>>,
}

#[derive(Deserialize)]
struct StoredDevice<'a> {
    #[serde(borrow, default)]
    product: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    name: Option<std::borrow::Cow<'a, str>>,
}

#[derive(Deserialize)]
struct StoredProperty<'a> {
    #[serde(borrow)]
    code: std::borrow::Cow<'a, str>,
    #[serde(borrow, default)]
    service: Option<std::borrow::Cow<'a, str>>,
    value: Value,
    time_ms: u64,
}

/// The stored form [`stored`] writes: a JSON array rather than the [`Twin`]'s object, with no
/// field names, no device id (the store's key holds it) and each property's time as its age
/// before `last_seen_ms` (0 or a few ms for most), so about 40 % of the object's bytes:
///
/// `[product, name, last_seen_ms, online, online_changed_ms, [[code, value, age, service], …]]`
///
/// with `null` for what the twin does not have, and a property's `service` left out when it
/// has none.
#[derive(Deserialize)]
struct CompactTwin<'a>(
    #[serde(borrow)] Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)] Option<std::borrow::Cow<'a, str>>,
    u64,
    Option<bool>,
    Option<u64>,
    #[serde(borrow)] Vec<CompactProperty<'a>>,
);

#[derive(Deserialize)]
struct CompactProperty<'a>(
    #[serde(borrow)] std::borrow::Cow<'a, str>,
    Value,
    i64,
    #[serde(borrow, default)] Option<std::borrow::Cow<'a, str>>,
);

/// A twin written as a [`CompactTwin`].
struct Compact<'a>(&'a Twin);

impl Serialize for Compact<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let twin = self.0;
        let mut fields = serializer.serialize_tuple(6)?;
        fields.serialize_element(&twin.device.product)?;
        fields.serialize_element(&twin.device.name)?;
        fields.serialize_element(&twin.last_seen_ms)?;
        fields.serialize_element(&twin.online)?;
        fields.serialize_element(&twin.online_changed_ms)?;
        fields.serialize_element(&CompactProperties(twin))?;
        fields.end()
    }
}

/// A twin's properties written as a [`CompactTwin`]'s list.
struct CompactProperties<'a>(&'a Twin);

impl Serialize for CompactProperties<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let twin = self.0;
        serializer.collect_seq(
            twin.properties
                .iter()
                .map(|property| CompactEntry(property, twin.last_seen_ms)),
        )
    }
}

/// One property of a [`CompactTwin`], with the twin's `last_seen_ms` its age is taken from.
struct CompactEntry<'a>(&'a TwinProperty, u64);

impl Serialize for CompactEntry<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let CompactEntry(property, last_seen_ms) = *self;
        let service = property.service.as_deref();
        let mut fields = serializer.serialize_tuple(3 + usize::from(service.is_some()))?;
        fields.serialize_element(&*property.code)?;
        fields.serialize_element(&property.value)?;
        // Wrapping both ways, so that any two times make the trip (a property may be
        // reported with a time after its event's).
        fields.serialize_element(&(last_seen_ms.wrapping_sub(property.time_ms) as i64))?;
        if let Some(service) = service {
            fields.serialize_element(service)?;
        }
        fields.end()
    }
}

impl<'a> StoredTwin<'a> {
    /// Reads a stored twin in either form: the [`CompactTwin`] written now, or the
    /// [`Twin`]'s JSON object that stores written before it hold until the device's next
    /// event rewrites it.
    fn parse(stored: &'a [u8]) -> serde_json::Result<Self> {
        let first = stored.iter().find(|byte| !byte.is_ascii_whitespace());
        if first != Some(&b'[') {
            return serde_json::from_slice(stored);
        }
        let CompactTwin(product, name, last_seen_ms, online, online_changed_ms, properties) =
            serde_json::from_slice(stored)?;
        Ok(StoredTwin {
            device: StoredDevice { product, name },
            online,
            last_seen_ms,
            online_changed_ms,
            properties: properties
                .into_iter()
                .map(
                    |CompactProperty(code, value, age, service)| StoredProperty {
                        code,
                        service,
                        value,
                        time_ms: last_seen_ms.wrapping_sub(age as u64),
                    },
                )
                .collect(),
        })
    }
}

impl StoredTwin<'_> {
    /// The twin of device `id` (the store's key, which a later delete names), its names
    /// interned into `names`.
    fn into_twin(self, id: &str, names: &mut HashSet<Arc<str>>) -> Twin {
        // A new list of the exact size: collecting in place would keep the parser's list, of
        // larger elements and spare room, for the life of the twin (a third more memory).
        let mut properties: Vec<TwinProperty> = Vec::with_capacity(self.properties.len());
        properties.extend(self.properties.into_iter().map(|property| TwinProperty {
            code: intern(names, &property.code),
            service: property.service.map(|service| intern(names, &service)),
            value: property.value,
            time_ms: property.time_ms,
        }));
        properties.sort_by(|a, b| {
            (&*a.code, a.service.as_deref()).cmp(&(&*b.code, b.service.as_deref()))
        });
        Twin {
            device: Device {
                id: id.to_owned(),
                product: self.device.product.map(String::from),
                name: self.device.name.map(String::from),
            },
            online: self.online,
            last_seen_ms: self.last_seen_ms,
            online_changed_ms: self.online_changed_ms,
            properties,
        }
    }
}

/// What [`Twins::load`] found in the store.
#[derive(Debug, Default, PartialEq)]
pub struct Loaded {
    /// Twins restored.
    pub restored: usize,
    /// Stored twins that did not parse (each logged), skipped.
    pub unreadable: usize,
    /// Stored twins past the bound (the ones seen longest ago), deleted from the store.
    pub evicted: usize,
}

impl Twins {
    /// Twins of at most `max_devices` devices (see the module's doc); 0 keeps none.
    pub fn new(max_devices: usize) -> Self {
        Twins {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            max_devices,
            hasher: Default::default(),
            devices: Default::default(),
        }
    }

    /// The bound on devices.
    pub fn max_devices(&self) -> usize {
        self.max_devices
    }

    /// Whether the twin is kept at all (`max_devices` above 0). When it is not, updates and
    /// loads keep nothing, and the workers neither update nor store it.
    pub fn enabled(&self) -> bool {
        self.max_devices > 0
    }

    /// Makes room for one more device in `shard`: while the whole is at the bound, evicts
    /// the shard's device updated longest ago. The count is read without the other shards'
    /// locks: two workers adding at once may pass the bound by one each, which the next
    /// additions take back.
    fn make_room(&self, shard: &mut Shard, evicted: &mut Vec<String>) {
        while self.devices.load(Ordering::Relaxed) >= self.max_devices {
            let Some((_, oldest)) = shard.order.pop_first() else {
                break;
            };
            if shard.devices.remove(&oldest).is_some() {
                self.devices.fetch_sub(1, Ordering::Relaxed);
            }
            shard.mark_changed(&oldest);
            evicted.push(oldest);
        }
    }

    fn shard(&self, id: &str) -> &Mutex<Shard> {
        let index = (self.hasher.hash_one(id) % SHARDS as u64) as usize;
        &self.shards[index]
    }

    /// Updates the device's twin from `event` (see [`updates_twin`]); the device seen longest
    /// ago in its shard is evicted when the shard is full.
    pub fn update(&self, event: &Event) -> Updated {
        if !updates_twin(event) || !self.enabled() {
            return Updated::default();
        }
        let mut shard = lock(self.shard(&event.device.id));
        let shard = &mut *shard;
        let sequence = shard.sequence;
        shard.sequence += 1;
        let mut updated = Updated::default();
        shard.mark_changed(&event.device.id);
        let (twin, previous) = match shard.devices.get_mut(&event.device.id) {
            Some((seq, twin)) => {
                let previous = std::mem::replace(seq, sequence);
                (twin, Some(previous))
            }
            None => {
                self.make_room(shard, &mut updated.evicted);
                let twin = Twin::new(event.device.clone());
                shard
                    .devices
                    .insert(event.device.id.clone(), (sequence, twin));
                self.devices.fetch_add(1, Ordering::Relaxed);
                let Some((_, twin)) = shard.devices.get_mut(&event.device.id) else {
                    return updated;
                };
                (twin, None)
            }
        };
        // The device moves to the end of the order under the id it already had there: a copy
        // of the id only for a device new to the shard, not one made and one freed per update.
        let id = previous
            .and_then(|previous| shard.order.remove(&previous))
            .unwrap_or_else(|| event.device.id.clone());
        shard.order.insert(sequence, id);
        if event.device.product.is_some() {
            twin.device.product.clone_from(&event.device.product);
        }
        if event.device.name.is_some() {
            twin.device.name.clone_from(&event.device.name);
        }
        twin.last_seen_ms = twin.last_seen_ms.max(event.time_ms);
        // An older status report arriving late does not undo a newer one.
        let status = matches!(event.kind, Kind::Online | Kind::Offline);
        if status
            && twin
                .online_changed_ms
                .is_none_or(|changed| changed <= event.time_ms)
        {
            twin.online = Some(event.kind == Kind::Online);
            twin.online_changed_ms = Some(event.time_ms);
        }
        if twin.properties.is_empty() {
            // A device's first report usually names all it will report: room for exactly
            // that, rather than the doubling's spare (a third of a six-property twin, held
            // for good; shrinking after each new code fragmented the heap more than it saved).
            twin.properties.reserve_exact(event.properties.len());
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

    /// Restores the stored twins (at start, before any event) that `rows` hands over, each
    /// a device id and its stored JSON: the plugin state store reads its [`NAMESPACE`] past
    /// its cache, so the twins are held here, once. When more are stored than the bound
    /// keeps (it was lowered), the newest stay: the ids of the others are returned, for the
    /// caller to delete from the store. A stored twin that does not parse is logged at ERROR
    /// with its device and skipped (it is overwritten at the device's next event). Nothing is
    /// read when the twin is off.
    pub fn load(&self, rows: impl FnOnce(&mut dyn FnMut(&str, &[u8]))) -> (Loaded, Vec<String>) {
        let mut loaded = Loaded::default();
        if !self.enabled() {
            return (loaded, Vec::new());
        }
        // Each row goes straight into its shard, its names interned as it is parsed: no list
        // of every twin, no copy of a code per device, nothing for the allocator to keep
        // after the start. The order of eviction (last seen) is set once all are in.
        rows(&mut |device, value| match StoredTwin::parse(value) {
            Ok(stored) => {
                let mut shard = lock(self.shard(device));
                let shard = &mut *shard;
                if shard.devices.contains_key(device) {
                    return;
                }
                let twin = stored.into_twin(device, &mut shard.names);
                shard
                    .devices
                    .insert(device.to_owned(), (twin.last_seen_ms, twin));
                self.devices.fetch_add(1, Ordering::Relaxed);
                loaded.restored += 1;
            }
            Err(error) => {
                loaded.unreadable += 1;
                tracing::error!(
                    device,
                    %error,
                    "A stored device twin does not parse; it is skipped until the \
                     device's next event replaces it"
                );
            }
        });
        let evicted = self.order_by_last_seen();
        loaded.restored = loaded.restored.saturating_sub(evicted.len());
        loaded.evicted = evicted.len();
        (loaded, evicted)
    }

    /// After a load: every shard's eviction order by the devices' last-seen times (the
    /// sequence numbers the load left are those times), renumbered from the shard's sequence;
    /// then the devices seen longest ago, over all shards, evicted down to the bound. Returns
    /// the ids evicted.
    fn order_by_last_seen(&self) -> Vec<String> {
        let mut all: Vec<(u64, usize, String)> = Vec::new();
        let over = self.len().saturating_sub(self.max_devices);
        for (index, shard) in self.shards.iter().enumerate() {
            let mut shard = lock(shard);
            let shard = &mut *shard;
            let mut seen: Vec<(u64, String)> = shard
                .devices
                .iter()
                .map(|(id, (last_seen, _))| (*last_seen, id.clone()))
                .collect();
            seen.sort_unstable();
            let mut order = BTreeMap::new();
            for (last_seen, id) in seen {
                let sequence = shard.sequence;
                shard.sequence += 1;
                if let Some((seq, _)) = shard.devices.get_mut(&id) {
                    *seq = sequence;
                }
                if over > 0 {
                    all.push((last_seen, index, id.clone()));
                }
                order.insert(sequence, id);
            }
            shard.order = order;
            shard.devices.shrink_to_fit();
        }
        if over == 0 {
            return Vec::new();
        }
        all.sort_unstable();
        let mut evicted = Vec::with_capacity(over);
        for (_, index, id) in all.into_iter().take(over) {
            let mut shard = lock(&self.shards[index]);
            if let Some((sequence, _)) = shard.devices.remove(&id) {
                shard.order.remove(&sequence);
                self.devices.fetch_sub(1, Ordering::Relaxed);
                evicted.push(id);
            }
        }
        evicted
    }

    /// How many devices have a twin.
    pub fn len(&self) -> usize {
        self.devices.load(Ordering::Relaxed)
    }

    /// Whether no device has a twin.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// One page of the devices' summaries, sorted by id: at most `limit` of those whose id
    /// sorts after `after` (from the first when `None`). Only the page is copied, however
    /// many devices there are, so `/devices` costs memory for what it answers, not for the
    /// fleet.
    pub fn page(&self, after: Option<&str>, limit: usize) -> Page {
        let mut page = Page::default();
        // The `limit` smallest ids seen so far; the largest of them on top, to be replaced.
        let mut kept: std::collections::BinaryHeap<ById> =
            std::collections::BinaryHeap::with_capacity(limit.min(1024) + 1);
        for shard in &self.shards {
            let shard = lock(shard);
            page.total += shard.devices.len();
            for (id, (_, twin)) in &shard.devices {
                if after.is_some_and(|after| id.as_str() <= after) {
                    continue;
                }
                page.after += 1;
                if kept.len() == limit {
                    if kept.peek().is_none_or(|largest| id >= &largest.0.id) {
                        continue;
                    }
                    kept.pop();
                }
                kept.push(ById(DeviceSummary::of(twin)));
            }
        }
        page.devices = kept
            .into_sorted_vec()
            .into_iter()
            .map(|kept| kept.0)
            .collect();
        page
    }

    /// Every device's twin, sorted by id: a copy of all of them, for tests and tools.
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
            self.devices
                .fetch_sub(shard.devices.len(), Ordering::Relaxed);
            shard.devices.clear();
            shard.order.clear();
            shard.changed.clear();
        }
    }

    /// What the store is to write in [`NAMESPACE`] since it last asked: each changed
    /// device's twin as JSON, or its removal when it was evicted. The store asks at each
    /// commit, so a device that changed many times since is serialized and written once, as
    /// it is at that moment; a twin evicted and back since is written, one evicted for good
    /// removed, whatever order the workers saw.
    pub fn take_changes(&self) -> Vec<(String, Option<Vec<u8>>)> {
        let mut changes = Vec::new();
        for shard in &self.shards {
            let mut shard = lock(shard);
            let shard = &mut *shard;
            if shard.changed.is_empty() {
                continue;
            }
            changes.reserve(shard.changed.len());
            for id in shard.changed.drain() {
                let value = match shard.devices.get(&id) {
                    Some((_, twin)) => match stored(twin) {
                        Ok(json) => Some(json),
                        Err(error) => {
                            tracing::error!(device = id, %error, "Cannot store a device twin");
                            continue;
                        }
                    },
                    None => None,
                };
                changes.push((id, value));
            }
        }
        changes
    }
}

/// A twin as the store keeps it (what [`Twins::load`] reads back): a [`CompactTwin`], written into a buffer of about its size
/// from the start. `serde_json::to_vec` starts from 128 bytes and doubles: a twin of three
/// properties took three allocations and two copies, on the thread that commits, for every
/// device changed in every commit, and was held at twice its size until the commit.
///
/// The compact form, rather than the [`Twin`]'s JSON object, because every commit rewrites
/// the row of each device changed since the last, and SQLite writes every page such a row is
/// on to its log whole: the fewer pages the twins fill, the fewer each commit writes. In
/// `bench pipeline` (64 devices, three properties each) a twin is 108 bytes against the
/// object's 274, and at half load the process wrote 1.08–1.10 KB per event with the twin on
/// against 1.46–1.52 (0.54–0.57 with it off), in six alternating runs of the two builds.
pub fn stored(twin: &Twin) -> serde_json::Result<Vec<u8>> {
    let size = 48
        + twin
            .properties
            .iter()
            .map(|property| 32 + property.code.len())
            .sum::<usize>();
    let mut json = Vec::with_capacity(size);
    serde_json::to_writer(&mut json, &Compact(twin))?;
    Ok(json)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::StateStore;

    /// Loads `twins` from `store` as the pipeline does at start: deleting what the bound
    /// leaves out.
    fn load_from(twins: &Twins, store: &crate::plugin::MemoryStateStore) -> Loaded {
        let (loaded, evicted) = twins.load(|each| store.read_uncached(NAMESPACE, each));
        if !evicted.is_empty() {
            store.apply(
                NAMESPACE,
                evicted.into_iter().map(|id| (id, None)).collect(),
            );
        }
        loaded
    }
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

    /// What the store would be handed now, sorted by device; values parsed back.
    fn changes(twins: &Twins) -> Vec<(String, Option<Twin>)> {
        let mut changes: Vec<_> = twins
            .take_changes()
            .into_iter()
            .map(|(id, json)| {
                let twin = json.map(|json| read_back(&id, &json));
                (id, twin)
            })
            .collect();
        changes.sort_by(|a, b| a.0.cmp(&b.0));
        changes
    }

    /// The twin of device `id` that `stored` holds, read as a load reads it.
    fn read_back(id: &str, stored: &[u8]) -> Twin {
        StoredTwin::parse(stored)
            .expect("a stored twin")
            .into_twin(id, &mut HashSet::new())
    }

    /// A twin with something in every field, and a property of every kind of value.
    fn full_twin() -> Twin {
        let json = Json::from_text(r#"{"r":[1,2],"s":"x"}"#.into()).unwrap();
        let property = |code: &str, service: Option<&str>, value, time_ms| TwinProperty {
            code: Arc::from(code),
            service: service.map(Arc::from),
            value,
            time_ms,
        };
        Twin {
            device: Device {
                id: "dev \"1\"".into(),
                product: Some("pk".into()),
                name: Some("Kitchen \u{e9}".into()),
            },
            online: Some(false),
            last_seen_ms: 1_764_000_000_500,
            online_changed_ms: Some(1_764_000_000_000),
            properties: vec![
                property("a-json", Some("svc"), Value::Json(json), 1_764_000_000_400),
                property("b-null", None, Value::Null, 0),
                property("c-bool", None, Value::Boolean(true), 1_764_000_000_500),
                property("d-int", Some("svc"), Value::Integer(-7), u64::MAX),
                property("e-float", None, Value::Float(23.25), 1_764_000_000_499),
                property(
                    "f-text",
                    None,
                    Value::Text("white".into()),
                    1_764_000_009_000,
                ),
            ],
        }
    }

    #[test]
    fn a_stored_twin_reads_back_whole_in_its_compact_form() {
        let twin = full_twin();
        let bytes = stored(&twin).unwrap();
        assert_eq!(
            bytes.first(),
            Some(&b'['),
            "{}",
            String::from_utf8_lossy(&bytes)
        );
        assert_eq!(read_back(&twin.device.id, &bytes), twin);
        // Nothing set but the time: every field left out or null, and still the same twin.
        let bare = Twin::new(Device::new("bare"));
        assert_eq!(read_back("bare", &stored(&bare).unwrap()), bare);
    }

    #[test]
    fn a_damaged_stored_twin_is_an_error_never_a_panic() {
        let bytes = stored(&full_twin()).unwrap();
        let mut damaged = 0;
        for end in 0..bytes.len() {
            damaged += usize::from(StoredTwin::parse(&bytes[..end]).is_err());
        }
        assert_eq!(damaged, bytes.len(), "every cut short is an error");
        for at in 0..bytes.len() {
            for byte in [b'[', b']', b'"', b',', b'0', b'-', b'\\', 0xff] {
                let mut changed = bytes.clone();
                changed[at] = byte;
                // Either reads as some twin or is an error; nothing else may happen.
                let _ = StoredTwin::parse(&changed)
                    .map(|twin| twin.into_twin("d", &mut HashSet::new()));
            }
        }
    }

    #[test]
    fn the_compact_form_is_under_half_the_objects_size() {
        let twins = Twins::new(10);
        twins.update(&event(
            "vdev-bench-12",
            Kind::Properties,
            1_631_545_543_537,
            &[
                ("bright_value_v2", Value::Integer(505)),
                ("seq", Value::Integer(123_456)),
                ("temp_current", Value::Integer(203)),
            ],
        ));
        let twin = twins.get("vdev-bench-12").unwrap();
        let object = serde_json::to_vec(&twin).unwrap();
        let compact = stored(&twin).unwrap();
        assert!(
            compact.len() * 2 < object.len(),
            "{} bytes against {}: {}",
            compact.len(),
            object.len(),
            String::from_utf8_lossy(&compact)
        );
    }

    #[test]
    fn twins_stored_as_objects_before_load_beside_compact_ones() {
        let old = full_twin();
        let store = store_of(std::slice::from_ref(&old));
        let source = Twins::new(10);
        source.update(&event("new", Kind::Online, 10, &[("t", Value::Integer(1))]));
        store.apply(NAMESPACE, source.take_changes());
        store.apply(
            NAMESPACE,
            vec![("short".into(), Some(b"[\"pk\",null]".to_vec()))],
        );

        let twins = Twins::new(10);
        let loaded = load_from(&twins, &store);
        assert_eq!(
            loaded,
            Loaded {
                restored: 2,
                unreadable: 1,
                evicted: 0
            }
        );
        assert_eq!(twins.get(&old.device.id), Some(old));
        assert_eq!(twins.get("new"), source.get("new"));
    }

    #[test]
    fn each_changed_twin_is_handed_to_the_store_once_as_it_is_then_and_an_evicted_one_as_gone() {
        let twins = Twins::new(2);
        twins.update(&event(
            "a",
            Kind::Properties,
            100,
            &[("t", Value::Integer(1))],
        ));
        twins.update(&event(
            "a",
            Kind::Properties,
            200,
            &[("t", Value::Integer(2))],
        ));
        twins.update(&event(
            "b",
            Kind::Properties,
            100,
            &[("t", Value::Integer(1))],
        ));
        let first = changes(&twins);
        assert_eq!(
            first.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>(),
            ["a", "b"],
            "one entry per device"
        );
        let a = first[0].1.as_ref().expect("a is kept");
        assert_eq!(
            a.property("t").unwrap().value,
            Value::Integer(2),
            "its latest"
        );
        assert!(changes(&twins).is_empty(), "nothing changed since");
        // Past the bound, new devices evict: each change is the device as memory has it now,
        // a twin for one kept, a removal for one evicted.
        let mut evicted = Vec::new();
        for n in 0..40 {
            let device = format!("d{n}");
            let update = event(
                &device,
                Kind::Properties,
                300 + n,
                &[("t", Value::Integer(3))],
            );
            evicted.extend(twins.update(&update).evicted);
        }
        assert!(!evicted.is_empty(), "the bound of 2 evicted");
        let second = changes(&twins);
        for (id, twin) in &second {
            assert_eq!(
                twin.as_ref(),
                twins.get(id).as_ref(),
                "{id} as memory has it"
            );
        }
        for id in &evicted {
            assert!(second.iter().any(|(changed, _)| changed == id), "{id}");
        }
        let mut expected: Vec<String> = (0..40).map(|n| format!("d{n}")).collect();
        expected.extend(evicted.iter().filter(|id| !id.starts_with('d')).cloned());
        expected.sort();
        let mut ids: Vec<String> = second.into_iter().map(|(id, _)| id).collect();
        ids.sort();
        assert_eq!(ids, expected, "each device changed once, and nothing else");
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
    fn a_fleet_the_size_of_the_bound_is_kept_whole() {
        let twins = Twins::new(1000);
        for i in 0..1000 {
            let updated = twins.update(&event(&format!("d{i}"), Kind::Properties, i, &[]));
            assert_eq!(updated.evicted, Vec::<String>::new(), "d{i}");
        }
        assert_eq!(twins.len(), 1000);
        let updated = twins.update(&event("one-more", Kind::Properties, 1000, &[]));
        assert_eq!(updated.evicted.len(), 1, "past the bound");
        assert_eq!(twins.len(), 1000);
    }

    #[test]
    fn past_the_bound_the_device_seen_longest_ago_is_evicted() {
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
        // A device landing in a shard with nothing to evict passes the bound by one.
        assert!(twins.len() <= 2 * SHARDS, "{}", twins.len());
        assert!(!evicted.is_empty());
        // The last device updated is never the one evicted.
        assert!(twins.get(&format!("d{}", SHARDS * 4 - 1)).is_some());
        for id in &evicted {
            assert!(twins.get(id).is_none());
        }
    }

    #[test]
    fn an_update_moves_its_device_behind_the_others_of_its_shard() {
        let twins = Twins::new(2);
        // Three devices of one shard.
        let first = twins.shard("d0");
        let ids: Vec<String> = (0..)
            .map(|i| format!("d{i}"))
            .filter(|id| std::ptr::eq(twins.shard(id), first))
            .take(3)
            .collect();
        let update = |id: &str, time: u64| twins.update(&event(id, Kind::Properties, time, &[]));
        assert!(update(&ids[0], 1).evicted.is_empty());
        assert!(update(&ids[1], 2).evicted.is_empty());
        // The first, seen again, is now the newest: the second goes.
        assert!(update(&ids[0], 3).evicted.is_empty());
        assert_eq!(update(&ids[2], 4).evicted, [ids[1].clone()]);
        assert_eq!(update(&ids[1], 5).evicted, [ids[0].clone()]);
        assert!(twins.get(&ids[2]).is_some() && twins.get(&ids[1]).is_some());
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
        let store = store_of(&twins.all());
        let restored = Twins::new(10);
        load_from(&restored, &store);
        assert_eq!(restored.get("d"), twins.get("d"));
        restored.update(&event(
            "d",
            Kind::Properties,
            200,
            &[("u", Value::Integer(2))],
        ));
        assert_eq!(restored.get("d").unwrap().properties.len(), 2);
    }

    #[test]
    fn a_bound_of_zero_keeps_nothing() {
        let twins = Twins::new(0);
        assert!(!twins.enabled());
        twins.update(&event(
            "d",
            Kind::Properties,
            1,
            &[("t", Value::Integer(1))],
        ));
        let store = store_of(&[Twin::new(Device::new("e"))]);
        assert_eq!(load_from(&twins, &store), Loaded::default());
        assert!(twins.is_empty());
        assert_eq!(twins.get("d"), None);
    }

    #[test]
    fn len_counts_what_updates_add_evictions_remove_and_clear_empties() {
        let twins = Twins::new(SHARDS);
        let mut evicted = 0;
        for i in 0..100 {
            evicted += twins
                .update(&event(&format!("d{i}"), Kind::Properties, i, &[]))
                .evicted
                .len();
            assert_eq!(twins.len() + evicted, i as usize + 1);
        }
        assert_eq!(twins.len(), twins.all().len());
        twins.clear();
        assert_eq!(twins.len(), 0);
        assert!(twins.all().is_empty());
    }

    #[test]
    fn pages_list_the_summaries_in_id_order_after_the_given_id() {
        let twins = Twins::new(1000);
        for i in 0..25 {
            twins.update(&event(
                &format!("d{i:02}"),
                Kind::Properties,
                100 + i,
                &[("t", Value::Integer(1)), ("u", Value::Integer(2))],
            ));
        }
        let first = twins.page(None, 10);
        assert_eq!((first.total, first.after), (25, 25));
        let ids: Vec<&str> = first.devices.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids, (0..10).map(|i| format!("d{i:02}")).collect::<Vec<_>>());
        assert_eq!(first.devices[3].properties, 2);
        assert_eq!(first.devices[3].last_seen_ms, 103);

        let last = twins.page(Some("d19"), 10);
        assert_eq!((last.total, last.after), (25, 5));
        assert_eq!(last.devices.first().map(|d| d.id.as_str()), Some("d20"));
        assert_eq!(last.devices.len(), 5);
        assert_eq!(twins.page(Some("d24"), 10).devices, []);
        assert_eq!(twins.page(None, 0).devices, []);
    }

    /// A store holding `twins` as stores written before the compact form hold them: each
    /// the [`Twin`]'s JSON object.
    fn store_of(twins: &[Twin]) -> crate::plugin::MemoryStateStore {
        let store = crate::plugin::MemoryStateStore::new();
        let writes = twins
            .iter()
            .map(|twin| {
                let json = serde_json::to_vec(twin).unwrap();
                (twin.device.id.clone(), Some(json))
            })
            .collect();
        store.apply(NAMESPACE, writes);
        store
    }

    #[test]
    fn load_restores_what_is_stored_and_skips_what_does_not_parse() {
        let source = Twins::new(100);
        source.update(&event("a", Kind::Online, 10, &[]));
        source.update(&event(
            "b",
            Kind::Properties,
            20,
            &[("t", Value::Float(1.5))],
        ));
        let store = store_of(&source.all());
        store.apply(
            NAMESPACE,
            vec![("broken".into(), Some(b"{not json".to_vec()))],
        );

        let twins = Twins::new(100);
        let loaded = load_from(&twins, &store);
        assert_eq!(
            loaded,
            Loaded {
                restored: 2,
                unreadable: 1,
                evicted: 0
            }
        );
        assert_eq!(twins.all(), source.all());
        assert_eq!(
            store.len(NAMESPACE),
            3,
            "an unreadable twin is left for the next write"
        );
    }

    #[test]
    fn load_past_the_bound_keeps_the_newest_and_deletes_the_rest_from_the_store() {
        // One device per shard: of the stored twins, each shard keeps its newest.
        let stored: Vec<Twin> = (0..(SHARDS as u64 * 3))
            .map(|i| {
                let mut twin = Twin::new(Device::new(format!("d{i}")));
                twin.last_seen_ms = 1000 - i;
                twin
            })
            .collect();
        let store = store_of(&stored);
        let twins = Twins::new(SHARDS);
        let loaded = load_from(&twins, &store);
        assert_eq!(loaded.restored + loaded.evicted, stored.len());
        assert_eq!(loaded.restored, twins.len());
        assert_eq!(twins.len(), SHARDS, "the bound, over all shards");
        assert_eq!(store.len(NAMESPACE), twins.len(), "the evicted are deleted");
        // The newest of all are kept, whichever shards they are in.
        let mut kept: Vec<String> = twins.all().into_iter().map(|t| t.device.id).collect();
        kept.sort();
        let mut newest: Vec<String> = (0..SHARDS).map(|i| format!("d{i}")).collect();
        newest.sort();
        assert_eq!(kept, newest);
        for twin in twins.all() {
            assert!(store.get(NAMESPACE, &twin.device.id).is_some());
        }
    }

    #[test]
    fn a_twin_that_is_off_reads_nothing_from_the_store() {
        let source = Twins::new(10);
        source.update(&event("a", Kind::Online, 10, &[]));
        let store = store_of(&source.all());
        let twins = Twins::new(0);
        assert_eq!(load_from(&twins, &store), Loaded::default());
        assert!(twins.is_empty());
    }
}
