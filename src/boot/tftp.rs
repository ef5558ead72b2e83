//! Read-only TFTP server. Work in progress.
