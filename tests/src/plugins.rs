//! The built plugin components (`scripts/build-plugins`) and events to feed them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use iotrules::event::{Device, Event, Json, Kind, Property, Value, Vendor};
use iotrules::plugin::{MemoryStateStore, Registry, Runtime, RuntimeConfig, StateStore};
use iotrules::twin::Twins;

/// `plugins/dist` of this repository.
pub fn dist_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/dist")
}

/// The bytes of a built plugin: `name` is `deadband` or `testing/spin`.
pub fn built(name: &str) -> Vec<u8> {
    let path = dist_dir().join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e}; build the plugins first with scripts/build-plugins \
             (scripts/test does)",
            path.display()
        )
    })
}

/// The same component with a custom section appended: identical behaviour, different bytes,
/// so the host sees a new version. `tag` makes each copy distinct.
pub fn retagged(bytes: &[u8], tag: &str) -> Vec<u8> {
    let name = b"iotrules-test-tag";
    let mut payload = Vec::new();
    leb128(&mut payload, name.len());
    payload.extend_from_slice(name);
    payload.extend_from_slice(tag.as_bytes());
    let mut out = bytes.to_vec();
    out.push(0); // custom section id
    leb128(&mut out, payload.len());
    out.extend_from_slice(&payload);
    out
}

fn leb128(out: &mut Vec<u8>, mut value: usize) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Writes `bytes` as `dir/name.wasm` through a temporary file and a rename, as a deploy
/// tool would.
pub fn install(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(format!("{name}.wasm"));
    let temp = dir.join(format!(".{name}.wasm.tmp"));
    std::fs::write(&temp, bytes).expect("write plugin");
    std::fs::rename(&temp, &path).expect("rename plugin into place");
    path
}

/// A runtime with a private compile cache, and a registry over a fresh directory.
pub struct Harness {
    pub dir: tempfile::TempDir,
    pub cache: tempfile::TempDir,
    /// The registry's plugin state, unless it was made [`Harness::over`] another store.
    pub state: Arc<MemoryStateStore>,
    pub registry: Arc<Registry>,
}

impl Harness {
    pub fn new() -> Self {
        Self::with_quarantine_after(iotrules::plugin::DEFAULT_QUARANTINE_AFTER)
    }

    pub fn with_quarantine_after(failures: u32) -> Self {
        let state = Arc::new(MemoryStateStore::new());
        let mut harness = Self::build(state.clone(), failures);
        harness.state = state;
        harness
    }

    /// A harness whose plugins keep their state in `store` (its `state` is then unused).
    pub fn over(store: Arc<dyn StateStore>) -> Self {
        Self::build(store, iotrules::plugin::DEFAULT_QUARANTINE_AFTER)
    }

    /// Like [`Harness::over`], with the device twins `twins` (the service's, of its
    /// configured bound) instead of the registry's default ones.
    pub fn over_with_twins(store: Arc<dyn StateStore>, twins: Arc<Twins>) -> Self {
        Self::build_with(
            store,
            iotrules::plugin::DEFAULT_QUARANTINE_AFTER,
            Some(twins),
        )
    }

    fn build(store: Arc<dyn StateStore>, failures: u32) -> Self {
        Self::build_with(store, failures, None)
    }

    fn build_with(store: Arc<dyn StateStore>, failures: u32, twins: Option<Arc<Twins>>) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let cache = tempfile::tempdir().expect("temp dir");
        let runtime = Runtime::new(RuntimeConfig {
            cache_dir: Some(cache.path().to_owned()),
            ..RuntimeConfig::default()
        })
        .expect("runtime");
        let mut registry =
            Registry::new(runtime, dir.path(), store).with_quarantine_after(failures);
        if let Some(twins) = twins {
            registry = registry.with_twins(twins);
        }
        let registry = Arc::new(registry);
        Harness {
            dir,
            cache,
            state: Arc::new(MemoryStateStore::new()),
            registry,
        }
    }

    /// Installs a built plugin under `name` and loads it.
    pub fn load(&self, name: &str, built_name: &str) -> iotrules::plugin::ReloadReport {
        let path = install(self.dir.path(), name, &built(built_name));
        self.registry.load_file(&path)
    }
}

impl Default for Harness {
    fn default() -> Self {
        Self::new()
    }
}

/// A Tuya-style properties event with `properties`, numbered `seq` for `device`.
pub fn event(device: &str, seq: u64, properties: Vec<Property>) -> Event {
    Event {
        id: format!("{device}-{seq}"),
        source: "test".into(),
        vendor: Vendor::Tuya,
        kind: Kind::Properties,
        action: "devicePropertyMessage".into(),
        device: Device::new(device),
        time_ms: 1_763_884_800_000 + seq,
        properties,
        payload: Json::from_text(format!(r#"{{"seq":{seq}}}"#)).expect("JSON"),
        attributes: [("seq".to_owned(), seq.to_string())].into_iter().collect(),
    }
}

/// A typical six-property event (a Tuya thermostat's status report).
pub fn six_properties(device: &str, seq: u64) -> Event {
    event(
        device,
        seq,
        vec![
            Property::new("switch", Value::Boolean(true)),
            Property::new("temp_current", Value::Integer(215)),
            Property::new("temp_set", Value::Integer(220)),
            Property::new("mode", Value::Text("auto".into())),
            Property::new("humidity", Value::Float(41.5)),
            Property::new("bright_value_v2", Value::Integer(500)),
        ],
    )
}
