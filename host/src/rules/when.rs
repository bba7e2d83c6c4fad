//! The structural `when` of a rule: cheap comparisons on the event's envelope fields, checked
//! before any expression, so most rules are ruled out for most events without building the
//! expression context.

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

use crate::event::{Event, Kind, Vendor};

/// The vendors a rule may name, in the order error messages list them.
const VENDORS: [Vendor; 4] = Vendor::ALL;

/// The kinds a rule may name.
const KINDS: [Kind; 9] = Kind::ALL;

/// One string field's accepted values: any of a list of patterns.
///
/// Patterns without glob characters are compared as strings (most rules name exact sources
/// and devices); the others are compiled once into one [`GlobSet`].
#[derive(Debug, Clone)]
pub(crate) struct Patterns {
    exact: Vec<String>,
    /// `prefix*` patterns, the common glob in rules (`tuya-*`, `vdevo-hall*`), compared
    /// without the glob machinery.
    prefixes: Vec<String>,
    globs: Option<GlobSet>,
}

impl Patterns {
    /// Compiles `patterns`: `*` is any run of characters, `?` any one, `[…]` a class and
    /// `{a,b}` alternatives. Fails on a malformed pattern, naming it.
    pub fn new(patterns: &[String]) -> Result<Self, String> {
        let mut exact = Vec::new();
        let mut prefixes = Vec::new();
        let mut globs = GlobSetBuilder::new();
        let mut any_glob = false;
        for pattern in patterns {
            const META: [char; 7] = ['*', '?', '[', ']', '{', '}', '\\'];
            if !pattern.contains(META) {
                exact.push(pattern.clone());
                continue;
            }
            if let Some(prefix) = pattern.strip_suffix('*')
                && !prefix.contains(META)
            {
                prefixes.push(prefix.to_owned());
                continue;
            }
            let glob = GlobBuilder::new(pattern)
                .literal_separator(false)
                .backslash_escape(true)
                .build()
                .map_err(|e| format!("bad pattern \"{pattern}\": {}", e.kind()))?;
            globs.add(glob);
            any_glob = true;
        }
        let globs = if any_glob {
            Some(globs.build().map_err(|e| format!("bad pattern: {e}"))?)
        } else {
            None
        };
        Ok(Patterns {
            exact,
            prefixes,
            globs,
        })
    }

    fn matches(&self, value: &str) -> bool {
        self.exact.iter().any(|exact| exact == value)
            || self
                .prefixes
                .iter()
                .any(|prefix| value.starts_with(prefix.as_str()))
            || self
                .globs
                .as_ref()
                .is_some_and(|globs| globs.is_match(value))
    }

    fn matches_option(&self, value: Option<&str>) -> bool {
        value.is_some_and(|value| self.matches(value))
    }
}

/// A rule's structural match. A field left out matches every event; a field given as a list
/// matches any of its entries; all the fields given must match.
#[derive(Debug, Clone, Default)]
pub(crate) struct When {
    pub(crate) source: Option<Patterns>,
    pub(crate) vendor: Option<Vec<Vendor>>,
    pub(crate) kind: Option<Vec<Kind>>,
    pub(crate) device: Option<Patterns>,
    /// Matches only events whose device names a product.
    pub(crate) product: Option<Patterns>,
    pub(crate) action: Option<Patterns>,
}

impl When {
    /// Whether `event` passes every field given.
    pub(crate) fn matches(&self, event: &Event) -> bool {
        self.vendor
            .as_ref()
            .is_none_or(|vendors| vendors.contains(&event.vendor))
            && self
                .kind
                .as_ref()
                .is_none_or(|kinds| kinds.contains(&event.kind))
            && self
                .source
                .as_ref()
                .is_none_or(|p| p.matches(&event.source))
            && self
                .device
                .as_ref()
                .is_none_or(|p| p.matches(&event.device.id))
            && self
                .product
                .as_ref()
                .is_none_or(|p| p.matches_option(event.device.product.as_deref()))
            && self
                .action
                .as_ref()
                .is_none_or(|p| p.matches(&event.action))
    }
}

/// A vendor by its rule name.
pub fn vendor(name: &str) -> Result<Vendor, String> {
    VENDORS
        .into_iter()
        .find(|v| v.as_str() == name)
        .ok_or_else(|| {
            format!(
                "unknown vendor \"{name}\" (one of: {})",
                names(VENDORS.map(Vendor::as_str))
            )
        })
}

/// A kind by its rule name.
pub fn kind(name: &str) -> Result<Kind, String> {
    KINDS
        .into_iter()
        .find(|k| k.as_str() == name)
        .ok_or_else(|| {
            format!(
                "unknown kind \"{name}\" (one of: {})",
                names(KINDS.map(Kind::as_str))
            )
        })
}

fn names<const N: usize>(names: [&str; N]) -> String {
    names.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Device, Json};

    fn event() -> Event {
        Event {
            id: "1".into(),
            source: "tuya-eu".into(),
            vendor: Vendor::Tuya,
            kind: Kind::Properties,
            action: "devicePropertyMessage".into(),
            device: Device {
                id: "vdevo-hallway-pir".into(),
                product: Some("keyPir001".into()),
                name: None,
            },
            time_ms: 0,
            properties: Vec::new(),
            payload: Json::null(),
            attributes: Default::default(),
        }
    }

    fn patterns(list: &[&str]) -> Patterns {
        Patterns::new(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn an_empty_when_matches_everything() {
        assert!(When::default().matches(&event()));
    }

    #[test]
    fn globs_and_lists_match_any_entry() {
        let when = When {
            source: Some(patterns(&["tuya-*"])),
            device: Some(patterns(&["vdevo-kitchen-*", "vdevo-hall???-p?r"])),
            action: Some(patterns(&["device{Property,Status}Message"])),
            ..When::default()
        };
        assert!(when.matches(&event()));
        let when = When {
            device: Some(patterns(&["vdevo-kitchen-*", "other"])),
            ..When::default()
        };
        assert!(!when.matches(&event()));
    }

    #[test]
    fn prefix_patterns_match_by_prefix_only() {
        let prefix = patterns(&["vdevo-*"]);
        assert_eq!(prefix.prefixes, ["vdevo-"], "compared without a glob");
        assert!(prefix.globs.is_none());
        assert!(prefix.matches("vdevo-"));
        assert!(prefix.matches("vdevo-hallway-pir"));
        assert!(!prefix.matches("xvdevo-1"));
        assert!(!prefix.matches("vdevo"));
        let star = patterns(&["*"]);
        assert!(star.matches("") && star.matches("anything"));
    }

    #[test]
    fn exact_patterns_do_not_match_prefixes() {
        let when = When {
            source: Some(patterns(&["tuya"])),
            ..When::default()
        };
        assert!(!when.matches(&event()));
    }

    #[test]
    fn vendors_and_kinds_are_compared_by_name() {
        let mut when = When {
            vendor: Some(vec![vendor("alibaba").unwrap(), vendor("tuya").unwrap()]),
            kind: Some(vec![kind("properties").unwrap()]),
            ..When::default()
        };
        assert!(when.matches(&event()));
        when.kind = Some(vec![kind("device-event").unwrap()]);
        assert!(!when.matches(&event()));
        assert_eq!(
            kind("property").unwrap_err(),
            "unknown kind \"property\" (one of: properties, online, offline, lifecycle, \
             device-event, command, command-reply, message, other)"
        );
        assert!(
            vendor("aws")
                .unwrap_err()
                .contains("unknown vendor \"aws\"")
        );
    }

    #[test]
    fn a_product_pattern_never_matches_an_event_without_a_product() {
        let when = When {
            product: Some(patterns(&["*"])),
            ..When::default()
        };
        assert!(when.matches(&event()));
        let mut no_product = event();
        no_product.device.product = None;
        assert!(!when.matches(&no_product));
    }

    #[test]
    fn a_malformed_glob_is_refused_with_its_text() {
        let error = Patterns::new(&["vdevo-[abc".to_owned()]).unwrap_err();
        assert!(error.starts_with("bad pattern \"vdevo-[abc\": "), "{error}");
    }
}
