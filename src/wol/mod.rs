//! Wake-on-LAN: the magic packet (this file, no I/O) and sending it on a segment
//! ([`send`]).
//!
//! A magic packet is 6 bytes `FF`, then the target's MAC 16 times, then optionally a SecureOn
//! password of 4 or 6 bytes that NICs configured with one require. It goes in a UDP datagram
//! to the segment's broadcast address, port 9 (discard), from the interface facing the host:
//! a NIC in standby wakes on the pattern anywhere in a frame, and the broadcast reaches every
//! port of the segment's switches without an ARP entry for a machine that is off.

pub mod send;

use crate::mac::Mac;

/// The UDP port magic packets go to (discard; some tools use 7, NICs do not care).
pub const PORT: u16 = 9;

/// A SecureOn password: 4 or 6 bytes, written like a MAC (`01:23:45:67:89:ab`) or with
/// dashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Password(Vec<u8>);

impl std::str::FromStr for Password {
    type Err = String;

    fn from_str(s: &str) -> Result<Password, String> {
        let bad = || {
            format!(
                "{s:?} is not a SecureOn password: write 4 or 6 hex bytes like 01:23:45:67 or 01:23:45:67:89:ab"
            )
        };
        let bytes = s
            .split([':', '-'])
            .map(|b| {
                (b.len() == 2)
                    .then(|| u8::from_str_radix(b, 16).ok())
                    .flatten()
            })
            .collect::<Option<Vec<u8>>>()
            .ok_or_else(bad)?;
        if bytes.len() != 4 && bytes.len() != 6 {
            return Err(bad());
        }
        Ok(Password(bytes))
    }
}

impl Password {
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

/// The magic packet that wakes `mac` (102 bytes, or 106/108 with a password).
pub fn magic_packet(mac: Mac, password: Option<&Password>) -> Vec<u8> {
    let mut p = Vec::with_capacity(108);
    p.extend_from_slice(&[0xff; 6]);
    for _ in 0..16 {
        p.extend_from_slice(&mac.0);
    }
    if let Some(pw) = password {
        p.extend_from_slice(pw.bytes());
    }
    p
}

/// What a NIC sees in `payload`: the MAC a magic packet wakes and its password bytes (empty:
/// none), or `None` when it is no magic packet. As a NIC does, the pattern may start anywhere.
pub fn parse_magic(payload: &[u8]) -> Option<(Mac, Vec<u8>)> {
    (0..payload.len().saturating_sub(101)).find_map(|at| {
        let p = &payload[at..];
        if p[..6] != [0xff; 6] {
            return None;
        }
        let mac: [u8; 6] = p[6..12].try_into().ok()?;
        if mac == [0xff; 6] || !(1..16).all(|i| p[6 + 6 * i..12 + 6 * i] == mac) {
            return None;
        }
        let rest = &p[102..];
        let password = match rest.len() {
            4 | 6 => rest.to_vec(),
            _ => Vec::new(),
        };
        Some((Mac(mac), password))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn packet_layout() {
        let mac: Mac = "52:54:00:99:07:01".parse().unwrap();
        let p = magic_packet(mac, None);
        assert_eq!(p.len(), 102);
        assert_eq!(&p[..6], &[0xff; 6]);
        assert_eq!(&p[6..12], &[0x52, 0x54, 0x00, 0x99, 0x07, 0x01]);
        assert_eq!(&p[96..102], &[0x52, 0x54, 0x00, 0x99, 0x07, 0x01]);
        let pw: Password = "01:23:45:67:89:ab".parse().unwrap();
        let p = magic_packet(mac, Some(&pw));
        assert_eq!(&p[102..], &[0x01, 0x23, 0x45, 0x67, 0x89, 0xab]);
        assert_eq!(parse_magic(&p), Some((mac, pw.bytes().to_vec())));
        for bad in [
            "",
            "01:23:45",
            "01:23:45:67:89",
            "0g:23:45:67",
            "1:23:45:67",
            "01:23:45:67:89:ab:cd",
        ] {
            assert!(bad.parse::<Password>().is_err(), "{bad}");
        }
        assert!("01-23-45-67".parse::<Password>().is_ok());
    }

    #[test]
    fn not_magic() {
        let mac: Mac = "52:54:00:99:07:01".parse().unwrap();
        let mut p = magic_packet(mac, None);
        p[50] ^= 1;
        assert_eq!(parse_magic(&p), None);
        assert_eq!(parse_magic(&p[..101]), None);
        assert_eq!(parse_magic(&[0xff; 200]), None);
    }

    proptest! {
        #[test]
        fn round_trip_anywhere_in_a_frame(
            mac in any::<[u8; 6]>().prop_filter("not broadcast", |m| *m != [0xff; 6]),
            head in proptest::collection::vec(0u8..0xff, 0..40),
            pw in proptest::option::of(prop_oneof![
                any::<[u8; 4]>().prop_map(|b| b.to_vec()),
                any::<[u8; 6]>().prop_map(|b| b.to_vec()),
            ]),
        ) {
            let pw = pw.map(Password);
            let mut frame = head.clone();
            frame.extend(magic_packet(Mac(mac), pw.as_ref()));
            let (got, got_pw) = parse_magic(&frame).unwrap();
            prop_assert_eq!(got, Mac(mac));
            prop_assert_eq!(got_pw, pw.map(|p| p.0).unwrap_or_default());
        }

        #[test]
        fn any_bytes_parse_without_panic(b in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse_magic(&b);
        }
    }
}
