//! What an ADD returns: the CNI result of spec 0.3.0 to 1.1.0 (one shape since 0.3.0:
//! `interfaces`, `ips` pointing at them by index, `routes`, `dns`). The raw JSON is what
//! gets checkpointed and handed on as `prevResult`; this typed view is what the runtime
//! reads from it.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ResultError {
    #[error("the result is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("result cniVersion {0:?} is not supported (0.3.0 to 1.1.0 are)")]
    Version(String),
    #[error("result ips[{index}].address {address:?} is not ADDRESS/PREFIX")]
    Address { index: usize, address: String },
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniResult {
    #[serde(rename = "cniVersion", default)]
    pub cni_version: String,
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    #[serde(default)]
    pub dns: Dns,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    /// The netns path for interfaces inside the pod; empty for host-side ones (bridge, veth).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sandbox: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// CIDR notation: `10.88.0.5/16`.
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// Index into `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub domain: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty() && self.search.is_empty() && self.options.is_empty()
    }
}

/// Whether a config or result version is one this runtime speaks: 0.3.0 up to 1.x.
/// 0.1/0.2 results have another shape (`ip4`/`ip6`) that no maintained plugin emits.
pub fn supported_version(version: &str) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u32>());
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(Ok(0)), Some(Ok(minor)), Some(Ok(_)), None) => minor >= 3,
        (Some(Ok(1)), Some(Ok(_)), Some(Ok(_)), None) => true,
        _ => false,
    }
}

/// Whether `version` is at least 0.4.0, the first with CHECK and prevResult on DEL.
pub fn has_check(version: &str) -> bool {
    supported_version(version) && !version.starts_with("0.3.")
}

impl CniResult {
    pub fn parse(value: &serde_json::Value) -> Result<CniResult, ResultError> {
        let result: CniResult = serde_json::from_value(value.clone())?;
        if !supported_version(&result.cni_version) {
            return Err(ResultError::Version(result.cni_version));
        }
        for (index, ip) in result.ips.iter().enumerate() {
            if parse_cidr_address(&ip.address).is_none() {
                return Err(ResultError::Address {
                    index,
                    address: ip.address.clone(),
                });
            }
        }
        Ok(result)
    }

    /// The addresses of the pod's own interfaces (prefix stripped), in result order. An
    /// IP without an interface index counts as the pod's, as the spec allows plugins to
    /// leave it out.
    pub fn pod_ips(&self) -> Vec<IpAddr> {
        self.ips
            .iter()
            .filter(|ip| {
                ip.interface.is_none_or(|i| {
                    self.interfaces
                        .get(i)
                        .is_some_and(|iface| !iface.sandbox.is_empty())
                })
            })
            .filter_map(|ip| parse_cidr_address(&ip.address))
            .collect()
    }
}

fn parse_cidr_address(cidr: &str) -> Option<IpAddr> {
    let (address, prefix) = cidr.split_once('/')?;
    let address: IpAddr = address.parse().ok()?;
    let max = if address.is_ipv4() { 32 } else { 128 };
    prefix.parse::<u8>().ok().filter(|p| *p <= max)?;
    Some(address)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bridge_result_of_1_0_0() {
        let value = serde_json::json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": "cni0", "mac": "4e:a4:af:2d:07:35"},
                {"name": "veth1", "mac": "e2:5a:5e:9f:42:50"},
                {"name": "eth0", "mac": "aa:c8:ad:eb:ae:b7", "sandbox": "/run/x/ns"}
            ],
            "ips": [
                {"interface": 2, "address": "10.123.0.2/24", "gateway": "10.123.0.1"},
                {"interface": 2, "address": "fd00::2/64"},
                {"interface": 0, "address": "10.123.0.1/24"}
            ],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dns": {"nameservers": ["10.0.0.53"], "search": ["svc.local"]}
        });
        let result = CniResult::parse(&value).unwrap();
        assert_eq!(
            result.pod_ips(),
            [
                "10.123.0.2".parse::<IpAddr>().unwrap(),
                "fd00::2".parse().unwrap()
            ]
        );
        assert_eq!(result.dns.nameservers, ["10.0.0.53"]);
        assert!(!result.dns.is_empty());
    }

    #[test]
    fn result_of_0_3_1_has_ip_versions() {
        let value = serde_json::json!({
            "cniVersion": "0.3.1",
            "ips": [{"version": "4", "address": "10.1.0.9/16"}],
            "dns": {}
        });
        let result = CniResult::parse(&value).unwrap();
        assert_eq!(result.pod_ips(), ["10.1.0.9".parse::<IpAddr>().unwrap()]);
        assert!(result.dns.is_empty());
    }

    #[test]
    fn refuses_old_versions_and_bad_addresses() {
        let old = serde_json::json!({"cniVersion": "0.2.0", "ip4": {"ip": "10.0.0.2/24"}});
        assert!(matches!(
            CniResult::parse(&old),
            Err(ResultError::Version(v)) if v == "0.2.0"
        ));
        let bad = serde_json::json!({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.2"}]});
        assert!(matches!(
            CniResult::parse(&bad),
            Err(ResultError::Address { index: 0, .. })
        ));
    }

    #[test]
    fn versions() {
        for v in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
            assert!(supported_version(v), "{v}");
        }
        for v in ["0.1.0", "0.2.0", "2.0.0", "1.0", "x"] {
            assert!(!supported_version(v), "{v}");
        }
        assert!(has_check("0.4.0") && has_check("1.0.0"));
        assert!(!has_check("0.3.1"));
    }
}
