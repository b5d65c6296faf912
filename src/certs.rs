//! TLS for the HTTPS listener: load the certificate and key, or generate a self-signed pair
//! on first start.

use std::path::Path;
use std::sync::Arc;

use crate::error::Error;

/// Loads `cert` and `key` (PEM) into a rustls server configuration. When both files are
/// missing, first generates a self-signed ECDSA P-256 certificate for `localhost`,
/// `127.0.0.1`, `::1`, the host name and `extra_hosts` (names or IP addresses), valid from
/// yesterday for 825 days (Apple's limit), and writes both files atomically (key mode 0600).
/// Exactly one missing, or a file that does not parse: [`Error::File`] naming it.
/// Returns the configuration and whether a certificate was generated.
pub fn load_or_generate(
    cert: &Path,
    key: &Path,
    extra_hosts: &[String],
) -> Result<(Arc<rustls::ServerConfig>, bool), Error> {
    let _ = (cert, key, extra_hosts);
    todo!()
}

/// A self-signed certificate and key as PEM text, for the hosts given (plus the defaults
/// above).
pub fn generate(extra_hosts: &[String]) -> Result<(String, String), Error> {
    let _ = extra_hosts;
    todo!()
}
