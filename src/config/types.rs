//! Value types written as strings in the config: durations (`250ms`), sizes
//! (`16KiB`), rates (`10/s`), CIDR blocks.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, de};

/// Values written as strings, in the JSON Schema: the pattern, or an
/// `${ENV}` reference substituted at load.
fn string_schema(pattern: &str, description: &str) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "pattern": format!("^(?:{pattern})$|\\$\\{{"),
        "description": description,
    })
}

/// A duration written with a unit: `250ms`, `10s`, `5m`, `1h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    pub const fn secs(s: u64) -> Self {
        Duration(std::time::Duration::from_secs(s))
    }
    pub const fn millis(ms: u64) -> Self {
        Duration(std::time::Duration::from_millis(ms))
    }
}

impl FromStr for Duration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num.parse().map_err(|_| {
            format!("invalid duration {s:?}: expected a number with a unit (250ms, 10s, 5m, 1h)")
        })?;
        let ms = match unit {
            "ms" => Some(n),
            "s" => n.checked_mul(1000),
            "m" => n.checked_mul(60_000),
            "h" => n.checked_mul(3_600_000),
            "" if n == 0 => Some(0),
            _ => {
                return Err(format!("invalid duration {s:?}: the unit must be ms, s, m or h"));
            }
        };
        ms.map(|ms| Duration(std::time::Duration::from_millis(ms)))
            .ok_or_else(|| format!("duration {s:?} is too large"))
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(de::Error::custom)
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0.as_millis())
    }
}

/// As a config writes it, in the largest whole unit (`30s`, `250ms`): the
/// defaults the JSON Schema and the config reference show.
impl serde::Serialize for Duration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let ms = self.0.as_millis();
        let text = match ms {
            0 => "0".to_string(),
            _ if ms.is_multiple_of(3_600_000) => format!("{}h", ms / 3_600_000),
            _ if ms.is_multiple_of(60_000) => format!("{}m", ms / 60_000),
            _ if ms.is_multiple_of(1000) => format!("{}s", ms / 1000),
            _ => format!("{ms}ms"),
        };
        s.serialize_str(&text)
    }
}

/// A size in bytes: an integer or `16KiB`, `10MiB`, `1GiB` (also `KB`, `MB`, `GB`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

/// In the largest whole binary unit (`32KiB`, `10MiB`), else in bytes.
impl serde::Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let n = self.0;
        match [(30, "GiB"), (20, "MiB"), (10, "KiB")]
            .into_iter()
            .find(|(shift, _)| n > 0 && n.is_multiple_of(1 << shift))
        {
            Some((shift, unit)) => s.serialize_str(&format!("{}{unit}", n >> shift)),
            None => s.serialize_u64(n),
        }
    }
}

impl FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num.parse().map_err(|_| {
            format!("invalid size {s:?}: expected bytes or a number with a unit (16KiB, 10MiB)")
        })?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "KB" | "kB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            _ => {
                return Err(format!(
                    "invalid size {s:?}: the unit must be B, KiB, MiB, GiB, KB, MB or GB"
                ));
            }
        };
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| format!("size {s:?} is too large"))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(de::Error::custom)
    }
}

/// A rate: `N/s`, `N/m` or `N/h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u64,
    pub per: std::time::Duration,
}

impl FromStr for Rate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("invalid rate {s:?}: expected N/s, N/m or N/h");
        let (n, unit) = s.trim().split_once('/').ok_or_else(bad)?;
        let count: u64 = n.trim().parse().map_err(|_| bad())?;
        let per = match unit.trim() {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            _ => return Err(bad()),
        };
        if count == 0 {
            return Err(format!("rate {s:?} must be above zero"));
        }
        Ok(Rate {
            count,
            per: std::time::Duration::from_secs(per),
        })
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(de::Error::custom)
    }
}

/// An IPv4 or IPv6 CIDR block; a bare address is a single-host block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr(pub ipnet::IpNet);

impl Cidr {
    pub fn contains(&self, ip: &IpAddr) -> bool {
        self.0.contains(&canonical_ip(*ip))
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:1.2.3.4`) are compared as IPv4.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Ok(net) = s.parse::<ipnet::IpNet>() {
            return Ok(Cidr(net.trunc()));
        }
        s.parse::<IpAddr>()
            .map(|ip| Cidr(ipnet::IpNet::from(ip)))
            .map_err(|_| format!("invalid CIDR {s:?}: expected an address or address/prefix"))
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(de::Error::custom)
    }
}

/// A listening address, `IP:PORT`; the error says what is expected, since
/// `localhost:8080` or `:8080` read naturally and are not addresses.
pub fn socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<std::net::SocketAddr, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map_err(|_| {
        de::Error::custom(format!(
            "`{s}` is not IP:PORT (e.g. 0.0.0.0:8080, 127.0.0.1:9901 or [::]:8443; host names are not looked up)"
        ))
    })
}

impl schemars::JsonSchema for Duration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        string_schema(
            "[0-9]+(?:ms|s|m|h)|0",
            "A duration with a unit: 250ms, 10s, 5m, 1h",
        )
    }
}

impl schemars::JsonSchema for ByteSize {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ByteSize".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let text = string_schema(
            "[0-9]+(?:B|KiB|MiB|GiB|KB|kB|MB|GB)?",
            "A size: bytes, or a number with a unit (16KiB, 10MiB, 1GiB, KB, MB, GB)",
        );
        schemars::json_schema!({
            "anyOf": [{"type": "integer", "minimum": 0}, text],
        })
    }
}

impl schemars::JsonSchema for Rate {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Rate".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        string_schema(
            "[0-9]+/(?:s|m|h)",
            "A rate: a count per second, minute or hour (10/s, 600/m)",
        )
    }
}

impl schemars::JsonSchema for Cidr {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Cidr".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        string_schema(
            "[0-9A-Fa-f.:]+(?:/[0-9]{1,3})?",
            "An IP address or CIDR block (10.0.0.0/8, 2001:db8::/32)",
        )
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn defaults_serialize_as_a_config_writes_them() {
        use super::{ByteSize, Duration};
        fn json<T: serde::Serialize>(v: &T) -> String {
            serde_json::to_string(v).unwrap()
        }
        assert_eq!(json(&Duration::secs(30)), r#""30s""#);
        assert_eq!(json(&Duration::secs(3600)), r#""1h""#);
        assert_eq!(json(&Duration::secs(300)), r#""5m""#);
        assert_eq!(
            json(&Duration(std::time::Duration::from_millis(250))),
            r#""250ms""#
        );
        assert_eq!(json(&Duration::secs(0)), r#""0""#);
        assert_eq!(json(&ByteSize(32 << 10)), r#""32KiB""#);
        assert_eq!(json(&ByteSize(10 << 20)), r#""10MiB""#);
        assert_eq!(json(&ByteSize(1000)), "1000");
        // What is written reads back as the same value.
        for d in ["30s", "1h", "5m", "250ms"] {
            let v: Duration = d.parse().unwrap();
            assert_eq!(json(&v), format!("\"{d}\""));
        }
    }

    use super::*;

    #[test]
    fn durations() {
        assert_eq!("250ms".parse::<Duration>().unwrap(), Duration::millis(250));
        assert_eq!("10s".parse::<Duration>().unwrap(), Duration::secs(10));
        assert_eq!("5m".parse::<Duration>().unwrap(), Duration::secs(300));
        assert_eq!("1h".parse::<Duration>().unwrap(), Duration::secs(3600));
        assert!("10".parse::<Duration>().is_err());
        assert!("1d".parse::<Duration>().is_err());
        assert!("s".parse::<Duration>().is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!("16KiB".parse::<ByteSize>().unwrap(), ByteSize(16384));
        assert_eq!("10MiB".parse::<ByteSize>().unwrap(), ByteSize(10 << 20));
        assert_eq!("1234".parse::<ByteSize>().unwrap(), ByteSize(1234));
        assert!("12 parsecs".parse::<ByteSize>().is_err());
        assert!("99999999999999999999GiB".parse::<ByteSize>().is_err());
    }

    #[test]
    fn rates_and_cidrs() {
        let r: Rate = "10/s".parse().unwrap();
        assert_eq!((r.count, r.per.as_secs()), (10, 1));
        assert_eq!("5/h".parse::<Rate>().unwrap().per.as_secs(), 3600);
        assert!("10/d".parse::<Rate>().is_err());
        let c: Cidr = "10.1.2.3/8".parse().unwrap();
        assert!(c.contains(&"10.200.0.1".parse().unwrap()));
        assert!(c.contains(&"::ffff:10.0.0.1".parse().unwrap()));
        assert!(!c.contains(&"11.0.0.1".parse().unwrap()));
        let one: Cidr = "2001:db8::1".parse().unwrap();
        assert!(one.contains(&"2001:db8::1".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
    }
}
