//! MAC addresses as they appear in URLs, DHCP packets and the database.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A 48-bit Ethernet address. Displays as lower-case `aa:bb:cc:dd:ee:ff`, the one form
/// stored in the database and shown by the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mac(pub [u8; 6]);

#[derive(Debug, thiserror::Error)]
#[error(
    "{0:?} is not a MAC address (write it as aa:bb:cc:dd:ee:ff, aa-bb-cc-dd-ee-ff or aabbccddeeff)"
)]
pub struct BadMac(pub String);

impl FromStr for Mac {
    type Err = BadMac;

    /// Accepts `aa:bb:cc:dd:ee:ff`, `aa-bb-cc-dd-ee-ff` (iPXE's `hexhyp`) and `aabbccddeeff`,
    /// any case.
    fn from_str(s: &str) -> Result<Mac, BadMac> {
        let bad = || BadMac(s.to_string());
        let hex: String = if s.len() == 17 {
            let sep = s.as_bytes()[2];
            if sep != b':' && sep != b'-' {
                return Err(bad());
            }
            for (i, c) in s.bytes().enumerate() {
                if i % 3 == 2 && c != sep {
                    return Err(bad());
                }
            }
            s.split(sep as char).collect()
        } else if s.len() == 12 {
            s.to_string()
        } else {
            return Err(bad());
        };
        let mut out = [0u8; 6];
        hex::decode_to_slice(&hex, &mut out).map_err(|_| bad())?;
        Ok(Mac(out))
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl Serialize for Mac {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Mac {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Mac, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::Mac;

    #[test]
    fn parses_the_three_forms_and_prints_one() {
        for s in ["52:54:00:AB:cd:01", "52-54-00-ab-cd-01", "525400abcd01"] {
            let m: Mac = s.parse().unwrap();
            assert_eq!(m.to_string(), "52:54:00:ab:cd:01");
        }
        for bad in [
            "",
            "52:54:00:ab:cd",
            "52:54-00:ab:cd:01",
            "52:54:00:ab:cd:0g",
            "../../etc/passwd",
            "52.54.00.ab.cd.01",
        ] {
            let e = bad.parse::<Mac>().unwrap_err();
            assert!(e.to_string().contains("not a MAC address"), "{bad}");
        }
    }
}
