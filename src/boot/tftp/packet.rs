//! TFTP packets (RFC 1350, options RFC 2347): parsing and encoding, apart from any I/O.
//!
//! Parsing never fails on a datagram by panicking: anything that is not a well-formed packet
//! is a [`Malformed`] naming what is wrong, which the server answers (a request) or drops.

/// Opcodes.
pub const RRQ: u16 = 1;
pub const WRQ: u16 = 2;
pub const DATA: u16 = 3;
pub const ACK: u16 = 4;
pub const ERROR: u16 = 5;
pub const OACK: u16 = 6;

/// ERROR codes (RFC 1350, 2347).
pub const NOT_DEFINED: u16 = 0;
pub const FILE_NOT_FOUND: u16 = 1;
pub const ACCESS_VIOLATION: u16 = 2;
pub const ILLEGAL_OPERATION: u16 = 4;
pub const UNKNOWN_TID: u16 = 5;
pub const OPTION_REFUSED: u16 = 8;

/// Most options a request may carry; the rest are ignored (a request is one datagram, and
/// clients send four at most).
pub const MAX_OPTIONS: usize = 16;

/// The transfer mode a request names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    Octet,
    /// Text: lines end in CR LF on the wire, a bare CR is CR NUL.
    Netascii,
    /// RFC 1350's mail mode (to a user, not a file): obsolete, refused.
    Mail,
    /// Anything else, as sent (lower-cased).
    Other(String),
}

/// A read or write request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The name as sent (not necessarily UTF-8).
    pub filename: Vec<u8>,
    pub mode: Mode,
    /// Options in the order sent, names lower-cased, at most [`MAX_OPTIONS`].
    pub options: Vec<(String, String)>,
}

/// One datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet<'a> {
    Read(Request),
    Write(Request),
    Data { block: u16, data: &'a [u8] },
    Ack(u16),
    Error { code: u16, message: String },
    OptionAck(Vec<(String, String)>),
}

/// Why a datagram is not a packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("shorter than an opcode")]
    Short,
    #[error("unknown opcode {0}")]
    Opcode(u16),
    #[error("request without a NUL-terminated file name")]
    Filename,
    #[error("request without a NUL-terminated mode")]
    Mode,
    #[error("option {0:?} without a NUL-terminated value")]
    OptionValue(String),
    #[error("option name or value not UTF-8")]
    OptionText,
    #[error("{0} packet too short")]
    Truncated(&'static str),
}

/// Splits `b` at its first NUL: (before, after).
fn field(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let n = b.iter().position(|c| *c == 0)?;
    Some((&b[..n], &b[n + 1..]))
}

fn request(rest: &[u8]) -> Result<Request, Malformed> {
    let (filename, rest) = field(rest).ok_or(Malformed::Filename)?;
    let (mode, mut rest) = field(rest).ok_or(Malformed::Mode)?;
    let mode = String::from_utf8_lossy(mode).to_ascii_lowercase();
    let mode = match mode.as_str() {
        "octet" => Mode::Octet,
        "netascii" => Mode::Netascii,
        "mail" => Mode::Mail,
        _ => Mode::Other(mode),
    };
    let mut options = Vec::new();
    while !rest.is_empty() {
        let Some((name, after)) = field(rest) else {
            // trailing bytes without a NUL: some clients pad; not an option
            break;
        };
        let name = std::str::from_utf8(name)
            .map_err(|_| Malformed::OptionText)?
            .to_ascii_lowercase();
        let (value, after) = field(after).ok_or_else(|| Malformed::OptionValue(name.clone()))?;
        let value = std::str::from_utf8(value).map_err(|_| Malformed::OptionText)?;
        if options.len() < MAX_OPTIONS && !name.is_empty() {
            options.push((name, value.to_string()));
        }
        rest = after;
    }
    Ok(Request {
        filename: filename.to_vec(),
        mode,
        options,
    })
}

/// Parses one datagram.
pub fn parse(b: &[u8]) -> Result<Packet<'_>, Malformed> {
    if b.len() < 2 {
        return Err(Malformed::Short);
    }
    let op = u16::from_be_bytes([b[0], b[1]]);
    let rest = &b[2..];
    let num = |what| {
        rest.get(..2)
            .map(|n| u16::from_be_bytes([n[0], n[1]]))
            .ok_or(Malformed::Truncated(what))
    };
    Ok(match op {
        RRQ => Packet::Read(request(rest)?),
        WRQ => Packet::Write(request(rest)?),
        DATA => Packet::Data {
            block: num("DATA")?,
            data: &rest[2..],
        },
        ACK => Packet::Ack(num("ACK")?),
        ERROR => {
            let code = num("ERROR")?;
            let text = &rest[2..];
            let text = field(text).map(|(t, _)| t).unwrap_or(text);
            Packet::Error {
                code,
                message: String::from_utf8_lossy(text).into_owned(),
            }
        }
        OACK => {
            let mut options = Vec::new();
            let mut rest = rest;
            while let Some((name, after)) = field(rest) {
                let Some((value, after)) = field(after) else {
                    break;
                };
                options.push((
                    String::from_utf8_lossy(name).to_ascii_lowercase(),
                    String::from_utf8_lossy(value).into_owned(),
                ));
                rest = after;
            }
            Packet::OptionAck(options)
        }
        op => return Err(Malformed::Opcode(op)),
    })
}

/// An ERROR packet.
pub fn error(code: u16, message: &str) -> Vec<u8> {
    let mut p = Vec::with_capacity(5 + message.len());
    p.extend_from_slice(&ERROR.to_be_bytes());
    p.extend_from_slice(&code.to_be_bytes());
    p.extend_from_slice(message.as_bytes());
    p.push(0);
    p
}

/// An OACK packet.
pub fn option_ack(options: &[(&str, String)]) -> Vec<u8> {
    let mut p = OACK.to_be_bytes().to_vec();
    for (k, v) in options {
        p.extend_from_slice(k.as_bytes());
        p.push(0);
        p.extend_from_slice(v.as_bytes());
        p.push(0);
    }
    p
}

/// The 4-byte header of a DATA packet.
pub fn data_header(block: u16) -> [u8; 4] {
    let b = block.to_be_bytes();
    let o = DATA.to_be_bytes();
    [o[0], o[1], b[0], b[1]]
}

/// An ACK packet.
pub fn ack(block: u16) -> [u8; 4] {
    let b = block.to_be_bytes();
    let o = ACK.to_be_bytes();
    [o[0], o[1], b[0], b[1]]
}

/// Encodes `p` (the inverse of [`parse`], for tests and clients).
pub fn encode(p: &Packet<'_>) -> Vec<u8> {
    let req = |op: u16, r: &Request| {
        let mut v = op.to_be_bytes().to_vec();
        v.extend_from_slice(&r.filename);
        v.push(0);
        v.extend_from_slice(match &r.mode {
            Mode::Octet => b"octet",
            Mode::Netascii => b"netascii",
            Mode::Mail => b"mail",
            Mode::Other(m) => m.as_bytes(),
        });
        v.push(0);
        for (k, val) in &r.options {
            v.extend_from_slice(k.as_bytes());
            v.push(0);
            v.extend_from_slice(val.as_bytes());
            v.push(0);
        }
        v
    };
    match p {
        Packet::Read(r) => req(RRQ, r),
        Packet::Write(r) => req(WRQ, r),
        Packet::Data { block, data } => {
            let mut v = data_header(*block).to_vec();
            v.extend_from_slice(data);
            v
        }
        Packet::Ack(b) => ack(*b).to_vec(),
        Packet::Error { code, message } => error(*code, message),
        Packet::OptionAck(o) => {
            let o: Vec<(&str, String)> = o.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
            option_ack(&o)
        }
    }
}

/// Netascii on the wire (RFC 764, as RFC 1350 says): LF becomes CR LF and a bare CR becomes
/// CR NUL. Streams: a file read in pieces converts the same as read at once.
#[derive(Debug, Default)]
pub struct NetasciiEncoder;

impl NetasciiEncoder {
    /// Appends the wire form of `input` to `out`.
    pub fn encode(&mut self, input: &[u8], out: &mut Vec<u8>) {
        out.reserve(input.len() + input.len() / 16);
        for &c in input {
            match c {
                b'\n' => out.extend_from_slice(b"\r\n"),
                b'\r' => out.extend_from_slice(b"\r\0"),
                c => out.push(c),
            }
        }
    }
}

/// The file bytes of netascii `wire` (the inverse of [`NetasciiEncoder`]): CR LF → LF,
/// CR NUL → CR. A CR at the end of `wire` is held for the next call (`pending`).
pub fn netascii_decode(wire: &[u8], pending: &mut bool, out: &mut Vec<u8>) {
    for &c in wire {
        if *pending {
            *pending = false;
            match c {
                b'\n' => {
                    out.push(b'\n');
                    continue;
                }
                0 => {
                    out.push(b'\r');
                    continue;
                }
                _ => out.push(b'\r'),
            }
        }
        if c == b'\r' {
            *pending = true;
        } else {
            out.push(c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn requests_modes_and_options() {
        let p = parse(b"\x00\x01pxelinux.0\x00OCTET\x00BlkSize\x001468\x00tsize\x000\x00").unwrap();
        assert_eq!(
            p,
            Packet::Read(Request {
                filename: b"pxelinux.0".to_vec(),
                mode: Mode::Octet,
                options: vec![
                    ("blksize".into(), "1468".into()),
                    ("tsize".into(), "0".into())
                ],
            })
        );
        let mode = |m: &[u8]| {
            let mut b = b"\x00\x01f\x00".to_vec();
            b.extend_from_slice(m);
            b.push(0);
            match parse(&b).unwrap() {
                Packet::Read(r) => r.mode,
                p => panic!("{p:?}"),
            }
        };
        assert_eq!(mode(b"netascii"), Mode::Netascii);
        assert_eq!(mode(b"NetAscii"), Mode::Netascii);
        assert_eq!(mode(b"mail"), Mode::Mail);
        assert_eq!(mode(b"bogus"), Mode::Other("bogus".into()));
        for (bad, want) in [
            (&b""[..], Malformed::Short),
            (b"\x00", Malformed::Short),
            (b"\x00\x01", Malformed::Filename),
            (b"\x00\x01name", Malformed::Filename),
            (b"\x00\x01name\x00", Malformed::Mode),
            (b"\x00\x01name\x00octet", Malformed::Mode),
            (
                b"\x00\x01n\x00octet\x00blksize\x00",
                Malformed::OptionValue("blksize".into()),
            ),
            (b"\x00\x07x\x00", Malformed::Opcode(7)),
            (b"\x00\x04\x00", Malformed::Truncated("ACK")),
            (b"\x00\x03\x00", Malformed::Truncated("DATA")),
        ] {
            assert_eq!(parse(bad), Err(want), "{bad:?}");
        }
        // an option name without its NUL is ignored, not an error
        assert!(matches!(
            parse(b"\x00\x01n\x00octet\x00blksize"),
            Ok(Packet::Read(r)) if r.options.is_empty()
        ));
    }

    #[test]
    fn netascii_both_ways() {
        let file = b"line 1\nline 2\r\nbare\rcr\n\n\r";
        let mut wire = Vec::new();
        NetasciiEncoder.encode(file, &mut wire);
        assert_eq!(
            wire,
            b"line 1\r\nline 2\r\0\r\nbare\r\0cr\r\n\r\n\r\0".to_vec()
        );
        // decoded in pieces of every size: the file again
        for piece in 1..wire.len() {
            let (mut out, mut pending) = (Vec::new(), false);
            for chunk in wire.chunks(piece) {
                netascii_decode(chunk, &mut pending, &mut out);
            }
            assert!(!pending);
            assert_eq!(out, file.to_vec(), "pieces of {piece}");
        }
    }

    proptest! {
        /// Whatever a datagram holds, parsing answers (no panic), and a parsed packet encodes
        /// back to bytes that parse to the same packet.
        #[test]
        fn any_datagram_parses_or_is_refused(
            op in 0u16..8,
            body in proptest::collection::vec(any::<u8>(), 0..600),
        ) {
            let mut b = op.to_be_bytes().to_vec();
            b.extend_from_slice(&body);
            if let Ok(p) = parse(&b) {
                let again = encode(&p);
                prop_assert_eq!(parse(&again).unwrap(), p);
            }
        }

        #[test]
        fn requests_round_trip(
            name in proptest::collection::vec(1u8..=255, 1..100),
            opts in proptest::collection::vec(("[a-z]{1,10}", "[0-9]{1,6}"), 0..MAX_OPTIONS),
            netascii in any::<bool>(),
        ) {
            let r = Request {
                filename: name,
                mode: if netascii { Mode::Netascii } else { Mode::Octet },
                options: opts,
            };
            let p = Packet::Read(r);
            let bytes = encode(&p);
            prop_assert_eq!(parse(&bytes).unwrap(), p);
        }

        #[test]
        fn netascii_round_trips(file in proptest::collection::vec(any::<u8>(), 0..2000), piece in 1usize..50) {
            let mut wire = Vec::new();
            let mut enc = NetasciiEncoder;
            for chunk in file.chunks(piece) {
                enc.encode(chunk, &mut wire);
            }
            let (mut out, mut pending) = (Vec::new(), false);
            netascii_decode(&wire, &mut pending, &mut out);
            prop_assert_eq!(out, file);
        }
    }
}
