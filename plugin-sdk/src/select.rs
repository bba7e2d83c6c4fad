//! Which devices a step looks at: by id, by id pattern, or by product.
//!
//! Plugins that watch some devices of a rule (a watchdog, a window) take the same two config
//! keys, `devices` (ids or patterns) and `products`, and ask [`Devices::includes`] for each
//! event. Declare the two keys in the plugin's own settings and build a [`Devices`] from them
//! in `init`; `#[serde(flatten)]` is no shortcut, because it does not combine with
//! `#[serde(deny_unknown_fields)]` and loses the field's path in error messages:
//!
//! ```
//! use iotrules_plugin_sdk::{Config, Device, select::Devices};
//!
//! #[derive(serde::Deserialize)]
//! #[serde(deny_unknown_fields)]
//! struct Settings {
//!     #[serde(default)]
//!     devices: Vec<String>,
//!     #[serde(default)]
//!     products: Vec<String>,
//! }
//!
//! let settings: Settings =
//!     Config::new(r#"{"devices": ["freezer-*"], "products": ["a1Meter"]}"#).parse().unwrap();
//! let watched = Devices::new(settings.devices, settings.products);
//! assert!(watched.includes(&Device::new("freezer-2")));
//! assert!(watched.includes(&Device::new("m-9").with_product("a1Meter")));
//! assert!(!watched.includes(&Device::new("fridge-1")));
//! ```

use crate::Device;

/// A set of devices named by id patterns and products. Naming none selects every device: a
/// step then watches whatever the rule's `when` passes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Devices {
    /// Device ids, or patterns of them with `*` (any run of characters) and `?` (any one).
    patterns: Vec<String>,
    /// Products whose every device is selected.
    products: Vec<String>,
}

impl Devices {
    /// The devices whose id matches one of `patterns` (see [`glob`]) or whose product is one
    /// of `products`.
    pub fn new(patterns: Vec<String>, products: Vec<String>) -> Self {
        Devices { patterns, products }
    }

    /// Every device.
    pub fn all() -> Self {
        Devices::default()
    }

    /// Whether the set names this device (any device when it names none).
    pub fn includes(&self, device: &Device) -> bool {
        if self.patterns.is_empty() && self.products.is_empty() {
            return true;
        }
        self.patterns
            .iter()
            .any(|pattern| glob(pattern, &device.id))
            || device
                .product
                .as_ref()
                .is_some_and(|p| self.products.contains(p))
    }
}

/// Whether `text` matches `pattern`, where `*` matches any run of characters (also none) and
/// `?` any one character; every other character matches itself.
///
/// The usual two-pointer match: on a mismatch, go back to the last `*` and let it swallow one
/// more character. Linear in practice, never exponential, so an operator's pattern cannot
/// stall a step.
///
/// ```
/// use iotrules_plugin_sdk::select::glob;
///
/// assert!(glob("*-pir-?", "hall-pir-2"));
/// assert!(!glob("*-pir-?", "hall-pir-12"));
/// ```
pub fn glob(pattern: &str, text: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let text: Vec<char> = text.chars().collect();
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some('*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == '?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((star_p, star_t)) => {
                    p = star_p + 1;
                    t = star_t + 1;
                    star = Some((star_p, star_t + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_stars_and_question_marks() {
        assert!(glob("freezer-*", "freezer-1"));
        assert!(glob("freezer-*", "freezer-"));
        assert!(!glob("freezer-*", "fridge-1"));
        assert!(glob("*-pir-?", "hall-pir-2"));
        assert!(!glob("*-pir-?", "hall-pir-12"));
        assert!(glob("a*b*c", "aXXbYYbZc"));
        assert!(!glob("a*b*c", "aXXbYY"));
        assert!(glob("exact", "exact"));
        assert!(!glob("exact", "exactly"));
        assert!(glob("*", ""));
        assert!(!glob("?", ""));
    }

    #[test]
    fn globs_match_characters_not_bytes() {
        assert!(glob("küche-?", "küche-ä"));
        assert!(glob("?üche-*", "küche-1"));
    }

    #[test]
    fn a_long_run_of_stars_is_not_exponential() {
        let pattern = format!("{}b", "*a".repeat(30));
        let text = "a".repeat(10_000);
        assert!(!glob(&pattern, &text));
    }

    #[test]
    fn a_set_takes_ids_patterns_and_products() {
        let devices = Devices::new(
            vec!["meter-*".into(), "pump-7".into()],
            vec!["a1Freezer".into()],
        );
        assert!(devices.includes(&Device::new("meter-3")));
        assert!(devices.includes(&Device::new("pump-7")));
        assert!(devices.includes(&Device::new("x").with_product("a1Freezer")));
        assert!(!devices.includes(&Device::new("pump-8").with_product("other")));
        assert!(!devices.includes(&Device::new("y")));
    }

    #[test]
    fn naming_no_device_selects_every_one() {
        assert!(Devices::all().includes(&Device::new("anything")));
        assert!(Devices::new(Vec::new(), Vec::new()).includes(&Device::new("x").with_product("p")));
    }
}
