//! The DHCP sockets: UDP 67 (and 4011 in proxy mode) bound to one interface, each datagram
//! through [`codec::respond`], replies sent where the codec says.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use super::codec::{self, Boot, NoReply, PXE_PORT, SERVER_PORT};
use super::{DhcpError, DhcpMode, DhcpSettings, LeaseStore, Mac};

/// Warn about an unconfigured architecture once per (MAC, arch); forget after this many.
const WARNED_MAX: usize = 4096;

/// Opens a UDP socket on 0.0.0.0:`port` bound to `interface` (SO_BINDTODEVICE), with
/// SO_BROADCAST. No SO_REUSEADDR: a second DHCP server on the same port must fail loudly
/// rather than share (and steal) the traffic.
pub fn bind(interface: &str, port: u16) -> Result<UdpSocket, DhcpError> {
    let err = |source| DhcpError::Bind {
        port,
        interface: interface.to_string(),
        source,
    };
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).map_err(err)?;
    s.set_broadcast(true).map_err(err)?;
    s.bind_device(Some(interface.as_bytes())).map_err(err)?;
    s.set_nonblocking(true).map_err(err)?;
    s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)).into())
        .map_err(err)?;
    UdpSocket::from_std(s.into()).map_err(err)
}

/// The sockets `settings` needs: port 67, and 4011 in proxy mode (each bound to the interface).
/// Call it at start-up so that a busy port or a missing permission is reported before
/// anything runs; then hand the sockets to [`run_on`].
pub fn bind_all(settings: &DhcpSettings) -> Result<Vec<(u16, UdpSocket)>, DhcpError> {
    settings.validate()?;
    let mut ports = vec![SERVER_PORT];
    if settings.mode == DhcpMode::Proxy {
        ports.push(PXE_PORT);
    }
    let mut sockets = Vec::new();
    for &port in &ports {
        sockets.push((port, bind(&settings.interface, port)?));
    }
    Ok(sockets)
}

/// Serves DHCP until `cancel` fires. Only a bind failure or bad settings end it early; a bad
/// datagram, a lease store error or a failed send is logged and the loop goes on.
pub async fn run(
    settings: DhcpSettings,
    leases: Arc<dyn LeaseStore>,
    cancel: CancellationToken,
) -> Result<(), DhcpError> {
    let sockets = bind_all(&settings)?;
    run_on(settings, sockets, leases, cancel).await
}

/// [`run`] on sockets from [`bind_all`].
pub async fn run_on(
    settings: DhcpSettings,
    sockets: Vec<(u16, UdpSocket)>,
    leases: Arc<dyn LeaseStore>,
    cancel: CancellationToken,
) -> Result<(), DhcpError> {
    settings.validate()?;
    let ports: Vec<u16> = sockets.iter().map(|(p, _)| *p).collect();
    tracing::info!(
        interface = %settings.interface,
        mode = ?settings.mode,
        server_ip = %settings.server_ip,
        ports = ?ports,
        "DHCP serving"
    );
    let shared = Arc::new(Shared {
        settings,
        leases,
        warned: Mutex::new(HashSet::new()),
    });
    let mut tasks = tokio::task::JoinSet::new();
    for (port, sock) in sockets {
        tasks.spawn(serve_socket(shared.clone(), port, sock, cancel.clone()));
    }
    while let Some(r) = tasks.join_next().await {
        if let Err(e) = r {
            tracing::error!(error = %e, "DHCP socket task ended abnormally");
        }
    }
    Ok(())
}

struct Shared {
    settings: DhcpSettings,
    leases: Arc<dyn LeaseStore>,
    warned: Mutex<HashSet<(Mac, Option<u16>)>>,
}

impl Shared {
    /// True the first time (mac, arch) is seen unconfigured.
    fn first_warning(&self, mac: Mac, arch: Option<u16>) -> bool {
        let mut w = self.warned.lock().unwrap_or_else(|e| e.into_inner());
        if w.len() >= WARNED_MAX {
            w.clear();
        }
        w.insert((mac, arch))
    }

    fn warn_unconfigured(&self, mac: Mac, arch: Option<u16>) {
        if self.first_warning(mac, arch) {
            tracing::warn!(
                %mac,
                arch = ?arch,
                "DHCP: no boot file configured for this client architecture (set one for it in the boot files)"
            );
        }
    }
}

fn unix_now() -> u64 {
    crate::time::now_unix().max(0) as u64
}

/// The codec's answer to one datagram. Full mode reads and writes the lease store (SQLite in
/// `serve`), so it runs on the blocking pool, never on a runtime worker; datagrams of one
/// socket are still handled one after another, so lease updates never interleave.
async fn decide(
    shared: &Arc<Shared>,
    datagram: &[u8],
    port: u16,
    src: SocketAddrV4,
) -> Option<Result<codec::Reply, NoReply>> {
    let call = move |shared: &Shared, datagram: &[u8]| {
        // The codec is fuzzed not to panic; should it ever, drop the datagram, keep serving.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            codec::respond(
                datagram,
                port,
                src,
                &shared.settings,
                shared.leases.as_ref(),
                unix_now(),
            )
        }))
        .ok()
    };
    if shared.settings.mode == DhcpMode::Proxy {
        return call(shared, datagram);
    }
    let shared = shared.clone();
    let datagram = datagram.to_vec();
    tokio::task::spawn_blocking(move || call(&shared, &datagram))
        .await
        .ok()
        .flatten()
}

async fn serve_socket(shared: Arc<Shared>, port: u16, sock: UdpSocket, cancel: CancellationToken) {
    let mut buf = vec![0u8; 4096];
    loop {
        let (len, src) = tokio::select! {
            _ = cancel.cancelled() => return,
            r = sock.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(port, error = %e, "DHCP receive failed");
                    // Do not spin if the error persists (e.g. the interface went away).
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(std::time::Duration::from_millis(200)) => {}
                    }
                    continue;
                }
            },
        };
        let SocketAddr::V4(src) = src else { continue };
        let Some(reply) = decide(&shared, &buf[..len], port, src).await else {
            tracing::error!(port, from = %src, len, "DHCP codec panicked on a datagram (bug): dropped");
            continue;
        };
        note_address(
            &shared,
            &buf[..len],
            reply.as_ref().ok().map(|r| &r.summary),
        )
        .await;
        match reply {
            Ok(reply) => {
                if let Boot::Unconfigured(arch) = reply.summary.boot {
                    shared.warn_unconfigured(reply.summary.mac, arch);
                }
                send(&sock, &reply.bytes, reply.dest).await;
                tracing::info!(port, from = %src, to = %reply.dest, "DHCP {}", reply.summary);
            }
            Err(NoReply::Malformed(e)) => {
                tracing::debug!(port, from = %src, len, "DHCP datagram dropped: {e}")
            }
            Err(NoReply::Ignored(why)) => tracing::debug!(port, from = %src, "DHCP: {why}"),
            Err(NoReply::Unconfigured { mac, arch }) => shared.warn_unconfigured(mac, arch),
            Err(NoReply::PoolExhausted(mac)) => {
                tracing::warn!(%mac, "DHCP address pool exhausted: no offer")
            }
            Err(NoReply::Done(what)) => tracing::info!(port, "DHCP {what}"),
            Err(NoReply::Leases(e)) => tracing::error!(port, from = %src, "DHCP: {e}"),
        }
    }
}

/// Records the address this exchange shows the client at ([`codec::observed`]), off the
/// runtime's workers (the store may be SQLite).
async fn note_address(shared: &Arc<Shared>, datagram: &[u8], reply: Option<&codec::Summary>) {
    let Ok(req) = codec::parse(datagram) else {
        return;
    };
    let Some(ip) = codec::observed(shared.settings.mode, &req, reply) else {
        return;
    };
    let (shared, mac) = (shared.clone(), req.mac);
    let circuit = req.relay_info.and_then(codec::circuit_id);
    let saved = tokio::task::spawn_blocking(move || {
        shared.leases.seen(mac, ip, unix_now(), circuit.as_deref())
    })
    .await;
    if let Ok(Err(e)) = saved {
        tracing::error!(%mac, "DHCP: cannot record the address {ip}: {e}");
    }
}

async fn send(sock: &UdpSocket, bytes: &[u8], dest: SocketAddrV4) {
    if let Err(e) = sock.send_to(bytes, dest).await {
        tracing::warn!(to = %dest, error = %e, "DHCP reply not sent");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::dhcp::{BootFiles, MemoryLeases};

    fn settings(interface: &str) -> DhcpSettings {
        DhcpSettings {
            interface: interface.into(),
            mode: DhcpMode::Proxy,
            server_ip: Ipv4Addr::new(10, 99, 0, 1),
            boot_files: BootFiles::default(),
            ipxe_script_url: "http://10.99.0.1/boot.ipxe".into(),
            pool: None,
        }
    }

    #[test]
    fn unconfigured_arch_warned_once_per_mac_and_arch() {
        let s = Shared {
            settings: settings("x"),
            leases: Arc::new(MemoryLeases::new()),
            warned: Mutex::new(HashSet::new()),
        };
        let m = Mac([2, 0, 0, 0, 0, 1]);
        assert!(s.first_warning(m, Some(11)));
        assert!(!s.first_warning(m, Some(11)));
        assert!(s.first_warning(m, Some(16)));
        assert!(s.first_warning(Mac([2, 0, 0, 0, 0, 2]), Some(11)));
        for i in 0..WARNED_MAX as u16 {
            s.first_warning(m, Some(1000 + i));
        }
        assert!(
            s.warned.lock().unwrap().len() <= WARNED_MAX,
            "set stays bounded"
        );
    }

    /// Bad settings and a missing interface end `run` with an error before anything is sent
    /// (no DHCP traffic: safe outside a namespace, root or not).
    #[tokio::test]
    async fn run_refuses_bad_settings_and_missing_interface() {
        let leases: Arc<dyn LeaseStore> = Arc::new(MemoryLeases::new());
        let r = run(settings(""), leases.clone(), CancellationToken::new()).await;
        assert!(matches!(r, Err(DhcpError::Settings(_))), "{r:?}");
        let r = run(settings("bc-no-such0"), leases, CancellationToken::new()).await;
        match r {
            Err(DhcpError::Bind {
                port: 67,
                interface,
                ..
            }) => assert_eq!(interface, "bc-no-such0"),
            other => panic!("expected a bind error, got {other:?}"),
        }
    }
}
