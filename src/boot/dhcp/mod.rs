//! DHCP: proxyDHCP (PXE spec) and full DHCP. Work in progress.
