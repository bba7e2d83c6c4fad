//! Which grants a rule may give its plugins: none that reach the service's secrets.
//!
//! A rule grants a plugin environment variables and read-only directories ([`Grants`]). A rule
//! file is a lesser thing to trust than the config: whoever may change rules should not be
//! able to write a plugin that reads the access keys. So a grant is refused, at rule load,
//! when it reaches
//!
//! - an environment variable the config references (`${NAME}`): that is where its secrets
//!   come from ([`crate::config::Config::env_references`]);
//! - `/`, or a directory under `/proc`, `/sys`, `/dev` or `/etc` ([`system_dir`]): the
//!   process's environment and memory, devices, system credentials;
//! - a directory that holds one of the service's own files (the config file, the store and
//!   its journal, a CA file, a replay file or its offset), or that holds or is inside the
//!   plugin cache.
//!
//! A directory beside them is fine: a rule's own tables in `/srv/iotrules/tables` next to
//! `/srv/iotrules/iotrules.toml` can be granted, `/srv/iotrules` cannot. Paths are compared
//! after resolving symbolic links (where they exist) and `..`.
//!
//! [`Grants`]: super::Grants

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};

use crate::config::Config;

/// The system directories no grant may reach, each with what it would expose.
const SYSTEM_DIRS: [(&str, &str); 4] = [
    ("/proc", "the processes' environments and memory"),
    ("/sys", "kernel and device state"),
    ("/dev", "the devices"),
    ("/etc", "the system's configuration and credentials"),
];

/// Why `dir` (an absolute path) is a system directory no rule may grant, if it is one.
pub fn system_dir(dir: &Path) -> Option<String> {
    let dir = resolve(dir);
    if dir == Path::new("/") {
        return Some("it is the whole file system".into());
    }
    SYSTEM_DIRS
        .iter()
        .find(|(system, _)| dir.starts_with(system))
        .map(|(system, what)| format!("it is under {system}, which exposes {what}"))
}

/// One of the service's own paths.
#[derive(Debug, Clone)]
struct Protected {
    /// Resolved.
    path: PathBuf,
    /// What it is, for the error: `the config file`, `the plugin cache`.
    what: &'static str,
    /// A directory: a grant inside it is refused too.
    dir: bool,
}

/// The secrets of one config that rules may not grant: its environment variables and its
/// files. [`GrantPolicy::default`] protects nothing beyond [`system_dir`] (which the rule
/// loader checks on its own), for rules run without a config (`iotrules test`).
#[derive(Debug, Clone, Default)]
pub struct GrantPolicy {
    env: BTreeSet<String>,
    protected: Vec<Protected>,
}

impl GrantPolicy {
    /// The policy of `config`: its `${NAME}` references, and its own files (the config, the
    /// store, the plugin cache). The files its connectors and command paths read are their
    /// kinds' to name: add them with [`protecting`](Self::protecting).
    pub fn from_config(config: &Config) -> Self {
        let mut policy = GrantPolicy {
            env: config.env_references.iter().cloned().collect(),
            protected: Vec::new(),
        };
        let mut add = |path: &Path, what: &'static str, dir: bool| {
            if !path.as_os_str().is_empty() {
                policy.protected.push(Protected {
                    path: resolve(path),
                    what,
                    dir,
                });
            }
        };
        add(&config.file, "the config file", false);
        add(&config.store, "the store", false);
        add(&config.cache, "the plugin cache", true);
        policy
    }

    /// The policy protecting `files` too, each with what it is (`a replay file`).
    pub(crate) fn protecting(
        mut self,
        files: impl IntoIterator<Item = (PathBuf, &'static str)>,
    ) -> Self {
        for (path, what) in files {
            if !path.as_os_str().is_empty() {
                self.protected.push(Protected {
                    path: resolve(&path),
                    what,
                    dir: false,
                });
            }
        }
        self
    }

    /// Whether a plugin may be granted the environment variable `name`; the error says why
    /// not.
    pub(crate) fn check_env(&self, name: &str) -> Result<(), String> {
        if self.env.contains(name) {
            return Err(format!(
                "grants.env: \"{name}\" is referenced by the config (`${{{name}}}`), where \
                 the service's secrets come from: a plugin may not read it"
            ));
        }
        Ok(())
    }

    /// Whether a plugin may be granted the directory `dir` (absolute); the error names the
    /// service file it would reach.
    pub(crate) fn check_read_dir(&self, dir: &Path) -> Result<(), String> {
        let resolved = resolve(dir);
        for protected in &self.protected {
            let reaches = protected.path.starts_with(&resolved)
                || (protected.dir && resolved.starts_with(&protected.path));
            if reaches {
                let relation = if protected.path.starts_with(&resolved) {
                    "holds"
                } else {
                    "is inside"
                };
                return Err(format!(
                    "grants.read_dirs: \"{}\" {relation} {} ({}): a plugin may not read the \
                     service's files; grant a directory of the rule's own data instead",
                    dir.display(),
                    protected.what,
                    protected.path.display()
                ));
            }
        }
        Ok(())
    }
}

/// `path` made absolute, its symbolic links resolved where it exists, `.` and `..` resolved
/// by name where it does not (the longest existing ancestor is still resolved, so a link
/// above a file not yet created is seen through).
fn resolve(path: &Path) -> PathBuf {
    if let Ok(real) = std::fs::canonicalize(path) {
        return real;
    }
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    let mut normal = PathBuf::new();
    for component in absolute.components() {
        match component {
            Component::ParentDir => {
                normal.pop();
            }
            Component::CurDir => {}
            other => normal.push(other),
        }
    }
    // The deepest ancestor that exists, resolved, with the rest appended.
    let mut existing = normal.clone();
    let mut rest = Vec::new();
    while !existing.exists() {
        match (
            existing.file_name().map(ToOwned::to_owned),
            existing.parent(),
        ) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                existing = parent.to_owned();
            }
            _ => return normal,
        }
    }
    let mut resolved = std::fs::canonicalize(&existing).unwrap_or(existing);
    for name in rest.into_iter().rev() {
        resolved.push(name);
    }
    resolved
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_directories_and_the_root_are_refused_even_through_dot_dot() {
        for dir in [
            "/",
            "/proc",
            "/proc/self",
            "/sys/class",
            "/dev",
            "/etc/iotrules",
        ] {
            assert!(system_dir(Path::new(dir)).is_some(), "{dir}");
        }
        assert!(system_dir(Path::new("/srv/iot/../../etc")).is_some());
        assert!(system_dir(Path::new("/srv/../")).is_some());
        for dir in [
            "/srv/iotrules/tables",
            "/var/lib/iotrules/tables",
            "/etcetera",
        ] {
            assert_eq!(system_dir(Path::new(dir)), None, "{dir}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn a_symlink_to_a_system_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("tables");
        std::os::unix::fs::symlink("/etc", &link).unwrap();
        let why = system_dir(&link).expect("refused");
        assert!(why.contains("under /etc"), "{why}");
    }

    fn policy(dir: &Path) -> GrantPolicy {
        let file = dir.join("iotrules.toml");
        let text = "store = \"state/iotrules.db\"\ncache = \"cache\"\n\
                    [[connector]]\nname = \"t\"\nkind = \"replay\"\ndialect = \"tuya\"\n\
                    access_id = \"id\"\naccess_key = \"${TUYA_KEY:-0123456789abcdef0123456789}\"\n\
                    file = \"recorded/t.jsonl\"\n\
                    [[command_path]]\nname = \"hook\"\nkind = \"webhook\"\n\
                    url = \"https://hooks.example.com/\"\nauthorization = \"${HOOK_AUTH:-x}\"\n\
                    ca_file = \"certs/ca.pem\"\n";
        crate::plan::Plan::parse(&file, text)
            .expect("config")
            .grant_policy()
    }

    #[test]
    fn the_config_s_variables_are_refused_and_others_granted() {
        let dir = tempfile::tempdir().unwrap();
        let policy = policy(dir.path());
        let error = policy.check_env("TUYA_KEY").unwrap_err();
        assert!(
            error.contains("\"TUYA_KEY\" is referenced by the config"),
            "{error}"
        );
        assert!(policy.check_env("HOOK_AUTH").is_err());
        assert_eq!(policy.check_env("TZ"), Ok(()));
    }

    #[test]
    fn directories_that_reach_the_service_s_files_are_refused_and_a_data_directory_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("cache/x")).unwrap();
        std::fs::create_dir_all(root.join("tables")).unwrap();
        let policy = policy(root);
        for (granted, reaches) in [
            (root.to_owned(), "the config file"),
            (root.join("state"), "the store"),
            (root.join("cache"), "the plugin cache"),
            (root.join("cache/x"), "is inside the plugin cache"),
            (root.join("certs"), "a command path's CA file"),
            (root.join("recorded"), "a replay file"),
            (root.join("tables/../state"), "the store"),
            (root.join("tables/../.."), "the config file"),
        ] {
            let error = policy.check_read_dir(&granted).unwrap_err();
            assert!(error.contains(reaches), "{}: {error}", granted.display());
        }
        assert_eq!(policy.check_read_dir(&root.join("tables")), Ok(()));
        assert_eq!(policy.check_read_dir(&root.join("rules")), Ok(()));
    }

    #[cfg(unix)]
    #[test]
    fn a_symlink_into_the_service_s_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let policy = policy(dir.path());
        let elsewhere = tempfile::tempdir().unwrap();
        let link = elsewhere.path().join("innocent");
        std::os::unix::fs::symlink(dir.path(), &link).unwrap();
        let error = policy.check_read_dir(&link).unwrap_err();
        assert!(error.contains("the config file"), "{error}");
    }
}
