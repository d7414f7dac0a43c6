//! Network configurations: the `.conflist`, `.conf` and `.json` files of
//! `--network_cni_config_dir`, re-read whenever the directory changes (Mesos re-reads on
//! every attach, so networks come and go without a restart); the embedded default network
//! for an empty directory; and which networks a pod joins.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::result::supported_version;

/// Pod annotation naming the networks to join, comma separated: eth0, eth1, … in order.
pub const NETWORKS_ANNOTATION: &str = "cri-mesos.io/networks";
/// Name of the embedded default network, and of its host-local data dir.
pub const DEFAULT_NETWORK: &str = "cri-mesos";
pub const DEFAULT_BRIDGE: &str = "cri-mesos0";
/// File names inside a pod's CNI directory that are not networks.
pub const RESERVED_NAMES: [&str; 1] = ["ns"];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("the default network: {0}")]
    Default(#[from] crate::state::CheckpointError),
}

/// One network: a plugin chain in the `.conflist` form (a `.conf` is a chain of one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworkList {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    pub name: String,
    #[serde(rename = "disableCheck", default, skip_serializing_if = "is_false")]
    pub disable_check: bool,
    pub plugins: Vec<Map<String, Value>>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl NetworkList {
    /// Parses a config file's content: a list when it has `plugins`, else one plugin.
    pub fn parse(bytes: &[u8]) -> Result<NetworkList, String> {
        let value: Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        let Value::Object(top) = value else {
            return Err("not a JSON object".into());
        };
        let text = |key: &str| -> Result<String, String> {
            match top.get(key) {
                Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
                _ => Err(format!("{key:?} must be a non-empty string")),
            }
        };
        let name = text("name")?;
        let cni_version = text("cniVersion")?;
        let plugins = match top.get("plugins") {
            Some(Value::Array(plugins)) => plugins
                .iter()
                .enumerate()
                .map(|(i, p)| match p {
                    Value::Object(p) => Ok(p.clone()),
                    _ => Err(format!("plugins[{i}] is not an object")),
                })
                .collect::<Result<Vec<_>, _>>()?,
            Some(_) => return Err("\"plugins\" must be an array".into()),
            None => vec![top.clone()],
        };
        // libcni accepts both a JSON bool and the string "true".
        let disable_check = matches!(top.get("disableCheck"), Some(Value::Bool(true)))
            || matches!(top.get("disableCheck"), Some(Value::String(s)) if s == "true");
        let list = NetworkList {
            cni_version,
            name,
            disable_check,
            plugins,
        };
        list.validate()?;
        Ok(list)
    }

    fn validate(&self) -> Result<(), String> {
        // The spec's name rule; it also keeps the name safe as a directory name.
        let mut chars = self.name.chars();
        let valid = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
            && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
        if !valid {
            return Err(format!(
                "network name {:?} must match [a-zA-Z0-9][a-zA-Z0-9_.-]*",
                self.name
            ));
        }
        if RESERVED_NAMES.contains(&self.name.as_str()) {
            return Err(format!(
                "network name {:?} is reserved by cri-mesos",
                self.name
            ));
        }
        if !supported_version(&self.cni_version) {
            return Err(format!(
                "cniVersion {:?} is not supported (0.3.0 to 1.1.0 are)",
                self.cni_version
            ));
        }
        if self.plugins.is_empty() {
            return Err("\"plugins\" is empty".into());
        }
        for (i, plugin) in self.plugins.iter().enumerate() {
            match plugin.get("type") {
                Some(Value::String(t))
                    if !t.is_empty() && !t.contains('/') && t != "." && t != ".." => {}
                _ => return Err(format!("plugins[{i}].type must be a plugin file name")),
            }
        }
        Ok(())
    }

    pub fn plugin_type(plugin: &Map<String, Value>) -> &str {
        plugin.get("type").and_then(Value::as_str).unwrap_or("")
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }
}

/// A network as loaded, with the file it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    pub list: NetworkList,
    pub source: PathBuf,
}

/// The networks in effect at one moment.
#[derive(Debug, Clone, Default)]
pub struct ConfigSet {
    /// By file name, the first one first (the pod's default network).
    pub networks: Vec<Loaded>,
    /// Files that could not be used, with the reason.
    pub errors: Vec<String>,
    /// Whether `networks` is the embedded default network.
    pub default: bool,
}

impl ConfigSet {
    pub fn find(&self, name: &str) -> Option<&Loaded> {
        self.networks.iter().find(|n| n.list.name == name)
    }

    pub fn names(&self) -> Vec<&str> {
        self.networks.iter().map(|n| n.list.name.as_str()).collect()
    }
}

/// What identifies the directory's content without reading it: a rename or rewrite
/// changes the inode, mtime or size.
type Signature = Vec<(PathBuf, u64, Option<SystemTime>, u64)>;

#[derive(Default)]
struct Cache {
    signature: Option<Signature>,
    dir: Arc<ConfigSet>,
    default: Option<(String, Arc<ConfigSet>)>,
}

/// The network configurations of `--network_cni_config_dir`, re-read when it changes.
pub struct ConfigStore {
    dir: PathBuf,
    /// Where the embedded default conflist is written, when `--network_cni_default`.
    default_file: Option<PathBuf>,
    default_subnet: String,
    cache: Mutex<Cache>,
}

impl std::fmt::Debug for ConfigStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigStore")
            .field("dir", &self.dir)
            .field("default_file", &self.default_file)
            .finish_non_exhaustive()
    }
}

impl ConfigStore {
    pub fn new(dir: PathBuf, default_file: Option<PathBuf>, default_subnet: String) -> Self {
        ConfigStore {
            dir,
            default_file,
            default_subnet,
            cache: Mutex::new(Cache::default()),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The networks in effect now: the directory's, or the default network on
    /// `pod_cidr` (else the default subnet) when the directory has none and the default
    /// is enabled.
    pub fn current(&self, pod_cidr: Option<&str>) -> Result<Arc<ConfigSet>, ConfigError> {
        let signature = signature(&self.dir);
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.signature.as_ref() != Some(&signature) {
            cache.dir = Arc::new(load_dir(&signature));
            cache.signature = Some(signature);
        }
        let Some(default_file) = &self.default_file else {
            return Ok(cache.dir.clone());
        };
        // Only an empty dir gets the default: broken files are the operator's config,
        // reported by NetworkReady, not silently replaced.
        if !cache.dir.networks.is_empty() || !cache.dir.errors.is_empty() {
            return Ok(cache.dir.clone());
        }
        let subnet = pod_cidr.unwrap_or(&self.default_subnet).to_string();
        if let Some((cached_subnet, set)) = &cache.default
            && *cached_subnet == subnet
        {
            return Ok(set.clone());
        }
        let list = default_network(&subnet);
        // Kept on disk for operators (and `ip netns`-style debugging), never in the shared
        // config dir other runtimes read.
        let bytes = list.to_bytes();
        if std::fs::read(default_file).ok().as_deref() != Some(&bytes[..]) {
            crate::state::atomic_write(default_file, &bytes)?;
        }
        let set = Arc::new(ConfigSet {
            networks: vec![Loaded {
                list,
                source: default_file.clone(),
            }],
            errors: cache.dir.errors.clone(),
            default: true,
        });
        cache.default = Some((subnet, set.clone()));
        Ok(set)
    }
}

fn is_config_file(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("conf" | "conflist" | "json")
    )
}

/// Config files of `dir` sorted by name, with what identifies their content. A missing
/// directory has none (the default /etc/cni/net.d often does not exist).
fn signature(dir: &Path) -> Signature {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Signature = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| is_config_file(p))
        .filter_map(|p| {
            let meta = std::fs::metadata(&p).ok().filter(|m| m.is_file())?;
            Some((p, meta.ino(), meta.modified().ok(), meta.len()))
        })
        .collect();
    files.sort();
    files
}

fn load_dir(files: &Signature) -> ConfigSet {
    let mut set = ConfigSet::default();
    for (path, ..) in files {
        let parsed = std::fs::read(path)
            .map_err(|e| e.to_string())
            .and_then(|bytes| NetworkList::parse(&bytes));
        match parsed {
            Ok(list) => {
                if let Some(first) = set.find(&list.name) {
                    set.errors.push(format!(
                        "{}: network {:?} is already defined by {}",
                        path.display(),
                        list.name,
                        first.source.display()
                    ));
                    continue;
                }
                set.networks.push(Loaded {
                    list,
                    source: path.clone(),
                });
            }
            Err(reason) => {
                tracing::warn!(file = %path.display(), %reason, "CNI config ignored");
                set.errors.push(format!("{}: {reason}", path.display()));
            }
        }
    }
    set
}

/// The embedded default network: a bridge with host-local addresses on `subnets` (one
/// CIDR, or two comma separated for dual stack), port mappings, and loopback.
pub fn default_network(subnets: &str) -> NetworkList {
    let cidrs: Vec<&str> = subnets
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    let ranges: Vec<Value> = cidrs.iter().map(|c| json!([{ "subnet": c }])).collect();
    let routes: Vec<Value> = cidrs
        .iter()
        .map(|c| {
            if c.contains(':') {
                json!({"dst": "::/0"})
            } else {
                json!({"dst": "0.0.0.0/0"})
            }
        })
        .collect();
    let plugin = |v: Value| match v {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    NetworkList {
        cni_version: "1.0.0".into(),
        name: DEFAULT_NETWORK.into(),
        disable_check: false,
        plugins: vec![
            plugin(json!({
                "type": "bridge",
                "bridge": DEFAULT_BRIDGE,
                "isGateway": true,
                "ipMasq": true,
                "hairpinMode": true,
                "ipam": {"type": "host-local", "ranges": ranges, "routes": routes},
            })),
            plugin(json!({
                "type": "portmap",
                "capabilities": {"portMappings": true},
            })),
            plugin(json!({"type": "loopback"})),
        ],
    }
}

/// A network a pod joins and the interface it gets there.
#[derive(Debug, Clone, PartialEq)]
pub struct Attachment {
    pub list: NetworkList,
    pub ifname: String,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SelectError {
    #[error(
        "annotation {NETWORKS_ANNOTATION}: network {network:?} is not configured (known: {known:?})"
    )]
    Unknown { network: String, known: Vec<String> },
    #[error("annotation {NETWORKS_ANNOTATION}: network {0:?} is named twice")]
    Twice(String),
}

/// The networks of a pod: those its annotation names, in order, else the first network.
/// None when no network is configured: the pod keeps its namespace with loopback only.
pub fn select(
    set: &ConfigSet,
    annotations: &HashMap<String, String>,
) -> Result<Vec<Attachment>, SelectError> {
    let named: Vec<&str> = annotations
        .get(NETWORKS_ANNOTATION)
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default();
    let lists: Vec<&NetworkList> = if named.is_empty() {
        set.networks.first().map(|n| &n.list).into_iter().collect()
    } else {
        let mut lists = Vec::new();
        for (i, name) in named.iter().enumerate() {
            if named[..i].contains(name) {
                return Err(SelectError::Twice(name.to_string()));
            }
            let found = set.find(name).ok_or_else(|| SelectError::Unknown {
                network: name.to_string(),
                known: set.names().into_iter().map(String::from).collect(),
            })?;
            lists.push(&found.list);
        }
        lists
    };
    Ok(lists
        .into_iter()
        .enumerate()
        .map(|(i, list)| Attachment {
            list: list.clone(),
            ifname: format!("eth{i}"),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conflist(name: &str, subnet: &str) -> String {
        format!(
            r#"{{"cniVersion":"1.0.0","name":"{name}","plugins":[{{"type":"bridge","bridge":"b","ipam":{{"type":"host-local","subnet":"{subnet}"}}}},{{"type":"portmap","capabilities":{{"portMappings":true}}}}]}}"#
        )
    }

    #[test]
    fn parses_conf_and_conflist() {
        let list = NetworkList::parse(conflist("net1", "10.1.0.0/24").as_bytes()).unwrap();
        assert_eq!(list.name, "net1");
        assert_eq!(list.plugins.len(), 2);
        assert_eq!(NetworkList::plugin_type(&list.plugins[1]), "portmap");

        let conf =
            br#"{"cniVersion":"0.4.0","name":"single","type":"bridge","disableCheck":"true"}"#;
        let list = NetworkList::parse(conf).unwrap();
        assert_eq!(list.plugins.len(), 1);
        assert_eq!(NetworkList::plugin_type(&list.plugins[0]), "bridge");
        assert!(list.disable_check);
    }

    #[test]
    fn refuses_bad_configs_with_the_reason() {
        for (bytes, reason) in [
            (&b"nope"[..], "expected"),
            (
                br#"{"cniVersion":"1.0.0","plugins":[{"type":"x"}]}"#,
                "\"name\"",
            ),
            (
                br#"{"name":"a","plugins":[{"type":"x"}]}"#,
                "\"cniVersion\"",
            ),
            (br#"{"cniVersion":"0.2.0","name":"a","type":"x"}"#, "0.2.0"),
            (
                br#"{"cniVersion":"1.0.0","name":"../x","type":"x"}"#,
                "must match",
            ),
            (
                br#"{"cniVersion":"1.0.0","name":"ns","type":"x"}"#,
                "reserved",
            ),
            (
                br#"{"cniVersion":"1.0.0","name":"a","plugins":[]}"#,
                "empty",
            ),
            (
                br#"{"cniVersion":"1.0.0","name":"a","plugins":[{"type":"../sh"}]}"#,
                "type",
            ),
        ] {
            let err = NetworkList::parse(bytes).unwrap_err();
            assert!(err.contains(reason), "{err} should mention {reason}");
        }
    }

    #[test]
    fn store_rereads_changed_files_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = ConfigStore::new(dir.path().join("net.d"), None, "10.88.0.0/16".into());
        assert!(
            store.current(None).unwrap().networks.is_empty(),
            "missing dir"
        );
        std::fs::create_dir(dir.path().join("net.d")).unwrap();
        let write = |file: &str, text: &str| {
            std::fs::write(dir.path().join("net.d").join(file), text).unwrap()
        };
        write("20-b.conflist", &conflist("b", "10.2.0.0/24"));
        write("10-a.conf", &conflist("a", "10.1.0.0/24"));
        write("05-broken.conf", "{");
        write("README", "not a config");
        let set = store.current(None).unwrap();
        assert_eq!(set.names(), ["a", "b"]);
        assert_eq!(set.errors.len(), 1);
        assert!(set.errors[0].contains("05-broken.conf"), "{:?}", set.errors);
        assert!(Arc::ptr_eq(&set, &store.current(None).unwrap()), "cached");

        write("10-a.conf", &conflist("a", "10.9.0.0/24"));
        let set = store.current(None).unwrap();
        let ipam = &set.networks[0].list.plugins[0]["ipam"];
        assert_eq!(ipam["subnet"], "10.9.0.0/24");
    }

    #[test]
    fn default_network_only_for_an_empty_dir_and_on_the_pod_cidr() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("work/default.conflist");
        let store = ConfigStore::new(
            dir.path().join("net.d"),
            Some(file.clone()),
            "10.88.0.0/16".into(),
        );
        let set = store.current(None).unwrap();
        assert!(set.default);
        assert_eq!(set.names(), [DEFAULT_NETWORK]);
        let on_disk = NetworkList::parse(&std::fs::read(&file).unwrap()).unwrap();
        assert_eq!(on_disk, set.networks[0].list);
        assert_eq!(
            on_disk.plugins[0]["ipam"]["ranges"],
            json!([[{"subnet": "10.88.0.0/16"}]])
        );
        let types: Vec<&str> = on_disk
            .plugins
            .iter()
            .map(NetworkList::plugin_type)
            .collect();
        assert_eq!(types, ["bridge", "portmap", "loopback"]);

        let set = store.current(Some("10.244.1.0/24,fd00:1::/64")).unwrap();
        let ipam = &set.networks[0].list.plugins[0]["ipam"];
        assert_eq!(
            ipam["ranges"],
            json!([[{"subnet": "10.244.1.0/24"}], [{"subnet": "fd00:1::/64"}]])
        );
        assert_eq!(
            ipam["routes"],
            json!([{"dst": "0.0.0.0/0"}, {"dst": "::/0"}])
        );

        std::fs::create_dir(dir.path().join("net.d")).unwrap();
        std::fs::write(dir.path().join("net.d/broken.conf"), "{").unwrap();
        let set = store.current(None).unwrap();
        assert!(!set.default && set.networks.is_empty() && set.errors.len() == 1);
        std::fs::remove_file(dir.path().join("net.d/broken.conf")).unwrap();
        std::fs::write(
            dir.path().join("net.d/a.conflist"),
            conflist("a", "10.1.0.0/24"),
        )
        .unwrap();
        let set = store.current(None).unwrap();
        assert!(!set.default);
        assert_eq!(set.names(), ["a"]);
    }

    #[test]
    fn selects_by_annotation_in_order() {
        let set = ConfigSet {
            networks: ["a", "b", "c"]
                .iter()
                .map(|n| Loaded {
                    list: NetworkList::parse(conflist(n, "10.0.0.0/24").as_bytes()).unwrap(),
                    source: PathBuf::new(),
                })
                .collect(),
            ..Default::default()
        };
        let picked = |annotation: Option<&str>| {
            let annotations = annotation
                .map(|a| HashMap::from([(NETWORKS_ANNOTATION.to_string(), a.to_string())]))
                .unwrap_or_default();
            select(&set, &annotations).map(|v| {
                v.into_iter()
                    .map(|a| format!("{}:{}", a.list.name, a.ifname))
                    .collect::<Vec<_>>()
            })
        };
        assert_eq!(picked(None).unwrap(), ["a:eth0"]);
        assert_eq!(picked(Some("c, a")).unwrap(), ["c:eth0", "a:eth1"]);
        assert_eq!(
            picked(Some("a,zz")).unwrap_err(),
            SelectError::Unknown {
                network: "zz".into(),
                known: vec!["a".into(), "b".into(), "c".into()]
            }
        );
        assert_eq!(
            picked(Some("b,b")).unwrap_err(),
            SelectError::Twice("b".into())
        );
        assert!(
            select(&ConfigSet::default(), &HashMap::new())
                .unwrap()
                .is_empty()
        );
    }
}
